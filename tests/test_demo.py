"""`make demo`'s progress bar and last screen, without running the demo (it trains for minutes)."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from ilt_demo.demo import closing_notes, repeated_piece
from ilt_demo.progress import STEPS, BudgetProgress, progress_fraction


def test_progress_is_the_share_of_the_nearer_limit() -> None:
    assert progress_fraction(90, 10, budget_s=360, max_steps=1000) == 0.25  # time: 90 of 360 s
    assert progress_fraction(90, 500, budget_s=360, max_steps=1000) == 0.5  # steps: 500 of 1000
    assert progress_fraction(400, 53, budget_s=360, max_steps=1000) == 1.0  # past the budget: full, not more
    assert progress_fraction(30, 5, budget_s=0, max_steps=10) == 0.5  # no time budget: steps alone


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bar_fills_with_the_time_budget_not_the_step_cap() -> None:
    clock, out = Clock(), io.StringIO()
    progress = BudgetProgress(minutes=6.0, max_steps=1000, clock=clock, file=out)
    args, control = SimpleNamespace(), SimpleNamespace()
    progress.on_train_begin(args, SimpleNamespace(global_step=0), control)
    clock.now += 180  # half the budget, 27 steps of 1000
    progress.on_log(args, SimpleNamespace(global_step=27), control, logs={"loss": 1.5})
    progress.on_step_end(args, SimpleNamespace(global_step=27), control)
    assert progress.bar.n == STEPS // 2
    shown = out.getvalue().split("\r")[-1]
    assert "6.0 min or 1000 steps" in shown and " 50%" in shown
    assert "3:00 elapsed, step 27, loss 1.500" in shown
    clock.now += 181  # past the budget: the run ends at 53 steps
    progress.on_train_end(args, SimpleNamespace(global_step=53), control)
    assert "100%" in out.getvalue().split("\r")[-1] and progress.bar is None


def test_repeated_piece_names_a_continuation_that_loops() -> None:
    assert repeated_piece("המווויהמווויהמווויהמו") == "המוווי"
    assert repeated_piece("אב גד " * 3 + "אב") == "אב גד "
    assert repeated_piece("אב גד " * 2) is None  # twice is not a loop yet
    assert repeated_piece("שלום עולם, מה נשמע") is None
    assert repeated_piece("   ") is None


def test_the_last_screen_says_what_the_model_learned_and_how_to_get_further() -> None:
    summary = {
        "steps": 53,
        "bits_per_byte_before": 8.97,
        "bits_per_byte_after": 2.2,
        "checkpoint": "runs/demo-tiny",
        "prompt": "ראש הממשלה אמר אתמול כי",
        "continuation": "המווויווויההמווויווויההמווויווויה",
    }
    text = "\n".join(closing_notes(summary, 6.0, "data/he-news", "CPU"))
    assert "6 minutes of training on the CPU" in text and "53 steps" in text and "8.97 to 2.20" in text
    assert "'המווויווויה'" in text  # the piece the greedy continuation repeats
    assert "ilt train --model_name_or_path runs/demo-tiny" in text and "--max_train_minutes 60" in text
    assert "ilt generate --model runs/demo-tiny" in text and "GPU" in text
    flowing = closing_notes({**summary, "continuation": "שלום עולם, מה נשמע"}, 6.0, "data/he-news", "CPU")
    assert not any("repeats" in line for line in flowing)


def test_the_commands_on_the_last_screen_take_those_flags() -> None:
    """Every flag the last screen suggests exists in `ilt train`'s, `ilt generate`'s or `ilt eval`'s parser."""
    import argparse

    from ilt_core.cli.main import build_parser
    from ilt_core.training.arguments import _argument_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    known = {
        "train": {s for a in _argument_parser()._actions for s in a.option_strings},
        "generate": {s for a in subparsers["generate"]._actions for s in a.option_strings},
        "eval": {s for a in subparsers["eval"]._actions for s in a.option_strings},
    }
    summary = {
        "steps": 1,
        "bits_per_byte_before": 9.0,
        "bits_per_byte_after": 8.0,
        "checkpoint": "runs/x",
        "prompt": "p",
        "continuation": "q",
    }
    text = "\n".join(closing_notes(summary, 1.0, "data/he-news", "CPU")).replace("\\\n", " ")
    checked = 0
    for line in text.splitlines():
        found = re.search(r"\bilt (train|generate|eval)\b(.*)", line)
        owner, rest = (found.group(1), found.group(2)) if found else ("train", line)  # prose: "add --bf16" to train
        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", rest):
            assert flag in known[owner], (flag, owner, line)
            checked += 1
    assert checked >= 10
