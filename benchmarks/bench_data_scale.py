"""Training data at corpus scale: does `ilt train` start as fast, and stay as small, on 1 GB as on 10 MB?

    .venv/bin/python benchmarks/bench_data_scale.py --out benchmarks/results/bench_data_scale.json
    .venv/bin/python benchmarks/bench_data_scale.py --sizes 1 4 --steps 20      # a small run
    .venv/bin/python benchmarks/bench_data_scale.py --quick                      # smoke run (tiny corpora)
    .venv/bin/python benchmarks/bench_data_scale.py --sizes 1000 --formats parquet --keep-caches
    .venv/bin/python benchmarks/bench_data_scale.py --row-reads /tmp/ilt-bench-data-scale/cache-1000mb-parquet

Corpora (:func:`ilt_bench.corpora.make_corpus`): Hebrew lines drawn at random from the he-news and he-mishnah
recipes (fetched from the package registries by :mod:`ilt_data.recipes`), a share of each line's words (``--respell``,
default 10%) respelled at random (a letter replaced or inserted), so that the vocabulary, and with it the
render cache's work, grows with the corpus. Each size (``--sizes``, MB of UTF-8: 10, 100 and 1000 by
default) is written once as one ``.txt`` and as ``--shards`` parquet shards with a ``text`` column
(:func:`ilt_data.shards.write_parquet_shards`), under ``--work``, and reused by later invocations.

Each (size, format) is trained twice in a fresh process: run 1 with an empty cache (``--cache_dir``
under ``--work``), run 2 with the cache run 1 left. Each run trains a small model (the tiny preset
with every backbone narrowed, images on) for ``--steps`` optimizer steps through
:func:`ilt_core.training.run.run_training` (what ``ilt train`` runs) and reports:

- ``first_step_s``: seconds from launching the process to the end of the first optimizer step
  (interpreter start, imports, reading and preprocessing or loading the cache, model, step 1); for
  run 2, the fastest of run 2 and ``--timing-repeats`` more 1-step runs on the same cache;
- ``peak_rss_steps_mib``: the peak resident memory over steps 1..``--steps`` (the kernel's high-water
  mark, reset when training begins); ``peak_rss_mib``: over the whole process; ``rss_step1_mib`` and
  ``rss_last_step_mib``: resident memory by kind (``Anon``: heap and tensors; ``File``: mapped files
  and libraries; ``Shmem``) after step 1 and after the last step, to tell what grows;
- ``reading_s`` / ``preprocessing_s``: turning the files into Arrow texts, and segmenting, blocking
  and packing them (``datasets.map`` with ``--workers`` processes); ``units_per_s`` and ``mb_per_s``
  over both (run 1; run 2 loads the cache).

``--row-reads CACHE`` measures instead what reading 300 random rows of cached blocks adds to RSS, by
way of reading (each in its own process): through the memory map (``datasets``, as ``RowDataset``
read rows before; ``pyarrow`` alone on the same map; ``mmap-random``: the files mapped by Python's
``mmap`` with ``madvise(MADV_RANDOM)``, read by pyarrow) and by ``os.pread`` (what it does now).

Goals (issue 13), per format: run 2 on the largest size reaches its first step within +20% of the
smallest size's run 2 (and of its run 1), and its peak RSS over the steps stays within +15%.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (ilt_bench imports it); see ilt_bench.common

from ilt_bench import common  # noqa: E402
from ilt_bench.corpora import SMALL_MODEL, make_corpus  # noqa: E402
from ilt_bench.machine import rss_parts_mib  # noqa: E402
from ilt_bench.marks import StepMarks  # noqa: E402

RSS_GOAL = 1.15
FIRST_STEP_GOAL = 1.20


# ---- one run (in a child process) ---------------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Train once and measure (runs in its own process: its memory is its own)."""

    from ilt_core.training import run as training_run

    marks: dict[str, Any] = {}
    build = training_run.build_datasets

    def measured_build(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        prepared = build(*args, **kwargs)
        marks["data_s"] = time.perf_counter() - start
        marks["data"] = dict(prepared.metrics)
        marks["rows"] = len(prepared.train)
        return prepared

    training_run.build_datasets = measured_build  # to read what preparing the data found, and its time

    argv = [
        "--model_spec", "tiny", "--set", *SMALL_MODEL,
        "--train_file", spec["train_file"],
        "--do_train",
        "--output_dir", spec["output_dir"],
        "--cache_dir", spec["cache_dir"],
        "--preprocessing_num_workers", str(spec["workers"]),
        "--block_size", str(spec["block_size"]),
        "--per_device_train_batch_size", str(spec["batch_size"]),
        "--max_steps", str(spec["steps"]),
        *common.QUIET_TRAINING_ARGS,
    ]  # fmt: skip
    try:
        training_run.run_training(argv, callbacks=[StepMarks(marks, spec["launched"], spec["steps"], parts=True)])
    except Exception as exc:  # after the measured steps (e.g. saving): report what was measured
        if "peak_rss_steps_mib" not in marks:
            raise
        marks["error_after_steps"] = f"{type(exc).__name__}: {exc}"[:300]
    marks["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return marks


def run_one(args: argparse.Namespace, train_file: str, cache_dir: Path, label: str, steps: int) -> dict[str, Any]:
    spec = {
        "train_file": train_file,
        "cache_dir": str(cache_dir),
        "output_dir": str(args.work / "out"),
        "workers": args.workers,
        "block_size": args.block_size,
        "batch_size": args.batch_size,
        "steps": steps,
        "launched": time.time(),
    }
    return common.run_child([sys.executable, __file__, "--child", json.dumps(spec)], f"{label}: training")


# ---- row reads: what reading rows at random adds to RSS, by way of reading ------------------------


def _blocks_files(cache: Path) -> list[str]:
    """The largest blocks dataset cached under ``cache`` (``datasets.map``'s ``cache-<fingerprint>*.arrow``)."""
    groups: dict[str, list[Path]] = {}
    for path in sorted((cache / "ilt-texts").glob("cache-*.arrow")):
        groups.setdefault(path.name.split("_")[0], []).append(path)
    if not groups:
        raise SystemExit(f"--row-reads {cache}: no cached blocks under {cache / 'ilt-texts'} (run with --keep-caches)")
    return [str(p) for p in max(groups.values(), key=lambda ps: sum(p.stat().st_size for p in ps))]


def row_read_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Read ``reads`` random rows of 1-2 blocks one way (its own process: its own mappings)."""
    import mmap

    import datasets
    import pyarrow as pa

    from ilt_core.training.rows import BlockReader

    files = _blocks_files(Path(spec["cache"]))
    blocks = datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files])
    blocks = blocks.select_columns(["units", "complete"])
    rng = random.Random(spec["seed"])
    starts = [rng.randrange(len(blocks) - 2) for _ in range(spec["reads"])]
    spans = [(a, a + 1 + rng.randint(0, 1)) for a in starts]
    reader, table = BlockReader.of(blocks), blocks.data.table
    if spec["way"] == "mmap-random":  # the files mapped by Python's mmap, madvise(MADV_RANDOM), read by pyarrow
        maps = [mmap.mmap(os.open(f, os.O_RDONLY), 0, access=mmap.ACCESS_READ) for f in files]
        for m in maps:
            m.madvise(mmap.MADV_RANDOM)
        parts = [pa.ipc.open_stream(pa.py_buffer(m)).read_all() for m in maps]
        table = pa.concat_tables(parts).select(["units", "complete"])
    read = {
        "datasets": lambda a, b: blocks[a:b],  # what RowDataset did: a memory-mapped datasets.Dataset
        "pyarrow": lambda a, b: table.slice(a, b - a).to_pylist(),  # the same map, through pyarrow alone
        "mmap-random": lambda a, b: table.slice(a, b - a).to_pylist(),
        "pread": lambda a, b: reader.read(a, b),  # what RowDataset does now
    }[spec["way"]]
    before = rss_parts_mib()
    for a, b in spans:
        read(a, b)
    after = rss_parts_mib()
    size = sum(Path(f).stat().st_size for f in files)
    return {
        "way": spec["way"],
        "reads": spec["reads"],
        "blocks_bytes": size,
        "file_mib": round(after["File"] - before["File"], 1),
        "anon_mib": round(after["Anon"] - before["Anon"], 1),
    }


def row_reads(cache: Path, reads: int, seed: int) -> list[dict[str, Any]]:
    out = []
    for way in ("datasets", "pyarrow", "mmap-random", "pread"):
        spec = json.dumps({"cache": str(cache), "reads": reads, "seed": seed, "way": way})
        r = common.run_child([sys.executable, __file__, "--row-read-child", spec], f"row reads ({way})")
        out.append(r)
        print(
            f"{way}: {reads} random rows of 1-2 blocks ({r['blocks_bytes'] / 1e6:,.0f} MB of blocks): "
            f"file-backed RSS +{r['file_mib']:.1f} MiB ({r['file_mib'] * 1024 / reads:,.0f} KiB a row), "
            f"anonymous +{r['anon_mib']:.1f} MiB",
            flush=True,
        )
    return out


# ---- the table ------------------------------------------------------------------------------


def summarize(corpus: dict[str, Any], fmt: str, run: int, r: dict[str, Any]) -> dict[str, Any]:
    d = r["data"]
    reading, prep = d.get("train_reading_seconds", 0.0), d.get("train_preprocessing_seconds", 0.0)
    first = run == 1
    return {
        "size_mb": corpus["size_mb"],
        "format": fmt,
        "run": run,
        "cached": bool(d.get("train_preprocessing_cached")),
        "corpus_bytes": corpus["bytes"],
        "texts": corpus["lines"],
        "units": d.get("train_units"),
        "rows": r["rows"],
        "reading_s": reading,
        "preprocessing_s": prep,
        "units_per_s": d["train_units"] / (reading + prep) if first and reading + prep > 0 else None,
        "mb_per_s": corpus["bytes"] / 1e6 / (reading + prep) if first and reading + prep > 0 else None,
        "data_s": r["data_s"],
        "first_step_s": r["first_step_s"],
        "peak_rss_steps_mib": r["peak_rss_steps_mib"],
        "peak_rss_mib": r["peak_rss_mib"],
        "steps_s": r["steps_s"],
        "hwm_reset": r["hwm_reset"],
        "rss_step1_mib": r.get("rss_step1_mib"),
        "rss_last_step_mib": r.get("rss_last_step_mib"),
        "first_step_runs_s": r.get("first_step_runs_s", [r["first_step_s"]]),
        **({"error_after_steps": r["error_after_steps"]} if "error_after_steps" in r else {}),
    }


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fmt in sorted({r["format"] for r in rows}):
        mine = [r for r in rows if r["format"] == fmt]
        small, large = min(r["size_mb"] for r in mine), max(r["size_mb"] for r in mine)
        if small == large:
            continue
        pick = {(r["size_mb"], r["run"]): r for r in mine}
        if (large, 2) not in pick or (small, 2) not in pick:
            continue
        big, ref, ref1 = pick[(large, 2)], pick[(small, 2)], pick[(small, 1)]
        out[fmt] = {
            "sizes_mb": [small, large],
            "first_step_ratio_vs_small_cached": big["first_step_s"] / ref["first_step_s"],
            "first_step_ratio_vs_small_first": big["first_step_s"] / ref1["first_step_s"],
            "peak_rss_steps_ratio": big["peak_rss_steps_mib"] / ref["peak_rss_steps_mib"],
            "peak_rss_ratio": big["peak_rss_mib"] / ref["peak_rss_mib"],
            "first_step_goal_met": big["first_step_s"] <= FIRST_STEP_GOAL * ref["first_step_s"],
            "rss_goal_met": big["peak_rss_steps_mib"] <= RSS_GOAL * ref["peak_rss_steps_mib"],
        }
    return out


def _parts(r: dict[str, Any]) -> str:
    first, last = r.get("rss_step1_mib"), r.get("rss_last_step_mib")
    if not first or not last:
        return "-"
    return f"{first['Anon']:,.0f} / {first['File']:,.0f} -> {last['Anon']:,.0f} / {last['File']:,.0f} MiB"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| corpus | format | run | read + preprocess | units/s | MB/s | time to step 1 | peak RSS, steps | peak RSS, all "
        "| anon / file RSS, step 1 -> last |"
    )
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["size_mb"], r["format"], r["run"])):
        prep = "cache" if r["run"] == 2 else f"{r['reading_s']:.1f} + {r['preprocessing_s']:.1f} s"
        ups = f"{r['units_per_s']:,.0f}" if r["units_per_s"] else "-"
        mbs = f"{r['mb_per_s']:.2f}" if r["mb_per_s"] else "-"
        lines.append(
            f"| {r['size_mb']:g} MB | {r['format']} | {r['run']} | {prep} | {ups} | {mbs} | {r['first_step_s']:.1f} s "
            f"| {r['peak_rss_steps_mib']:,.0f} MiB | {r['peak_rss_mib']:,.0f} MiB | {_parts(r)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        type=float,
        nargs="+",
        default=[10, 100, 1000],
        help="corpus sizes in MB, run in this order (the table is sorted by size)",
    )
    p.add_argument("--formats", nargs="+", choices=("txt", "parquet"), default=["txt", "parquet"])
    p.add_argument("--shards", type=int, default=8, help="parquet shards per corpus")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    p.add_argument("--workers", type=int, default=2, help="--preprocessing_num_workers")
    p.add_argument("--batch-size", type=int, default=4, help="rows per step")
    p.add_argument("--block-size", type=int, default=32, help="units per row (positions)")
    p.add_argument(
        "--timing-repeats",
        type=int,
        default=2,
        help="after run 2, this many 1-step runs on the same cache: time to step 1 is the fastest of them all "
        "(the machine is shared; the fastest is the least disturbed)",
    )
    p.add_argument("--respell", type=float, default=0.1, help="share of each line's words respelled at random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/ilt-bench-data-scale"), help="corpora and caches")
    p.add_argument("--keep-caches", action="store_true", help="keep the Arrow caches after the runs")
    p.add_argument("--quick", action="store_true", help="smoke run: corpora of 0.1 and 0.3 MB, 2 steps, no repeats")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument(
        "--row-reads",
        type=Path,
        metavar="CACHE",
        help="instead of training: the RSS that reading rows at random adds, through a memory map (datasets, "
        "pyarrow) and by pread, on the blocks cached in CACHE (e.g. WORK/cache-1000mb-parquet after --keep-caches)",
    )
    p.add_argument("--reads", type=int, default=300, help="--row-reads: rows read")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--row-read-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if common.answer_as_child(args, {"child": child, "row_read_child": row_read_child}):
        return 0
    if args.row_reads:
        common.write_json(args.out, {"row_reads": row_reads(args.row_reads, args.reads, args.seed)})
        return 0
    if args.quick:
        args.sizes, args.steps, args.shards, args.timing_repeats = [0.1, 0.3], 2, 3, 0
    if args.steps < 1:
        p.error("--steps: at least 1")

    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    corpora = []
    for size in args.sizes:
        common.log(f"corpus {size:g} MB: writing (or reusing) under {args.work}")
        corpora.append(make_corpus(size, args.work, args.shards, args.respell, args.seed))
        c = corpora[-1]
        common.log(f"corpus {size:g} MB: {c['lines']:,} lines, {c['respelled_words']:,} respelled words")
    for corpus in corpora:
        for fmt in args.formats:
            cache = args.work / f"cache-{corpus['size_mb']:g}mb-{fmt}"
            shutil.rmtree(cache, ignore_errors=True)  # run 1 starts cold
            for run in (1, 2):
                label = f"{corpus['size_mb']:g} MB {fmt} run {run}"
                common.log(f"{label}: training {args.steps} steps")
                result = run_one(args, corpus[fmt], cache, label, args.steps)
                if run == 2:
                    times = [result["first_step_s"]]
                    for i in range(args.timing_repeats):
                        times.append(run_one(args, corpus[fmt], cache, f"{label} repeat {i + 1}", 1)["first_step_s"])
                    result["first_step_runs_s"] = times
                    result["first_step_s"] = min(times)
                rows.append(summarize(corpus, fmt, run, result))
                r = rows[-1]
                common.log(
                    f"{label}: first step at {r['first_step_s']:.1f} s, peak RSS {r['peak_rss_steps_mib']:.0f} MiB "
                    f"(steps) / {r['peak_rss_mib']:.0f} MiB (all), data {r['data_s']:.1f} s"
                )
                common.write_json(args.out, {"rows": rows, "corpora": corpora, "goals": goals(rows)})
            if not args.keep_caches:
                shutil.rmtree(cache, ignore_errors=True)
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"},
        "cpus": os.cpu_count(),
        "corpora": corpora,
        "rows": rows,
        "goals": goals(rows),
    }
    common.write_json(args.out, report)
    print(table(rows))
    for fmt, g in report["goals"].items():
        print(
            f"{fmt}: {g['sizes_mb'][1]:g} MB cached vs {g['sizes_mb'][0]:g} MB cached: time to step 1 x"
            f"{g['first_step_ratio_vs_small_cached']:.2f} (goal <= {FIRST_STEP_GOAL}, "
            f"{'met' if g['first_step_goal_met'] else 'NOT met'}), peak RSS over the steps x"
            f"{g['peak_rss_steps_ratio']:.2f} (goal <= {RSS_GOAL}, {'met' if g['rss_goal_met'] else 'NOT met'})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
