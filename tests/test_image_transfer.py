"""Word images as training batches carry them: uint8 gray levels, made float by the model, the same floats.

Training collates word images as ``uint8 (G, 1, H, W)`` (a quarter of the bytes of floats to send
from a DataLoader worker and to an accelerator); the model's image entry turns them into exactly the
``float (G, 3, H, W)`` pixels the processor makes by default. Nothing the model computes may change.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import micro_spec

from ilt_core.errors import ILTError
from ilt_core.text.collator import TextUnits
from ilt_core.text.render_cache import GRAY_LEVELS, images_to_batches, pixels_as_float
from ilt_core.text.row_collator import UnitCollator, make_collator
from ilt_core.training.shards import TextStream
from ilt_core.training.stream_dataset import StreamingRows
from ilt_core.training.stream_loader import StreamingLoader

TEXTS = ["שלום עולם, מה שלומך היום?", "the quick brown fox jumps", "שלום the fox 123 !!"]


@pytest.fixture(scope="module")
def model():
    from ilt_core.modeling.model import build_model

    m = build_model(micro_spec("full"), seed=0)
    m.eval()
    assert m.renderer is not None and m.image_encoder is not None
    return m


def _images(widths: list[int], height: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, w), dtype=np.uint8) for w in widths]
    images[0][0, :2] = (0, 255)  # both ends of the range
    return images


def test_gray_levels_are_the_correctly_rounded_quotients() -> None:
    for level in range(256):
        assert GRAY_LEVELS[level] == np.float32(level) / np.float32(255), level
    assert GRAY_LEVELS.dtype == np.float32 and not GRAY_LEVELS.flags.writeable


def test_uint8_images_become_exactly_the_float_images() -> None:
    images = _images([4, 8, 4, 12, 8])
    floats = images_to_batches(images)
    grays = images_to_batches(images, "uint8")
    assert len(floats) == len(grays) == 3
    for (i, f), (j, g) in zip(floats, grays, strict=True):
        assert torch.equal(i, j)
        assert g.dtype == torch.uint8 and g.shape == (len(j), 1, 5, f.shape[-1])
        for k, index in enumerate(j.tolist()):
            assert np.array_equal(g[k, 0].numpy(), images[index])  # the gray levels as drawn
        made = pixels_as_float(g)
        assert made.dtype == torch.float32 and made.shape == f.shape
        assert torch.equal(made, f)
    assert pixels_as_float(floats[0][1]) is floats[0][1]  # floats pass through
    with pytest.raises(ILTError, match="pixels='half'"):
        images_to_batches(images, "half")


def test_a_model_computes_the_same_from_uint8_and_float_images(model) -> None:
    processor = model.processor
    gray = processor.with_pixels("uint8")
    as_float, as_uint8 = processor(TEXTS, packing=True), gray(TEXTS, packing=True)
    assert all(p.dtype == torch.float32 for _, p in as_float.image_groups)
    assert all(p.dtype == torch.uint8 and p.shape[1] == 1 for _, p in as_uint8.image_groups)
    with torch.no_grad():
        a = model(**as_float.model_inputs())
        b = model(**as_uint8.model_inputs())
    assert torch.equal(a.loss, b.loss) and torch.equal(a.unit_losses, b.unit_losses)
    # the generation path encodes rendered units through encode_units
    units = ["", "שלום ", "fox "]
    ids = as_float.unit_input_ids[: len(units)]
    mask = as_float.unit_attention_mask[: len(units)]
    with torch.no_grad():
        e1 = model.encode_units(ids, mask, processor.render_units(units))
        e2 = model.encode_units(ids, mask, gray.render_units(units))
    assert torch.equal(e1, e2)
    # and training: the same gradients
    grads = []
    model.train()
    try:
        for batch in (as_float, as_uint8):
            model.zero_grad()
            torch.manual_seed(0)  # the same dropout masks
            model(**batch.model_inputs()).loss.backward()
            grads.append([p.grad.clone() for p in model.image_encoder.parameters() if p.grad is not None])
    finally:
        model.zero_grad()
        model.eval()
    assert grads[0] and all(torch.equal(x, y) for x, y in zip(*grads, strict=True))


def test_images_off_ignore_uint8_pixels_too(model) -> None:
    batch = model.processor.with_pixels("uint8")(TEXTS)
    model.disable("image")
    try:
        with torch.no_grad():
            base = model(**batch.model_inputs()).unit_losses
            scrambled = batch.model_inputs()
            scrambled["image_groups"] = [(i, torch.randint_like(p, 256)) for i, p in batch.image_groups]
            assert torch.equal(model(**scrambled).unit_losses, base)
    finally:
        model.enable("image")


def test_with_pixels_shares_one_render_cache(model) -> None:
    processor = model.processor
    gray = processor.with_pixels("uint8")
    assert processor.pixels == "float" and gray.pixels == "uint8"
    assert gray.cache is processor.cache and gray.renderer is processor.renderer
    before = len(processor.cache)
    gray.render_units(["a-unit-never-seen-before "])
    assert len(processor.cache) == before + 1  # one cache, under one byte cap
    with pytest.raises(ILTError, match="pixels='rgb'"):
        processor.with_pixels("rgb")


def test_the_training_collator_carries_a_quarter_of_the_bytes(model) -> None:
    rows = [[TextUnits(model.processor.segment(t))] for t in TEXTS]
    floats = UnitCollator(model.processor, 24)(rows)
    grays = make_collator(model.processor, 24)(rows)

    def image_bytes(batch: dict) -> int:  # as they would travel: expanded channels once
        return sum(p[:, :1].numel() * p.element_size() for _, p in batch["image_groups"])

    assert image_bytes(grays) * 4 == image_bytes(floats)
    for (i, f), (j, g) in zip(floats["image_groups"], grays["image_groups"], strict=True):
        assert torch.equal(i, j) and torch.equal(pixels_as_float(g), f)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("image-shards")
    for i in range(2):
        lines = [f"{t} ({i}-{j})" for j, t in enumerate(TEXTS * 4)]
        (folder / f"part-{i}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _loader(model, folder, workers: int, **kwargs) -> StreamingLoader:
    from ilt_core.training.sources import resolve_source

    source = resolve_source(str(folder), "--train_file", None)
    stream = TextStream(source.description, source.column, "--train_file", source.files)
    rows = StreamingRows(stream, model.processor, 24, 2, num_workers=workers, seed=0)
    return StreamingLoader(rows, UnitCollator(model.processor, 24), **kwargs)


def _take(loader: StreamingLoader, n: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "image_groups":
            for (i, p), (j, q) in zip(a[key], b[key], strict=True):
                assert torch.equal(i, j) and torch.equal(p, q) and p.dtype == q.dtype
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]) and a[key].dtype == b[key].dtype, key
        else:  # the batch's flags (fixed shapes)
            assert a[key] == b[key], key


def test_a_batch_from_a_worker_is_the_batch_made_in_the_main_process(model, shards) -> None:
    # one worker reads the stream the main process reads with none: the same batches, the same losses
    here = _take(_loader(model, shards, 0), 4)
    there = _take(_loader(model, shards, 1), 4)
    for a, b in zip(here, there, strict=True):
        _assert_same(a, b)
        assert all(p.dtype == torch.uint8 for _, p in b["image_groups"])
        with torch.no_grad():
            assert torch.equal(model(**a).unit_losses, model(**b).unit_losses)


def test_pinned_batches_are_pinned_once_each(model, shards, monkeypatch) -> None:
    calls = []

    def pin(self: torch.Tensor) -> torch.Tensor:  # no accelerator here: count, and copy as pinning does
        calls.append(self.numel())
        return self.clone()

    reference = _take(_loader(model, shards, 0), 3)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    for workers in (0, 1):
        calls.clear()
        pinned = _take(_loader(model, shards, workers, pin_memory=True), 3)
        assert len(calls) == 3  # one buffer per batch, not one copy per tensor
        for a, b in zip(reference, pinned, strict=True):
            _assert_same(a, b)
