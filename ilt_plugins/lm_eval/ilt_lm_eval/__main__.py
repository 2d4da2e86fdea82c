"""``ilt-lm-eval`` / ``python -m ilt_lm_eval``: lm_eval's own command line with the model ``ilt`` registered.

    ilt-lm-eval --model ilt --model_args pretrained=DIR --tasks hellaswag --include_path TASKS_DIR

Every flag of ``lm_eval`` works (``ilt-lm-eval ls tasks``, ``ilt-lm-eval run --help``); lm_eval cannot find the
``ilt`` model by itself (it has no entry-point discovery), so this imports :mod:`ilt_lm_eval.model` first.
"""

from __future__ import annotations

import sys


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    import ilt_lm_eval.model  # noqa: F401  (registers "ilt")

    sys.argv[0] = "ilt-lm-eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
