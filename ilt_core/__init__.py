"""ILT core: protocols, registry, specs, text pipeline, model assembly and decoding."""

from ilt_core.errors import CheckpointError, ILTError, SpecError
from ilt_core.hookspecs import hookimpl
from ilt_core.protocols import ROLES
from ilt_core.registry import BuildContext, Component, get_registry

__all__ = [
    "ROLES",
    "BuildContext",
    "CheckpointError",
    "Component",
    "ILTError",
    "SpecError",
    "get_registry",
    "hookimpl",
]
