"""``ilt lm-eval --model DIR --tasks T1,T2 ...``: lm_eval's evaluation of a checkpoint folder, results as lm_eval
writes them (``--output-path``: ``results_<date>.json``, with ``--log-samples`` the per-sample files too), and
its tables on stdout. The offline tasks of :mod:`ilt_lm_eval.tasks` are on the task path."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ilt_core.errors import ILTError


def _model_args(text: str | None) -> dict[str, Any]:
    """``key=value,key=value`` (lm_eval's ``--model_args`` syntax) as a dict."""
    if not text:
        return {}
    from lm_eval.utils import simple_parse_args_string

    try:
        return dict(simple_parse_args_string(text))
    except ValueError as exc:
        raise ILTError(f"--model-args {text!r}: expected key=value,key=value ({exc})") from None


def _json(flag: str, text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ILTError(f"{flag} {text!r}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ILTError(f"{flag} {text!r}: expected a JSON object")
    return value


def run_lm_eval(args: argparse.Namespace) -> dict[str, Any] | None:
    """Evaluate ``args.model`` on ``args.tasks``; write and print the results; return them."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.loggers import EvaluationTracker
        from lm_eval.utils import make_table

        import ilt_lm_eval.model  # noqa: F401  (registers "ilt")
    except ImportError as exc:
        raise ILTError(f"ilt lm-eval needs lm_eval 0.4: pip install 'lm_eval>=0.4,<0.5' ({exc})") from None
    from ilt_lm_eval import task_manager

    metadata = _json("--metadata", args.metadata)
    if args.data_dir:
        metadata["data_dir"] = args.data_dir
    tasks = [t for t in args.tasks.split(",") if t]
    manager = task_manager(args.include_path, metadata, include_defaults=False)
    if not set(tasks) <= set(manager.all_tasks):  # lm_eval's own tasks: index them too (seconds)
        manager = task_manager(args.include_path, metadata)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known and not t.endswith((".yaml", ".yml"))]
    if not tasks or unknown:
        offline = ", ".join(sorted(t for t in known if t.startswith("ilt_")))
        raise ILTError(
            f"--tasks {args.tasks!r}: no task named {', '.join(unknown) or '(none given)'}; offline ones: {offline} "
            "(`lm_eval ls tasks` lists lm_eval's)"
        )
    model_args = {"pretrained": args.model, **_model_args(args.model_args)}
    tracker = EvaluationTracker(output_path=args.output_path) if args.output_path else EvaluationTracker()
    results = simple_evaluate(
        model="ilt",
        model_args=model_args,
        tasks=tasks,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        device=args.device,
        limit=args.limit,
        log_samples=args.log_samples,
        evaluation_tracker=tracker,
        task_manager=manager,
        gen_kwargs=args.gen_kwargs,
        random_seed=args.seed,
        numpy_random_seed=args.seed,
        torch_random_seed=args.seed,
        fewshot_random_seed=args.seed,
        metadata=metadata,
    )
    if results is None:  # another rank's process
        return None
    samples = results.pop("samples", None)
    if args.output_path:
        tracker.save_results_aggregated(results=results, samples=samples)
        if args.log_samples and samples:
            for name in results["configs"]:
                tracker.save_results_samples(task_name=name, samples=samples[name])
    print(f"ilt ({model_args}), limit: {args.limit}, num_fewshot: {args.num_fewshot}, batch_size: {args.batch_size}")
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    return results


def cmd_lm_eval(args: argparse.Namespace) -> int:
    run_lm_eval(args)
    return 0


def _limit(text: str) -> float:
    value = float(text)
    return int(value) if value >= 1 and value == int(value) else value


def add_lm_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ilt lm-eval``."""
    p = subparsers.add_parser(
        "lm-eval",
        help="evaluate a checkpoint with EleutherAI's lm-evaluation-harness (model `ilt`; offline Hebrew tasks)",
        description=__doc__,
    )
    p.add_argument("--model", required=True, help="checkpoint folder (save_pretrained / ilt train output)")
    p.add_argument("--tasks", required=True, help="comma-separated lm_eval tasks, e.g. ilt_he_news_mc,ilt_he_news_bpb")
    p.add_argument("--limit", type=_limit, default=None, help="examples per task (a fraction below 1)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--output-path", default=None, help="folder for lm_eval's results (and samples) JSON files")
    p.add_argument("--log-samples", action="store_true", help="also write every request and answer")
    p.add_argument("--include-path", default=None, help="another folder of task YAMLs")
    p.add_argument(
        "--model-args",
        default=None,
        help="more model_args of `ilt` (key=value,...): dtype, window_units, rolling_context, max_gen_toks_unit, seed",
    )
    p.add_argument("--gen-kwargs", default=None, help="generation options for generate_until tasks (key=value,...)")
    p.add_argument("--data-dir", default=None, help="folder with the he-news split files (default: the recipe's)")
    p.add_argument("--metadata", default=None, help="JSON passed to the tasks (e.g. '{\"mc_seed\": 7}')")
    p.add_argument("--seed", type=int, default=1234, help="lm_eval's random, numpy, torch and few-shot seeds")
    p.set_defaults(func=cmd_lm_eval)
    return p
