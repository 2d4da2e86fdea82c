"""``hf:encoder``: a bidirectional transformers text encoder (BERT, ModernBERT, DeBERTa-v2/v3) over bytes."""

from __future__ import annotations

from typing import Unpack

import torch
from torch import nn

from ilt_core.errors import ILTError
from ilt_core.plugins.registry import BuildContext, component
from ilt_hf.backbone import HFWrapper
from ilt_hf.loading import Source, SourceArgs, accepts_kwarg, set_special_tokens

POOLINGS = ("mean", "cls")


class HFTextEncoder(HFWrapper):
    """Bytes encoder: ``forward(input_ids (N, T), attention_mask (N, T))`` -> ``(N, hidden_size)``.

    ``pooling="mean"`` averages the last hidden states over the real bytes (mask 1); ``"cls"`` takes position 0.
    """

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.hidden_size: int = int(model.config.hidden_size)
        self.vocab_size: int = int(model.get_input_embeddings().weight.shape[0])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.to(hidden.dtype)[..., None]
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


@component(
    "encoder",
    roles=("bytes_encoder",),
    requires=("transformers",),
    install="pip install ilt-hf  (or: pip install transformers)",
)
def build_encoder(
    role: str, context: BuildContext, *, pooling: str = "mean", **source: Unpack[SourceArgs]
) -> HFTextEncoder:
    """A bidirectional transformers text encoder (BERT, ModernBERT, DeBERTa), mean or CLS pooled.

    ``AutoModel`` with the byte vocabulary (``context.vocab_size``); ``pooling``: ``mean`` or ``cls``.
    """
    from transformers import AutoModel  # heavy: imported when a component is built

    where = f"hf:encoder ({role})"
    if pooling not in POOLINGS:
        raise ILTError(f"{where}: pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    hf = Source(where, **source)
    cfg = hf.make_config()
    if not hf.pretrained:
        cfg.vocab_size = context.vocab_size
        set_special_tokens(cfg, context)
    # BERT's pooler (dense + tanh over CLS) is unused by mean pooling and untrained in most checkpoints
    extra = {"add_pooling_layer": False} if accepts_kwarg(AutoModel, cfg, "add_pooling_layer") else {}
    model = hf.build(AutoModel, cfg, model_kwargs=extra)
    if hf.pretrained:
        model.resize_token_embeddings(context.vocab_size)
        set_special_tokens(model.config, context)
    return HFTextEncoder(model, pooling)
