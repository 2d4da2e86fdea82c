"""The component registry: plugins found through the ``ilt`` entry-point group, on pluggy.

A component is addressed as ``plugin:name`` (``hf:causal-lm``, ``freetype:default``). The core
never imports a plugin module; it asks the registry to build a component from a spec block.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pluggy

from ilt_core.errors import ILTError
from ilt_core.plugins import hookspecs
from ilt_core.plugins.protocols import ROLES

ENTRY_POINT_GROUP = "ilt"


@dataclass(frozen=True)
class BuildContext:
    """What the core tells every factory besides the user's arguments.

    ``vocab_size``/``pad_token_id``/``bos_token_id``/``eos_token_id`` describe the byte
    tokenizer that bytes models must use; ``image_height`` and ``width_multiple`` describe the
    word images (renderer output height, image encoder patch size).
    """

    vocab_size: int = 259
    pad_token_id: int = 256
    bos_token_id: int = 257
    eos_token_id: int = 258
    image_height: int = 32
    width_multiple: int = 16


@dataclass(frozen=True)
class Component:
    """One buildable component that a plugin provides.

    ``factory`` is ``"module:function"``, called as ``function(role=..., context=..., **args)``
    and returning an object that satisfies the role's protocol (see ``ilt_core.plugins.protocols``).
    """

    plugin: str
    name: str
    roles: tuple[str, ...]
    factory: str
    requires: tuple[str, ...] = ()
    install: str = ""
    description: str = ""

    @property
    def address(self) -> str:
        return f"{self.plugin}:{self.name}"

    @property
    def missing(self) -> tuple[str, ...]:
        """Import names in ``requires`` that this environment lacks."""
        return tuple(r for r in self.requires if importlib.util.find_spec(r) is None)

    @property
    def available(self) -> bool:
        return not self.missing

    def load_factory(self) -> Callable[..., Any]:
        module_name, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module_name), attr)


@dataclass(frozen=True)
class DataRecipe:
    """A named corpus a plugin can prepare (``ilt data prepare NAME``, ``--data_recipe NAME``).

    ``prepare(out_dir=None, progress=True, archive=None)`` writes the splits and returns
    ``{split: path}`` with at least ``train`` and ``validation``.
    """

    name: str
    description: str
    prepare: Callable[..., dict[str, Any]] = field(repr=False)


@dataclass
class PluginInfo:
    """A plugin as ``ilt plugins`` shows it."""

    name: str
    distribution: str
    version: str
    components: list[Component] = field(default_factory=list)
    error: str = ""


class Registry:
    """All components of all installed plugins; see :func:`get_registry`."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.manager = pluggy.PluginManager("ilt")
        self.manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin is reported, never fatal
                self.plugins[ep.name] = PluginInfo(ep.name, dist, version, error=f"{type(exc).__name__}: {exc}")
                continue
            self.register(module, ep.name, dist, version)

    def register(self, module: Any, name: str, distribution: str = "?", version: str = "?") -> None:
        """Register a plugin module (or object) with hook implementations under ``name``."""
        if self.manager.has_plugin(name):
            return
        self.manager.register(module, name=name)
        info = PluginInfo(name, distribution, version)
        impl = getattr(module, "ilt_components", None)
        if impl is not None:
            for component in impl():
                if component.plugin != name:
                    info.error = f"component {component.address} does not belong to plugin {name!r}"
                    continue
                info.components.append(component)
        self.plugins[name] = info

    def data_recipes(self) -> dict[str, DataRecipe]:
        """Every data recipe of every plugin, by name (``ilt_data_recipes`` hook)."""
        return {r.name: r for found in self.manager.hook.ilt_data_recipes() for r in found}

    def data_recipe(self, name: str) -> DataRecipe:
        """The recipe called ``name``; an :class:`ILTError` lists the known ones otherwise."""
        recipes = self.data_recipes()
        if name not in recipes:
            known = ", ".join(sorted(recipes)) or "none (pip install ilt-data)"
            raise ILTError(f"data recipe {name!r} is unknown; known recipes: {known}")
        return recipes[name]

    def add_cli_commands(self, subparsers: Any) -> None:
        """Let every plugin add its ``ilt`` subcommands (``ilt_cli_commands`` hook)."""
        self.manager.hook.ilt_cli_commands(subparsers=subparsers)

    def components(self, role: str | None = None) -> list[Component]:
        """Every component, or those that can fill ``role``, sorted by address."""
        found = [c for p in self.plugins.values() for c in p.components if role is None or role in c.roles]
        return sorted(found, key=lambda c: c.address)

    def get(self, address: str, role: str | None = None, where: str = "") -> Component:
        """The component at ``plugin:name``; an :class:`ILTError` lists the valid choices otherwise."""
        at = f"{where}: " if where else ""
        choices = ", ".join(c.address for c in self.components(role)) or "none installed"
        if ":" not in address:
            raise ILTError(f"{at}component {address!r} is not of the form 'plugin:name'; choose one of: {choices}")
        plugin_name = address.split(":", 1)[0]
        plugin = self.plugins.get(plugin_name)
        if plugin is not None and plugin.error and not plugin.components:
            raise ILTError(f"{at}plugin {plugin_name!r} failed to load ({plugin.error})")
        for c in self.components():
            if c.address == address:
                if role is not None and role not in c.roles:
                    raise ILTError(
                        f"{at}component {address!r} cannot be a {role} (it serves: {', '.join(c.roles)}); "
                        f"choose one of: {choices}"
                    )
                return c
        if plugin is None:
            raise ILTError(
                f"{at}unknown component {address!r}: no plugin {plugin_name!r} is installed "
                f"(installed: {', '.join(sorted(self.plugins)) or 'none'}); choose one of: {choices}"
            )
        raise ILTError(f"{at}unknown component {address!r}; choose one of: {choices}")

    def build(self, address: str, role: str, context: BuildContext, args: dict[str, Any], where: str = "") -> Any:
        """Build the component at ``address`` for ``role`` with the user's ``args``."""
        if role not in ROLES:
            raise ILTError(f"unknown role {role!r}; roles are: {', '.join(ROLES)}")
        component = self.get(address, role, where)
        if component.missing:
            at = f"{where}: " if where else ""
            raise ILTError(
                f"{at}component {address!r} needs {', '.join(component.missing)}, which is not installed; "
                f"run: {component.install}"
            )
        return component.load_factory()(role=role, context=context, **args)


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry of installed plugins (entry points loaded once)."""
    return Registry()
