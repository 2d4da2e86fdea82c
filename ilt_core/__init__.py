"""ILT core: the public API (build a model, segment text, generate, score) and what plugins need.

Subpackages, each importing only those listed before it (no import cycles):

- ``plugins``: the five role protocols, the hook specifications and the component registry.
- ``specs``: YAML model specs validated with pydantic, and the named presets.
- ``text``: units, bytes, word images and batches (segmentation, rendering cache, collators).
- ``generation``: the word-level decoding loop; it works on any model with :class:`ILTModel`'s
  methods and imports only ``text``.
- ``modeling``: the assembled :class:`ILTModel` (its ``generate`` calls ``generation``), its
  configuration, checkpoints and counts.
- ``training``: ``ilt train`` (arguments, data pipeline, Trainer subclass, the run).
- ``cli``: the ``ilt`` command line.

Modules beside them: ``errors`` (the user-facing error types), ``files`` (a file's SHA-256) and
``evaluation`` (bits-per-byte).
"""

from ilt_core.errors import CheckpointError, ILTError, SpecError
from ilt_core.evaluation import bits_per_byte
from ilt_core.generation.loop import generate, stream_generate
from ilt_core.generation.options import GenerationOptions
from ilt_core.likelihood import continuation_logprobs, text_logprobs
from ilt_core.modeling.config import ILTConfig
from ilt_core.modeling.model import ILTModel, build_model
from ilt_core.plugins.hookspecs import hookimpl
from ilt_core.plugins.protocols import ROLES
from ilt_core.plugins.registry import BuildContext, Component, component, components_in, get_registry
from ilt_core.specs.spec import load_spec
from ilt_core.text.segmentation import segment

__all__ = [
    "ROLES",
    "BuildContext",
    "CheckpointError",
    "Component",
    "GenerationOptions",
    "ILTConfig",
    "ILTError",
    "ILTModel",
    "SpecError",
    "bits_per_byte",
    "build_model",
    "component",
    "components_in",
    "continuation_logprobs",
    "generate",
    "get_registry",
    "hookimpl",
    "load_spec",
    "segment",
    "stream_generate",
    "text_logprobs",
]
