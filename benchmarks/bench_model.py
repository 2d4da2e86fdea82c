"""Speed and memory of a training step: forward + backward + AdamW step, on real text (he-news).

    .venv/bin/python benchmarks/bench_model.py --out runs/bench_model.json               # tiny variants
    .venv/bin/python benchmarks/bench_model.py --reference --out runs/bench_model.json   # + reference setup
    .venv/bin/python benchmarks/bench_model.py --quick                                   # smoke run
    .venv/bin/python benchmarks/bench_model.py --breakdown --threads 2                   # the step by component

Configurations (batch 8 texts x 64 units of he-news, consecutive words of the test split):

- ``tiny-full``, ``tiny-image-only``, ``tiny-bytes-only``: the tiny preset (``labels: unit``).
- ``--reference`` adds ``reference`` and ``reference-no-images``, the setup of the reference
  implementation (:func:`ilt_bench.setups.reference_spec`).
- ``--configs reference reference-checkpointed``: the reference setup without and with activation checkpointing.

Per configuration, each in a fresh process (its peak RSS its own): median step seconds, units (words) and UTF-8
bytes per second, text -> batch units/s (cold and warm render cache), FLOPs of one step
(``torch.utils.flop_counter``) and the achieved GFLOP/s beside a matrix-product calibration taken in the same
run, and the process's peak RSS while building and training that configuration. ``--breakdown``: the reference
setup's step by component.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (ilt_bench imports it); see ilt_bench.common

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from ilt_bench import common  # noqa: E402
from ilt_bench.machine import machine_info, package_versions, peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402
from ilt_bench.setups import (  # noqa: E402
    NO_REFERENCE,
    REFERENCE_PEAK_RSS_GOAL_MB,
    TINY_VARIANTS,
    make_batches,
    reference_spec,
    step_flops,
    text_to_batch,
    text_units_in,
    tiny_spec,
    train_step,
)

# ---- configurations ----------------------------------------------------------------------------


def config_specs(reference: bool, only: list[str] | None) -> dict[str, dict[str, Any]]:
    """The configurations to run: ``only`` when given, else the tiny variants (+ the reference ones)."""
    every = {f"tiny-{v}": tiny_spec(v) for v in TINY_VARIANTS}
    every["reference"] = reference_spec(True)
    every["reference-no-images"] = reference_spec(False)
    # the same setup with activation checkpointing: the memory / time trade (run it with --configs)
    every["reference-checkpointed"] = {**reference_spec(True), "activation_checkpointing": True}
    if only:
        unknown = sorted(set(only) - set(every))
        if unknown:
            raise SystemExit(
                f"bench_model: unknown --configs {', '.join(unknown)}; expected some of {', '.join(every)}"
            )
        return {name: every[name] for name in only}
    return {
        name: spec
        for name, spec in every.items()
        if (reference and name != "reference-checkpointed") or name.startswith("tiny-")
    }


# ---- one configuration -------------------------------------------------------------------------


def bench_config(name: str, spec: dict[str, Any], units: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Build, warm up, and time ``args.steps`` training steps of one configuration."""
    from ilt_core.modeling.model import build_model

    gc.collect()
    reset_peak_rss()
    rss_before = rss_bytes() / 2**20
    build_s, model = common.timed(lambda: build_model(spec, seed=0))
    model.to(args.device)
    model.train()
    common.log(f"{name}: built in {build_s:.1f} s ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    t2b = text_to_batch(model, units, args.rows, args.length, 1 if args.quick else 3)
    batches = make_batches(model, units, args.rows, args.length, args.batches)
    batches = [b.to(args.device) for b in batches]
    # fused AdamW: what the Trainer uses by default with torch >= 2.8 (and 4x faster than the for-loop one here)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    times, losses, usage = [], [], []
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        before = resource.getrusage(resource.RUSAGE_SELF)
        seconds, loss = common.timed(lambda b=batch, m=model, o=optimizer: train_step(m, o, b))
        after = resource.getrusage(resource.RUSAGE_SELF)
        common.log(f"{name}: step {i + 1}/{args.warmup + args.steps} {seconds:.2f} s loss {loss:.3f}")
        if i >= args.warmup:
            times.append(seconds)
            losses.append(loss)
            usage.append(
                (
                    after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                    after.ru_stime - before.ru_stime,
                    after.ru_minflt - before.ru_minflt,
                )
            )
    flops = step_flops(model, batches[0]) if not args.no_flops else 0
    step_s = common.median(times)
    words = sum(text_units_in(b) for b in batches) / len(batches)
    text_bytes = sum(int(b.num_bytes.sum()) for b in batches) / len(batches)
    result = {
        "spec": {"labels": spec.get("labels", "unit"), "label_bytes": spec.get("label_bytes", 32)},
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch": f"{args.rows}x{args.length}",
        "units_per_batch": words,
        "bytes_per_batch": text_bytes,
        "step_s": step_s,
        "step_s_all": times,
        # CPU seconds of every thread, of them in the kernel, and page faults: a step's medians
        "step_cpu_s": common.median([u[0] for u in usage]),
        "step_kernel_cpu_s": common.median([u[1] for u in usage]),
        "step_page_faults": common.median([u[2] for u in usage]),
        "units_per_s": words / step_s,
        "bytes_per_s": text_bytes / step_s,
        "last_loss": losses[-1],
        "peak_rss_mb": peak_rss_bytes() / 2**20,
        "rss_before_build_mb": rss_before,
        "build_s": build_s,
        **t2b,
    }
    if flops:
        result["gflop_per_step"] = flops / 1e9
        result["achieved_gflop_per_s"] = flops / 1e9 / step_s
    del model, optimizer, batches
    gc.collect()
    return result


def bench_config_isolated(name: str, argv: list[str]) -> dict[str, Any]:
    """:func:`bench_config` in a fresh process, so its peak RSS holds only this configuration.

    (In one process the allocator keeps memory freed by an earlier configuration resident.)
    """
    child_args: list[str] = []
    dropping = False  # inside the values of --configs / --out
    for arg in argv:
        if arg.startswith("-"):
            dropping = arg.split("=")[0] in ("--configs", "--out")
            if dropping or arg in ("--reference", "--breakdown"):
                continue
        elif dropping:
            continue
        child_args.append(arg)
    command = [sys.executable, str(Path(__file__).resolve()), *child_args, "--child", name]
    return common.run_child(command, f"bench_model: configuration {name!r}", show_progress=True)


def matmul_gflops(repeats: int = 5, size: int = 1024) -> float:
    """Calibration: GFLOP/s of a float32 ``size x size`` matrix product with the current threads."""
    a = torch.randn(size, size)
    a @ a
    seconds = [common.timed(lambda: a @ a)[0] for _ in range(repeats)]
    return 2 * size**3 / common.median(seconds) / 1e9


def breakdown(units: list[str], args: argparse.Namespace, images: bool) -> dict[str, Any]:
    """The reference setup's training step by component: each part's forward + backward alone (the optimizer: its
    step), its GFLOP (``torch.utils.flop_counter``), wall and CPU seconds (medians of interleaved rounds) and the
    GFLOP/s it reaches, beside the whole step's. CPU seconds are the process's (every thread): steadier than wall
    clock on a shared machine.
    """
    import time

    from torch.utils.flop_counter import FlopCounterMode

    from ilt_core.modeling.model import build_model
    from ilt_core.text.collator import IGNORE_INDEX

    model = build_model(reference_spec(images), seed=0)
    model.train()
    batch = make_batches(model, units, args.rows, args.length, 1)[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    selected = batch.labels[..., 0] != IGNORE_INDEX
    label_ids = batch.labels[selected]
    latents = torch.randn(label_ids.shape[0], model.latent_transformer.hidden_size, requires_grad=True)
    x = torch.randn(*batch.unit_index.shape, model.latent_transformer.hidden_size, requires_grad=True)
    logits = torch.randn(*label_ids.shape, model.bytes_decoder.vocab_size, requires_grad=True)

    def backward_of(fn: Any) -> Any:
        def run() -> None:
            fn().float().square().mean().backward()
            model.zero_grad(set_to_none=True)

        return run

    def loss() -> None:
        F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), label_ids.reshape(-1), ignore_index=IGNORE_INDEX
        ).backward()

    parts: dict[str, Any] = {}
    if images:
        parts["image_encoder"] = backward_of(lambda: torch.cat([model.image_encoder(p) for _, p in batch.image_groups]))
    parts["bytes_encoder"] = backward_of(lambda: model.bytes_encoder(batch.unit_input_ids, batch.unit_attention_mask))
    parts["latent_transformer"] = backward_of(
        lambda: model.latent_transformer(x, position_ids=batch.position_ids).hidden_states
    )
    parts["bytes_decoder"] = backward_of(lambda: model.decode_logits(latents, label_ids))
    parts["loss"] = loss
    parts["optimizer_step"] = lambda: (
        _give_grads([p for p in model.parameters() if p.requires_grad]),
        optimizer.step(),
    )
    parts["whole_step"] = lambda: train_step(model, optimizer, batch)
    flops = {}
    for name, fn in parts.items():
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        flops[name] = counter.get_total_flops() / 1e9
    cpu: dict[str, list[float]] = {name: [] for name in parts}

    def cpu_timed(name: str, fn: Any) -> Any:
        def run() -> None:
            start = time.process_time()
            fn()
            cpu[name].append(time.process_time() - start)

        return run

    wall = common.interleaved({n: cpu_timed(n, f) for n, f in parts.items()}, max(args.rounds, 2))
    result = {}
    for name in parts:
        w, c = common.median(wall[name]), common.median(cpu[name][1:])  # the first call is interleaved's warm-up
        result[name] = {"gflop": flops[name], "wall_s": w, "cpu_s": c, "gflop_per_wall_s": flops[name] / w}
    whole = result["whole_step"]
    for r in result.values():
        r["share_of_step_cpu"] = r["cpu_s"] / whole["cpu_s"]
        r["gflop_per_cpu_s"] = r["gflop"] / r["cpu_s"] if r["cpu_s"] > 0 else 0.0
    # the ceiling in the same unit: torch's matrix products alone, per CPU second (steady under shared load)
    latent_width = model.latent_transformer.hidden_size
    decoder_width = model.bytes_decoder.hidden_size
    tokens = label_ids.numel()
    shapes = {
        "1024x1024x1024": (1024, 1024, 1024),
        f"decoder {tokens}x{decoder_width}x{decoder_width}": (tokens, decoder_width, decoder_width),
        f"latent {x.shape[0] * x.shape[1]}x{latent_width}x{4 * latent_width}": (
            x.shape[0] * x.shape[1],
            latent_width,
            4 * latent_width,
        ),
    }
    result["matmul_gflop_per_cpu_s"] = {name: matmul_gflop_per_cpu_s(*shape) for name, shape in shapes.items()}
    common.log(f"breakdown ({'with' if images else 'without'} images): {result}")
    return result


def matmul_gflop_per_cpu_s(m: int, k: int, n: int, repeats: int = 5) -> float:
    """GFLOP per CPU second (every thread's) of a float32 ``(m, k) @ (k, n)`` product: the best of 3 rounds."""
    import time

    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(repeats):
            a @ b
        best = min(best, (time.process_time() - start) / repeats)
    return 2 * m * k * n / best / 1e9


def _give_grads(params: list[torch.Tensor]) -> None:
    """Small gradients on every parameter, so an optimizer step does its full work."""
    for p in params:
        if p.grad is None:
            p.grad = torch.full_like(p, 1e-6)


# ---- report ------------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    head = (
        "config",
        "step s",
        "units/s",
        "bytes/s",
        "GFLOP/step",
        "GFLOP/s",
        "peak RSS MB",
        "t2b cold/s",
        "t2b warm/s",
    )
    rows = [
        (
            name,
            common.fmt(r["step_s"], 2),
            common.fmt(r["units_per_s"], 1),
            common.fmt(r["bytes_per_s"]),
            common.fmt(r.get("gflop_per_step", math.nan), 1),
            common.fmt(r.get("achieved_gflop_per_s", math.nan), 1),
            common.fmt(r["peak_rss_mb"]),
            common.fmt(r["text_to_batch_cold_units_per_s"]),
            common.fmt(r["text_to_batch_warm_units_per_s"]),
        )
        for name, r in results["configs"].items()
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for row in (head, *rows):
        print(
            "  ".join(
                str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(f"matrix-product calibration: {results['calibration_gflop_per_s']:.1f} GFLOP/s (1024^2 float32, same run)")
    if "reference" in results["configs"]:
        print(f"\n{NO_REFERENCE}")
    for setup, parts in results.get("breakdown", {}).items():
        print(f"\nreference setup {setup}, by component (forward + backward alone; matmul calibration above):")
        print("  part                  GFLOP   wall s   CPU s  GFLOP/s (wall)  GFLOP/CPU s  share of step CPU")
        for name, r in parts.items():
            if name == "matmul_gflop_per_cpu_s":
                continue
            print(
                f"  {name:<20} {r['gflop']:6.1f} {r['wall_s']:8.2f} {r['cpu_s']:7.2f} {r['gflop_per_wall_s']:15.1f} "
                f"{r['gflop_per_cpu_s']:12.1f} {r['share_of_step_cpu']:18.0%}"
            )
        ceiling = ", ".join(f"{k} {v:.0f}" for k, v in parts.get("matmul_gflop_per_cpu_s", {}).items())
        print(f"  torch's matrix products alone, GFLOP per CPU second: {ceiling}")
    print("(wall clock on a machine shared with other work: noisy; ratios within one run are the reliable part)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", action="store_true", help="add the reference implementation's configuration")
    parser.add_argument("--configs", nargs="+", default=None, help="run only these configurations")
    parser.add_argument("--rows", type=int, default=8, help="texts per batch (default 8)")
    parser.add_argument("--length", type=int, default=64, help="units per text (default 64)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batches", type=int, default=3, help="distinct batches cycled through")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of --breakdown's parts")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--no-isolate", action="store_true", help="run every configuration in this process (peak RSS then accumulates)"
    )
    parser.add_argument("--no-flops", action="store_true", help="skip counting FLOPs (one extra step each)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2x8, 1 step, no warm-up")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--cpu-malloc",
        choices=("auto", "default", "reuse", "return"),
        default="auto",
        help="`ilt train --cpu_malloc` for this process: auto = return for a checkpointed configuration, else reuse",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="the reference setup's step by component, with and without images: GFLOP, wall and CPU seconds (alone, "
        "without --configs, only this)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one configuration, in a fresh process
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.length, args.steps, args.warmup, args.batches, args.rounds = 2, 8, 1, 0, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    from ilt_core.text.segmentation import segment

    units = common.load_text("he", max(args.rows * args.length * args.batches, 64), segment)
    if args.child:
        common.print_result(bench_config(args.child, config_specs(True, [args.child])[args.child], units, args))
        return {}
    results: dict[str, Any] = {
        "benchmark": "model",
        "machine": machine_info(),
        "versions": package_versions(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "reference_implementation": NO_REFERENCE,
        "calibration_gflop_per_s": matmul_gflops(),
        "configs": {},
    }
    common.as_the_ilt_command()
    from ilt_core.modeling.memory import set_cpu_malloc

    malloc = args.cpu_malloc
    if malloc == "auto":
        checkpointed = any(
            s.get("activation_checkpointing") for s in config_specs(args.reference, args.configs).values()
        )
        malloc = "return" if checkpointed else "reuse"
    set_cpu_malloc(malloc)
    alone = args.breakdown and args.configs is None  # --breakdown alone runs only the breakdown
    specs = {} if alone else config_specs(args.reference, args.configs)
    for name, spec in specs.items():
        if args.no_isolate:
            results["configs"][name] = bench_config(name, spec, units, args)
        else:
            results["configs"][name] = bench_config_isolated(name, argv if argv is not None else sys.argv[1:])
        common.write_json(args.out, results)  # after each configuration: a long run interrupted keeps them
    if "reference" in results["configs"]:
        peak = results["configs"]["reference"]["peak_rss_mb"]
        results["goals"] = {"peak_rss_met": bool(peak <= REFERENCE_PEAK_RSS_GOAL_MB)}
    if args.breakdown:
        results["breakdown"] = {
            "with images": breakdown(units, args, images=True),
            "without images": breakdown(units, args, images=False),
        }
    print_report(results)
    common.write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
