"""`ilt train --streaming`: shards per rank and worker, a reproducible order, statistics from workers, exact resume.

The stream is checked on its own first (a micro model's processor, a few text shards written here),
then through `run_training` on the micro spec of `test_training.py` for a handful of steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import yaml
from helpers import CountingRenderer, hebrew_sentences, losses, training_spec

from ilt_core.errors import ILTError
from ilt_core.text.row_collator import UnitCollator
from ilt_core.training.readers import TextStats
from ilt_core.training.run import run_training
from ilt_core.training.shards import TextStream, rank_shards, reader_shards, shard_order
from ilt_core.training.sources import resolve_source
from ilt_core.training.stream_dataset import StreamingRows
from ilt_core.training.stream_loader import StreamingLoader

SHARDS = 4
PER_SHARD = 15


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stream")
    folder = root / "shards"
    folder.mkdir()
    for i in range(SHARDS):
        # numbered: every text of the corpus differs from every other
        texts = [f"{t} ({PER_SHARD * i + j})" for j, t in enumerate(hebrew_sentences(PER_SHARD, offset=PER_SHARD * i))]
        if i == 1:  # one long text: split into several blocks, some of which open a batch
            texts.insert(3, " ".join(hebrew_sentences(9, offset=200)))
        (folder / f"part-{i}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    spec = root / "micro.yaml"
    spec.write_text(yaml.safe_dump(training_spec(), allow_unicode=True, sort_keys=False), encoding="utf-8")
    return {"folder": folder, "spec": spec, "root": root}


@pytest.fixture(scope="module")
def processor():
    from ilt_core.modeling.model import build_model

    return build_model(training_spec(), seed=0).processor


def stream_of(folder: Path) -> TextStream:
    source = resolve_source(str(folder), "--train_file", None)
    return TextStream(source.description, source.column, "--train_file", source.files)


def rows_of(processor, folder: Path, **kwargs) -> StreamingRows:
    options = {"packing": True, "seed": 0, **kwargs}
    return StreamingRows(stream_of(folder), processor, 24, 3, **options)


def take(loader: StreamingLoader, n: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def texts_in(batch: dict) -> int:
    return int(batch["position_ids"].eq(0).logical_and(batch["attention_mask"].bool()).sum())


def batch_key(batch: dict) -> tuple:
    return tuple(batch["unit_index"].flatten().tolist()), tuple(batch["unit_input_ids"].flatten().tolist())


# ------------------------------------------------------------------------------------------------
# Who reads what
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_shards", "world"), [(8, 2), (7, 2), (3, 4), (1, 1), (5, 5)])
def test_ranks_and_workers_split_the_shards_without_overlap(num_shards, world) -> None:
    seen: list[int] = []
    strides = set()
    for rank in range(world):
        mine, stride = rank_shards(num_shards, rank, world)
        strides.add(stride)
        for workers in (1, 2, 3):
            split = [s for w in range(workers) for s in reader_shards(mine, w, workers)]
            assert sorted(split) == sorted(mine)  # every worker's share, together: the rank's shards, once each
        seen += mine
    if num_shards >= world:
        assert sorted(seen) == list(range(num_shards)) and strides == {1}  # each shard on exactly one rank
        sizes = [len(rank_shards(num_shards, r, world)[0]) for r in range(world)]
        assert max(sizes) - min(sizes) == (0 if num_shards % world == 0 else 1)
    else:  # fewer shards than ranks: every rank reads all of them and keeps one text in `world`
        assert strides == {world} and seen == list(range(num_shards)) * world
    orders = {tuple(shard_order(range(num_shards), 0, epoch, 0)) for epoch in range(6)}
    assert (len(orders) > 1) == (num_shards > 2)  # the order changes with the epoch
    assert shard_order(range(num_shards), 0, 3, 0) == shard_order(range(num_shards), 0, 3, 0)


# ------------------------------------------------------------------------------------------------
# The stream
# ------------------------------------------------------------------------------------------------


def test_stream_covers_every_text_in_fitting_rows_and_is_reproducible(processor, shards) -> None:
    sink = UnitCollator(processor, 24)
    loader = StreamingLoader(rows_of(processor, shards["folder"]), sink)
    batches = take(loader, 30)
    for b in batches:
        assert b["unit_index"].shape[0] <= 3 and b["unit_index"].shape[1] <= 24
        assert "ilt_stream" not in b
    # the first epoch holds every text once: 4 x 15 sentences and the long text, which ends once
    total = sum(texts_in(b) for b in batches)
    assert total > SHARDS * PER_SHARD + 1  # 30 batches go past one epoch (the stream cycles)
    assert sink.stats["batches"] == 30 and sink.stats["texts"] >= total
    # the same seed gives the same stream; another seed another shard order
    again = take(StreamingLoader(rows_of(processor, shards["folder"]), UnitCollator(processor, 24)), 30)
    assert [batch_key(b) for b in batches] == [batch_key(b) for b in again]
    other = take(StreamingLoader(rows_of(processor, shards["folder"], seed=1), UnitCollator(processor, 24)), 30)
    assert [batch_key(b) for b in batches] != [batch_key(b) for b in other]


def test_workers_render_the_batches_and_their_statistics_reach_the_main_process(processor, shards) -> None:
    # two workers read two shards each; the main process's collator learns what the workers counted
    sink = UnitCollator(processor, 24)
    dataset = rows_of(processor, shards["folder"], num_workers=2)
    loader = StreamingLoader(dataset, sink)
    batches = take(loader, 8)
    assert dataset.num_workers == 2 and loader.num_workers == 2
    assert sink.stats["batches"] == 8
    assert sink.stats["units"] == sum(int(b["attention_mask"].sum()) - texts_in(b) for b in batches)
    assert sink.stats["texts"] == sum(texts_in(b) for b in batches) and sink.stats["seconds"] > 0
    assert sink.data_fingerprint != UnitCollator(processor, 24).data_fingerprint
    # a single file gets one worker, whatever was asked
    single = rows_of(processor, shards["folder"] / "part-0.txt", num_workers=3)
    assert single.num_workers == 1 and "of 3 asked" in single.describe()


@pytest.mark.parametrize("inband", [True, False])
def test_a_batch_packed_for_the_trip_from_a_worker_comes_back_equal(processor, shards, monkeypatch, inband) -> None:
    import numpy as np
    import torch

    from ilt_core.training import transfer
    from ilt_core.training.transfer import pack_tensors, unpack_tensors

    if not inband:  # every batch larger than the limit: one shared-memory tensor
        monkeypatch.setattr(transfer, "INBAND_MAX_BYTES", 0)
    batch = take(StreamingLoader(rows_of(processor, shards["folder"]), UnitCollator(processor, 24)), 1)[0]
    gray = torch.rand(3, 1, 8, 5).expand(-1, 3, -1, -1)  # float images: one channel, viewed 3 times
    levels = torch.randint(0, 256, (2, 1, 8, 7), dtype=torch.uint8)  # uint8 images, as training sends them
    batch["image_groups"] = [
        (torch.arange(3), gray),
        (torch.arange(1), torch.rand(1, 3, 8, 7)),
        (torch.arange(2), levels),
    ]
    packed = pack_tensors(batch, shared=True)  # as a worker packs it
    buffer, _ = packed["ilt_packed_tensors"]
    # in-band: a numpy array, pickled into the pipe (no shared-memory segment, no file descriptor to fetch);
    # above the limit: packed straight into a shared-memory segment, which pickling then sends without a copy
    assert isinstance(buffer, np.ndarray) if inband else isinstance(buffer, torch.Tensor) and buffer.is_shared()
    if not inband:
        assert not pack_tensors(batch)["ilt_packed_tensors"][0].is_shared()  # the main process's own: private
    plain = sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor))
    images = (3 * 8 * 5 + 3 * 8 * 7) * 4 + 2 * 8 * 7
    assert buffer.nbytes <= plain + 3 * 8 + images + 8 * 13  # the gray channel once, 8-byte alignment
    assert sum(isinstance(v, torch.Tensor) for v in packed.values()) == 0  # one buffer, inside a tuple
    back = unpack_tensors(packed)
    assert back.keys() == batch.keys()
    for key, value in batch.items():
        if key == "image_groups":
            for (i, p), (j, q) in zip(value, back[key], strict=True):
                assert torch.equal(i, j) and torch.equal(p, q) and q.dtype == p.dtype and q.shape == p.shape
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, back[key]) and back[key].dtype == value.dtype, key
        else:  # the batch's flags (fixed shapes)
            assert value == back[key], key


def same_batches(a: list[dict], b: list[dict]) -> bool:
    """Every tensor of every batch equal, word images included."""
    import torch

    def flat(batch: dict) -> list:
        out = []
        for key in sorted(batch):
            value = batch[key]
            out += [t for pair in value for t in pair] if key == "image_groups" else [value]
        return out

    if len(a) != len(b):
        return False
    for x, y in zip(map(flat, a), map(flat, b), strict=True):
        if len(x) != len(y):
            return False
        for u, v in zip(x, y, strict=True):
            if not (torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v):
                return False
    return True


def test_two_workers_share_the_word_images_they_draw_and_make_the_same_batches(shards, monkeypatch) -> None:
    import multiprocessing

    from ilt_core.text.processor import ILTProcessor
    from ilt_core.training import stream_loader

    drawn = multiprocessing.get_context("fork").Value("i", 0)

    class Counting(CountingRenderer):
        """Counts what every process draws (CountingRenderer's own count stays in each process)."""

        def render(self, unit: str):
            with drawn.get_lock():
                drawn.value += 1
            return super().render(unit)

    def run() -> tuple[list[dict], int]:
        processor = ILTProcessor(Counting())
        drawn.value = 0
        loader = StreamingLoader(rows_of(processor, shards["folder"], num_workers=2), UnitCollator(processor, 24))
        batches = take(loader, 16)
        assert processor.cache.shared is None  # the main process draws on its own again
        return batches, drawn.value

    shared, drawn_shared = run()
    monkeypatch.setattr(stream_loader, "SHARED_MIN_BYTES", 2**62)  # a cache too small to share: one each
    alone, drawn_alone = run()
    assert same_batches(shared, alone)
    # the shards share most of their words, drawn once for both workers rather than once by each (97 against
    # 129 here): without the store each worker draws exactly its own distinct words; two workers that miss the
    # same word at the same moment both draw it, so how many fewer depends on their timing, but never none
    assert 0 < drawn_shared < drawn_alone, (drawn_shared, drawn_alone)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_restarted_from_its_state_continues_with_the_same_batches(processor, shards, workers) -> None:
    reference = take(
        StreamingLoader(rows_of(processor, shards["folder"], num_workers=workers), UnitCollator(processor, 24)), 12
    )
    for k in (3, 7):  # odd: the resumed round robin starts at the second worker
        first = StreamingLoader(rows_of(processor, shards["folder"], num_workers=workers), UnitCollator(processor, 24))
        take(first, k)
        state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint holds it
        resumed = StreamingLoader(
            rows_of(processor, shards["folder"], num_workers=workers), UnitCollator(processor, 24)
        )
        resumed.load_state_dict(state, "test")
        after = take(resumed, 12 - k)
        assert [batch_key(b) for b in after] == [batch_key(b) for b in reference[k:]], k


def test_a_state_saved_with_another_layout_restarts_the_stream_at_the_next_epoch(processor, shards) -> None:
    first = StreamingLoader(rows_of(processor, shards["folder"], num_workers=2), UnitCollator(processor, 24))
    take(first, 5)
    state = first.state_dict()
    other = StreamingLoader(rows_of(processor, shards["folder"]), UnitCollator(processor, 24))  # one reader, not 2
    with pytest.warns(UserWarning, match=r"num_readers 2 -> 1.*restarts at epoch 1"):
        other.load_state_dict(state, "ckpt")
    assert other.positions == {0: (1, 0, 0, 0)}
    fresh_epoch_1 = StreamingLoader(rows_of(processor, shards["folder"]), UnitCollator(processor, 24))
    fresh_epoch_1.positions = {0: (1, 0, 0, 0)}
    assert [batch_key(b) for b in take(other, 3)] == [batch_key(b) for b in take(fresh_epoch_1, 3)]


def test_resume_skips_texts_without_segmenting_them(processor, shards, monkeypatch) -> None:
    import ilt_core.training.stream_dataset as stream_dataset

    loader = StreamingLoader(rows_of(processor, shards["folder"]), UnitCollator(processor, 24))
    take(loader, 10)
    state = loader.state_dict()
    calls = []
    real = stream_dataset.segment
    monkeypatch.setattr(stream_dataset, "segment", lambda text, n: calls.append(text) or real(text, n))
    resumed = StreamingLoader(rows_of(processor, shards["folder"]), UnitCollator(processor, 24))
    resumed.load_state_dict(state, "test")
    take(resumed, 1)
    # only the texts of the one batch made after the position are segmented (a batch holds <= 3 x 23 units)
    assert 0 < len(calls) <= 3 * 23 // 5 + 2


def test_two_ranks_read_disjoint_texts(processor, shards) -> None:
    seen = []
    for rank in (0, 1):
        dataset = rows_of(processor, shards["folder"], rank=rank, world_size=2)
        texts = set()
        for block, _ in islice(dataset._blocks(0, (0, 0, 0, 0), TextStats("x")), 200):  # > 2 epochs of 2 shards
            if block.complete:
                texts.add("".join(block.units))
        seen.append(texts)
    # each rank read its own 2 shards (30 short texts and, on one rank, the long one's last block)
    assert {len(seen[0]), len(seen[1])} == {2 * PER_SHARD, 2 * PER_SHARD + 1}
    assert not seen[0] & seen[1]


# ------------------------------------------------------------------------------------------------
# Through `ilt train`
# ------------------------------------------------------------------------------------------------


def stream_args(shards: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--model_spec", str(shards["spec"]),
        "--train_file", str(shards["folder"]),
        "--streaming",
        "--output_dir", str(out),
        "--block_size", "24",
        "--per_device_train_batch_size", "3",
        "--learning_rate", "3e-3",
        "--logging_steps", "1",
        "--report_to", "none",
        "--disable_tqdm", "true",
        "--seed", "0",
        *extra,
    ]  # fmt: skip


def test_streaming_needs_max_steps_and_says_so_in_one_line(shards, tmp_path) -> None:
    with pytest.raises(ILTError, match=r"--streaming: pass --max_steps N") as info:
        run_training(stream_args(shards, tmp_path / "x"))
    assert "\n" not in str(info.value) and not (tmp_path / "x").exists()
    with pytest.raises(ILTError, match=r"--max_train_samples 10: not with --streaming"):
        run_training(stream_args(shards, tmp_path / "x", "--max_steps", "2", "--max_train_samples", "10"))


def test_held_out_texts_are_the_first_of_the_stream_and_never_trained_on(shards, tmp_path, capsys) -> None:
    from ilt_core.training import streaming

    result = run_training(
        stream_args(shards, tmp_path / "h", "--max_steps", "2", "--max_eval_samples", "4", "--save_strategy", "no")
    )
    out = capsys.readouterr().out
    assert "validation: the first 4 texts of the training stream" in out
    assert result.eval_metrics["eval_bytes"] > 0
    stream = result.trainer.train_dataset.stream
    assert stream.held_out == {0: 4}
    first = set(streaming.first_texts(stream, 4)[0])
    trained = set()
    for block, _ in islice(result.trainer.train_dataset._blocks(0, (0, 0, 0, 0), TextStats("x")), 200):
        trained.add("".join(block.units))
    every = {t for f in sorted(shards["folder"].iterdir()) for t in f.read_text(encoding="utf-8").splitlines()}
    assert len(first) == 4 and not first & trained
    assert {t for t in every if len(t) < 80} - first <= trained  # the other short texts all are trained on


@pytest.mark.parametrize("workers", ["0", "2"])
def test_interrupted_streaming_run_resumes_with_the_same_losses(shards, tmp_path, workers) -> None:
    """Bit for bit, with the micro preset as it is (word images, modality and hidden dropout on): the resumed run
    draws the same dropout masks from the restored random state as the unbroken run did."""
    from transformers import TrainerCallback

    args = ("--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no", "--dataloader_num_workers", workers)
    args += ("--model_spec", "micro", "--lr_scheduler_type", "constant", "--seed", "7")
    reference = losses(run_training(stream_args(shards, tmp_path / "a", *args)).log_history)
    assert sorted(reference) == [1, 2, 3, 4]

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(stream_args(shards, tmp_path / "b", *args), callbacks=[Interrupt()])
    position = json.loads((tmp_path / "b" / "checkpoint-2" / "data_position-rank0.json").read_text())
    assert position["batches"] == 2
    resumed = run_training(stream_args(shards, tmp_path / "b", *args, "--resume_from_checkpoint", "last"))
    after = losses(resumed.log_history)
    assert {step: after[step] for step in (3, 4)} == {step: reference[step] for step in (3, 4)}
    # the resumed run made only the batches after the checkpoint
    assert resumed.trainer.stream_loader.batches == 4 and resumed.trainer.data_collator.stats["batches"] == 2


def test_help_says_a_single_file_gets_one_worker(capsys) -> None:
    from ilt_core.training.run import parse_train_args

    with pytest.raises(SystemExit):
        parse_train_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "a single file gets one worker" in shown and "--streaming" in shown


def test_a_hub_dataset_streams_shard_by_shard(shards, tmp_path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    hub = tmp_path / "hub"  # a local folder stands for the hub (load_dataset reads it the same way)
    hub.mkdir()
    for i in range(3):
        texts = [f"{t} ({i}.{j})" for j, t in enumerate(hebrew_sentences(10, offset=10 * i))]
        pq.write_table(pa.table({"id": list(range(10)), "body": texts}), hub / f"train-{i}.parquet")
    argv = stream_args(shards, tmp_path / "hub-run", "--max_steps", "2", "--save_strategy", "no")
    argv[argv.index("--train_file") : argv.index("--train_file") + 2] = ["--dataset_name", str(hub)]
    result = run_training(argv + ["--text_column_name", "body", "--dataloader_num_workers", "2"])
    out = capsys.readouterr().out
    assert "(3 shards)" in out and "rank 0: 3 of 3 shards, 2 DataLoader workers" in out
    assert result.train_metrics["train_samples"] > 0 and result.trainer.data_collator.stats["batches"] == 2


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_bad_record_in_the_stream_is_one_line_or_skipped_and_counted(shards, tmp_path, workers) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(2):
        lines = [f"{t} ({i}.{j})".encode() for j, t in enumerate(hebrew_sentences(6, offset=6 * i))]
        if i == 1:
            lines.insert(2, b"\xff\xfe not utf-8")
        (folder / f"part-{i}.txt").write_bytes(b"\n".join(lines) + b"\n")
    argv = stream_args(shards, tmp_path / "bad-run", "--max_steps", "3", "--save_strategy", "no")
    argv[argv.index("--train_file") + 1] = str(folder)
    argv += ["--dataloader_num_workers", workers, "--per_device_train_batch_size", "1"]
    with pytest.raises(ILTError, match=r"part-1\.txt line 3: not UTF-8") as info:
        run_training(argv)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    result = run_training(argv + ["--skip_bad_records"])
    assert result.train_metrics["train_bad_records"] == 1


def test_validation_file_is_read_as_in_the_map_style_path(shards, tmp_path, capsys) -> None:
    validation = tmp_path / "dev.txt"
    validation.write_text("\n".join(hebrew_sentences(5, offset=300)) + "\n", encoding="utf-8")
    argv = stream_args(shards, tmp_path / "v", "--max_steps", "1", "--save_strategy", "no")
    result = run_training(argv + ["--validation_file", str(validation), "--cache_dir", str(tmp_path / "cache")])
    assert "(--validation_file): 5 texts" in capsys.readouterr().out
    assert result.eval_metrics["eval_samples"] >= 1 and result.eval_metrics["eval_bytes"] > 0
    assert result.trainer.train_dataset.stream.held_out == {}  # nothing of the stream held out


def test_warm_text_reading_loads_what_the_first_parquet_filter_loads():
    """Workers are forked after ``warm_text_reading()``: their first parquet read then imports nothing more
    (pyarrow.compute's first call imports pandas, ~0.2 s a worker)."""
    code = (
        "import sys, pyarrow as pa\n"
        "from ilt_core.training import readers as td\n"
        "td.warm_text_reading()\n"
        "before = set(sys.modules)\n"
        "kept = td._non_blank(pa.array(['x', ' ', None, 'y z'], type=pa.string()))\n"
        "assert kept.to_pylist() == ['x', 'y z'], kept\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
