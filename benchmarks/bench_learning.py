"""Learning per step at the start of training: ILT against the byte baseline, and what changes it.

    python benchmarks/bench_learning.py                       # the study of benchmarks/REPORT.md
    python benchmarks/bench_learning.py --steps 40 --variants bytes=nano-baseline-bytes,ilt=nano-no-images
    python benchmarks/bench_learning.py --quick --out /tmp/learning   # a smoke run

Each variant is ``LABEL=MIX[+TREATMENT...]``: a benchmark mix (a name in ``benchmarks/mixes/`` or a YAML path)
and treatments applied to the built model before training:

- ``torch-init``: the two mappings re-drawn at ``nn.Linear``'s own initialisation;
- ``no-dropout``: every dropout module off (the bytes encoder's BERT has 0.1 in the presets);
- ``lr-<part>-<factor>``: that part's learning rate times ``factor`` (parts: ``image_encoder``,
  ``bytes_encoder``, ``latent_transformer``, ``bytes_decoder``, ``mappings``);
- ``lr-width``: every component at the rate times the latent's width over its own (what ``ilt train`` and
  ``ilt bench`` do: :func:`ilt_core.modeling.parameters.learning_rate_groups`); without it, one rate for every
  component;
- ``decay-all``: weight decay on every parameter (what ``ilt bench`` did before its groups became ``ilt train``'s,
  which leave norms and biases undecayed);
- ``enc-std-<s>`` / ``dec-std-<s>``: the encoder / decoder mapping's outputs at about std ``s`` (weights
  ``N(0, s^2 / fan_in)``, bias 0), the scale of the token embeddings they stand in for;
- ``dec-bos-<s>``: the decoder mapping's bias at the decoder's BOS embedding, its weights as ``dec-std-<s>``;
- ``warmup-<steps>``: linear warm-up over that many steps instead of the harness's 10.

Every variant trains on the same texts in the same order (the ``ilt bench`` stream, seed ``--seed``) with the
harness's optimiser (AdamW 0.9/0.95, weight decay 0.1 except on norms and biases, clipping 1.0; the parameter
groups of ``ilt train``) and evaluates held-out bits-per-byte at
fixed steps. Writes ``learning.json`` and ``learning.png`` (bits-per-byte against steps and training bytes)
into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see ilt_bench.common

import torch  # noqa: E402
from ilt_bench.mixes import resolve_mixes  # noqa: E402
from ilt_bench.run import WEIGHT_DECAY, BaselineRunner, ILTRunner, lr_at, read_lines, text_stream  # noqa: E402
from torch import nn  # noqa: E402

from ilt_core.modeling.parameters import learning_rate_groups  # noqa: E402

DEFAULT_VARIANTS = (
    "bytes=nano-baseline-bytes",
    "bytes-96=benchmarks/results/learning/bytes-96.yaml",
    "ilt-one-rate=nano-no-images",
    "ilt-width-rates=nano-no-images+lr-width",
    "ilt-width-rates-small-mappings=nano-no-images+lr-width+enc-std-0.02+dec-std-0.02",
)
PARTS = ("image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder", "mappings")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def eval_steps(steps: int) -> list[int]:
    """0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... up to ``steps`` (denser at the start, where the gap opens)."""
    out, s = [0, 1, 2, 3], 4
    while s < steps:
        out += [s, s * 3 // 2]
        s *= 2
    return sorted({x for x in out if x < steps} | {steps})


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    """``LABEL=MIX+T1+T2`` -> (label, mix, [treatments])."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise SystemExit(f"--variants: {text!r}: expected LABEL=MIX[+TREATMENT...]")
    mix, *treatments = rest.split("+")
    for t in treatments:
        ok = t in ("torch-init", "no-dropout", "lr-width", "decay-all") or t.startswith("warmup-")
        if t.startswith(("enc-std-", "dec-std-", "dec-bos-")):
            ok = _is_float(t[8:])
        if t.startswith("lr-") and t != "lr-width":
            part, _, factor = t[3:].rpartition("-")
            ok = part in PARTS and _is_float(factor)
        if not ok:
            raise SystemExit(f"--variants: unknown treatment {t!r} (see --help)")
    return label, mix, treatments


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def part_of(name: str) -> str:
    """The part a parameter name of an ILT model belongs to."""
    first = name.split(".")[0]
    return "mappings" if first in ("encoder_mapping", "decoder_mapping") else first


def apply_treatments(runner: Any, treatments: list[str]) -> None:
    model = getattr(runner, "model", None) or runner.lm.model
    for t in treatments:
        if t == "torch-init":
            if not hasattr(model, "encoder_mapping"):
                raise SystemExit("torch-init applies to ILT mixes only")
            torch.manual_seed(12345)
            model.encoder_mapping.reset_parameters()
            model.decoder_mapping.reset_parameters()
        elif t.startswith(("enc-std-", "dec-std-")):
            # the mapping's outputs at about this standard deviation for unit-variance inputs
            linear = model.encoder_mapping if t.startswith("enc") else model.decoder_mapping
            with torch.no_grad():
                linear.weight.normal_(0.0, float(t[8:]) / math.sqrt(linear.in_features))
                linear.bias.zero_()
        elif t.startswith("dec-bos-"):
            # a start token plus a small share of the latent: the decoder starts as a byte LM after BOS
            from ilt_core.text.byte_tokenizer import BOS_ID

            linear = model.decoder_mapping
            with torch.no_grad():
                linear.weight.normal_(0.0, float(t[8:]) / math.sqrt(linear.in_features))
                linear.bias.copy_(model.bytes_decoder.embed(torch.tensor([BOS_ID]))[0])
        elif t == "no-dropout":
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
            for module in model.modules():  # transformers' attention reads the config's dropout rate
                if hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float):
                    module.attention_dropout = 0.0


def param_groups(runner: Any, treatments: list[str], lr: float) -> list[dict[str, Any]]:
    """``ilt train``'s groups (width rates with ``lr-width``, else one rate; ``decay-all``: decay everything), each
    group split by part where an ``lr-<part>-<factor>`` treatment sets that part's factor."""
    model = getattr(runner, "model", None) or runner.lm.model
    decay_names = [n for n, _ in model.named_parameters()] if "decay-all" in treatments else None
    scaling = "width" if "lr-width" in treatments else "none"
    groups = learning_rate_groups(model, lr, scaling, weight_decay=WEIGHT_DECAY, decay_names=decay_names)
    overrides = {}
    for t in treatments:
        if t.startswith("lr-") and t != "lr-width":
            part, _, factor = t[3:].rpartition("-")
            overrides[part] = float(factor)
    if not overrides:
        return groups
    names = {id(p): n for n, p in model.named_parameters()}
    split = []
    for g in groups:
        by_part: dict[str, list] = {}
        for p in g["params"]:
            by_part.setdefault(part_of(names[id(p)]), []).append(p)
        for part, params in by_part.items():
            factor = overrides.get(part, g["factor"])  # the peak rate x this, in place of the width factor
            split.append({**g, "params": params, "factor": factor, "lr": lr * factor})
    return split


def run_variant(label: str, mix: Any, treatments: list[str], args: argparse.Namespace, texts: dict, seed: int) -> dict:
    """Train one variant for ``args.steps`` steps from ``seed``; bits-per-byte at :func:`eval_steps`."""
    settings = {"seed": seed, "tokenizer_dir": str(Path(args.out) / "tokenizers"), "train_sha256": texts["sha"]}
    device = torch.device("cpu")
    torch.manual_seed(seed)
    spec = mix.to_dict()
    if mix.kind == "ilt":
        runner: Any = ILTRunner(spec, settings, device)
    else:
        runner = BaselineRunner(spec, settings, device, texts["train"], texts["eval"])
    apply_treatments(runner, treatments)
    warmup = next((int(t.split("-")[1]) for t in treatments if t.startswith("warmup-")), 10)
    groups = param_groups(runner, treatments, args.lr)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))  # weight decay: per group
    stream = text_stream(texts["train"], seed)
    torch.manual_seed(seed)
    points, nbytes, start = [], 0, time.perf_counter()
    wanted = eval_steps(args.steps)
    for step in range(args.steps + 1):
        if step in wanted:
            bpb = runner.bits_per_byte(texts["eval"]).bits_per_byte
            points.append({"step": step, "train_bytes": nbytes, "bits_per_byte": bpb})
            log(f"{label} seed {seed}: step {step} ({nbytes:,} bytes) {bpb:.3f} bits/byte")
        if step == args.steps:
            break
        runner.train()
        # the harness's schedule with this budget (in steps); warm-up as the treatment says
        peak = lr_at(step, step / args.steps, args.lr) / min(1.0, (step + 1) / 10)
        for g in optimizer.param_groups:
            g["lr"] = peak * min(1.0, (step + 1) / warmup) * g["factor"]
        batch, _, batch_bytes = runner.next_batch(stream)
        loss = runner.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in runner.parameters() if p.grad is not None], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        nbytes += batch_bytes
        if not math.isfinite(float(loss.detach())):
            log(f"{label}: loss {float(loss.detach())} at step {step}; stopped")
            break
    return {
        "label": label,
        "mix": mix.name,
        "kind": mix.kind,
        "seed": seed,
        "treatments": treatments,
        "parameters": runner.parameter_counts(),
        "seconds": time.perf_counter() - start,
        "curve": points,
    }


def merge_seeds(runs: list[dict]) -> dict:
    """One variant's seeds: the mean curve with min and max of bits-per-byte at each point, and the runs."""
    curve = []
    for points in zip(*(r["curve"] for r in runs), strict=True):
        values = [p["bits_per_byte"] for p in points]
        curve.append(
            {
                "step": points[0]["step"],
                "train_bytes": sum(p["train_bytes"] for p in points) / len(points),
                "bits_per_byte": sum(values) / len(values),
                "min": min(values),
                "max": max(values),
            }
        )
    first = runs[0]
    keep = ("label", "mix", "kind", "treatments", "parameters")
    return {**{k: first[k] for k in keep}, "seeds": [r["seed"] for r in runs], "curve": curve, "runs": runs}


def init_scales(mix: Any, texts: list[str], seed: int) -> dict[str, float]:
    """Standard deviations at initialisation: the encoder mapping's outputs (unit embeddings), the decoder
    mapping's (prefixes) on ``texts``, and the decoder's byte embeddings they sit beside."""
    from ilt_core.modeling.model import build_model

    model = build_model(mix.spec, seed=seed).eval()
    seen: dict[str, float] = {}
    model.encoder_mapping.register_forward_hook(lambda m, i, o: seen.__setitem__("unit_embeddings", float(o.std())))
    model.decoder_mapping.register_forward_hook(lambda m, i, o: seen.__setitem__("decoder_prefixes", float(o.std())))
    with torch.no_grad():
        model(**model.processor(texts).model_inputs())
        seen["decoder_byte_embeddings"] = float(model.bytes_decoder.embed(torch.arange(256)[None]).std())
    return seen


def table_cell(point: dict | None, spread: bool) -> str:
    """``mean [min–max]`` of one curve point (the mean alone for one seed)."""
    if point is None:
        return "-"
    return f"{point['bits_per_byte']:.3f}" + (f" [{point['min']:.2f}–{point['max']:.2f}]" if spread else "")


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib  # heavy, only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for r in results:
        style = "--" if r["kind"] == "baseline" else "-"
        for ax, key in zip(axes, ("step", "train_bytes"), strict=True):
            xs = [p[key] for p in r["curve"]]
            (line,) = ax.plot(xs, [p["bits_per_byte"] for p in r["curve"]], style, marker="o", ms=3, label=r["label"])
            if len(r["seeds"]) > 1:  # min-max over the seeds
                lows, highs = [p["min"] for p in r["curve"]], [p["max"] for p in r["curve"]]
                ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2)
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("training bytes")
    for ax in axes:
        ax.set_ylabel("held-out bits-per-byte")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def git_commit() -> str:
    """HEAD, with ``+dirty`` when tracked files differ from it."""
    from ilt_bench.harness import git_commit as commit  # one definition, in the harness

    return commit() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated LABEL=MIX[+TREATMENT...]")
    p.add_argument("--mix-dir", help="folder of mixes (default: benchmarks/mixes)")
    p.add_argument("--steps", type=int, default=48, help="optimizer steps per variant")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--seeds", type=int, default=1, help="runs per variant (seeds --seed, --seed + 1, ...)")
    p.add_argument("--eval-lines", type=int, default=32, help="held-out texts scored at each point")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    p.add_argument("--out", default="benchmarks/results/learning", help="output folder")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 4 held-out texts")
    p.add_argument(
        "--init-scales", action="store_true", help="print each ILT variant's mapping output scales at init, and stop"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.eval_lines = 2, 4
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    parsed = [parse_variant(v) for v in args.variants.split(",") if v.strip()]
    mixes = {m.name: m for m in resolve_mixes(",".join(sorted({mix for _, mix, _ in parsed})), args.mix_dir)}
    from ilt_data.recipes import prepare

    from ilt_core.files import sha256_file  # the data recipe's files: fetched once, checksummed

    files = prepare("he-news", progress=False)
    texts = {
        "train": read_lines(files["train"]),
        "eval": read_lines(files["validation"], args.eval_lines),
        "sha": sha256_file(files["train"]),
    }
    if args.init_scales:
        for label, name, _ in parsed:
            mix = mixes.get(name) or next(m for m in mixes.values() if str(m.path) == name or m.path.stem == name)
            if mix.kind == "ilt":
                scales = init_scales(mix, texts["eval"][:8], args.seed)
                print(f"{label}: " + ", ".join(f"{k} std {v:.3f}" for k, v in scales.items()))
        return 0
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in parsed}
    for seed in range(args.seed, args.seed + args.seeds):  # seed by seed: the machine's drift touches every variant
        for label, name, treatments in parsed:
            mix = mixes.get(name) or next(m for m in mixes.values() if str(m.path) == name or m.path.stem == name)
            runs[label].append(run_variant(label, mix, treatments, args, texts, seed))
    results = [merge_seeds(r) for r in runs.values()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/bench_learning.py", *(argv if argv is not None else sys.argv[1:])])
    report = {
        "command": command,
        "started": started,
        "commit": git_commit(),
        "settings": {k: v for k, v in vars(args).items()},
        "results": results,
    }
    (out / "learning.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    seeds = (
        f"seed {args.seed}"
        if args.seeds == 1
        else f"mean and min-max over seeds {args.seed}-{args.seed + args.seeds - 1}"
    )
    plot(results, out / "learning.png", f"he-news, lr {args.lr:g}, {seeds}, commit {report['commit']}")
    steps = [p["step"] for p in results[0]["curve"]]
    print(f"Held-out bits-per-byte ({args.eval_lines} texts), {seeds}; `{command}` (commit {report['commit']})\n")
    print("| variant | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---" * (len(steps) + 1) + "|")
    for r in results:
        by_step = {p["step"]: p for p in r["curve"]}
        spread = len(r["seeds"]) > 1
        print(f"| {r['label']} | " + " | ".join(table_cell(by_step.get(s), spread) for s in steps) + " |")
    log(f"wrote {out / 'learning.json'} and {out / 'learning.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
