"""The demo's progress bar: how far training is toward the limit that will end it, the time budget or the step cap.

Trainer's own bar counts steps toward ``max_steps``; the demo sets a generous step cap and a time budget, so that
bar would show a small share of the cap done and an estimate far past the budget, for a run the budget ends. This
bar fills with whichever limit is nearer: the share of the time budget spent since training began (as
:class:`ilt_core.training.trainer.TimeBudgetCallback` counts it), or the share of the step cap done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any

from tqdm.auto import tqdm
from transformers import TrainerCallback

#: The bar's resolution: it counts per mille of the way to the nearer limit.
STEPS = 1000


def progress_fraction(elapsed_s: float, steps: int, budget_s: float, max_steps: int) -> float:
    """How far training is toward whichever limit ends it first, in ``[0, 1]``: the time spent over the budget, or
    the steps done over the step cap (a limit of 0 or less is no limit)."""
    by_time = elapsed_s / budget_s if budget_s > 0 else 0.0
    by_steps = steps / max_steps if max_steps > 0 else 0.0
    return min(1.0, max(by_time, by_steps, 0.0))


class BudgetProgress(TrainerCallback):
    """Trainer callback: a bar toward the time budget or the step cap, with the step and the last training loss.

    Run it with ``--disable_tqdm true`` (Trainer's own bar off; its log lines are printed instead: the bar is
    cleared before each, and drawn again at the next step). ``clock`` and ``file`` are for tests.
    """

    def __init__(
        self,
        minutes: float,
        max_steps: int,
        clock: Callable[[], float] = time.monotonic,
        file: IO[str] | None = None,
    ) -> None:
        self.budget_s = float(minutes) * 60.0
        self.max_steps = int(max_steps)
        self.clock = clock
        self.file = file
        self.start = clock()
        self.bar: Any = None
        self.loss: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = self.clock()
        minutes = self.budget_s / 60.0
        self.bar = tqdm(
            total=STEPS,
            file=self.file,
            desc=f"training ({minutes:.1f} min or {self.max_steps} steps, whichever comes first)",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
            dynamic_ncols=self.file is None,
        )
        self._draw(0)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._draw(state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])
        if self.bar is not None:
            self.bar.clear()  # Trainer prints the log line next

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self._draw(state.global_step)
            self.bar.close()
            self.bar = None

    def _draw(self, step: int) -> None:
        elapsed = self.clock() - self.start
        fraction = progress_fraction(elapsed, step, self.budget_s, self.max_steps)
        self.bar.n = round(STEPS * fraction)
        minutes, seconds = divmod(int(elapsed), 60)
        postfix = f"{minutes}:{seconds:02d} elapsed, step {step}"
        if self.loss is not None:
            postfix += f", loss {self.loss:.3f}"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh()


__all__ = ["BudgetProgress", "progress_fraction"]
