"""Training data at corpus scale: sources (file, glob, folder, every format, compressed), the Arrow cache,
bad input, memory held in Arrow rather than Python objects, packing from lengths, parquet recipes.

Corpora are a few hundred Hebrew lines written here, in tmp_path; the cache goes to tmp_path too.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import os
import pickle
import random
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import micro_spec

from ilt_core.errors import ILTError
from ilt_core.evaluation import text_blocks
from ilt_core.text.collator import TextUnits, pack_rows
from ilt_core.text.segmentation import segment
from ilt_core.training import blocks as training_blocks
from ilt_core.training.arguments import DataTrainingArguments, ILTArguments, parse_train_args
from ilt_core.training.blocks import BlockStats, make_blocks, pack_offsets
from ilt_core.training.dataset import RowDataset, RowSampler, pack_blocks, rows_from_units
from ilt_core.training.prepare import build_datasets, resolve_sources
from ilt_core.training.readers import TextStats
from ilt_core.training.rows import BlockReader, RowOffsets, _Files
from ilt_core.training.sources import resolve_source
from ilt_core.training.texts import load_texts

WORDS = "הילד המורה השכנה קורא כותב מחפש ספר חדש מכתב ארוך שיר יפה בבית בספרייה ליד הים היום".split()


def texts_for(n: int, seed: int = 0) -> list[str]:
    """n Hebrew lines of 3-40 words (some longer than a block), no blank ones."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + "." for _ in range(n)]


TEXTS = texts_for(240)


def write_txt(path: Path, lines: list[str], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in lines))
    return path


def write_jsonl(path: Path, lines: list[str], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as handle:
        for i, line in enumerate(lines):
            handle.write(json.dumps({"id": i, "text": line}, ensure_ascii=False) + "\n")
    return path


def write_csv(path: Path, lines: list[str], delimiter: str = ",", opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["id", "text"])
        writer.writerows([i, line] for i, line in enumerate(lines))
    return path


def write_parquet(path: Path, lines: list[str], row_group_size: int = 50) -> Path:
    pq.write_table(pa.table({"id": list(range(len(lines))), "text": lines}), path, row_group_size=row_group_size)
    return path


def shards(lines: list[str], n: int) -> list[list[str]]:
    size = -(-len(lines) // n)
    return [lines[i : i + size] for i in range(0, len(lines), size)]


def read(spec: str | Path, cache: Path, column: str | None = None, skip: bool = False) -> tuple[list[str], TextStats]:
    source = resolve_source(str(spec), "--train_file", column, skip)
    ds, stats = load_texts(source, cache, skip_bad_records=skip)
    return list(ds["text"]), stats


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["txt", "txt.gz", "jsonl", "jsonl.bz2", "json-list", "csv", "csv.xz", "tsv", "parquet"],
)
def test_every_format_and_compression_reads_the_same_texts(tmp_path, name) -> None:
    lines = TEXTS[:60]
    with_blanks = lines[:10] + ["", "   "] + lines[10:]
    opener = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}.get(name.rsplit(".", 1)[-1], open)
    path = tmp_path / f"corpus.{name}"
    if name.startswith("txt"):
        write_txt(path, with_blanks, opener)
    elif name.startswith("jsonl"):
        write_jsonl(path, with_blanks, opener)
    elif name == "json-list":
        path = tmp_path / "corpus.json"
        path.write_text(json.dumps([{"text": t} for t in with_blanks], ensure_ascii=False), encoding="utf-8")
    elif name.startswith(("csv", "tsv")):
        write_csv(path, with_blanks, "\t" if name == "tsv" else ",", opener)
    else:
        write_parquet(path, with_blanks)
    got, stats = read(path, tmp_path / "cache")
    assert got == lines
    assert (stats.texts, stats.blank, stats.records) == (60, 2, 62)


def test_a_glob_and_a_folder_of_shards_read_every_shard_in_order(tmp_path) -> None:
    folder = tmp_path / "shards"
    (folder / "zz").mkdir(parents=True)  # files are read in the order of their sorted paths
    parts = shards(TEXTS, 4)
    for i, part in enumerate(parts):
        write_parquet((folder / "zz" if i == 3 else folder) / f"train-{i:05d}.parquet", part)
    (folder / "README.md.txt.bak").write_text("not data")  # not a data suffix: ignored in a folder
    (folder / ".hidden.parquet").write_bytes(b"not parquet")  # hidden: ignored
    got, stats = read(folder, tmp_path / "cache")
    assert got == TEXTS and stats.texts == len(TEXTS)
    got, _ = read(f"{folder}/train-*.parquet", tmp_path / "cache")
    assert got == [t for part in parts[:3] for t in part]
    got, _ = read(f"{folder}/**/*.parquet", tmp_path / "cache")
    assert got == TEXTS
    for i, part in enumerate(shards(TEXTS, 2)):
        write_txt(tmp_path / f"t{i}.txt", part)
    assert read(f"{tmp_path}/t*.txt", tmp_path / "cache")[0] == TEXTS


def test_sources_that_cannot_be_read_are_one_clear_line(tmp_path) -> None:
    write_txt(tmp_path / "a.txt", TEXTS[:3])
    write_jsonl(tmp_path / "b.jsonl", TEXTS[:3])
    (tmp_path / "empty").mkdir()
    cases = [
        (f"{tmp_path}/nothing-*.parquet", r"--train_file .*nothing-\*\.parquet: the pattern matches no file"),
        (str(tmp_path / "missing.txt"), r"missing\.txt: no such file"),
        (str(tmp_path / "empty"), r"empty: a folder without data files"),
        (f"{tmp_path}/[ab].*", r"mixes formats \(json, text\)"),
    ]
    for spec, pattern in cases:
        with pytest.raises(ILTError, match=pattern) as info:
            resolve_source(spec, "--train_file", None)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and line (exit 2), or skipped and counted
# ------------------------------------------------------------------------------------------------


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str, int]]:
    """name -> (file, what the error must say, bad records in it)."""
    out: dict[str, tuple[Path, str, int]] = {}
    txt = tmp_path / "bad.txt"
    txt.write_bytes("".join(f"{t}\n" for t in TEXTS[:3]).encode() + b"caf\xe9 au lait\n" + TEXTS[3].encode() + b"\n")
    out["txt"] = (txt, r"bad\.txt line 4: not UTF-8 \(byte 3", 1)
    jsonl = write_jsonl(tmp_path / "bad.jsonl", TEXTS[:4])
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    lines[2] = '{"text": "unterminated'
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out["jsonl"] = (jsonl, r"bad\.jsonl line 3: not valid JSON", 1)
    nocol = tmp_path / "nocol.jsonl"
    nocol.write_text(
        json.dumps({"text": TEXTS[0]}, ensure_ascii=False) + "\n" + json.dumps({"body": "x"}) + "\n", encoding="utf-8"
    )
    out["no-column"] = (nocol, r"nocol\.jsonl line 2: no field 'text' \(--text_column_name\); its fields are 'body'", 1)
    folder = tmp_path / "pq"
    folder.mkdir()
    write_parquet(folder / "a-0.parquet", TEXTS[:50])
    data = write_parquet(folder / "a-1.parquet", TEXTS[50:100]).read_bytes()
    (folder / "a-1.parquet").write_bytes(data[: len(data) - 20])  # footer cut short
    out["parquet"] = (folder, r"a-1\.parquet: not a readable parquet file", 0)
    return out


def test_bad_records_stop_the_cli_with_one_line_and_exit_2(tmp_path, capsys) -> None:
    from ilt_core.cli.main import main

    spec = tmp_path / "micro.yaml"
    spec.write_text(yaml.safe_dump(micro_spec("bytes-only"), allow_unicode=True), encoding="utf-8")
    cases = {name: (str(path), pattern) for name, (path, pattern, _) in bad_inputs(tmp_path).items()}
    cases["glob"] = (f"{tmp_path}/none/*.parquet", r"none/\*\.parquet: the pattern matches no file")
    for name, (train_file, pattern) in cases.items():
        argv = ["train", "--model_spec", str(spec), "--train_file", train_file, "--output_dir", str(tmp_path / "o")]
        argv += ["--cache_dir", str(tmp_path / "cache"), "--max_steps", "1", "--report_to", "none"]
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("ilt: error")]
        assert len(lines) == 1 and "Traceback" not in err, (name, err[-2000:])
        import re

        assert re.search(pattern, lines[0]), (name, lines[0])
        assert name == "glob" or "--skip_bad_records" in lines[0]
    assert not (tmp_path / "o").exists()


def test_skip_bad_records_skips_and_counts_them_even_from_the_cache(tmp_path) -> None:
    cache = tmp_path / "cache"
    bad = bad_inputs(tmp_path)
    for name, (path, pattern, count) in bad.items():
        got, stats = read(path, cache, skip=True)
        assert got and all(t in TEXTS for t in got), name
        if name == "parquet":
            assert got == TEXTS[:50] and stats.bad_files == 1
        else:
            assert stats.bad_records == count and stats.first_bad and str(path) in stats.first_bad
        # cached by the skipping run: without --skip_bad_records it is still an error, not silently clean
        with pytest.raises(ILTError, match=pattern):
            read(path, cache)

    # in the run: counted in the log lines and the metrics
    data = DataTrainingArguments(train_file=str(bad["jsonl"][0]), cache_dir=str(cache), skip_bad_records=True)
    sources = resolve_sources(data, need_train=True, need_eval=False)
    prepared = build_datasets(sources, 32, 24, data, ILTArguments())
    assert prepared.metrics["train_bad_records"] == 1
    assert any("skipped 1 bad records" in line and "line 3" in line for line in prepared.summary)


# ------------------------------------------------------------------------------------------------
# The cache: a second run maps nothing
# ------------------------------------------------------------------------------------------------


def cache_state(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_a_second_run_with_the_same_data_and_settings_reuses_the_cache(tmp_path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, part in enumerate(shards(TEXTS, 3)):
        write_parquet(folder / f"{i}.parquet", part)
    cache = tmp_path / "cache"
    data = DataTrainingArguments(train_file=str(folder), cache_dir=str(cache), validation_split_percentage=10)

    def prepare(block_size: int = 24) -> tuple:
        calls = training_blocks.MAP_CALLS
        sources = resolve_sources(data, need_train=True, need_eval=True)
        prepared = build_datasets(sources, 32, block_size, data, ILTArguments())
        return prepared, training_blocks.MAP_CALLS - calls

    first, mapped = prepare()
    assert mapped > 0 and first.metrics["train_preprocessing_cached"] == 0
    state = cache_state(cache / "ilt-texts")
    assert sum(name.startswith("texts-") and name.endswith(".arrow") for name in state) == 3
    second, mapped = prepare()
    assert mapped == 0, "the second run segmented texts again"
    assert cache_state(cache / "ilt-texts") == state  # no file written or rewritten
    assert second.metrics["train_preprocessing_cached"] == 1 and second.metrics["eval_preprocessing_cached"] == 1
    assert [second.train[i] for i in range(len(second.train))] == [first.train[i] for i in range(len(first.train))]

    # another block size maps again; a changed shard is read again, the others come from the cache
    _, mapped = prepare(block_size=16)
    assert mapped > 0
    write_parquet(folder / "1.parquet", TEXTS[:5])
    os.utime(folder / "1.parquet", ns=(1, 1))
    sources = resolve_sources(data, need_train=True, need_eval=False)
    texts, stats = load_texts(sources.train, cache)
    assert stats.cached_files == 2 and len(texts) == 80 + 5 + 80


# ------------------------------------------------------------------------------------------------
# Memory: Arrow, not Python objects
# ------------------------------------------------------------------------------------------------


def test_the_training_dataset_is_arrow_backed_and_reads_rows_lazily(tmp_path) -> None:
    path = write_txt(tmp_path / "t.txt", TEXTS)
    data = DataTrainingArguments(train_file=str(path), cache_dir=str(tmp_path / "cache"))
    prepared = build_datasets(resolve_sources(data, True, False), 32, 24, data, ILTArguments())
    rows = prepared.train
    assert isinstance(rows.blocks, datasets.Dataset)
    assert rows.blocks.cache_files and all(
        Path(f["filename"]).parent == tmp_path / "cache" / "ilt-texts" for f in rows.blocks.cache_files
    )
    # the blocks live in a memory-mapped Arrow file; the rows' int64 offsets in another, read by pread
    assert all(isinstance(t, datasets.table.MemoryMappedTable) for t in _tables(rows.blocks.data))
    assert isinstance(rows.offsets, RowOffsets) and Path(rows.offsets.path).parent == tmp_path / "cache" / "ilt-texts"
    lengths = rows.blocks.data.column("units").combine_chunks().value_lengths().to_numpy()
    assert np.array_equal(rows.offsets.to_numpy(), pack_offsets(lengths, 24))
    held = {name: type(value).__name__ for name, value in vars(rows).items()}
    assert held == {
        "offsets": "RowOffsets",
        "stats": "BlockStats",
        "reader": "BlockReader",
        "_blocks": "NoneType",  # no open dataset: it would keep the record batches' headers mapped
        "_reopen": "bytes",
    }, held
    assert len(rows._reopen) < 10_000
    assert not any(isinstance(v, (list, dict, np.ndarray)) for v in vars(rows).values())
    # the reader holds nine file positions per record batch, nothing per row
    layouts = rows.reader.layouts.values()
    assert sum(layout.nbytes for layout, _, _ in layouts) == 9 * 8 * sum(len(layout) for layout, _, _ in layouts)
    assert sum(len(layout) for layout, _, _ in layouts) < rows.stats.blocks


def _arrow_rows(blocks, start: int, stop: int) -> list[TextUnits]:
    """Blocks ``start:stop`` as pyarrow reads them (no pread): what a row read must equal."""
    part = blocks.data.table.slice(start, stop - start)
    units, complete = part.column("units").to_pylist(), part.column("complete").to_pylist()
    return [TextUnits(u, c) for u, c in zip(units, complete, strict=True)]


def _blocks_over_files(tmp_path: Path, n_texts: int = 2400) -> datasets.Dataset:
    """Blocks of ``n_texts`` texts mapped by 2 processes (2 Arrow files) in record batches of 100 blocks."""
    path = write_txt(tmp_path / "t.txt", texts_for(n_texts, seed=3) + ["א" * 5 + " " + "ב" * 3000])
    texts, _ = load_texts(resolve_source(str(path), "--train_file", None), tmp_path / "cache")
    blocks, _ = make_blocks(texts, 32, 8, num_workers=2)
    return blocks


def test_a_row_read_by_pread_equals_the_arrow_rows(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(training_blocks, "MAP_BATCH_SIZE", 50)  # many record batches: reads cross their bounds
    blocks = _blocks_over_files(tmp_path)
    assert len(blocks.cache_files) == 2
    reader = BlockReader.of(blocks)
    assert reader is not None and len(reader) == len(blocks) and len(reader.segments) == 2
    assert all(len(layout) > 5 for layout, _, _ in reader.layouts.values())
    n = len(blocks)
    rng = random.Random(0)
    spans = [(0, 1), (0, n), (n - 1, n), (7, 7)] + [(a, min(n, a + rng.randint(1, 300))) for a in range(0, n, 97)]
    for start, stop in spans:
        assert reader.read(start, stop) == _arrow_rows(blocks, start, stop), (start, stop)
    # a DataLoader worker gets the dataset pickled: it reopens the files by path
    rows = pack_blocks(blocks, 8)
    clone = pickle.loads(pickle.dumps(rows))
    assert clone.reader is not None and [clone[i] for i in range(0, len(rows), 41)] == [
        rows[i] for i in range(0, len(rows), 41)
    ]
    # a slice of the dataset (not at its start) and a selection of its columns read the same
    part = blocks.select(range(n // 3, n // 3 + 400)).select_columns(["units", "complete"])
    sliced = BlockReader.of(part)
    assert sliced is not None and sliced.read(0, 400) == _arrow_rows(part, 0, 400)
    # what the reader cannot place in the files (an indices mapping, a table in memory) is read through datasets
    shuffled = blocks.shuffle(seed=0)
    assert BlockReader.of(shuffled) is None
    in_memory = datasets.Dataset.from_dict(blocks[:50])
    assert BlockReader.of(in_memory) is None
    offsets = pack_offsets(np.asarray(shuffled["length"], dtype=np.int32), 8)
    rows = RowDataset(shuffled, offsets, BlockStats())
    assert rows.reader is None
    assert rows[3] == [
        TextUnits(u, c)
        for u, c in zip(
            shuffled[offsets[3] : offsets[4]]["units"], shuffled[offsets[3] : offsets[4]]["complete"], strict=True
        )
    ]


def test_a_row_read_reads_only_that_rows_bytes_and_maps_no_file_pages(tmp_path, monkeypatch) -> None:
    import gc
    import re

    blocks = _blocks_over_files(tmp_path, n_texts=16_000)  # about 4 MB of blocks
    rows = pack_blocks(blocks, 8)
    read_bytes: list[int] = []
    pread = _Files.pread

    def counting(self, path: str, size: int, position: int) -> bytes:
        read_bytes.append(size)
        return pread(self, path, size, position)

    monkeypatch.setattr(_Files, "pread", counting)
    order = list(range(len(rows)))
    random.Random(1).shuffle(order)
    for i in order[:200]:
        read_bytes.clear()
        row = rows[i]
        utf8 = sum(len(u.encode("utf-8")) for b in row for u in b.units)
        units = sum(len(b.units) for b in row)
        # the offsets (16 bytes), then per record batch: list offsets, string offsets, the strings, the bits
        assert sum(read_bytes) <= 16 + 2 * (4 * (len(row) + 1) + 4 * (units + 1) + utf8 + len(row) // 8 + 2), i

    def rss_file() -> int:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"^RssFile:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024

    # a fresh process's view: the blocks files opened again (packing read their columns through the old map)
    files, offsets, stats = [f["filename"] for f in blocks.cache_files], rows.offsets.path, rows.stats
    assert sum(Path(f).stat().st_size for f in files) > 3_000_000
    del rows, blocks
    gc.collect()
    fresh = datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files])
    rows = RowDataset(fresh, RowOffsets.open(offsets), stats)
    rows[order[0]]
    before = rss_file()
    for i in order:  # every row, at random: through a memory map most of the file would be mapped (64 KiB a fault)
        rows[i]
    assert rss_file() - before < 512 * 1024, rss_file() - before


def test_the_row_sampler_is_trainers_order_as_one_tensor() -> None:
    import tracemalloc

    import torch
    from accelerate.data_loader import SeedableRandomSampler

    n = 5000
    sampler = RowSampler(n, seed=42)
    orders = []
    for epoch in range(3):
        # Trainer's sampler, as accelerate prepares it: seeded --data_seed (else --seed) + epoch
        reference = SeedableRandomSampler(data_source=range(n), data_seed=42)
        reference.set_epoch(epoch)
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert orders[-1] == list(reference), epoch
        assert sorted(orders[-1]) == list(range(n))  # a permutation of the rows
    assert orders[0] != orders[1] != orders[2]  # another order each epoch
    again = RowSampler(n, seed=42)
    assert list(again) == orders[0] and list(again) == orders[1]  # from the seed alone; a pass moves an epoch on
    assert list(RowSampler(n, seed=43)) != orders[0]
    assert sampler.permutation().dtype == torch.int32 and len(sampler) == n  # 4 bytes a row

    # a million rows: no list of a million Python ints (36 MB) at any time, only the tensor (4 MB, untraced)
    big = RowSampler(1_000_000, seed=0)
    tracemalloc.start()
    try:
        total = sum(1 for _ in big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 1_000_000 and peak < 2_000_000, peak


def test_ilt_trainer_orders_rows_with_the_row_sampler_seeded_from_the_arguments() -> None:
    from types import SimpleNamespace

    from ilt_core.training.trainer import ILTTrainer

    rows = rows_from_units([["א "] * 5] * 30, 4)
    for data_seed, seed in ((None, 7), (3, 7)):
        args = SimpleNamespace(train_sampling_strategy="random", data_seed=data_seed, seed=seed)
        sampler = ILTTrainer._get_train_sampler(SimpleNamespace(args=args, train_dataset=rows))
        assert isinstance(sampler, RowSampler) and len(sampler) == len(rows)
        assert sampler.seed == (data_seed if data_seed is not None else seed)


def _tables(table) -> list:
    blocks = getattr(table, "blocks", None)
    if isinstance(table, datasets.table.ConcatenationTable):
        return [t for row in blocks for t in row]
    return [table]


def test_render_cache_bytes_is_a_training_setting() -> None:
    from ilt_core.text.render_cache import DEFAULT_MAX_BYTES

    _, _, ilt, _ = parse_train_args(["--model_spec", "tiny", "--output_dir", "x"])
    assert ilt.render_cache_bytes == DEFAULT_MAX_BYTES
    _, _, ilt, _ = parse_train_args(["--model_spec", "tiny", "--output_dir", "x", "--render_cache_bytes", "1000"])
    assert ilt.render_cache_bytes == 1000


# ------------------------------------------------------------------------------------------------
# Packing from lengths = today's packing
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [2, 7, 24, 64])
def test_pack_offsets_equals_pack_rows(capacity) -> None:
    rng = np.random.default_rng(capacity)
    lengths = rng.integers(1, capacity, size=3000)  # a block of n units takes n + 1 positions <= capacity
    rows = pack_rows((lengths + 1).tolist(), capacity)
    offsets = pack_offsets(lengths, capacity)
    assert [list(range(offsets[r], offsets[r + 1])) for r in range(len(offsets) - 1)] == rows
    assert pack_offsets(np.zeros(0, dtype=np.int64), capacity).tolist() == [0]


@pytest.mark.parametrize("packing", [True, False])
def test_rows_from_the_cache_equal_todays_blocks_and_packing(tmp_path, packing) -> None:
    path = write_txt(tmp_path / "t.txt", TEXTS[:100] + ["", "  "] + TEXTS[100:])
    data = DataTrainingArguments(train_file=str(path), cache_dir=str(tmp_path / "cache"), max_train_samples=250)
    prepared = build_datasets(resolve_sources(data, True, False), 32, 24, data, ILTArguments(packing=packing))
    # today's path: every text segmented, split by text_blocks, the first 250 blocks, pack_rows over them
    blocks = [b for t in TEXTS for b in text_blocks(segment(t, 32), 23)][:250]
    rows = pack_rows([len(b.units) + 1 for b in blocks], 24) if packing else [[i] for i in range(len(blocks))]
    expected = [[blocks[i] for i in row] for row in rows]
    got = [prepared.train[i] for i in range(len(prepared.train))]
    assert got == expected and list(prepared.train.rows) == expected
    assert prepared.train.stats.blocks == 250 and prepared.train.num_units == sum(len(b.units) for b in blocks)


# ------------------------------------------------------------------------------------------------
# ilt data prepare --format parquet
# ------------------------------------------------------------------------------------------------


def test_data_prepare_writes_parquet_shards_with_a_text_column(tmp_path, monkeypatch, capsys) -> None:
    from ilt_data import recipes

    from ilt_core.cli.main import main

    splits = {"train": TEXTS[:100], "validation": TEXTS[100:120], "test": TEXTS[120:130]}

    def fake_prepare(name, out_dir=None, progress=True, archive=None):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return {split: write_txt(out / f"{split}.txt", lines) for split, lines in splits.items()}

    monkeypatch.setattr(recipes, "prepare", fake_prepare)
    out = tmp_path / "he-news"
    assert main(["data", "prepare", "he-news", "--out", str(out), "--format", "parquet", "--shards", "3"]) == 0
    printed = capsys.readouterr().out
    for split, lines in splits.items():
        files = sorted((out / "parquet" / split).glob("*.parquet"))
        assert [f.name for f in files] == [f"{split}-{i:05d}-of-00003.parquet" for i in range(3)]
        assert pq.read_schema(files[0]).names == ["text"]
        assert [t for f in files for t in pq.read_table(f)["text"].to_pylist()] == lines
        assert str(out / "parquet" / split) in printed
    got, _ = read(out / "parquet" / "train", tmp_path / "cache")
    assert got == splits["train"]
    assert main(["data", "prepare", "he-news", "--out", str(out), "--format", "parquet", "--shards", "0"]) == 2
    assert "--shards 0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# The benchmark, on tiny corpora
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_data_scale_quick(tmp_path) -> None:
    import math
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "out.json"
    command = [sys.executable, str(root / "benchmarks" / "bench_data_scale.py"), "--quick", "--formats", "parquet"]
    command += ["--work", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    rows = report["rows"]
    assert [(r["size_mb"], r["run"], r["cached"]) for r in rows] == [
        (0.1, 1, False),
        (0.1, 2, True),
        (0.3, 1, False),
        (0.3, 2, True),
    ]
    for r in rows:
        for key in ("first_step_s", "peak_rss_steps_mib", "peak_rss_mib", "corpus_bytes", "units", "rows"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, key
        assert (r["units_per_s"] is not None) == (r["run"] == 1)
    small, big = report["corpora"]
    assert small["bytes"] >= 0.1e6 and big["bytes"] >= 0.3e6 and big["respelled_words"] > small["respelled_words"]
    assert set(report["goals"]["parquet"]) >= {"first_step_goal_met", "rss_goal_met", "peak_rss_steps_ratio"}
    assert "| 0.3 MB | parquet | 2 | cache |" in done.stdout


def test_dataset_name_goes_through_load_dataset_and_the_same_cached_map(tmp_path) -> None:
    # a local folder stands for a hub dataset: datasets.load_dataset reads it the same way, offline
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", TEXTS[:40])
    write_jsonl(folder / "validation.jsonl", TEXTS[40:50])
    data = DataTrainingArguments(dataset_name=str(folder), cache_dir=str(tmp_path / "cache"), max_train_samples=30)
    sources = resolve_sources(data, need_train=True, need_eval=True)
    prepared = build_datasets(sources, 32, 24, data, ILTArguments())
    blocks = [b for t in TEXTS[:40] for b in text_blocks(segment(t, 32), 23)][:30]
    assert [b for row in prepared.train.rows for b in row] == blocks
    assert prepared.validation.stats.texts == 10
    calls = training_blocks.MAP_CALLS
    build_datasets(resolve_sources(data, True, True), 32, 24, data, ILTArguments())
    assert training_blocks.MAP_CALLS == calls  # the hub dataset's Arrow cache takes the map's cache files too


def test_preparing_the_data_holds_python_memory_flat_in_the_corpus_size(tmp_path, monkeypatch) -> None:
    import tracemalloc

    monkeypatch.setattr(training_blocks, "MAP_BATCH_SIZE", 1000)  # both corpora span several map batches

    def peaks(n_texts: int) -> tuple[int, int, int, int]:
        path = write_txt(tmp_path / f"t{n_texts}.txt", texts_for(n_texts, seed=n_texts))
        source = resolve_source(str(path), "--train_file", None)
        tracemalloc.start()
        try:
            texts, _ = load_texts(source, tmp_path / "cache")
            read = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            blocks, _ = make_blocks(texts, 32, 24)
            mapped = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            rows = pack_blocks(blocks, 24)
            packed = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return path.stat().st_size, read, mapped, packed // rows.stats.blocks

    small, large = peaks(4_000), peaks(16_000)  # about 1 and 4 MB of text
    growth = large[0] - small[0]
    # a list of the texts would take more than a byte of Python memory per byte of text
    assert large[1] - small[1] < growth // 4, (small, large)
    assert large[2] - small[2] < growth // 4, (small, large)
    assert large[3] <= 64  # packing: bytes of Python memory per block (numpy lengths and offsets)


def test_a_corrupt_row_group_is_named_or_skipped_and_its_rows_counted(tmp_path) -> None:
    path = write_parquet(tmp_path / "rg.parquet", TEXTS[:150], row_group_size=50)
    column = pq.ParquetFile(path).metadata.row_group(1).column(1)  # the text column of row group 1
    data = bytearray(path.read_bytes())
    start = column.data_page_offset + 8
    data[start : start + 64] = bytes((b * 7 + 13) % 256 for b in data[start : start + 64])
    path.write_bytes(bytes(data))  # the footer still reads: only reading the row group finds it
    with pytest.raises(ILTError, match=r"rg\.parquet: row group 1 of 3 \(rows 50\.\.99\) does not read"):
        read(path, tmp_path / "cache")
    got, stats = read(path, tmp_path / "cache", skip=True)
    assert got == TEXTS[:50] + TEXTS[100:150]
    assert (stats.records, stats.bad_records, stats.texts) == (150, 50, 100)


def test_eval_alone_holds_out_validation_texts_without_preparing_the_training_set(tmp_path) -> None:
    path = write_txt(tmp_path / "t.txt", TEXTS[:100])
    data = DataTrainingArguments(
        train_file=str(path), cache_dir=str(tmp_path / "cache"), validation_split_percentage=10
    )
    sources = resolve_sources(data, need_train=False, need_eval=True)
    prepared = build_datasets(sources, 32, 24, data, ILTArguments())
    assert prepared.train is None and prepared.validation.stats.texts == 10
    assert not any(line.startswith("train: 90 texts") for line in prepared.summary)
