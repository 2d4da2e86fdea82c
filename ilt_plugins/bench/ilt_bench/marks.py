"""A Trainer callback for the benchmarks' training children: when the first step ended, and memory over the steps."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from ilt_bench.machine import peak_rss_bytes, reset_peak_rss, rss_bytes, rss_parts_mib


class StepMarks(TrainerCallback):
    """Records into ``marks``: ``first_step_s`` (seconds from ``launched``, the ``time.time()`` at which the parent
    started this process, to the end of step 1), ``peak_rss_steps_mib`` (the peak RSS over steps 1..``steps``: the
    kernel's mark is reset when training begins; ``hwm_reset`` says whether it could be) and ``steps_s`` (steps
    2..``steps``). ``parts``: also resident memory by kind after step 1 and after the last step
    (``rss_step1_mib``, ``rss_last_step_mib``) and RSS at the last step (``rss_end_mib``).
    """

    def __init__(self, marks: dict[str, Any], launched: float, steps: int, parts: bool = False) -> None:
        self.marks, self.launched, self.steps, self.parts = marks, launched, steps, parts

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.marks["hwm_reset"] = reset_peak_rss()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        marks = self.marks
        if state.global_step == 1:
            marks["first_step_s"] = time.time() - self.launched
            if self.parts:
                marks["rss_step1_mib"] = rss_parts_mib()
        if state.global_step == self.steps:
            marks["peak_rss_steps_mib"] = peak_rss_bytes() / 2**20
            if self.parts:
                marks["rss_end_mib"] = rss_bytes() / 2**20
                marks["rss_last_step_mib"] = rss_parts_mib()
            marks["steps_s"] = time.time() - self.launched - marks["first_step_s"]


__all__ = ["StepMarks"]
