"""The ILT plugin hook specifications (pluggy, project name ``ilt``).

A plugin is a module named by an entry point in the group ``ilt``; it implements one or more of
these hooks with ``@ilt_core.hookimpl``. Built-in plugins are registered the same way.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ilt")
hookimpl = pluggy.HookimplMarker("ilt")


@hookspec
def ilt_components() -> list:
    """Return the :class:`ilt_core.plugins.registry.Component` entries this plugin provides.

    Must not import heavy optional dependencies: each component names its ``factory`` as a
    ``"module:function"`` string that is imported only when the component is built, and lists the
    import names it ``requires`` so a missing dependency is reported instead of failing.
    """


@hookspec
def ilt_data_recipes() -> list:
    """Return the :class:`ilt_core.plugins.registry.DataRecipe` entries (named corpora) this plugin provides.

    ``ilt train --data_recipe NAME`` and ``ilt bench --data NAME`` find a recipe here by name.
    """


@hookspec
def ilt_cli_commands(subparsers) -> None:
    """Add this plugin's subcommands to ``ilt`` (``subparsers`` is argparse's subparsers object).

    Each subcommand sets its handler with ``set_defaults(func=handler)``; the handler takes the parsed
    ``argparse.Namespace`` and returns the exit status. Import heavy modules inside the handler.
    """
