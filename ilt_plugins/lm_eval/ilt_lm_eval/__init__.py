"""ILT plugin ``lm_eval``: ILT checkpoints in EleutherAI's lm-evaluation-harness, as the model ``ilt``.

Three ways to run it, all with lm_eval's tasks, options, tables and output files:

- ``ilt lm-eval --model DIR --tasks ilt_he_news_mc,ilt_he_news_bpb [--limit N] [--output-path OUT]``: this plugin's
  command (lm_eval's ``run`` underneath; the offline tasks below are on its task path).
- ``ilt-lm-eval --model ilt --model_args pretrained=DIR --tasks ...``: lm_eval's own command line with every one of
  its flags (``python -m ilt_lm_eval`` is the same). lm_eval finds models only in its own registry and has no
  entry-point discovery, so plain ``lm_eval --model ilt`` cannot see this plugin; this wrapper imports it first.
- Python: ``import ilt_lm_eval.model`` registers ``ilt`` (so does ``from ilt_lm_eval import ILTLM``), then
  ``lm_eval.simple_evaluate(model="ilt", model_args="pretrained=DIR", tasks=[...],
  task_manager=ilt_lm_eval.task_manager())``; or pass ``model=ILTLM(pretrained=model)`` for a model in memory.

The model (:class:`ilt_lm_eval.model.ILTLM`) scores with the byte-level chain rule of :mod:`ilt_core.likelihood`
and generates with :func:`ilt_core.generation.generate`. The offline tasks (:mod:`ilt_lm_eval.tasks`, folder
:data:`TASKS_DIR`, for ``--include_path``) read the he-news recipe's files: ``ilt_he_news_bpb`` (bits-per-byte of
the test split), ``ilt_he_news_mc`` (which of four endings is the sentence's own), group ``ilt_he_offline``.

This package is the ``ilt`` plugin that ``ilt`` loads at every start: it imports neither lm_eval (whose import
changes the process's environment) nor torch; :mod:`ilt_lm_eval.model` does, and registers the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ilt_core import hookimpl

#: The offline task YAMLs (``lm_eval --include_path``).
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MODEL_NAME = "ilt"


def task_manager(
    include_path: str | Path | list | None = None,
    metadata: dict[str, Any] | None = None,
    include_defaults: bool = True,
) -> Any:
    """An lm_eval ``TaskManager`` that knows this plugin's offline tasks, ``include_path`` and (``include_defaults``)
    lm_eval's own tasks, whose thousands of configs take seconds to index."""
    from lm_eval.tasks import TaskManager

    extra = [] if include_path is None else [include_path] if isinstance(include_path, (str, Path)) else include_path
    return TaskManager(
        include_path=[str(TASKS_DIR), *map(str, extra)], include_defaults=include_defaults, metadata=metadata
    )


def __getattr__(name: str) -> Any:
    if name == "ILTLM":  # ``from ilt_lm_eval import ILTLM`` without importing torch at package import
        from ilt_lm_eval.model import ILTLM

        return ILTLM
    raise AttributeError(name)


@hookimpl
def ilt_cli_commands(subparsers) -> None:
    """``ilt lm-eval``."""
    from ilt_lm_eval.cli import add_lm_eval_parser

    add_lm_eval_parser(subparsers)
