"""Does each CPU layer still pay? Each of ILT's CPU-only layers switched off alone, against the step with all on.

    .venv/bin/python benchmarks/bench_cpu_layers.py --text ../shared/data/he_news_train.txt --rounds 5
    .venv/bin/python benchmarks/bench_cpu_layers.py --text T.txt --compiled          # + the compiled step
    .venv/bin/python benchmarks/bench_cpu_layers.py --text T.txt --allocator-rounds 3  # + glibc's allocator settings
    .venv/bin/python benchmarks/bench_cpu_layers.py --text T.txt --quick                # smoke run

The layers (CPU float32 only; each steps aside elsewhere, and all but the products while compiling): the linear
layers' products through numpy (``ilt_core/modeling/products.py``; inside a compiled graph the operator
``ilt::numpy_mm``), Llama-style RMSNorm and rotary embeddings in fewer passes
(``ilt_hf/fast_norm.py``, ``fast_rope.py``), and the
fused inference steps of the encoders, the GPT-NeoX latent and the greedy byte loop (``ilt_hf/fast_vit.py``,
``fast_bert.py``, ``fast_neox.py``, ``fast_greedy.py``). The bytes encoder's length groups (``ilt_hf/encoder.py``)
serve only batches collated to their own sizes (``ilt train --no_fixed_shapes``): fixed-shape batches give it the
units' bytes packed into rows (``ilt_core/text/byte_packing.py``), so no arm here switches them.

Training: one model of ``--preset`` (modality dropout off; or the reference setup, ``--preset reference-setup`` or
``reference-setup-no-images``), ``--rows`` x ``--units`` batches cut from the text and
collated as ``ilt train`` collates them (fixed shapes; the capacities grown over every batch first, so all arms and
the compiled step see one shape), one step (forward, backward, fused AdamW) per arm per round, arms interleaved
in every round (A B C ... A B C ...): ``all on`` (the default), each layer off alone, ``all off``, and with
``--compiled`` the step compiled as ``ilt train --torch_compile`` compiles it (``compile_arguments``: one graph,
static shapes, inductor's CPU options; compiled in the warm-up rounds; inside the graph every CPU layer but the
products steps aside), with the products through numpy (the default) and through torch, and without
``compile_options`` (inductor's own random numbers for dropout). Inference: greedy generation of
``--rows`` prompts and a scoring forward (``torch.inference_mode``), every component's fast paths on and off (the
products through numpy on in both), interleaved.
``--allocator-rounds N``: the default training step in fresh processes with ``ilt train --cpu_malloc`` ``default``,
``reuse`` (``ilt train``'s default, which the in-process arms run under) and ``return``, interleaved over N rounds,
``--rounds`` steps each after one untimed (glibc's settings cannot be undone inside one process);
``--no-training`` leaves out the in-process training arms.

Printed: per arm the median seconds and its ratio to ``all on`` (above 1: that arm is slower, so the layer pays).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (ilt_bench imports it); see ilt_bench.common

import torch  # noqa: E402
from ilt_bench import common  # noqa: E402
from ilt_bench.machine import machine_info, package_versions  # noqa: E402
from ilt_bench.setups import REFERENCE_SETUPS, make_batches, reference_spec, train_step  # noqa: E402

from ilt_core.modeling.compiling import compile_arguments  # noqa: E402
from ilt_core.modeling.products import set_cpu_products  # noqa: E402

NORM, ROPE = "ilt_hf.fast_norm", "ilt_hf.fast_rope"


def switch_layers(model: Any, products: bool, norm: bool, rope: bool, groups: bool) -> None:
    """Each CPU training layer of ``model`` on or off (the hf plugin's swapped classes put back for off)."""
    from ilt_hf.class_swap import unswap_classes
    from ilt_hf.fast_norm import swap_rms_norms
    from ilt_hf.fast_rope import swap_rotary_attention

    set_cpu_products(model, "numpy" if products else "torch")
    swap_rms_norms(model) if norm else unswap_classes(model, NORM)
    swap_rotary_attention(model) if rope else unswap_classes(model, ROPE)
    if hasattr(model.bytes_encoder, "group_lengths"):
        model.bytes_encoder.group_lengths = groups


def switch_fused(model: Any, enabled: bool) -> None:
    """Every component's fast paths on or off (``protocols.FastPaths``: in generation, their fused inference steps;
    the decoder's off runs the same byte loop through its own forward), the products through numpy left on."""
    for role in ("image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder"):
        switch = getattr(getattr(model, role, None), "set_fast_paths", None)
        if switch is not None:
            switch(enabled)


ON = {"products": True, "norm": True, "rope": True, "groups": True}
TRAIN_ARMS: dict[str, dict[str, bool]] = {
    "all on (default)": ON,
    "torch products": {**ON, "products": False},
    "transformers RMSNorm": {**ON, "norm": False},
    "transformers rotary": {**ON, "rope": False},
    "all off": dict.fromkeys(ON, False),
}
#: the compiled step's arms (``--compiled``): the layers as set while it runs (and while it is compiled)
COMPILED_ARMS: dict[str, dict[str, bool]] = {
    "compiled (numpy products)": ON,
    "compiled, torch products": {**ON, "products": False},
    "compiled, inductor's random numbers": ON,  # without compile_options: dropout's masks drawn by inductor
}


def model_and_batches(args: argparse.Namespace) -> tuple[Any, list[Any], list[str]]:
    from ilt_core.modeling.model import build_model
    from ilt_core.specs.spec import spec_variant
    from ilt_core.text.segmentation import segment

    if args.preset in REFERENCE_SETUPS:
        spec = reference_spec(REFERENCE_SETUPS[args.preset])
    else:
        spec = spec_variant(args.preset, "full", modality_dropout=0.0)
    model = build_model(spec, seed=0)
    units = segment(args.text.read_text(encoding="utf-8"))
    shapes = model.fixed_shapes(args.rows, args.units + 1, grow_only=True)
    make_batches(model, units, args.rows, args.units, args.batches, shapes=shapes)  # grows the capacities
    batches = make_batches(model, units, args.rows, args.units, args.batches, shapes=shapes)
    return model, batches, units


def bench_training(model: Any, batches: list[Any], args: argparse.Namespace) -> dict[str, list[float]]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    arms: dict[str, Callable[[], Any]] = {}
    cycle = {"i": 0}

    def step(stepped: Any) -> Callable[[], float]:
        return lambda: train_step(stepped, optimizer, batches[cycle["i"] % len(batches)])

    for name in TRAIN_ARMS:
        arms[name] = step(model)
    if args.compiled:
        compiled = torch.compile(model, **compile_arguments("cpu"))
        inductor_random = torch.compile(model, **{**compile_arguments("cpu"), "options": None})
        for name in COMPILED_ARMS:
            # one graph per setting (and per compile options), each kept after its first round
            arms[name] = step(inductor_random if "random" in name else compiled)

    def setup(name: str) -> None:
        if name == next(iter(arms)):
            cycle["i"] += 1  # a new batch each round, the same for every arm of the round
        switch_layers(model, **{**TRAIN_ARMS, **COMPILED_ARMS}[name])

    # the compiled arm compiles once per batch shape: one warm-up round per batch
    return common.interleaved(arms, args.rounds, warmup=len(batches) if args.compiled else 1, setup=setup)


def bench_inference(model: Any, batches: list[Any], units: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from ilt_core.generation.loop import generate

    switch_layers(model, **TRAIN_ARMS["all on (default)"])
    model.eval()
    prompts = ["".join(p) for p in common.chunk_texts(units, args.rows, 16)]

    def gen() -> Any:
        return generate(model, prompts, max_new_units=args.new_units)

    def score() -> Any:
        with torch.inference_mode():
            return model(**batches[0].model_inputs()).loss

    arms = {"generate, fused on": gen, "generate, fused off": gen, "score, fused on": score, "score, fused off": score}
    texts: dict[bool, Any] = {}

    def setup(name: str) -> None:
        switch_fused(model, name.endswith("on"))

    times = common.interleaved(arms, args.rounds, warmup=1, setup=setup)
    for enabled in (True, False):
        switch_fused(model, enabled)
        texts[enabled] = gen()
    return {"times": times, "same_texts": texts[True] == texts[False]}


def allocator_rounds(args: argparse.Namespace) -> dict[str, list[float]]:
    """The default training step in a fresh process per ``--cpu_malloc`` setting, interleaved over rounds."""
    times: dict[str, list[float]] = {p: [] for p in ("default", "reuse", "return")}
    for r in range(args.allocator_rounds):
        for policy in times:
            argv = [sys.executable, str(Path(__file__).resolve()), "--child-malloc", policy, "--text", str(args.text)]
            argv += ["--preset", args.preset, "--rows", str(args.rows), "--units", str(args.units)]
            argv += ["--rounds", str(args.rounds), "--batches", str(args.batches), "--threads", str(args.threads)]
            common.log(f"allocator round {r + 1}: {policy}")
            times[policy] += common.run_child(argv, f"bench_cpu_layers: --cpu_malloc {policy}")["seconds"]
    return times


def child_malloc(args: argparse.Namespace) -> dict[str, Any]:
    from ilt_core.modeling.memory import set_cpu_malloc

    set_cpu_malloc(args.child_malloc)
    model, batches, _ = model_and_batches(args)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    train_step(model, optimizer, batches[0])  # warm-up
    steps = [batches[i % len(batches)] for i in range(args.rounds)]
    return {"seconds": [common.timed(lambda b=b: train_step(model, optimizer, b))[0] for b in steps]}


def table(times: dict[str, list[float]], baseline: str) -> list[str]:
    base = common.median(times[baseline])
    lines = ["| arm | median s | rounds | / " + baseline + " |", "| --- | ---: | ---: | ---: |"]
    for name, values in times.items():
        med = common.median(values)
        lines.append(f"| {name} | {med:.3f} | {len(values)} | {med / base:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", type=Path, required=True, help="plain UTF-8 text the batches are cut from")
    p.add_argument("--preset", default="tiny", help="model preset (default tiny), or " + " / ".join(REFERENCE_SETUPS))
    p.add_argument("--rows", type=int, default=8, help="texts per batch (default 8)")
    p.add_argument("--units", type=int, default=128, help="units per text (default 128)")
    p.add_argument("--batches", type=int, default=3, help="distinct batches cycled through (default 3)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--new-units", type=int, default=8, help="units each prompt is continued by (default 8)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--compiled", action="store_true", help="add the step compiled as ilt train --torch_compile does")
    p.add_argument("--no-inference", action="store_true", help="skip the fused inference steps' arms")
    p.add_argument("--no-training", action="store_true", help="skip the training layers' arms")
    p.add_argument("--allocator-rounds", type=int, default=0, help="rounds of the --cpu_malloc settings (default 0)")
    p.add_argument("--out", type=Path, help="write the figures here as JSON")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 x 8 units, 1 round, 1 batch, 1 new unit")
    p.add_argument("--child-malloc", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.units, args.rounds, args.batches, args.new_units = 2, 8, 1, 1, 1
    if not args.text.is_file():
        raise SystemExit(f"bench_cpu_layers: --text {args.text}: no such file")
    torch.set_num_threads(args.threads)
    common.as_the_ilt_command(train=not args.child_malloc)  # a child sets its own --cpu_malloc
    if args.child_malloc:
        common.print_result(child_malloc(args))
        return 0
    model, batches, units = model_and_batches(args)
    result: dict[str, Any] = {"machine": machine_info(), "packages": package_versions(), "args": vars(args)}
    lines: list[str] = []
    if not args.no_training:
        result["training"] = bench_training(model, batches, args)
        lines += [f"## training step, {args.preset} {args.rows} x {args.units} units, eager fp32", ""]
        lines += table(result["training"], "all on (default)")
    if not args.no_inference:
        inference = bench_inference(model, batches, units, args)
        result["inference"] = inference
        lines += ["", f"## inference, {args.rows} prompts (same texts fused on and off: {inference['same_texts']})", ""]
        lines += table(inference["times"], "generate, fused on")
    if args.allocator_rounds:
        result["allocator"] = allocator_rounds(args)
        lines += [
            "",
            f"## training step, {args.preset} {args.rows} x {args.units} units, fresh process per ilt train "
            "--cpu_malloc setting",
            "",
        ]
        lines += table(result["allocator"], "default")
    print("\n".join(lines))
    common.write_json(args.out, {**result, "args": {k: str(v) for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
