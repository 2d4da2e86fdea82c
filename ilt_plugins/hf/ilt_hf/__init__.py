"""ILT plugin ``hf``: Hugging Face transformers backbones for every model role.

Components:

- ``hf:causal-lm`` — any ``AutoModelForCausalLM`` architecture (llama, gpt_neox, gemma3_text, gpt2, ...) as the
  latent transformer (token embeddings removed, reads ``inputs_embeds``), the bytes decoder (vocabulary = the
  byte tokenizer's) or a bytes encoder (last real token pooled).
- ``hf:encoder`` — bidirectional text encoders (BERT, ModernBERT, DeBERTa-v2/v3) as bytes encoders, mean or CLS
  pooled.
- ``hf:vision`` — vision towers (ViT, SwinV2, CLIP's vision model) as word-image encoders.

Every component takes ``config`` (an inline transformers config with ``model_type``), ``name_or_path`` (a hub name
or a local folder) and ``pretrained`` (load weights from ``name_or_path``). This module stays light: transformers
is imported only when a component is built.
"""

from __future__ import annotations

from ilt_core import Component, hookimpl

INSTALL = "pip install ilt-hf  (or: pip install transformers)"


@hookimpl
def ilt_components() -> list[Component]:
    """The components this plugin provides (factories are imported lazily)."""
    return [
        Component(
            plugin="hf",
            name="causal-lm",
            roles=("latent_transformer", "bytes_decoder", "bytes_encoder"),
            factory="ilt_hf.causal_lm:build_causal_lm",
            requires=("transformers",),
            install=INSTALL,
            description="a transformers causal LM: latent transformer (no token embeddings), bytes decoder or bytes encoder",
        ),
        Component(
            plugin="hf",
            name="encoder",
            roles=("bytes_encoder",),
            factory="ilt_hf.encoder:build_encoder",
            requires=("transformers",),
            install=INSTALL,
            description="a bidirectional transformers text encoder (BERT, ModernBERT, DeBERTa), mean or CLS pooled",
        ),
        Component(
            plugin="hf",
            name="vision",
            roles=("image_encoder",),
            factory="ilt_hf.vision:build_vision",
            requires=("transformers",),
            install=INSTALL,
            description="a transformers vision tower (ViT, SwinV2, CLIP vision) encoding each word image to one vector",
        ),
    ]
