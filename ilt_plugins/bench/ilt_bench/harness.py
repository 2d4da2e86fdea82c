"""``ilt bench``: component mixes against byte-level and subword baselines, same data, seed and budget.

    ilt bench                                   every mix in benchmarks/mixes/ on he-news
    ilt bench --mixes tiny,baseline-bytes --budget-seconds 60
    ilt bench --train-file a.txt --eval-file b.txt --eval-lines 200 --out results/

For each mix (a YAML under ``benchmarks/mixes/``, see :mod:`ilt_bench.mixes`) a fresh process
(:mod:`ilt_bench.run`) builds the model, trains it for the budget and measures bits-per-byte,
throughput, FLOPs per byte and MFU, peak memory, parameters, generation speed and the data pipeline's
share of step time. The report (:mod:`ilt_bench.report`) goes to ``benchmarks/results/<data>/``:
``results.json``, ``results.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ilt_bench.machine import machine_info, package_versions
from ilt_core.errors import ILTError
from ilt_core.files import sha256_file
from ilt_core.plugins.registry import get_registry
from ilt_core.text.lines import read_text_lines

DEFAULT_DATA = "he-news"
#: The reference's generation protocol: greedy, batch 4, prompts of 16 words, 32 new words, each to 32 bytes.
REFERENCE_GENERATION = {"batch_size": 4, "prompt_units": 16, "new_units": 32, "byte_cap": 32}


def resolve_data(args: argparse.Namespace) -> dict[str, Any]:
    """Train/eval files: ``--train-file/--eval-file``, or the ``--data`` recipe's train/validation split."""
    if bool(args.train_file) != bool(args.eval_file):
        raise ILTError("--train-file and --eval-file go together: give both, or neither for --data")
    if args.train_file:
        train, evaluation = Path(args.train_file), Path(args.eval_file)
        name = args.data_name or train.stem
    else:
        files = get_registry().data_recipe(args.data).prepare(progress=True)
        train, evaluation = files["train"], files["validation"]
        name = args.data_name or args.data
    counts = {}
    for flag, path in (("--train-file", train), ("--eval-file", evaluation)):
        # strict UTF-8: a bad byte or a NUL is one line naming the file and line, before any mix starts
        counts[flag] = len(read_text_lines(path, flag).texts)
        if not counts[flag]:
            raise ILTError(f"{flag} {path}: no text in it (every line is blank); expected one text per line")
    eval_texts = counts["--eval-file"]
    if args.eval_lines:
        eval_texts = min(eval_texts, args.eval_lines)
    return {
        "name": name,
        "train_file": str(train),
        "eval_file": str(evaluation),
        "train_sha256": sha256_file(train),
        "eval_sha256": sha256_file(evaluation),
        "eval_texts": eval_texts,
    }


def pick_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ILTError(f"--device {choice}: no CUDA device is available here; use --device cpu or auto")
    return choice


def run_worker(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one mix in a fresh Python process (so its peak memory is its own) and read its result."""
    with tempfile.TemporaryDirectory(prefix="ilt-bench-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job = {**job, "result": str(result_path)}
        job_path.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        try:
            proc = subprocess.run([sys.executable, "-m", "ilt_bench.run", str(job_path)], env=env, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
        if result_path.is_file():
            return json.loads(result_path.read_text(encoding="utf-8"))
    error = f"timed out after {timeout:.0f} s" if code is None else f"the worker process exited with status {code}"
    mix = job["mix"]
    return {"name": mix["name"], "kind": mix["kind"], "status": "error", "error": error, "spec": mix["spec"]}


def _command_line(args: argparse.Namespace) -> str:
    """The command that made this report, for the reader who wants to run it again."""
    if getattr(args, "argv", None) is not None:
        return " ".join(["ilt bench", *args.argv])
    if Path(sys.argv[0]).name == "ilt":
        return " ".join(["ilt", *sys.argv[1:]])
    return "ilt bench (called from Python: see settings)"


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every selected mix and write the report; returns the report mapping."""
    import torch

    from ilt_bench.mixes import resolve_mixes
    from ilt_bench.report import write_report
    from ilt_core.modeling.flops import measure_matmul_peak

    if args.budget_seconds < 0 or (args.budget_bytes or 0) < 0:
        raise ILTError("--budget-seconds and --budget-bytes must be >= 0")
    if not args.budget_seconds and not args.budget_bytes:
        raise ILTError("--budget-seconds 0 needs --budget-bytes N: a mix must stop somewhere")
    mixes = resolve_mixes(args.mixes, args.mix_dir)  # validates every mix before anything runs
    data = resolve_data(args)
    out_dir = Path(args.out) if args.out else Path("benchmarks") / "results" / data["name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    started = time.perf_counter()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"bench: {len(mixes)} mixes on {data['name']}, {args.budget_seconds} s each; measuring the matmul peak")
    peak = {**measure_matmul_peak(device, args.matmul_size or None), "repeats": 5}
    print(f"bench: fp32 matmul peak {peak['flops_per_second'] / 1e9:.1f} GFLOP/s on {device} ({threads} threads)")

    curve_every = args.curve_every or max(args.budget_seconds / 6.0, 1.0)
    settings = {
        "budget_seconds": args.budget_seconds,
        "budget_bytes": args.budget_bytes,
        "seed": args.seed,
        "lr": args.lr,
        "threads": threads,
        "device": device,
        "eval_lines": args.eval_lines,
        "curve_every": curve_every,
        "curve_lines": args.curve_lines,
        "gen_new_units": args.gen_new_units,
        "gen_prompt_units": args.gen_prompt_units,
        "gen_batches": [1, 8],
        "reference_generation": dict(REFERENCE_GENERATION),
        "t2b_lines": args.t2b_lines,
        "render_units": args.render_units,
    }
    timeout = args.mix_timeout or (4 * (args.budget_seconds or 600) + 900)
    results = []
    for i, mix in enumerate(mixes, 1):
        label = f"{i}/{len(mixes)} {mix.name}"
        job_settings = {
            **settings,
            **{k: data[k] for k in ("train_file", "eval_file", "train_sha256")},
            "peak_flops": peak["flops_per_second"],
            "tokenizer_dir": str(out_dir / "tokenizers"),
            "label": label,
        }
        print(f"bench: [{label}] starting ({mix.kind}, {mix.path})", flush=True)
        result = run_worker({"mix": mix.to_dict(), "settings": job_settings}, timeout)
        result["mix_file"] = str(mix.path)
        if result.get("status") != "ok":
            print(f"bench: [{label}] FAILED: {result.get('error')}", flush=True)
        results.append(result)

    report = {
        "command": _command_line(args),
        "started": started_at,
        "wall_seconds": time.perf_counter() - started,
        "data": data,
        "settings": settings,
        "matmul_peak": peak,
        "machine": machine_info(threads, device),
        "versions": package_versions(),
        "results": results,
    }
    paths = write_report(report, out_dir)
    print(f"bench: wrote {', '.join(str(p) for p in paths.values())}")
    return report


def cmd_bench(args: argparse.Namespace) -> int:
    """The ``ilt bench`` handler: 0 when every mix ran, 1 when some failed (the report says which)."""
    report = run_bench(args)
    failed = [r["name"] for r in report["results"] if r.get("status") != "ok"]
    if failed:
        print(f"bench: {len(failed)} mix(es) failed: {', '.join(failed)} (see results.md)", file=sys.stderr)
        return 1
    return 0


def add_bench_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``ilt bench`` options (shared by the subcommand and ``python -m ilt_bench.harness``)."""
    p.add_argument(
        "--mixes", help="comma-separated mix names (in --mix-dir or the plugins' mixes) or YAML paths; default: all"
    )
    p.add_argument("--mix-dir", help="folder of mix YAML files (default: ./benchmarks/mixes)")
    p.add_argument("--data", default=DEFAULT_DATA, help="data recipe (ilt_data.recipes) when no files are given")
    p.add_argument("--data-name", help="name of the data in the report and the default output folder")
    p.add_argument("--train-file", help="training text, one text per line (with --eval-file)")
    p.add_argument("--eval-file", help="held-out text, one text per line (with --train-file)")
    p.add_argument("--eval-lines", type=int, default=200, help="cap on held-out texts (0: all)")
    p.add_argument("--budget-seconds", type=float, default=100.0, help="training wall-clock time of each mix")
    p.add_argument("--budget-bytes", type=int, default=None, help="also stop after this many training UTF-8 bytes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW peak learning rate (same for every mix)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--curve-every", type=float, default=0.0, help="seconds of training between validation points")
    p.add_argument("--curve-lines", type=int, default=24, help="held-out texts in each validation point")
    p.add_argument("--gen-new-units", type=int, default=16, help="units generated per prompt for the speed test")
    p.add_argument("--gen-prompt-units", type=int, default=16, help="units in each generation prompt")
    p.add_argument("--t2b-lines", type=int, default=256, help="held-out texts for the text-to-batch speed test")
    p.add_argument("--render-units", type=int, default=2000, help="units rendered for the rendering speed test")
    p.add_argument("--matmul-size", type=int, default=0, help="side of the peak-measuring matmul (0: 2048 on CPU)")
    p.add_argument("--mix-timeout", type=float, default=0.0, help="seconds before a mix is stopped (0: automatic)")
    p.add_argument("--out", help="output folder (default: benchmarks/results/<data-name>/)")
    p.set_defaults(func=cmd_bench)
    return p


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an ``argparse`` subparsers object; its handler is ``args.func``."""
    p = subparsers.add_parser(
        "bench",
        help="compare component mixes against byte-level and subword baselines on the same budget",
        description=__doc__.split("\n\n")[0],
    )
    return add_bench_arguments(p)


def main(argv: list[str] | None = None) -> int:
    """``python -m ilt_bench.harness [options]`` (the same options as ``ilt bench``)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = add_bench_arguments(argparse.ArgumentParser(prog="ilt bench", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except ILTError as exc:
        print(f"ilt: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
