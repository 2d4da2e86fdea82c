"""``ilt bench``: component mixes against byte-level and subword baselines, same data, seeds and budget.

    ilt bench                                   every mix in benchmarks/mixes/ on he-news, 1,000,000 bytes each
    ilt bench --mixes nano,nano-no-images,nano-baseline-bytes,nano-baseline-bpe --out benchmarks/results/nano
    ilt bench --mixes tiny,baseline-bytes --budget-flops 2e12 --seeds 5 --lr 1e-3   (one rate, no sweep)
    ilt bench --train-file a.txt --eval-file b.txt --eval-lines 200 --out results/

``--tasks ilt_he_news_mc,ilt_he_news_bpb`` also scores every trained mix and seed on lm_eval tasks (ILT mixes as
lm_eval's ``ilt`` model, the baselines through :mod:`ilt_bench.lm_eval_models`): a column per task in the report.
Every run also times lm_eval ``loglikelihood`` requests at batch 16.

The budget is training text (``--budget-bytes``, the default) or training FLOPs (``--budget-flops``), so a
figure does not depend on how fast the machine was that day; ``--budget-seconds`` is there too. Wall-clock
time is a reported figure. Each mix first picks its own peak learning rate by a short sweep (``--lr-sweep``:
one seed, ``--sweep-share`` of the budget, scored on held-out texts that the report does not use), unless
``--lr`` fixes one for every mix or the mix's ``bench: {lr: ...}`` fixes its own. Then it trains once per
seed (``--seeds``, seeds ``--seed``, ``--seed`` + 1, ...; a seed sets the initialisation and the data order,
the same order for every mix), each run in a fresh process (:mod:`ilt_bench.run`), mixes interleaved seed by
seed. The report (:mod:`ilt_bench.report`) gives each figure's mean and min-max over the seeds, marks which
differences between mixes exceed the spread of both, and plots bits-per-byte against training FLOPs and
bytes: ``results.json``, ``results.md`` and PNG plots under ``benchmarks/results/<data>/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
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
#: ``--lr-sweep``: doubling rates, swept on the whole budget by default (``--sweep-share 1``): a rate chosen on a
#: share of the budget lost over the whole of it (benchmarks/REPORT.md). A mix choosing an end of the sweep is
#: flagged in the report (``report.sweep_edge``).
DEFAULT_LR_SWEEP = "1e-3,2e-3,4e-3,8e-3"
#: The reference's generation protocol: greedy, batch 4, prompts of 16 words, 32 new words, each to 32 bytes.
REFERENCE_GENERATION = {"batch_size": 4, "prompt_units": 16, "new_units": 32, "byte_cap": 32}


def resolve_data(args: argparse.Namespace) -> dict[str, Any]:
    """Train/eval files: ``--train-file/--eval-file``, or the ``--data`` recipe's train/validation split."""
    if bool(args.train_file) != bool(args.eval_file):
        raise ILTError("--train-file and --eval-file go together: give both, or neither for --data")
    task_data_dir = None
    if args.train_file:
        train, evaluation = Path(args.train_file), Path(args.eval_file)
        name = args.data_name or train.stem
    else:
        files = get_registry().data_recipe(args.data).prepare(progress=True)
        train, evaluation = files["train"], files["validation"]
        name = args.data_name or args.data
        if args.data == "he-news":  # the offline Hebrew lm_eval tasks read this recipe's test split
            task_data_dir = str(Path(files["test"]).parent)
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
        "task_data_dir": task_data_dir,
    }


def pick_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ILTError(f"--device {choice}: no CUDA device is available here; use --device cpu or auto")
    return choice


def run_worker(job: dict[str, Any], timeout: float, in_process: bool = False) -> dict[str, Any]:
    """Run one mix in a fresh Python process (so its peak memory is its own) and read its result.

    ``in_process``: in this process instead (``--in-process``: quick checks; peak memory is then shared).
    """
    if in_process:
        from ilt_bench.run import run_job

        return run_job(job)
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


def parse_tasks(text: str | None) -> list[str]:
    """``--tasks``: comma-separated lm_eval task names (checked when the first mix evaluates them)."""
    tasks = [t.strip() for t in (text or "").split(",") if t.strip()]
    for t in tasks:
        if not all(c.isalnum() or c in "_-." for c in t):
            raise ILTError(f"--tasks {text!r}: {t!r} is not a task name (letters, digits, _ - .)")
    return tasks


def check_tasks(tasks: list[str]) -> None:
    """Every ``--tasks`` name is an lm_eval task (the offline ones first; lm_eval's own index takes seconds)."""
    if not tasks:
        return
    import ilt_lm_eval

    known = set(ilt_lm_eval.task_manager(include_defaults=False).all_tasks)
    if not set(tasks) <= known:
        known |= set(ilt_lm_eval.task_manager().all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ILTError(
            f"--tasks: no lm_eval task named {', '.join(unknown)} (offline: ilt_he_news_mc, ilt_he_news_bpb, "
            "ilt_he_offline; `ilt-lm-eval ls tasks` lists lm_eval's)"
        )


def parse_rates(text: str) -> list[float]:
    """``--lr-sweep``: comma-separated positive learning rates."""
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ILTError(f"--lr-sweep {text!r}: expected comma-separated numbers such as 3e-4,1e-3,3e-3") from None
    if not rates or any(not r > 0 for r in rates):
        raise ILTError(f"--lr-sweep {text!r}: expected one or more positive learning rates")
    return rates


def check_budget(args: argparse.Namespace) -> None:
    """At least one positive budget; none negative."""
    budgets = {"--budget-bytes": args.budget_bytes, "--budget-flops": args.budget_flops}
    budgets["--budget-seconds"] = args.budget_seconds
    for flag, value in budgets.items():
        if (value or 0) < 0:
            raise ILTError(f"{flag} must be >= 0, got {value}")
    if not any(budgets.values()):
        raise ILTError("no budget: give --budget-bytes N, --budget-flops N or --budget-seconds N (a mix must stop)")
    if args.seeds < 1:
        raise ILTError(f"--seeds must be >= 1, got {args.seeds}")
    if not 0 < args.sweep_share <= 1:
        raise ILTError(f"--sweep-share must be in (0, 1], got {args.sweep_share}")


def sweep_rates(
    mix: Any, rates: list[float], base: dict[str, Any], args: argparse.Namespace, data: dict[str, Any], timeout: float
) -> tuple[float, list[dict[str, Any]]]:
    """Train ``mix`` once per rate on ``--sweep-share`` of the budget (first seed); the rate with the lowest
    held-out bits-per-byte (None when every rate failed) and every rate's figure. The texts scored come after
    the report's own when the held-out file has enough (``data["sweep_offset"]``)."""
    settings = {
        **base,
        "seed": args.seed,
        "measure": False,
        "curve_points": 1,
        "eval_offset": data["sweep_offset"],
        "eval_lines": args.sweep_lines,
    }
    for key in ("budget_bytes", "budget_flops", "budget_seconds"):
        settings[key] = (base[key] or 0) * args.sweep_share
    points = []
    for lr in rates:
        label = f"{mix.name} sweep lr {lr:g}"
        print(f"bench: [{label}] starting", flush=True)
        r = run_worker(
            {"mix": mix.to_dict(), "settings": {**settings, "lr": lr, "label": label}}, timeout, args.in_process
        )
        bpb = r.get("bits_per_byte") if r.get("status") == "ok" else None
        points.append({"lr": lr, "bits_per_byte": bpb, "train_bytes": r.get("train_bytes"), "error": r.get("error")})
    finite = [p for p in points if isinstance(p["bits_per_byte"], (int, float)) and math.isfinite(p["bits_per_byte"])]
    if not finite:
        return None, points
    return min(finite, key=lambda p: p["bits_per_byte"])["lr"], points


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Sweep each mix's learning rate, run every mix for every seed, and write the report; returns it."""
    import torch

    from ilt_bench.mixes import resolve_mixes
    from ilt_bench.report import aggregate_runs, sweep_edge, write_report
    from ilt_core.modeling.flops import measure_matmul_peak

    check_budget(args)
    rates = parse_rates(args.lr_sweep) if args.lr is None else []
    mixes = resolve_mixes(args.mixes, args.mix_dir)  # validates every mix before anything runs
    check_tasks(parse_tasks(args.tasks))
    data = resolve_data(args)
    eval_total = sum(1 for line in Path(data["eval_file"]).read_text(encoding="utf-8").splitlines() if line.strip())
    # the sweep scores texts the report does not use, when the held-out file has them
    data["sweep_offset"] = data["eval_texts"] if eval_total - data["eval_texts"] >= args.sweep_lines else 0
    out_dir = Path(args.out) if args.out else Path("benchmarks") / "results" / data["name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    started = time.perf_counter()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    seeds = [args.seed + i for i in range(args.seeds)]
    print(f"bench: {len(mixes)} mixes x {len(seeds)} seeds on {data['name']}, budget {budget_text(args)}")
    peak = {**measure_matmul_peak(device, args.matmul_size or None), "repeats": 5}
    print(f"bench: fp32 matmul peak {peak['flops_per_second'] / 1e9:.1f} GFLOP/s on {device} ({threads} threads)")

    settings = {
        "budget_bytes": args.budget_bytes or 0,
        "budget_flops": args.budget_flops or 0,
        "budget_seconds": args.budget_seconds or 0,
        "seeds": seeds,
        "lr": args.lr,
        "lr_sweep": rates,
        "lr_scaling": args.lr_scaling,
        "sweep_share": args.sweep_share,
        "sweep_lines": args.sweep_lines,
        "sweep_offset": data["sweep_offset"],
        "threads": threads,
        "device": device,
        "eval_lines": args.eval_lines,
        "curve_points": args.curve_points,
        "curve_lines": args.curve_lines,
        "gen_new_units": args.gen_new_units,
        "gen_prompt_units": args.gen_prompt_units,
        "gen_batches": [1, 8],
        "reference_generation": dict(REFERENCE_GENERATION),
        "t2b_lines": args.t2b_lines,
        "render_units": args.render_units,
        "tasks": parse_tasks(args.tasks),
        "task_limit": args.task_limit or None,
        "task_data_dir": args.task_data_dir or data["task_data_dir"],
    }
    base = {
        **settings,
        **{k: data[k] for k in ("train_file", "eval_file", "train_sha256")},
        "peak_flops": peak["flops_per_second"],
        "tokenizer_dir": str(out_dir / "tokenizers"),
    }
    timeout = args.mix_timeout or (4 * args.budget_seconds + 900 if args.budget_seconds else 4 * 3600)
    chosen: dict[str, tuple[float | None, list[dict[str, Any]], str]] = {}
    for mix in mixes:
        if args.lr is not None:
            chosen[mix.name] = (args.lr, [], "--lr")
        elif mix.bench.lr is not None:
            chosen[mix.name] = (mix.bench.lr, [], "the mix's bench.lr")
        else:
            best, points = sweep_rates(mix, rates, base, args, data, timeout)
            if best is None:
                print(f"bench: [{mix.name}] FAILED: every rate of the sweep failed ({points[0]['error']})", flush=True)
            else:
                print(f"bench: [{mix.name}] learning rate {best:g} (sweep: {sweep_text(points)})", flush=True)
                edge = sweep_edge(points, best)
                if edge:
                    print(
                        f"bench: [{mix.name}] warning: {best:g} is the {edge} rate of --lr-sweep; its best rate may "
                        f"lie beyond (the report flags it)",
                        flush=True,
                    )
            chosen[mix.name] = (best, points, "sweep")

    runs: dict[str, list[dict[str, Any]]] = {m.name: [] for m in mixes}
    for k, seed in enumerate(seeds):  # seed by seed, every mix: a change in the machine's load touches all
        for i, mix in enumerate(mixes, 1):
            if chosen[mix.name][0] is None:
                continue
            label = f"seed {k + 1}/{len(seeds)} mix {i}/{len(mixes)} {mix.name}"
            job = {"mix": mix.to_dict(), "settings": {**base, "seed": seed, "lr": chosen[mix.name][0], "label": label}}
            print(f"bench: [{label}] starting ({mix.kind}, {mix.path})", flush=True)
            result = run_worker(job, timeout, args.in_process)
            if result.get("status") != "ok":
                print(f"bench: [{label}] FAILED: {result.get('error')}", flush=True)
            runs[mix.name].append(result)

    results = []
    for mix in mixes:
        lr, points, how = chosen[mix.name]
        if lr is None:
            error = f"every rate of the sweep failed ({points[0]['error']}); give --lr"
            runs[mix.name] = [{"name": mix.name, "kind": mix.kind, "status": "error", "error": error}]
        result = aggregate_runs(runs[mix.name])
        result.update(mix_file=str(mix.path), lr=lr, lr_choice=how, sweep=points, lr_edge=sweep_edge(points, lr))
        results.append(result)
    report = {
        "command": _command_line(args),
        "commit": git_commit(),
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


def budget_text(args: argparse.Namespace) -> str:
    """The budget in words, e.g. ``1,000,000 training bytes``."""
    parts = []
    if args.budget_bytes:
        parts.append(f"{args.budget_bytes:,} training bytes")
    if args.budget_flops:
        parts.append(f"{args.budget_flops:.3g} training FLOPs")
    if args.budget_seconds:
        parts.append(f"{args.budget_seconds:g} s of training")
    return ", or ".join(parts) + " (whichever comes first)" if len(parts) > 1 else parts[0]


def sweep_text(points: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{p['lr']:g}: {p['bits_per_byte']:.3f}" if p["bits_per_byte"] is not None else f"{p['lr']:g}: failed"
        for p in points
    )


def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` when files differ), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


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
    p.add_argument(
        "--budget-bytes", type=int, default=1_000_000, help="training UTF-8 bytes of each run (0: no byte budget)"
    )
    p.add_argument("--budget-flops", type=float, default=0.0, help="training FLOPs of each run (0: no FLOP budget)")
    p.add_argument(
        "--budget-seconds", type=float, default=0.0, help="training wall-clock seconds of each run (0: no time budget)"
    )
    p.add_argument("--seeds", type=int, default=3, help="runs per mix, seeds --seed, --seed + 1, ...")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--lr", type=float, default=None, help="one AdamW peak learning rate for every mix (no sweep)")
    p.add_argument(
        "--lr-sweep",
        default=DEFAULT_LR_SWEEP,
        help="rates each mix tries first (unless --lr or its bench.lr); a mix that chooses the highest or lowest "
        "is flagged in the report (its best rate may lie beyond)",
    )
    p.add_argument(
        "--lr-scaling",
        choices=("width", "none"),
        default="width",
        help="ILT components' rates: width = the peak rate x latent width / the component's width; none = one rate",
    )
    p.add_argument(
        "--sweep-share",
        type=float,
        default=1.0,
        help="share of the budget each sweep run trains (default: all of it; a shorter run favours higher rates)",
    )
    p.add_argument("--sweep-lines", type=int, default=48, help="held-out texts that score the sweep")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--curve-points", type=int, default=8, help="validation points, at equal shares of the budget")
    p.add_argument("--curve-lines", type=int, default=24, help="held-out texts in each validation point")
    p.add_argument("--gen-new-units", type=int, default=16, help="units generated per prompt for the speed test")
    p.add_argument("--gen-prompt-units", type=int, default=16, help="units in each generation prompt")
    p.add_argument("--t2b-lines", type=int, default=256, help="held-out texts for the text-to-batch speed test")
    p.add_argument("--render-units", type=int, default=2000, help="units rendered for the rendering speed test")
    p.add_argument(
        "--tasks",
        default=None,
        help="lm_eval tasks scored on every trained mix and seed, a column each in the report, e.g. "
        "ilt_he_news_mc,ilt_he_news_bpb (the offline Hebrew tasks of ilt-lm-eval; hub tasks need a hub)",
    )
    p.add_argument("--task-limit", type=int, default=0, help="examples per lm_eval task (0: all)")
    p.add_argument(
        "--task-data-dir",
        default=None,
        help="folder with the split files the offline Hebrew tasks read (test.txt; default: the he-news recipe's)",
    )
    p.add_argument("--matmul-size", type=int, default=0, help="side of the peak-measuring matmul (0: 2048 on CPU)")
    p.add_argument("--mix-timeout", type=float, default=0.0, help="seconds before a mix is stopped (0: automatic)")
    p.add_argument("--out", help="output folder (default: benchmarks/results/<data-name>/)")
    p.add_argument(
        "--in-process", action="store_true", help="run every mix in this process (quick checks; peak memory is shared)"
    )
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
