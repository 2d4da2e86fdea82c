"""Training speed of a preset through `ilt train`: throughput, peak memory, data loading's share.

    .venv/bin/python benchmarks/bench_training.py --out runs/bench_training.json
    .venv/bin/python benchmarks/bench_training.py --quick            # smoke run (a few steps)

Each configuration (packing on, packing off) trains the preset (default ``tiny``) on the he-news
training split (:mod:`ilt_data.recipes`) through :func:`ilt_core.training.run.run_training`, the
code ``ilt train`` runs (Trainer, the unit collator, AdamW), in a process of its own so that its
peak resident memory is its own. Before the first step every word of the training blocks is
rendered once (the render cache is then warm, as from the second epoch on); the first
``--warmup-steps`` steps are not measured. Over the measured steps it reports:

- ``units_per_s`` / ``bytes_per_s``: units (words, start markers excluded) and UTF-8 bytes of text
  trained on per second of wall-clock time (data loading, forward, backward, optimizer);
- ``data_share``: the collator's time (render lookups, byte ids, padding, labels) over the step
  time (goal: below 20% with the cache warm); data loading runs in the training process
  (``dataloader_num_workers`` 0), so it adds to the step time;
- ``peak_rss_mib``: the process's peak resident memory (model, optimizer state, activations,
  render cache, Python);
- ``cold_render_units_per_s``: the rate of the warm-up render pass (distinct units, first sight).

Packing on: rows of ``--block-size`` positions filled with several sentences; packing off: one
sentence per row, ``--batch-size`` rows either way, so packing-off steps hold fewer units.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (ilt_bench imports it); see ilt_bench.common

from ilt_bench import common  # noqa: E402
from ilt_bench.machine import machine_info, package_versions, peak_rss_bytes  # noqa: E402

CONFIGS = {"packing": True, "no-packing": False}
DATA_SHARE_GOAL = 0.20


def run_one(args: argparse.Namespace, packing: bool) -> dict[str, Any]:
    """Train in this process and measure; returns the figures of one configuration."""
    import torch
    from ilt_data.recipes import prepare
    from transformers import TrainerCallback

    from ilt_core.training.run import run_training

    if args.threads:
        torch.set_num_threads(args.threads)
    train_file = prepare("he-news", progress=False)["train"]
    marks: list[tuple[float, dict[str, float]]] = []
    warm: dict[str, float] = {}

    class Measure(TrainerCallback):
        def on_train_begin(self, _args, state, control, model=None, train_dataloader=None, **kwargs):
            collator = train_dataloader.collate_fn
            self.collator = collator
            cache = model.processor.cache
            if cache is not None:  # render every word once: the cache is warm from the first step
                units = list(dict.fromkeys(u for row in train_dataloader.dataset.rows for b in row for u in b.units))
                start = time.perf_counter()
                cache.render_many(units)
                warm["seconds"] = time.perf_counter() - start
                warm["units"] = len(units)

        def on_step_end(self, _args, state, control, **kwargs):
            marks.append((time.perf_counter(), dict(self.collator.stats)))

    steps = args.warmup_steps + args.steps
    with tempfile.TemporaryDirectory(prefix="ilt-bench-training-") as out:
        argv = [
            "--model_spec", args.preset,
            "--train_file", str(train_file),
            "--max_train_samples", str(args.train_blocks),
            "--do_train",
            "--output_dir", out,
            "--block_size", str(args.block_size),
            "--per_device_train_batch_size", str(args.batch_size),
            "--max_steps", str(steps),
            *common.QUIET_TRAINING_ARGS,
            "--packing" if packing else "--no_packing",
        ]  # fmt: skip
        run_training(argv, callbacks=[Measure()])

    (t0, s0), (t1, s1) = marks[args.warmup_steps - 1], marks[-1]
    seconds = t1 - t0
    diff = {k: s1[k] - s0[k] for k in s1}
    measured = len(marks) - args.warmup_steps
    return {
        "packing": packing,
        "steps": measured,
        "seconds_per_step": seconds / max(measured, 1),
        "rows_per_step": diff["rows"] / max(diff["batches"], 1),
        "units_per_step": diff["units"] / max(diff["batches"], 1),
        "units_per_s": diff["units"] / seconds,
        "bytes_per_s": diff["bytes"] / seconds,
        "data_seconds_per_step": diff["seconds"] / max(diff["batches"], 1),
        "data_share": diff["seconds"] / seconds,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "cold_render_units_per_s": warm["units"] / warm["seconds"] if warm.get("seconds") else None,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=12, help="measured steps per configuration")
    p.add_argument("--warmup-steps", type=int, default=3, help="steps run before measuring")
    p.add_argument("--batch-size", type=int, default=4, help="rows per step")
    p.add_argument("--block-size", type=int, default=64, help="units per row (positions)")
    p.add_argument("--train-blocks", type=int, default=1500, help="training blocks read (--max_train_samples)")
    p.add_argument("--repeats", type=int, default=1, help="alternate the configurations this many times")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 measured steps after 1")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup_steps, args.train_blocks = 2, 1, 200
    if args.warmup_steps < 1:
        p.error("--warmup-steps: at least 1 (the first step also builds the optimizer state)")

    if args.child:
        common.print_result(run_one(args, CONFIGS[args.child]))
        return 0

    child = ["--preset", args.preset, "--threads", str(args.threads)]
    for key in ("steps", "warmup_steps", "batch_size", "block_size", "train_blocks"):
        child += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for round_ in range(args.repeats):
        for name in CONFIGS:  # alternate: load changes on a shared machine hit both alike
            common.log(f"round {round_ + 1}/{args.repeats}: {name} ({args.warmup_steps}+{args.steps} steps)")
            command = [sys.executable, __file__, *child, "--child", name]
            results[name].append(common.run_child(command, f"{name}: training"))

    summary = {}
    for name, runs in results.items():
        keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        summary[name] = {k: common.median([r[k] for r in runs if r[k] is not None]) for k in keys}
    header = f"{'config':<12}{'s/step':>9}{'rows':>6}{'units/step':>11}{'units/s':>10}{'bytes/s':>10}"
    header += f"{'data s/step':>12}{'data share':>11}{'peak RSS MiB':>13}"
    print(header)
    for name, s in summary.items():
        print(
            f"{name:<12}{s['seconds_per_step']:>9.2f}{s['rows_per_step']:>6.1f}{s['units_per_step']:>11.0f}"
            f"{common.fmt(s['units_per_s']):>10}{common.fmt(s['bytes_per_s']):>10}"
            f"{s['data_seconds_per_step']:>12.3f}{s['data_share']:>10.1%}{s['peak_rss_mib']:>13.0f}"
        )
    packed, plain = summary["packing"], summary["no-packing"]
    print(
        f"packing trains {packed['units_per_s'] / plain['units_per_s']:.2f}x the units per second of one sentence "
        f"per row; data share goal < {DATA_SHARE_GOAL:.0%}: "
        + ", ".join(f"{n} {'met' if s['data_share'] < DATA_SHARE_GOAL else 'NOT met'}" for n, s in summary.items())
    )
    common.write_json(
        args.out,
        {
            "benchmark": "training",
            "preset": args.preset,
            "settings": {
                k: getattr(args, k)
                for k in ("steps", "warmup_steps", "batch_size", "block_size", "train_blocks", "repeats", "threads")
            },
            "machine": machine_info(),
            "versions": package_versions(),
            "summary": summary,
            "runs": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
