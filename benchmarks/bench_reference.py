"""The reference implementation and the project on the same text, in the same run: A/B/A/B, ratios printed.

    python benchmarks/bench_reference.py --text T.txt --reference ref1.json ref2.json   # its JSON files, made already
    python benchmarks/bench_reference.py --text T.txt --reference-cmd "REF/run.sh {text} {out}" --rounds 2
    python benchmarks/bench_reference.py --text T.txt --reference ref.json --quick        # a smoke run

The reference's side is its own benchmark (a JSON with a ``summary`` of figures such as
``head_train_img_words_per_s``; its README explains ``setup.sh`` and ``run.sh TEXT OUT.json``): either the
JSON files it wrote (``--reference``), or a command that writes one (``--reference-cmd``, with ``{text}`` and
``{out}`` in it), run once per round. Nothing of the reference is read from a fixed path: its location comes
on the command line only.

The project's side follows the reference's protocol on the same text: the configuration the reference builds
(:func:`ilt_bench.setups.reference_spec`: BERT 2 x 128 bytes encoder, ViT 12 x 192 image encoder, GPT-NeoX 6 x 512
latent, Llama 2 x 256 decoder, labels of the next 32 bytes; words rendered ``--image-height`` 16 px high, as the
reference renders them), a training step (forward, backward, AdamW lr 1e-4 in the fused implementation that
``ilt train`` uses, fp32; eager, or compiled with ``--torch-compile``) on batches of 8 texts x 64 words cut from the
text and collated as ``ilt train`` collates by default (fixed shapes), no opt-in CPU setting, ``--warmup`` untimed and ``--steps`` timed steps
(median), with and without images; greedy generation of 4 prompts of 16 words, 32 new words each decoded to
32 bytes (ms a step = seconds / 32); text -> batch words/s with a cold and a warm render cache. Each
measurement runs in a fresh process (peak memory is its own), with the same threads and ``OMP_WAIT_POLICY``
as the reference's run (``--threads``, ``--omp-wait-policy``: its ``run.sh`` uses 2 and PASSIVE).

Beside the training figures: GFLOP a word of each side's step (ours counted with ``torch.utils.flop_counter``
in the run; the reference's from ``--reference-gflop``, its README's count) and, with ``--bounds`` (a
``bench_bounds.py`` JSON), the goal of 1.5x the reference's words/s against the ceiling of the project's matrix
products alone at torch's BLAS speed.

Rounds alternate A (the reference) and B (the project); each figure's ratio is the project's median over the
rounds against the reference's (for times: the reference's over the project's, so above 1 is faster).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: (figure, the reference's summary key, what "better" means): the ratio is ours / theirs for "higher",
#: theirs / ours for "lower", so above 1 always means the project does better.
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("train_img_words_per_s", "head_train_img_words_per_s", "higher"),
    ("train_noimg_words_per_s", "head_train_noimg_words_per_s", "higher"),
    ("train_img_peak_rss_mib", "head_train_img_peak_rss_mib_loop", "lower"),
    ("train_noimg_peak_rss_mib", "head_train_noimg_peak_rss_mib_loop", "lower"),
    ("train_ckpt_peak_rss_mib", "head_train_img_peak_rss_mib_loop", "lower"),
    ("train_ckpt_words_per_s", "head_train_img_words_per_s", "higher"),
    ("generate_img_ms_per_step", "head_generate_img_ms_per_step", "lower"),
    ("generate_noimg_ms_per_step", "head_generate_noimg_ms_per_step", "lower"),
    ("prep_cold_words_per_s", "head_prep_words_per_s_processor_cold_cache_fast_ip", "higher"),
    ("prep_warm_words_per_s", "head_prep_words_per_s_processor_warm_cache", "higher"),
)
#: The reference's protocol (its README): batch 8 x 64 words; generation batch 4, 16-word prompts, 32 new words.
ROWS, WORDS, GEN_BATCH, GEN_PROMPT, GEN_NEW, BYTE_CAP = 8, 64, 4, 16, 32, 32
#: The project's measurements, each in its own process (``--only`` picks some: ``prep``, ``train-noimg``, ...).
#: ``train-ckpt``: the memory-saving configuration (activation checkpointing), with images, against the
#: reference's own (uncheckpointed) peak RSS: issue 16's goal of at most half of it.
MEASUREMENTS = (
    ("prep", "img"),
    ("train", "img"),
    ("train", "noimg"),
    ("train", "ckpt"),
    ("generate", "img"),
    ("generate", "noimg"),
)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---- the reference's side ----------------------------------------------------------------------


def reference_figures(path: Path) -> dict[str, Any]:
    """The figures of one reference JSON (its ``summary``), with generation as ms a step, and its text's hash."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"bench_reference: --reference {path}: not a readable JSON file ({exc})") from None
    summary = data.get("summary")
    if not isinstance(summary, dict):
        raise SystemExit(f"bench_reference: {path}: no 'summary' mapping; expected the JSON that run.sh writes")
    figures = dict(summary)
    for v in ("img", "noimg"):
        run_s, steps = summary.get(f"head_generate_{v}_run_median_s"), summary.get(f"head_generate_{v}_latent_steps")
        if run_s and steps:
            figures[f"head_generate_{v}_ms_per_step"] = 1000.0 * run_s / steps
    meta = data.get("meta", {})
    figures["_text_sha256"] = meta.get("text", {}).get("sha256")
    figures["_settings"] = meta.get("settings", {})
    return figures


def run_reference(command: str, text: Path, out: Path) -> dict[str, Any]:
    """Run ``--reference-cmd`` once (``{text}`` and ``{out}`` filled in) and read the JSON it wrote."""
    argv = [part.replace("{text}", str(text)).replace("{out}", str(out)) for part in shlex.split(command)]
    log(f"A: {' '.join(argv)}")
    done = subprocess.run(argv, check=False, stdout=sys.stderr)  # its own summary: progress, not our table
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"bench_reference: --reference-cmd exited {done.returncode} without writing {out}")
    return reference_figures(out)


# ---- the project's side -----------------------------------------------------------------------


def text_units(text: str) -> list[str]:
    from ilt_core.text.segmentation import segment

    return segment(text)


def child(kind: str, variant: str, text_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement of the project's side in this process (``--child``); see the module docstring."""
    import torch
    from ilt_bench import common
    from ilt_bench.machine import peak_rss_bytes
    from ilt_bench.setups import make_batches, reference_spec, step_flops, text_to_batch, text_units_in, train_step

    from ilt_core.modeling.compiling import compile_arguments
    from ilt_core.modeling.memory import set_cpu_malloc
    from ilt_core.modeling.model import build_model

    torch.set_num_threads(args.threads)
    common.as_the_ilt_command(train=kind == "train")  # as `ilt train` (its --cpu_malloc) or `ilt generate`
    if variant == "ckpt":  # as `ilt train --cpu_malloc return`: the freed activations leave the process
        set_cpu_malloc("return")
    rows, words = (2, 8) if args.quick else (ROWS, WORDS)
    units = text_units(text_path.read_text(encoding="utf-8").strip())
    spec = {**reference_spec(images=variant != "noimg"), "image_height": args.image_height}
    if variant == "ckpt":
        spec["activation_checkpointing"] = True
    model = build_model(spec, seed=0)
    if kind == "train":
        model.train()
        # the batches `ilt train` collates by default (fixed shapes; capacities that only grow under --torch_compile)
        shapes = model.fixed_shapes(rows, words + 1, grow_only=args.torch_compile)
        batches = make_batches(model, units, rows, words, 1 if args.quick else 3, shapes=shapes)
        # as `ilt train --torch_compile` compiles it: the whole step in one graph of static shapes
        stepped = torch.compile(model, **compile_arguments("cpu")) if args.torch_compile else model
        # the reference's optimizer and rate, in the implementation `ilt train` uses (Trainer's adamw_torch_fused)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        times = []
        for i in range(args.warmup + args.steps):
            batch = batches[i % len(batches)]
            seconds, _ = common.timed(lambda b=batch: train_step(stepped, optimizer, b))
            if i >= args.warmup:
                times.append(seconds)
        step = statistics.median(times)
        per_batch = statistics.fmean(text_units_in(b) for b in batches)
        nbytes = statistics.fmean(int(b.num_bytes.sum()) for b in batches)
        peak = peak_rss_bytes() / 2**20  # before counting FLOPs: that pass keeps no optimizer step's memory
        gflop = step_flops(model, batches[0]) / 1e9
        return {
            "words_per_s": per_batch / step,
            "text_bytes_per_s": nbytes / step,
            "step_median_s": step,
            "peak_rss_mib": peak,
            "gflop_per_step": gflop,
            "gflop_per_word": gflop / text_units_in(batches[0]),
        }
    if kind == "generate":
        from ilt_core.generation.loop import generate
        from ilt_core.text.byte_tokenizer import BOS_ID, PAD_ID

        model.eval()
        new = 2 if args.quick else GEN_NEW
        prompts = ["".join(p) for p in common.chunk_texts(units, GEN_BATCH, GEN_PROMPT)]
        options = {"byte_suppress_tokens": [PAD_ID, BOS_ID], "max_unit_bytes": BYTE_CAP}
        options["byte_min_new_tokens"] = BYTE_CAP  # every word to the cap, as the reference's random weights do
        options["use_cache"] = True
        generate(model, prompts, max_new_units=1, **options)  # warm-up
        times = [common.timed(lambda: generate(model, prompts, max_new_units=new, **options))[0] for _ in range(2)]
        run_s = statistics.median(times)
        return {"ms_per_step": 1000.0 * run_s / new, "words_per_s": GEN_BATCH * new / run_s, "run_median_s": run_s}
    if kind == "prep":
        return {
            k.replace("text_to_batch_", "").replace("_units_per_s", "_words_per_s"): v
            for k, v in text_to_batch(model, units, rows, words, 1 if args.quick else 3).items()
        }
    raise SystemExit(f"bench_reference: unknown --child {kind}")


def run_ours(text: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of the project's side, each in a fresh process with the reference's OpenMP settings."""
    from ilt_bench import common  # here, not above: this process leaves torch unloaded until it starts a child

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env.update(OMP_WAIT_POLICY=args.omp_wait_policy, TOKENIZERS_PARALLELISM="false")
    figures: dict[str, Any] = {}
    for kind, variant in MEASUREMENTS:
        if args.only and f"{kind}-{variant}" not in args.only and kind not in args.only:
            continue
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--variant", variant]
        argv += ["--text", str(text), "--threads", str(args.threads)]
        argv += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--image-height", str(args.image_height)]
        argv += ["--quick"] if args.quick else []
        argv += ["--torch-compile"] if args.torch_compile else []
        log(f"B: {kind} {variant}")
        label = f"bench_reference: the project's {kind}/{variant} measurement"
        result = common.run_child(argv, label, env=env, show_progress=True)
        if kind == "prep":
            figures["prep_cold_words_per_s"] = result["cold_words_per_s"]
            figures["prep_warm_words_per_s"] = result["warm_words_per_s"]
        elif kind == "train":
            figures[f"train_{variant}_words_per_s"] = result["words_per_s"]
            figures[f"train_{variant}_peak_rss_mib"] = result["peak_rss_mib"]
            figures[f"train_{variant}_gflop_per_word"] = result["gflop_per_word"]
        else:
            figures[f"generate_{variant}_ms_per_step"] = result["ms_per_step"]
    return figures


# ---- the comparison ---------------------------------------------------------------------------


def compare(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per figure: each side's values over the rounds, their medians and the ratio (above 1: the project better)."""
    rows = []
    for name, key, better in FIGURES:
        a = [t[key] for t in theirs if isinstance(t.get(key), (int, float))]
        b = [o[name] for o in ours if isinstance(o.get(name), (int, float))]
        if not a or not b:
            rows.append({"figure": name, "reference": a, "project": b, "ratio": None})
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        ratio = mb / ma if better == "higher" else ma / mb
        rows.append({"figure": name, "better": better, "reference": a, "project": b, "ratio": ratio})
    return rows


#: training goals of issue 16 (ratios to the reference, above 1: the project better)
TRAINING_GOALS = {"train_img_words_per_s": 1.5, "train_noimg_words_per_s": 1.5}


def work_and_ceilings(
    rows: list[dict[str, Any]], ours: list[dict[str, Any]], reference_gflop: list[float], bounds: Path | None
) -> list[str]:
    """Lines beside the training figures: GFLOP a word on each side, the goal in words/s, and the matrix-product
    ceilings of the project's step (``bench_bounds.py`` JSON: its products alone at torch's per-shape speed, and at
    the faster of torch's and numpy's per shape, numpy's being the path of the fast paths, on by default)."""
    bound_data = json.loads(bounds.read_text(encoding="utf-8")) if bounds else None
    lines = []
    for variant, setup, ref_gflop in (("img", "with images", 0), ("noimg", "without images", 1)):
        name = f"train_{variant}_words_per_s"
        row = next((r for r in rows if r["figure"] == name), None)
        ours_gflop = [o[f"train_{variant}_gflop_per_word"] for o in ours if f"train_{variant}_gflop_per_word" in o]
        if row is None or not row["reference"]:
            continue
        goal = TRAINING_GOALS[name] * statistics.median(row["reference"])
        parts = [f"{name}: goal {TRAINING_GOALS[name]:.1f}x the reference = {goal:,.1f} words/s"]
        if ours_gflop:
            parts.append(f"project {statistics.median(ours_gflop):.3f} GFLOP/word")
        if len(reference_gflop) == 2:
            parts.append(f"reference {reference_gflop[ref_gflop] / (ROWS * WORDS):.3f} GFLOP/word")
        if bound_data and setup in bound_data.get("setups", {}):
            b = bound_data["setups"][setup]
            torch_ceiling = b.get("training_words_per_s_bound_torch", b["training_words_per_s_bound"])
            best = b["training_words_per_s_bound"]
            parts.append(
                f"ceiling (products alone) {torch_ceiling:,.1f} words/s with torch's BLAS (goal = "
                f"{goal / torch_ceiling:.0%}), {best:,.1f} with the faster of torch's and numpy's per shape "
                f"(goal = {goal / best:.0%})"
            )
        lines.append("; ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", type=Path, required=True, help="the text both sides run on (plain UTF-8)")
    p.add_argument("--reference", type=Path, nargs="*", default=[], help="JSON files the reference's run.sh wrote")
    p.add_argument("--reference-cmd", help="a command that writes one, with {text} and {out} (run once a round)")
    p.add_argument("--rounds", type=int, default=2, help="A/B rounds with --reference-cmd (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads of both sides (default 2)")
    p.add_argument("--omp-wait-policy", default=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    p.add_argument(
        "--image-height", type=int, default=16, help="pixels the project renders words at (the reference's: 16)"
    )
    p.add_argument("--steps", type=int, default=10, help="timed training steps (the reference's protocol: 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps first (the reference's: 3)")
    p.add_argument("--out", type=Path, help="write every figure and ratio here as JSON")
    p.add_argument(
        "--bounds", type=Path, help="bench_bounds.py JSON: print the matrix-product ceiling beside the training goals"
    )
    p.add_argument(
        "--reference-gflop",
        type=float,
        nargs=2,
        default=[],
        metavar=("IMG", "NOIMG"),
        help="GFLOP of the reference's training step with and without images (its README: torch.utils.flop_counter)",
    )
    p.add_argument(
        "--only", nargs="*", help="the project's measurements to run: prep, train, train-img, generate-noimg..."
    )
    p.add_argument(
        "--torch-compile",
        action="store_true",
        help="the project's training step compiled as `ilt train --torch_compile` compiles it (give the reference's "
        "run.sh its --torch-compile in --reference-cmd); warm-up steps include the compilation",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: batch 2 x 8, 1 step, 2 new words")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 1, 0
    if not args.text.is_file():
        raise SystemExit(f"bench_reference: --text {args.text}: no such file")
    if args.child:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from ilt_bench import common

        common.print_result(child(args.child, args.variant, args.text, args))
        return 0
    if bool(args.reference) == bool(args.reference_cmd):
        raise SystemExit("bench_reference: give --reference JSON... or --reference-cmd, one of the two")
    if args.bounds is not None and not args.bounds.is_file():  # before the rounds, not after them
        raise SystemExit(
            f"bench_reference: --bounds {args.bounds}: no such file (write it first: "
            f"benchmarks/bench_bounds.py --threads {args.threads} --out {args.bounds})"
        )
    text = args.text.resolve()
    try:
        sha = hashlib.sha256(text.read_text(encoding="utf-8").strip().encode()).hexdigest()
    except UnicodeDecodeError as exc:
        raise SystemExit(f"bench_reference: --text {text}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    ours, theirs = [], []
    with tempfile.TemporaryDirectory(prefix="ilt-bench-ref-") as tmp:
        rounds = len(args.reference) if args.reference else args.rounds
        for r in range(rounds):  # A, B, A, B: the machine's drift touches both sides
            if args.reference:
                theirs.append(reference_figures(args.reference[r]))
            else:
                theirs.append(run_reference(args.reference_cmd, text, Path(tmp) / f"reference-{r}.json"))
            start = time.perf_counter()
            ours.append(run_ours(text, args))
            log(f"round {r + 1}/{rounds}: the project's side took {time.perf_counter() - start:.0f} s")
    mismatched = [t["_text_sha256"] for t in theirs if t.get("_text_sha256") not in (None, sha)]
    rows = compare(ours, theirs)
    print("| figure | reference | project | ratio (>1: project better) |\n|---|---|---|---|")
    for row in rows:
        fmt = lambda xs: ", ".join(f"{x:,.1f}" for x in xs) or "-"  # noqa: E731
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
        print(f"| {row['figure']} | {fmt(row['reference'])} | {fmt(row['project'])} | {ratio} |")
    work = work_and_ceilings(rows, ours, args.reference_gflop, args.bounds)
    for line in work:
        print(line)
    if mismatched:
        print(f"WARNING: the reference ran on another text (sha256 {mismatched[0][:12]}, ours {sha[:12]})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "command": " ".join(
                ["python benchmarks/bench_reference.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "started": started,
            "text": {"file": str(text), "sha256": sha},
            "threads": args.threads,
            "omp_wait_policy": args.omp_wait_policy,
            "rounds": {"reference": theirs, "project": ours},
            "ratios": rows,
            "work_and_ceilings": work,
            "reference_gflop_per_step": args.reference_gflop,
            "text_mismatch": bool(mismatched),
        }
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
