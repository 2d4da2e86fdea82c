"""The ``ilt`` command line; plugins add commands through a hook.

- ``main``: the ``ilt`` parser and its subcommands (``build``, ``eval``, ``convert``, ``presets``, ``plugins``, ...).
- ``generate``: ``ilt generate``: continue prompts, printed whole or unit by unit.
- ``__main__``: ``python -m ilt_core.cli`` (what torchrun starts).
"""
