"""Where a training step of ``make bench`` goes, mix by mix: data, forward, backward, clipping, optimizer.

    .venv/bin/python benchmarks/bench_step_parts.py --mixes nano nano-no-images nano-baseline-bytes
    .venv/bin/python benchmarks/bench_step_parts.py --mixes nano nano --label-rows 136 0   # one knob, A/B
    .venv/bin/python benchmarks/bench_step_parts.py --mixes nano nano-baseline-bytes --components 5  # and each part
    .venv/bin/python benchmarks/bench_step_parts.py --mixes nano nano \\
        --set 1:bytes_encoder.config.hidden_dropout_prob=0.1                            # a spec field, A/B

Each mix gets the harness's own runner (``ilt_bench.run.ILTRunner`` / ``BaselineRunner``): the same stream of
he-news training texts in the same order, the same collation, AdamW groups and gradient clipping as ``ilt bench``'s
training loop, in the same order of calls. The mixes' steps are interleaved, one step of each in turn, so that a
slower minute of the machine falls on all of them; the first ``--warmup`` steps are not counted.

Mixes: ``benchmarks/mixes`` names or YAML paths, or ``reference-setup`` / ``reference-setup-no-images`` (the
reference implementation's setup at its protocol's batch, ``ilt_bench.setups.setup_mixes``; words/s for
``bench_reference.py``'s goal). Printed per mix: text bytes a step, bytes/s and words/s over the counted steps, the
share of the packed label slots that hold a target (ILT mixes whose bytes decoder reads the packed label stream;
the rest is padding), and the mean milliseconds a step in each part (``data``: the next batch, collated;
``forward``: the loss; ``backward``; ``clip``: the gradient norm and its clipping; ``optimizer``: AdamW's step and
zeroing the gradients).

``--label-rows``: one value per mix, in order: the ILT bytes decoder's packed label rows, in tokens (0 keeps the
model's own). ``--ladder-growth``: one value per mix: the growth of the eager capacity ladder its batches are
collated with (``ilt_core.text.image_packing.FINE_GROWTH`` while it collates; 0 keeps the library's). ``--set
I:path=value``: a spec field of the I-th mix (0-based, dotted path, a YAML value). ``--attr I:role.name=value``:
an attribute of the I-th mix's built component (a fast path's switch: ``bytes_encoder.group_lengths=false``), or
of the model itself (``model.unit_stream=null``: the bytes encoder reads the padded bytes); the mix's batch shapes
are made again after it.

``--components N``: after the steps, each component's forward and backward alone (an ILT mix's image encoder, bytes
encoder, latent and bytes decoder; a baseline's transformer), run again on the very inputs it got in the last
counted step (recorded on the way into it), a gradient of ones on its outputs, median of N; then, for each ILT mix
against each baseline, the bytes/s a step could reach if it took only its bytes decoder, only its components, or
its components with its data and optimizer parts (bytes/s and words/s): what no work between the components
(masks, gathers, the loss, clipping) could beat.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (ilt_bench imports it); see ilt_bench.common

import torch  # noqa: E402
import yaml  # noqa: E402
from ilt_bench import common  # noqa: E402
from ilt_bench.run import BaselineRunner, ILTRunner, adamw, read_lines, text_stream  # noqa: E402
from ilt_bench.setups import add_mixes_argument, setup_mixes  # noqa: E402

from ilt_core.errors import ILTError  # noqa: E402
from ilt_core.specs.spec import apply_overrides  # noqa: E402
from ilt_core.text import image_packing  # noqa: E402

PARTS = ("data", "forward", "backward", "clip", "optimizer")
#: an ILT model's components that run in a training step, in the order they run
COMPONENTS = ("image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder")
DATA = Path(__file__).resolve().parents[1] / "data" / "he-news"


@contextlib.contextmanager
def ladder(growth: float) -> Iterator[None]:
    """The eager capacity ladder at ``growth`` inside (0: the library's own)."""
    before = image_packing.FINE_GROWTH
    image_packing.FINE_GROWTH = growth or before
    try:
        yield
    finally:
        image_packing.FINE_GROWTH = before


def _detached(value: Any) -> Any:
    """``value`` with every tensor in it detached and copied (a leaf that wants a gradient where the original had
    one), tuples, lists and dicts followed."""
    if isinstance(value, torch.Tensor):
        leaf = value.detach().clone()
        return leaf.requires_grad_(value.requires_grad and leaf.is_floating_point())
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _grad_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a component's output that carry a gradient (a ModelOutput, a dataclass such as
    ``protocols.LatentOutput``, a tuple or a tensor)."""
    if isinstance(value, torch.Tensor):
        return [value] if value.requires_grad else []
    if isinstance(value, dict):  # transformers' ModelOutput is an OrderedDict
        value = list(value.values())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _grad_tensors(v)]
    return []


#: the methods through which an ILT model calls its components (the image encoder's packed images, the bytes
#: decoder's byte embeddings), recorded by :meth:`Arm.component_ms`
ENTRY_METHODS = ("forward", "encode_packed", "embed")


@contextlib.contextmanager
def recording(module: torch.nn.Module, method: str, calls: list[tuple[str, tuple, dict]]) -> Iterator[None]:
    """Record every top-level call of ``module.method`` (name, arguments) into ``calls`` inside (an instance
    attribute shadows the class's method; a call from inside another recorded call is part of that one)."""
    original = getattr(module, method)

    def record(*args: Any, **kwargs: Any) -> Any:
        if not any(getattr(module, f"_recording_{m}", False) for m in ENTRY_METHODS):
            calls.append((method, args, kwargs))
        setattr(module, f"_recording_{method}", True)
        try:
            return original(*args, **kwargs)
        finally:
            setattr(module, f"_recording_{method}", False)

    setattr(module, method, record)
    try:
        yield
    finally:
        delattr(module, method)
        for m in ENTRY_METHODS:
            module.__dict__.pop(f"_recording_{m}", None)


def component_seconds(module: torch.nn.Module, calls: list[tuple[str, tuple, dict]], repeats: int) -> tuple[float, int]:
    """Median seconds of every captured call of ``module`` run again alone, forward and backward (a gradient of
    ones on each output that carries one; the parameters' gradients start empty, as after ``zero_grad``), and how
    many of its parameters got a gradient (0: no backward ran)."""
    rounds = []
    with_grad = 0
    for _ in range(repeats):
        inputs = [(method, _detached(args), _detached(kwargs)) for method, args, kwargs in calls]
        for p in module.parameters():
            p.grad = None
        start = time.perf_counter()
        for method, args, kwargs in inputs:
            outputs = _grad_tensors(getattr(module, method)(*args, **kwargs))
            if outputs:
                torch.autograd.backward(outputs, [torch.ones_like(t) for t in outputs])
        rounds.append(time.perf_counter() - start)
        with_grad = sum(p.grad is not None for p in module.parameters())
    for p in module.parameters():
        p.grad = None
    return sorted(rounds)[len(rounds) // 2], with_grad


class Arm:
    """One mix's runner, optimizer and text stream, and its counted steps."""

    def __init__(self, mix: Any, label_rows: int, growth: float, train_lines: list[str], eval_lines: list[str]) -> None:
        self.growth = growth
        job = {"name": mix.name, "kind": mix.kind, "spec": mix.spec, "bench": mix.bench.model_dump()}
        settings = {"seed": 0}
        cpu = torch.device("cpu")
        if mix.kind == "ilt":
            self.runner: Any = ILTRunner(job, settings, cpu)
            if label_rows:
                if self.runner.model.label_stream is None:
                    raise ILTError(f"bench_step_parts: {mix.name}'s bytes decoder takes no packed label rows")
                self.runner.model.label_stream.row_tokens = label_rows
                self.runner.shapes = self.runner.model.fixed_shapes(self.runner.batch_size, self.runner.block_units)
        else:
            self.runner = BaselineRunner(job, settings, cpu, train_lines, eval_lines)
        self.runner.train()
        self.optimizer = adamw(self.runner.param_groups("width", 1e-3), 1e-3)
        self.texts = text_stream(train_lines, 0)
        self.seconds = {part: 0.0 for part in PARTS}
        self.bytes = self.units = self.steps = 0
        self.label_slots = self.label_targets = 0
        self.last_batch: Any = None
        self.component_grads: dict[str, int] = {}

    def components(self) -> dict[str, torch.nn.Module]:
        """The modules timed alone by :meth:`component_ms`: an ILT model's components, a baseline's transformer."""
        model = getattr(self.runner, "model", None)
        if model is None:
            return {"transformer": self.runner.lm.model}
        return {role: getattr(model, role) for role in COMPONENTS if getattr(model, role, None) is not None}

    def component_ms(self, repeats: int) -> dict[str, float]:
        """Milliseconds of each component's forward and backward alone, on the inputs it got in the forward of the
        last counted batch (captured while that batch's loss is computed again)."""
        modules = self.components()
        calls: dict[str, list[tuple[str, tuple, dict]]] = {name: [] for name in modules}
        with ExitStack() as stack:
            for name, module in modules.items():
                for method in ENTRY_METHODS:
                    if callable(getattr(module, method, None)):
                        stack.enter_context(recording(module, method, calls[name]))
            self.runner.loss(self.last_batch)
        timed = {name: component_seconds(modules[name], calls[name], repeats) for name in modules}
        self.component_grads = {name: grads for name, (_, grads) in timed.items()}
        return {name: 1000 * seconds for name, (seconds, _) in timed.items()}

    def step(self, counted: bool) -> None:
        """One training step as ``ilt bench``'s loop runs it, each part timed."""
        runner, clock = self.runner, time.perf_counter
        t0 = clock()
        with ladder(self.growth):
            batch, units, nbytes = runner.next_batch(self.texts)
        t1 = clock()
        loss = runner.loss(batch)
        t2 = clock()
        loss.backward()
        t3 = clock()
        torch.nn.utils.clip_grad_norm_([p for p in runner.parameters() if p.grad is not None], 1.0)
        t4 = clock()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t5 = clock()
        if counted:
            for part, seconds in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                self.seconds[part] += seconds
            self.bytes += nbytes
            self.units += units
            self.steps += 1
            self.last_batch = batch
            targets = getattr(batch, "decoder_targets", None)
            if targets is not None:
                self.label_slots += targets.numel()
                self.label_targets += int((targets != -100).sum())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_mixes_argument(parser)
    parser.add_argument("--steps", type=int, default=25, help="steps per mix, interleaved (default 25)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps not counted (default 3)")
    parser.add_argument("--label-rows", type=int, nargs="+", help="per mix: label row tokens (0: the model's)")
    parser.add_argument(
        "--ladder-growth", type=float, nargs="+", help="per mix: eager ladder growth (0: the library's)"
    )
    parser.add_argument("--set", action="append", default=[], help="I:path=value, a spec field of the I-th mix")
    parser.add_argument(
        "--attr", action="append", default=[], help="I:role.name=value, an attribute of the I-th mix's component"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--train-file", type=Path, default=DATA / "train.txt", help="one text per line")
    parser.add_argument("--eval-file", type=Path, default=DATA / "validation.txt", help="the baselines' tokenizers")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 steps, 1 not counted")
    parser.add_argument(
        "--components", type=int, default=0, help="time each component's forward+backward alone, median of N"
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 4, 1
    if args.steps <= args.warmup:
        raise ILTError(f"bench_step_parts: --steps ({args.steps}) must exceed --warmup ({args.warmup})")
    rows = args.label_rows or [0] * len(args.mixes)
    growths = args.ladder_growth or [0.0] * len(args.mixes)
    for flag, values in (("--label-rows", rows), ("--ladder-growth", growths)):
        if len(values) != len(args.mixes):
            raise ILTError(f"bench_step_parts: {flag} has {len(values)} values for {len(args.mixes)} mixes")
    mixes = [copy.deepcopy(setup_mixes([name])[0]) for name in args.mixes]
    for assignment in args.set:
        index, sep, rest = assignment.partition(":")
        if not sep or not index.isdigit() or int(index) >= len(mixes):
            raise ILTError(f"bench_step_parts: --set expects I:path=value with I < {len(mixes)}, got {assignment!r}")
        mix = mixes[int(index)]
        mix.spec = apply_overrides(mix.spec, [rest], source="bench_step_parts --set")
    torch.set_num_threads(args.threads)
    common.as_the_ilt_command(train=True)
    train_lines, eval_lines = read_lines(args.train_file), read_lines(args.eval_file, 50)
    arms = [Arm(mix, r, g, train_lines, eval_lines) for mix, r, g in zip(mixes, rows, growths, strict=True)]
    for assignment in args.attr:
        index, _, rest = assignment.partition(":")
        target, sep, value = rest.partition("=")
        role, _, name = target.partition(".")
        model = getattr(arms[int(index)].runner, "model", None) if index.isdigit() and int(index) < len(arms) else None
        component = model if role == "model" else getattr(model, role, None)
        if not sep or component is None or not hasattr(component, name):
            raise ILTError(
                f"bench_step_parts: --attr expects I:role.name=value naming an ILT mix's attribute, got {assignment!r}"
            )
        setattr(component, name, yaml.safe_load(value))
        runner = arms[int(index)].runner
        runner.shapes = model.fixed_shapes(runner.batch_size, runner.block_units)  # what the model's packings say now
    common.log(f"{args.steps} steps of each of {len(arms)} mixes, interleaved; the first {args.warmup} not counted")
    for step in range(args.steps):
        for arm in arms:
            arm.step(counted=step >= args.warmup)

    print(
        "| # | mix | label rows | ladder | sets | bytes a step | bytes/s | words/s | label slots filled | "
        + " | ".join(f"{p}, ms" for p in PARTS)
        + " |"
    )
    print("| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in PARTS) + " |")
    result: dict[str, Any] = {"arms": []}
    for i, (arm, mix) in enumerate(zip(arms, mixes, strict=True)):
        total = sum(arm.seconds.values())
        sets = [a.partition(":")[2] for a in args.set + args.attr if a.partition(":")[0] == str(i)]
        stream = arm.runner.model.label_stream if mix.kind == "ilt" else None
        row_tokens = stream.row_tokens if stream is not None else "-"
        figures = {
            "mix": mix.name,
            "label_rows": row_tokens,
            "ladder_growth": (arm.growth or image_packing.FINE_GROWTH) if mix.kind == "ilt" else None,
            "sets": sets,
            "bytes_per_step": arm.bytes / arm.steps,
            "bytes_per_second": arm.bytes / total,
            "units_per_step": arm.units / arm.steps,
            "units_per_second": arm.units / total,
            "label_fill": arm.label_targets / arm.label_slots if arm.label_slots else None,
            **{f"{p}_ms": 1000 * arm.seconds[p] / arm.steps for p in PARTS},
        }
        result["arms"].append(figures)
        parts = " | ".join(f"{figures[f'{p}_ms']:.1f}" for p in PARTS)
        print(
            f"| {i} | {mix.name} | {row_tokens} | {figures['ladder_growth'] or '-'} | {', '.join(sets) or '-'} "
            f"| {figures['bytes_per_step']:,.0f} | {figures['bytes_per_second']:,.0f} "
            f"| {figures['units_per_second']:,.1f} "
            f"| {'-' if figures['label_fill'] is None else format(figures['label_fill'], '.1%')} | {parts} |"
        )
    if args.components:
        print_components(arms, mixes, result, args.components)
    if args.out:
        common.write_json(args.out, result)
    return result


def print_components(arms: list[Arm], mixes: list[Any], result: dict[str, Any], repeats: int) -> None:
    """Each component's forward and backward alone (ms a step) and what they allow against each baseline."""
    print(f"\nEach component's forward and backward alone, on the last counted batch's inputs, median of {repeats}:")
    print("| # | mix | component | ms a step | share of the step |")
    print("| ---: | --- | --- | ---: | ---: |")
    for i, (arm, mix, figures) in enumerate(zip(arms, mixes, result["arms"], strict=True)):
        step_ms = sum(figures[f"{p}_ms"] for p in PARTS)
        figures["components_ms"] = arm.component_ms(repeats)
        figures["components_parameters_with_grad"] = arm.component_grads
        for name, ms in figures["components_ms"].items():
            print(f"| {i} | {mix.name} | {name} | {ms:.1f} | {ms / step_ms:.0%} |")
    baselines = [(m, f) for m, f in zip(mixes, result["arms"], strict=True) if m.kind != "ilt"]
    for mix, figures in zip(mixes, result["arms"], strict=True):
        if mix.kind != "ilt":
            continue
        parts = figures["components_ms"]
        floors = {  # each adds the next part of the step to the time no faster step can go below
            "its bytes decoder alone": parts.get("bytes_decoder", 0.0),
            "its components alone": sum(parts.values()),
            "its components, data and optimizer": sum(parts.values()) + figures["data_ms"] + figures["optimizer_ms"],
        }
        for name, ms in floors.items():
            ceiling = figures["bytes_per_step"] / (ms / 1000)
            against = ", ".join(
                f"{ceiling / other['bytes_per_second']:.2f}x {base.name}'s measured" for base, other in baselines
            )
            words = figures["units_per_step"] / (ms / 1000)
            print(
                f"{mix.name}: if a step took only {name} ({ms:.1f} ms): {ceiling:,.0f} bytes/s, {words:,.1f} words/s"
                + (f" ({against})" if against else "")
            )
            figures.setdefault("ceilings", {})[name] = ceiling
            figures.setdefault("word_ceilings", {})[name] = words


if __name__ == "__main__":
    main()
