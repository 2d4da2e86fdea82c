"""What a component factory accepts: its keyword arguments and their types, read from its signature and hints.

``ilt plugins --verbose`` prints them (:func:`describe_arguments`); a spec block's arguments are checked against
them (:func:`accepted_arguments`), including the fields of a ``**kwargs: Unpack[TypedDict]``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any


def _typed_dict_fields(annotation: Any) -> dict[str, Any] | None:
    """The fields of ``Unpack[SomeTypedDict]`` (PEP 692 ``**kwargs``), else None."""
    if typing.get_origin(annotation) is not typing.Unpack:
        return None
    (inner,) = typing.get_args(annotation)
    return typing.get_type_hints(inner) if typing.is_typeddict(inner) else None


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(factory, include_extras=True)
    except Exception:  # an annotation that does not resolve: fall back to the raw strings
        return {}


def accepted_arguments(factory: Callable[..., Any]) -> tuple[str, ...] | None:
    """The argument names a spec block may give ``factory``; None when it takes any (plain ``**kwargs``)."""
    hints = _hints(factory)
    names: list[str] = []
    for param in inspect.signature(factory).parameters.values():
        if param.name in ("role", "context") or param.kind is param.VAR_POSITIONAL:
            continue
        if param.kind is param.VAR_KEYWORD:
            fields = _typed_dict_fields(hints.get(param.name))
            if fields is None:
                return None
            names += fields
            continue
        names.append(param.name)
    return tuple(names)


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def describe_arguments(factory: Callable[..., Any]) -> list[str]:
    """One line per argument a spec block may give ``factory``: ``name: type = default``.

    From the signature (``role`` and ``context`` are the core's); a PEP 692 ``**kwargs:
    Unpack[TypedDict]`` is expanded into its fields, a plain ``**kwargs`` is shown as passed on.
    """
    hints = _hints(factory)
    lines: list[str] = []
    for param in inspect.signature(factory).parameters.values():
        if param.name in ("role", "context") or param.kind is param.VAR_POSITIONAL:
            continue
        annotation = hints.get(param.name, param.annotation)
        if param.kind is param.VAR_KEYWORD:
            fields = _typed_dict_fields(annotation)
            if fields is None:
                lines.append(f"**{param.name}: any other argument is passed on")
            else:
                lines += [f"{key}: {_type_name(value)}" for key, value in fields.items()]
            continue
        text = f"{param.name}: {_type_name(annotation)}".rstrip(": ")
        if param.default is not param.empty:
            text += f" = {param.default!r}"
        lines.append(text)
    return lines


__all__ = ["accepted_arguments", "describe_arguments"]
