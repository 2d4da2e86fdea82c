"""ILT plugin ``hf``: Hugging Face transformers backbones for every model role.

Components (each declared with ``@component`` beside its factory):

- ``hf:causal-lm`` (:mod:`ilt_hf.causal_lm`) — any ``AutoModelForCausalLM`` architecture as the latent
  transformer, the bytes decoder or a bytes encoder.
- ``hf:encoder`` (:mod:`ilt_hf.encoder`) — bidirectional text encoders (BERT, ModernBERT, DeBERTa) as
  bytes encoders.
- ``hf:vision`` (:mod:`ilt_hf.vision`) — vision towers (ViT, SwinV2, CLIP's) as word-image encoders.

Every component takes ``config``, ``name_or_path`` and ``pretrained`` (:class:`ilt_hf.loading.SourceArgs`).
This module stays light: transformers is imported only when a component is built.
"""

from __future__ import annotations

from ilt_core import Component, hookimpl
from ilt_core.plugins.registry import components_in


@hookimpl
def ilt_components() -> list[Component]:
    """The components declared in the factory modules (read, not imported)."""
    return components_in("hf", "ilt_hf.causal_lm", "ilt_hf.encoder", "ilt_hf.vision")


@hookimpl
def ilt_fast_paths() -> list:
    """The fast paths of :mod:`ilt_hf.fast_paths`, checked against the installed transformers."""
    from ilt_hf.fast_paths import fast_paths

    return fast_paths()
