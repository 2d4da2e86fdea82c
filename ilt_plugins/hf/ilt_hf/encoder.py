"""``hf:encoder``: a bidirectional transformers text encoder (BERT, ModernBERT, DeBERTa-v2/v3) over bytes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ilt_core.errors import ILTError
from ilt_hf.loading import (
    COMMON_ARGS,
    accepts_kwarg,
    build_model,
    check_unknown_args,
    make_config,
    set_special_tokens,
)

POOLINGS = ("mean", "cls")


class HFTextEncoder(nn.Module):
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


def build_encoder(
    role: str,
    context: Any,
    *,
    config: dict[str, Any] | None = None,
    name_or_path: str | None = None,
    pretrained: bool = False,
    gguf_file: str | None = None,
    attn_implementation: str | None = "sdpa",
    dtype: str | None = None,
    pooling: str = "mean",
    **unknown: Any,
) -> HFTextEncoder:
    """Factory of ``hf:encoder``: ``AutoModel`` with the byte vocabulary (``context.vocab_size``)."""
    from transformers import AutoModel

    where = f"hf:encoder ({role})"
    check_unknown_args(where, unknown, (*COMMON_ARGS, "pooling"))
    if pooling not in POOLINGS:
        raise ILTError(f"{where}: pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    cfg = make_config(where, config, name_or_path, pretrained, gguf_file)
    if not pretrained:
        cfg.vocab_size = context.vocab_size
        set_special_tokens(cfg, context)
    # BERT's pooler (dense + tanh over CLS) is unused by mean pooling and untrained in most checkpoints
    extra = {"add_pooling_layer": False} if accepts_kwarg(AutoModel, cfg, "add_pooling_layer") else {}
    model = build_model(
        AutoModel,
        cfg,
        where=where,
        name_or_path=name_or_path,
        pretrained=pretrained,
        gguf_file=gguf_file,
        attn_implementation=attn_implementation,
        dtype=dtype,
        model_kwargs=extra,
    )
    if pretrained:
        model.resize_token_embeddings(context.vocab_size)
        set_special_tokens(model.config, context)
    return HFTextEncoder(model, pooling)
