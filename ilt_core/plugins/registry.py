"""The component registry: plugins found through the ``ilt`` entry-point group, called through pluggy.

A component is addressed as ``plugin:name`` (``hf:causal-lm``, ``freetype:default``). The core
never imports a plugin module; it asks the registry to build a component from a spec block.

A plugin author declares a component with one decorator on its factory, the way timm's
``register_model`` does::

    @component("mean-bytes", roles=("bytes_encoder",), requires=("torch",), install="pip install ilt-example")
    def build(role: str, context: BuildContext, hidden_size: int = 64) -> nn.Module:
        '''Learned byte embeddings, mean-pooled over a unit's bytes.'''

and lists the modules that hold its factories in its ``ilt_components`` hook implementation::

    @hookimpl
    def ilt_components() -> list[Component]:
        return components_in("example", "ilt_example.encoder")

:func:`components_in` reads the decorators from the modules' source without importing them, so
listing plugins never imports a heavy dependency (transformers, timm, open_clip); the factory's
module is imported when the component is built, or checked by ``ilt plugins``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import pluggy

from ilt_core.errors import ILTError
from ilt_core.plugins import hookspecs
from ilt_core.plugins.arguments import accepted_arguments, describe_arguments
from ilt_core.plugins.protocols import ROLES

ENTRY_POINT_GROUP = "ilt"
#: The attribute :func:`component` sets on a factory: the declaration as a dict.
DECLARATION = "__ilt_component__"

Factory = TypeVar("Factory", bound=Callable[..., Any])


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


def component(
    name: str, *, roles: tuple[str, ...], requires: tuple[str, ...] = (), install: str = ""
) -> Callable[[Factory], Factory]:
    """Declare the decorated function as the factory of component ``name`` of its plugin.

    ``roles``: the roles it can fill (see :data:`ilt_core.plugins.protocols.ROLES`); ``requires``:
    import names it needs beyond the plugin's own (a missing one is reported with ``install``, the
    command that installs them). The factory is called as ``factory(role=..., context=BuildContext,
    **args)``; its typed keyword arguments and docstring are the component's documentation
    (``ilt plugins --verbose``). Write the arguments of this decorator as literals (or names of
    module-level literal constants): :func:`components_in` reads them without importing the module.
    """
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ILTError(f"component {name!r}: unknown role(s) {', '.join(unknown)}; roles are: {', '.join(ROLES)}")

    def mark(factory: Factory) -> Factory:
        setattr(factory, DECLARATION, {"name": name, "roles": tuple(roles), "requires": tuple(requires)})
        return factory

    return mark


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
        """Import the factory's module and return the function (import errors propagate)."""
        module_name, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def arguments(self) -> list[str]:
        """The factory's arguments, one ``name: type = default`` line each (imports the factory)."""
        return describe_arguments(self.load_factory())

    def documentation(self) -> str:
        """The factory's whole docstring (imports the factory)."""
        return inspect.getdoc(self.load_factory()) or ""

    def check(self) -> str:
        """Import the factory: ``""`` when it imports and carries this declaration, else what is wrong."""
        try:
            factory = self.load_factory()
        except Exception as exc:  # any import-time failure is the report, never fatal here
            return f"factory {self.factory} does not import: {type(exc).__name__}: {exc}"
        declared = getattr(factory, DECLARATION, None)
        if declared is not None and (declared["name"], declared["roles"]) != (self.name, self.roles):
            return f"factory {self.factory} declares {declared['name']!r} {declared['roles']}, not {self.name!r}"
        return ""


def _literal(node: ast.expr, constants: dict[str, Any], where: str) -> Any:
    """The value of a decorator argument: a literal, or the name of a module-level literal constant."""
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ILTError(
            f"{where}: @component argument {ast.unparse(node)!r} is not a literal; write the value itself "
            "(or a module-level constant), so that plugins can be listed without importing their modules"
        ) from None


def _is_component_call(node: ast.expr) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    return (isinstance(func, ast.Name) and func.id == "component") or (
        isinstance(func, ast.Attribute) and func.attr == "component"
    )


def components_in(plugin: str, *modules: str) -> list[Component]:
    """The components declared with :func:`component` in ``modules`` (dotted names), for ``plugin``.

    Reads each module's source (its package is imported, the module itself is not), so an
    ``ilt_components`` hook implementation stays light. Each component's description is the first
    line of its factory's docstring.
    """
    found: list[Component] = []
    for module in modules:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise ILTError(f"plugin {plugin!r}: factory module {module!r} is not an importable .py file")
        path = Path(spec.origin)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        constants: dict[str, Any] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    constants[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                if not _is_component_call(decorator):
                    continue
                where = f"{path}:{decorator.lineno}"
                args = [_literal(a, constants, where) for a in decorator.args]
                kwargs = {k.arg: _literal(k.value, constants, where) for k in decorator.keywords if k.arg}
                if len(args) != 1 or "roles" not in kwargs:
                    raise ILTError(f"{where}: write @component(NAME, roles=(...), requires=(...), install=...)")
                unknown = [r for r in kwargs["roles"] if r not in ROLES]
                if unknown:
                    raise ILTError(
                        f"{where}: unknown role(s) {', '.join(map(str, unknown))}; roles are: {', '.join(ROLES)}"
                    )
                doc = (ast.get_docstring(node) or "").strip()
                found.append(
                    Component(
                        plugin=plugin,
                        name=args[0],
                        roles=tuple(kwargs["roles"]),
                        factory=f"{module}:{node.name}",
                        requires=tuple(kwargs.get("requires", ())),
                        install=kwargs.get("install", ""),
                        description=doc.splitlines()[0] if doc else "",
                    )
                )
    return found


@dataclass(frozen=True)
class DataRecipe:
    """A named corpus a plugin can prepare (``ilt data prepare NAME``, ``--data_recipe NAME``).

    ``prepare(out_dir=None, progress=True, archive=None)`` writes the splits and returns
    ``{split: path}`` with at least ``train`` and ``validation``.
    """

    name: str
    description: str
    prepare: Callable[..., dict[str, Any]] = field(repr=False)


@dataclass(frozen=True)
class FastPath:
    """A fast path (a faster layer, a fused step, a cheaper way to read data) and whether it is on here.

    ``name`` says where it is and what it does; ``detail`` what it relies on, and when off, why (what differs in
    the installed packages): the slower, ordinary path then runs, with the same results.
    """

    name: str
    active: bool
    detail: str


@dataclass
class PluginInfo:
    """A plugin as ``ilt plugins`` shows it."""

    name: str
    distribution: str
    version: str
    components: list[Component] = field(default_factory=list)
    error: str = ""


def _manager() -> pluggy.PluginManager:
    """A pluggy manager for the ``ilt`` project with its hook specifications."""
    manager = pluggy.PluginManager("ilt")
    manager.add_hookspecs(hookspecs)
    return manager


class Registry:
    """All components of all registered plugins; see :func:`get_registry`.

    Every plugin goes through :meth:`register` (pluggy's ``register``), then the registry asks it
    through the hooks of :mod:`ilt_core.plugins.hookspecs`. The core has no built-in plugin of its
    own: the project's plugins (``ilt_plugins/*``) are distributions found, like a third party's,
    through the entry-point group ``ilt``. ``Registry(load_entry_points=False)`` starts empty (tests
    register modules themselves).
    """

    def __init__(self, load_entry_points: bool = True) -> None:
        self.manager = _manager()
        self.plugins: dict[str, PluginInfo] = {}
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if ep.name in self.plugins:
                continue  # one distribution seen twice on sys.path (an editable install and a copy)
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin is reported, never fatal
                self.plugins[ep.name] = PluginInfo(ep.name, dist, version, error=f"{type(exc).__name__}: {exc}")
                continue
            self.register(module, ep.name, dist, version)

    def register(self, module: Any, name: str, distribution: str = "?", version: str = "?") -> None:
        """Register a plugin module (or object) with hook implementations under ``name``.

        Its components are collected at once through the ``ilt_components`` hook of a manager that
        holds this plugin alone, so that each component is known to come from the plugin that
        declared it (the other hooks are called on the registry's manager, over every plugin).
        """
        if self.manager.has_plugin(name):
            return
        self.manager.register(module, name=name)
        info = PluginInfo(name, distribution, version)
        alone = _manager()
        alone.register(module, name=name)
        try:
            found = alone.hook.ilt_components()
        except Exception as exc:  # a broken declaration is reported, never fatal
            found, info.error = [], f"{type(exc).__name__}: {exc}"
        for component in (c for batch in found for c in batch):
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

    def bench_mix_paths(self) -> list[Path]:
        """Folders and files of benchmark mix YAML that plugins contribute (``ilt_bench_mixes`` hook)."""
        return [Path(p) for found in self.manager.hook.ilt_bench_mixes() for p in found]

    def fast_paths(self) -> list[FastPath]:
        """Every plugin's fast paths (``ilt_fast_paths`` hook); a hook that fails is one path reported off."""
        found: list[FastPath] = []
        for name, impl in [(i.plugin_name, i) for i in self.manager.hook.ilt_fast_paths.get_hookimpls()]:
            try:
                found.extend(impl.function())
            except Exception as exc:  # a plugin's own check that breaks: reported, never fatal
                found.append(FastPath(f"{name}: fast paths", False, f"the check failed: {type(exc).__name__}: {exc}"))
        return found

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
        """Build the component at ``address`` for ``role`` with the user's ``args``.

        ``args`` are checked against the factory's signature first: a name it does not take is an
        error that lists the ones it does (unless it takes a plain ``**kwargs``, passed on).
        """
        if role not in ROLES:
            raise ILTError(f"unknown role {role!r}; roles are: {', '.join(ROLES)}")
        component = self.get(address, role, where)
        at = f"{where}: " if where else ""
        if component.missing:
            raise ILTError(
                f"{at}component {address!r} needs {', '.join(component.missing)}, which is not installed; "
                f"run: {component.install}"
            )
        factory = component.load_factory()
        known = accepted_arguments(factory)
        unknown = sorted(set(args) - set(known)) if known is not None else []
        if unknown:
            raise ILTError(
                f"{at}{address} ({role}): unknown argument(s) {', '.join(unknown)}; "
                f"expected some of: {', '.join(known or ()) or 'none'}"
            )
        return factory(role=role, context=context, **args)


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry of installed plugins (entry points loaded once)."""
    return Registry()
