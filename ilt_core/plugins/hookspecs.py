"""The ILT plugin hook specifications (pluggy, project name ``ilt``): what a plugin can supply.

A plugin is a module named by an entry point in the group ``ilt``; it implements one or more of
these hooks with ``@ilt_core.hookimpl``. The registry (:mod:`ilt_core.plugins.registry`) calls them
through ``manager.hook``. Every hook must stay light: heavy dependencies are imported only when a
component is built or a command runs.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ilt")
hookimpl = pluggy.HookimplMarker("ilt")


@hookspec
def ilt_components() -> list:
    """Return the :class:`ilt_core.plugins.registry.Component` entries this plugin provides.

    Declare each factory with ``@component(name, roles=..., requires=..., install=...)`` and return
    ``components_in("<plugin>", "<package>.<module>", ...)``: the declarations are read from the
    modules' source, not imported, and each component lists the import names it ``requires`` so a
    missing dependency is reported instead of failing.
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


@hookspec
def ilt_bench_mixes() -> list:
    """Return folders or files (``str`` or ``Path``) of benchmark mix YAML that this plugin contributes.

    ``ilt bench`` offers every ``*.yaml`` in a returned folder, and every returned file, by its file
    name (without ``.yaml``), beside the mixes of ``--mix-dir``; see :mod:`ilt_bench.mixes`.
    """


@hookspec
def ilt_fast_paths() -> list:
    """Return a :class:`ilt_core.plugins.registry.FastPath` for each fast path this plugin may take (a layer
    swapped for a faster one, a fused inference step) and whether it is on with the installed packages.

    A path that relies on another package's internals checks them here (and again where it is taken) rather than a
    version number; ``ilt plugins --verbose`` prints the list. Import heavy modules inside the hook.
    """
