"""How fast can a mix's matrix products alone go? A bound on `make bench`'s training bytes/s, mix by mix.

    .venv/bin/python benchmarks/bench_mix_bounds.py --mixes nano nano-baseline-bytes --out runs/mix_bounds.json
    .venv/bin/python benchmarks/bench_mix_bounds.py --mixes nano nano-baseline-bytes --quick   # smoke run

For each mix (``benchmarks/mixes``): one training batch of its ``bench:`` shape cut from he-news text (an ILT mix
collated as ``ilt train`` collates by default, fixed shapes; a baseline's token rows as ``ilt bench`` streams
them), then

- every matrix product of its training step (forward and backward; ``aten.mm`` / ``addmm`` / ``bmm`` /
  ``baddbmm``, counted by shape; attention kernels and everything else left out), each distinct shape timed
  alone with torch and with numpy in its fastest operand layout (``ilt_bench.matmuls``), summed at the faster of the
  two per shape: the seconds the products alone take, operands hot in cache;
- its eager training step (forward, backward, fused AdamW, fp32, the fast paths on as ``ilt bench`` runs them),
  ``--steps`` timed after one untimed, median; the mixes' steps interleaved.

Two more names: ``reference-setup`` and ``reference-setup-no-images``, the reference implementation's setup at its
protocol's batch (8 texts x 64 words, ``ilt_bench.setups.reference_spec``), for ``bench_reference.py``'s training
goal in words/s.

Printed per mix: text bytes a step, the products' GFLOP and the rate they reach alone, the step's seconds and the
products' share of it, bytes/s measured and the products-alone ceiling. Then, for every pair of an ILT mix and a
baseline, the bytes/s ratio measured and the largest ratio the ILT mix's products allow against the baseline's
measured step (its products alone, nothing else in its step): if that is below a goal, the narrow matrices
bound the mix below it on this machine. ``--profile N``: each mix's step once under ``torch.profiler``, its N ops
of most self CPU time (where the rest of the step goes).
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from itertools import cycle
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (ilt_bench imports it); see ilt_bench.common

import torch  # noqa: E402
from ilt_bench import common  # noqa: E402
from ilt_bench.machine import machine_info, package_versions  # noqa: E402
from ilt_bench.matmuls import MatmulRecorder, Shape, time_shape  # noqa: E402
from ilt_bench.setups import add_mixes_argument, make_batches, setup_mixes, text_units_in, train_step  # noqa: E402


class MixStep:
    """One mix's model, one training batch of its bench shape, and its training step."""

    def __init__(self, mix: Any, units: list[str], lines: list[str]) -> None:
        self.mix = mix
        bench = mix.bench
        if mix.kind == "ilt":
            from ilt_core.modeling.model import build_model

            self.model = build_model(mix.spec, seed=0).train()
            rows, length = bench.batch_size, bench.block_units - 1
            shapes = self.model.fixed_shapes(rows, length + 1)
            self.batch = make_batches(self.model, units, rows, length, 1, shapes=shapes)[0]
            self.bytes = int(self.batch.num_bytes.sum())
            self.words = text_units_in(self.batch)
            self.module = self.model
        else:
            from ilt_bench.baselines import TokenStream, build_baseline, parse_baseline_spec

            self.model = build_baseline(parse_baseline_spec(mix.spec), bench.block_size)
            stream = TokenStream(cycle(lines), self.model.codec, bench.block_size)
            self.batch = stream.next_batch(bench.batch_size)
            self.bytes = int(self.batch.num_bytes)
            self.words = int(self.batch.num_units)
            self.module = self.model.model
            self.module.train()
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=1e-4, fused=True)

    def loss(self) -> torch.Tensor:
        if self.mix.kind == "ilt":
            return self.model(**self.batch.model_inputs()).loss
        return self.model.training_loss(self.batch, "cpu")

    def step(self) -> None:
        if self.mix.kind == "ilt":
            train_step(self.model, self.optimizer, self.batch)
            return
        self.loss().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def products(self) -> Counter[Shape]:
        recorder = MatmulRecorder()
        with recorder:
            self.loss().backward()
        self.module.zero_grad(set_to_none=True)
        return recorder.counts


def products_time(counts: Counter[Shape], timings: dict[Shape, dict[str, float]]) -> dict[str, float]:
    """Seconds of the recorded products at the faster of torch and numpy per shape, their count and GFLOP."""
    return {
        "best_s": sum(c * min(timings[s]["torch_s"], timings[s]["numpy_s"]) for s, c in counts.items()),
        "gflop": sum(2 * b * m * k * n * c for (b, m, k, n), c in counts.items()) / 1e9,
        "products": sum(counts.values()),
        "shapes": len(counts),
    }


def profile_step(name: str, step: MixStep, top: int) -> list[dict[str, Any]]:
    """One training step under ``torch.profiler``: the ``top`` ops by self CPU time, printed and returned."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step.step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [
        {"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total}
        for e in events[:top]
    ]
    print(f"\n{name}: one step under torch.profiler, {total / 1e3:.0f} ms of self CPU time; the top {top} ops")
    print("| op | calls | self ms | share |\n| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['op']} | {r['calls']} | {r['self_ms']:.1f} | {r['share']:.0%} |")
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_mixes_argument(parser)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per mix, interleaved (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per product shape (the fastest counts)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--profile", type=int, default=0, help="also print the top N ops of one profiled step")
    parser.add_argument("--quick", action="store_true", help="smoke run: one step, one timing per shape")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 1, 1
    torch.set_num_threads(args.threads)
    common.as_the_ilt_command(train=True)
    from ilt_core.text.segmentation import segment

    units = common.load_text("he", 4096, segment)  # ample for nano's shapes (a short text is cycled)
    lines = ["".join(piece) for piece in common.chunk_texts(units, 64, 64)]
    steps = {m.name: MixStep(m, units, lines) for m in setup_mixes(args.mixes)}
    counts = {name: s.products() for name, s in steps.items()}
    shapes = sorted({s for c in counts.values() for s in c}, key=lambda s: -s[0] * s[1] * s[2] * s[3])
    common.log(f"timing {len(shapes)} product shapes with torch and numpy")
    timings = {s: time_shape(s, args.repeats) for s in shapes}
    times = common.interleaved({name: s.step for name, s in steps.items()}, args.steps, warmup=1)

    result: dict[str, Any] = {"machine": machine_info(), "versions": package_versions(), "mixes": {}}
    print("| mix | bytes a step | products | GFLOP | products alone, s | GFLOP/s alone | step, s | products' share "
          "| bytes/s | ceiling bytes/s (products alone) | words/s | ceiling words/s |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, s in steps.items():
        p = products_time(counts[name], timings)
        step_s = common.median(times[name])
        r = {
            "kind": s.mix.kind,
            "bytes_per_step": s.bytes,
            **p,
            "gflop_per_s_alone": p["gflop"] / p["best_s"],
            "step_s": step_s,
            "step_times": times[name],
            "products_share": p["best_s"] / step_s,
            "bytes_per_s": s.bytes / step_s,
            "bytes_per_s_ceiling": s.bytes / p["best_s"],
            "words_per_step": s.words,
            "words_per_s": s.words / step_s,
            "words_per_s_ceiling": s.words / p["best_s"],
        }
        result["mixes"][name] = r
        print(f"| {name} | {s.bytes:,} | {p['products']:,} | {p['gflop']:.2f} | {p['best_s']:.3f} | "
              f"{r['gflop_per_s_alone']:.1f} | {step_s:.3f} | {r['products_share']:.0%} | {r['bytes_per_s']:,.0f} | "
              f"{r['bytes_per_s_ceiling']:,.0f} | {r['words_per_s']:,.1f} | {r['words_per_s_ceiling']:,.1f} |")  # fmt: skip
    ilt = [n for n, r in result["mixes"].items() if r["kind"] == "ilt"]
    base = [n for n, r in result["mixes"].items() if r["kind"] == "baseline"]
    result["pairs"] = []
    for a in ilt:
        for b in base:
            ra, rb = result["mixes"][a], result["mixes"][b]
            pair = {
                "ilt": a,
                "baseline": b,
                "measured_ratio": ra["bytes_per_s"] / rb["bytes_per_s"],
                "products_bound_ratio": ra["bytes_per_s_ceiling"] / rb["bytes_per_s"],
            }
            result["pairs"].append(pair)
            print(f"{a} / {b}: bytes/s {pair['measured_ratio']:.2f}x measured; at most "
                  f"{pair['products_bound_ratio']:.2f}x if {a}'s step were its products alone")  # fmt: skip
    if args.profile:
        result["profiles"] = {name: profile_step(name, s, args.profile) for name, s in steps.items()}
    result["shapes"] = [{"shape": list(s), **timings[s], **{n: counts[n].get(s, 0) for n in steps}} for s in shapes]
    common.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
