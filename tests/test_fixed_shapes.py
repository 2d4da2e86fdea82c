"""Fixed-shape batches: the same tensor shapes at every step, one image-encoder call, no host sync, one graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ilt_bench.opcount import DispatchCount

from ilt_core import build_model, load_spec
from ilt_core.text.byte_packing import BytePacking
from ilt_core.text.collator import TextUnits
from ilt_core.text.image_packing import (
    ImagePacking,
    capacity_for,
    first_fit,
    ladder_growth,
    next_capacity,
    position_offset,
    position_table_size,
)
from ilt_core.text.label_packing import LabelPacking
from ilt_core.text.render_cache import images_to_batches

TEXTS = [
    "שלום עולם, זה משפט ראשון של בדיקה.",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "مرحبا بالعالم، هذه جملة للاختبار.",
    "בית הספר נפתח מחר בבוקר, והתלמידים כבר מחכים.",
    "extraordinarily-long-words-are-cut-into-pieces here.",
    "ממשלת ישראל החליטה היום על צעדים חדשים בתחום הכלכלה.",
    "a b c d e f g",
    "שתי מילים",
]


def gpu_path(model):
    """The model with its fast paths off (CPU-only layers): the training path a GPU runs."""
    assert model.set_fast_paths(False) == []
    return model


@pytest.fixture(scope="module")
def model():
    return gpu_path(build_model(load_spec("micro", ["modality_dropout=0.0"]), seed=0))


def units(model, texts):
    return [TextUnits(model.processor.segment(t)) for t in texts]


def fixed_batch(model, texts, rows=4, row_units=48, shapes=None):
    shapes = shapes or model.fixed_shapes(rows=rows, row_units=row_units)
    return model.processor.with_pixels("uint8").collate(units(model, texts), packing=True, shapes=shapes), shapes


def test_packed_images_give_the_vectors_of_one_call_per_width(model):
    """One ViT call over images packed into rows equals today's call per width, to float rounding."""
    encoder = model.image_encoder.eval()
    words = ["שלום ", "עולם, ", "hello ", "a", "extraordinarily-long ", "x", "ממשלת ", "مرحبا "]
    images = model.processor.cache.render_many(words)
    assert len({im.shape[1] for im in images}) >= 3  # several widths, so the test means something
    packed = model.image_packing.__class__(model.image_packing.patch_size, model.image_packing.row_tokens).pack(
        images, count=len(words) + 3
    )
    with torch.no_grad():
        got = encoder.encode_packed(packed.patches, packed.positions, packed.segments, packed.cls_index)
        want = torch.empty(len(words), encoder.hidden_size)
        for idx, pixels in images_to_batches(images):
            want[idx] = encoder(pixels)
    assert got.shape == (len(words) + 3, encoder.hidden_size)
    torch.testing.assert_close(got[: len(words)], want, atol=2e-5, rtol=1e-4)


def test_image_packing_lays_out_patches_positions_and_segments():
    pack = ImagePacking(patch_size=2, row_tokens=8)
    a = np.arange(8, dtype=np.uint8).reshape(2, 4)  # 1 x 2 patches
    b = np.full((2, 2), 9, dtype=np.uint8)  # 1 x 1 patch
    out = pack.pack([a, b], count=3)
    assert out.patches.shape == (pack.rows, 8, 4) and int(out.cls_index.max()) < 8  # both in the first row
    first = int(out.cls_index[0])
    # the first patch of a is its top-left 2x2 block, row-major; positions index the table of width 2
    assert out.patches.view(-1, 4)[first + 1].tolist() == [0, 1, 4, 5]
    assert out.positions.view(-1)[first + 1 : first + 3].tolist() == [position_offset(1, 2), position_offset(1, 2) + 1]
    assert out.positions.view(-1)[first] == 0  # class token
    segments = out.segments.view(-1)
    assert segments[first] == segments[first + 2] != segments[int(out.cls_index[1])]
    assert (segments >= 0).sum() == 3 + 2  # 2 class tokens, 3 patches; the rest is padding
    assert position_table_size(1, 2) == position_offset(1, 3) == 1 + 1 + 2


def test_capacities_are_ladder_steps_at_or_above_the_need():
    assert ladder_growth(True) == 1.25 and ladder_growth(False) == 1.0625  # coarse under compile, fine eager
    steps = [capacity_for(n) for n in range(1, 2000)]
    assert steps[:12] == [1, 2, 3, 4, 5, 7, 7, 9, 9, 12, 12, 12]
    for n, step in enumerate(steps, start=1):
        assert n <= step <= 1.25 * n + 1
    fine = [capacity_for(n, 1.0625) for n in range(1, 2000)]
    assert fine[15:20] == [16, 17, 19, 19, 21]
    for n, step in enumerate(fine, start=1):
        assert n <= step <= 1.0625 * n + 1
    assert len(set(steps)) < len(set(fine)) < 120
    assert len(set(steps)) < 40  # a few shapes in all
    # after a batch that got 40: grow-only keeps it, the eager ladder gives the step of the need alone
    assert next_capacity(10, 40, grow_only=True) == 40 and next_capacity(50, 40, grow_only=True) == 60
    assert next_capacity(10, 40, grow_only=False) == 10 and next_capacity(18, 0, grow_only=False) == 19


def test_capacities_stop_at_what_a_batch_can_need():
    """The ladder's step is cut to the most slots a batch of the configuration can need: a compiled step over
    batches whose labels each fill a row gets one row per position, not the coarse step a quarter above."""
    assert next_capacity(516, 0, grow_only=True) == 568  # the coarse step alone
    assert next_capacity(516, 0, grow_only=True, most=520) == 520
    assert next_capacity(530, 0, grow_only=True, most=520) == 530  # never fewer than needed
    assert next_capacity(100, 520, grow_only=True, most=520) == 520  # grow-only still keeps the largest
    labels = LabelPacking(row_tokens=4, grow_only=True)
    packed = labels.pack([(i, [1, 2, 3, 4]) for i in range(10)], positions=11)
    assert labels.rows == 11 < capacity_for(10) and packed.targets.shape == (11, 4)
    units = BytePacking(row_tokens=3, grow_only=True)
    assert units.pack([[5, 6, 7]] * 10, count=11).input_ids.shape == (11, 3) and capacity_for(10) == 12


def test_first_fit_packs_every_segment_into_the_first_row_with_room():
    rng = np.random.default_rng(0)
    for S in (1, 7, 40):
        lengths = [int(n) for n in rng.integers(1, S + 1, 300)]
        starts = first_fit(lengths, S)
        rows = max(s // S for s in starts) + 1
        filled = np.zeros((rows, S), dtype=int)
        for n, start in zip(lengths, starts, strict=True):
            row, col = divmod(start, S)
            assert col + n <= S  # inside its row
            filled[row, col : col + n] += 1
        assert filled.max() <= 1  # no two segments overlap
        # first fit in decreasing length: a segment opens a row only when no row before had room for it
        free = np.full(rows, S)
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            row = starts[i] // S
            assert not (free[:row] >= lengths[i]).any()
            free[row] -= lengths[i]
    assert first_fit([5, 50, 3], 10) == [10, 0, 15]  # too long for a row: a row of its own, never shared
    assert first_fit([3, 3, 3], 7) == [0, 3, 7]  # equal lengths in the order given
    assert first_fit([2, 4, 2, 4], 6) == [4, 0, 10, 6] and first_fit([], 6) == []


def test_label_rows_hold_one_longest_label(model):
    label_len = model.spec.max_unit_bytes + 1
    assert model.label_stream.row_tokens == -(-label_len // 8) * 8
    batch, shapes = fixed_batch(model, TEXTS)
    targets = batch.decoder_targets
    assert targets.shape[1] == model.label_stream.row_tokens
    assert (targets != -100).float().mean() > 0.5  # rows this short still pack densely


def test_image_packing_takes_the_step_its_images_need_and_drops_none():
    pack = ImagePacking(patch_size=2, row_tokens=6)
    pack.pack([np.zeros((2, 4), np.uint8)])
    assert pack.rows == 1
    many = [np.zeros((2, 8), np.uint8)] * 5  # 5 tokens each: one per row
    out = pack.pack(many)
    assert pack.rows == capacity_for(5, ladder_growth(False)) == 5 and pack.changes == 1
    assert len(set(out.cls_index.tolist())) == 5  # every image placed
    again = ImagePacking(patch_size=2, row_tokens=6).pack(many)  # no history: the same shape for the same batch
    assert again.patches.shape == out.patches.shape


def test_a_batch_gets_the_same_shapes_in_any_run_and_the_dynamic_loss(model):
    model.eval()
    first = model.fixed_shapes(rows=4, row_units=48)
    fixed, _ = fixed_batch(model, TEXTS[:6], shapes=first)
    other = model.fixed_shapes(rows=4, row_units=48)  # another run: other batches before this one
    for texts in (TEXTS[6:], TEXTS[2:5]):
        fixed_batch(model, texts, shapes=other)
    again, _ = fixed_batch(model, TEXTS[:6], shapes=other)
    shapes = [{k: tuple(v.shape) for k, v in b.model_inputs().items() if torch.is_tensor(v)} for b in (fixed, again)]
    assert shapes[0] == shapes[1]
    dynamic = model.processor.collate(units(model, TEXTS[:6]), packing=True, max_units=48)
    with torch.no_grad():
        a, b = model(**dynamic.model_inputs()), model(**fixed.model_inputs())
    assert int(b.num_label_tokens) == a.num_label_tokens
    torch.testing.assert_close(b.loss, a.loss, atol=1e-5, rtol=1e-5)


def test_the_packed_label_stream_gives_the_dynamic_gradients(model):
    """Each prefix reaches its label's first token alone (and positions without a label give it nothing): the
    gradients of every parameter, the latent and decoder mapping included, are the dynamic batch's."""
    model.eval()
    fixed, _ = fixed_batch(model, TEXTS[:6], rows=4, row_units=48)
    assert int((fixed.decoder_prefix == fixed.decoder_targets.numel()).sum()) > 0  # some positions have no label
    dynamic = model.processor.collate(units(model, TEXTS[:6]), packing=True, max_units=48)
    grads = []
    for batch in (dynamic, fixed):
        model.zero_grad()
        model(**batch.model_inputs()).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.zero_grad()
    assert grads[0].keys() == grads[1].keys()
    assert any(n.startswith("decoder_mapping") for n in grads[1])
    for name, want in grads[0].items():
        torch.testing.assert_close(grads[1][name], want, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_unit_bytes_give_the_vectors_of_the_padded_call(model):
    """The bytes encoder reads the units' bytes packed into rows (one block-masked call, positions restarting per
    unit): each real unit's vector is the padded ``(U, T)`` call's, in far fewer token slots."""
    assert model.unit_stream is not None  # micro's BERT bytes encoder takes them, so the tests above cover it too
    fixed, _ = fixed_batch(model, TEXTS[:6])
    U, T = fixed.unit_input_ids.shape
    assert fixed.unit_stream_ids.numel() < 0.7 * U * T
    real = len(fixed.units)
    assert set(fixed.unit_stream_owner.unique().tolist()) == set(range(real)) | {U}  # every unit, padding to U
    encoder = model.bytes_encoder.eval()
    with torch.no_grad():
        packed = encoder.encode_packed(
            fixed.unit_stream_ids,
            fixed.unit_stream_positions,
            fixed.unit_stream_segments,
            fixed.unit_stream_owner,
            units=U,
        )
        padded = encoder(fixed.unit_input_ids, fixed.unit_attention_mask)
    assert packed.shape == padded.shape
    torch.testing.assert_close(packed[:real], padded[:real], atol=1e-5, rtol=1e-5)


def test_byte_packing_lays_out_units_and_drops_none():
    from ilt_core.text.byte_packing import BytePacking

    units = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [], [10, 11]]
    packed = BytePacking(row_tokens=8).pack(units, count=7)
    assert packed.input_ids.shape == (2, 8)
    for i, ids in enumerate(units):
        mine = packed.owner == i
        assert packed.input_ids[mine].tolist() == ids  # each unit's bytes in order, once
        assert packed.positions[mine].tolist() == list(range(len(ids)))
        if ids:  # one segment of one row
            rows = mine.nonzero()[:, 0]
            assert (rows == rows[0]).all() and packed.segments[mine].unique().numel() == 1
    padding = packed.segments == -1
    assert (packed.owner[padding] == 7).all() and (packed.owner[~padding] < 7).all()
    with pytest.raises(ValueError, match="more than a row"):
        BytePacking(row_tokens=4).pack([[1, 2, 3, 4, 5]], count=1)


def test_padding_never_changes_a_texts_loss_under_fixed_shapes(model):
    model.eval()
    alone, _ = fixed_batch(model, TEXTS[:1], rows=2, row_units=48)
    crowd, _ = fixed_batch(model, TEXTS[:1] + TEXTS[3:7], rows=4, row_units=48)
    with torch.no_grad():
        a = model(**alone.model_inputs()).unit_losses[0]
        b = model(**crowd.model_inputs()).unit_losses[0]
    n = len(model.processor.segment(TEXTS[0])) + 1
    torch.testing.assert_close(a[:n], b[:n], atol=1e-4, rtol=1e-4)


def test_the_unit_capacity_follows_the_batch_and_drops_no_unit(model):
    shapes = model.fixed_shapes(rows=4, row_units=48)
    big, _ = fixed_batch(model, TEXTS[:6], shapes=shapes)
    assert shapes.unit_capacity == capacity_for(len(big.units), 1.0625) == big.unit_input_ids.shape[0]
    assert len(big.units) <= big.unit_input_ids.shape[0]  # every distinct unit has its row
    assert big.unit_index.max() < len(big.units)
    small, _ = fixed_batch(model, ["a a a a a"], shapes=shapes)
    assert small.unit_input_ids.shape[0] == capacity_for(len(small.units), 1.0625) < big.unit_input_ids.shape[0]
    assert shapes.changes == 1


def test_fixed_forward_never_syncs_and_its_ops_do_not_grow_with_rows(model):
    model.train()
    counts = []
    for rows, texts in ((2, TEXTS[:2]), (4, TEXTS[:6])):
        batch, _ = fixed_batch(model, texts, rows=rows)
        inputs = batch.model_inputs()
        model(**inputs).loss.backward()  # lazily made state out of the way
        with DispatchCount() as forward:
            loss = model(**inputs).loss
        with DispatchCount() as backward:
            loss.backward()
        assert forward.syncs == 0, dict(forward.sync_ops)
        counts.append((forward.ops, backward.ops))
    assert counts[0] == counts[1]


def test_dynamic_forward_does_sync(model):
    """The counter sees a sync where one happens (so the zero above means something)."""
    batch = model.processor.collate(units(model, TEXTS[:3]), packing=True, max_units=48)
    with torch.no_grad(), DispatchCount() as count:
        model(**batch.model_inputs())
    assert count.syncs > 0


def test_the_fixed_training_forward_is_one_graph_and_compiled_grads_equal_eager():
    torch._dynamo.reset()
    no_dropout = [
        "bytes_encoder.config.hidden_dropout_prob=0.0",
        "bytes_encoder.config.attention_probs_dropout_prob=0.0",
    ]
    model = gpu_path(build_model(load_spec("micro", ["modality_dropout=0.0", *no_dropout]), seed=0)).train()
    batch, _ = fixed_batch(model, TEXTS[:6])
    inputs = batch.model_inputs()
    explained = torch._dynamo.explain(model)(**inputs)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, [r.reason for r in explained.break_reasons]
    model.zero_grad()
    eager = model(**inputs).loss
    eager.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    loss = compiled(**inputs).loss
    loss.backward()
    torch.testing.assert_close(loss, eager, atol=1e-5, rtol=1e-5)
    for name, grad in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)
    torch._dynamo.reset()


def test_a_fixed_batch_counts_the_flops_of_its_dynamic_twin(model):
    """The FLOPs a batch is counted for (``ilt bench``, Trainer's ``total_flos``) do not depend on its layout: packed
    images count as many image tokens as per-width groups, as a Batch and as its model inputs."""
    from ilt_core.modeling.flops import FlopCounter, count_ilt_batch, ilt_counter

    fixed, _ = fixed_batch(model, TEXTS[:6])
    dynamic = model.processor.collate(units(model, TEXTS[:6]), packing=True, max_units=48)
    counted = []
    for batch in (fixed, fixed.model_inputs(), dynamic):
        counter: FlopCounter = ilt_counter(model)
        count_ilt_batch(counter, model, batch)
        counted.append({name: part.flops() for name, part in counter.parts.items()})
    assert counted[0]["image_encoder"] > 0
    for name in counted[2]:
        assert counted[0][name] == pytest.approx(counted[2][name]), name
        assert counted[1][name] == pytest.approx(counted[2][name]), name


def test_grow_only_capacities_never_shrink_and_keep_the_loss(model):
    """``grow_only`` (``ilt train --torch_compile``): a small batch after a large one keeps the large one's shapes
    (a compiled step meets no new shape), and its loss is still the dynamic batch's; the ladder shrinks back."""
    model.eval()
    big, small = TEXTS[:6], TEXTS[6:7]
    for grow in (False, True):
        shapes = model.fixed_shapes(rows=4, row_units=48, grow_only=grow)
        first, _ = fixed_batch(model, big, shapes=shapes)
        second, _ = fixed_batch(model, small, shapes=shapes)
        dims = [{k: tuple(v.shape) for k, v in b.model_inputs().items() if torch.is_tensor(v)} for b in (first, second)]
        if grow:
            assert dims[0] == dims[1] and shapes.changes == shapes.images.changes == shapes.label_stream.changes == 0
        else:
            assert dims[0]["unit_input_ids"][0] > dims[1]["unit_input_ids"][0]  # the ladder took a smaller step
    dynamic = model.processor.collate(units(model, small), packing=True, max_units=48)
    with torch.no_grad():
        a, b = model(**dynamic.model_inputs()), model(**second.model_inputs())
    torch.testing.assert_close(b.loss, a.loss, atol=1e-5, rtol=1e-5)
