"""``hf:encoder``: a bidirectional transformers text encoder (BERT, ModernBERT, DeBERTa-v2/v3) over bytes."""

from __future__ import annotations

import logging
from typing import Unpack

import torch
from torch import nn

from ilt_core.errors import ILTError
from ilt_core.plugins.registry import BuildContext, component
from ilt_core.text.image_packing import segment_mask
from ilt_hf.backbone import HFWrapper, additive_mask
from ilt_hf.fast_bert import FusedBertWeights, fused_bert_forward, fused_bert_supported
from ilt_hf.fused_weights import switch_fused
from ilt_hf.loading import Source, SourceArgs, accepts_kwarg, set_special_tokens

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")
#: model types whose forward takes a prepared 4-D additive mask as it is (transformers' masking utilities)
PREPARED_MASK_MODEL_TYPES = frozenset({"bert"})
#: fewest units before a batch is split into length groups (below it, one call costs less than several)
MIN_ROWS_TO_GROUP = 64
#: at most this many length groups a batch
MAX_LENGTH_GROUPS = 3


def length_groups(attention_mask: torch.Tensor) -> list[tuple[torch.Tensor, int]] | None:
    """Rows of a right-padded ``(N, T)`` mask in up to :data:`MAX_LENGTH_GROUPS` groups of similar length.

    Returns ``[(rows (G,), width)]`` (each group's rows run cut to ``width`` columns: the longest of them), or None
    when one call over the whole batch is as good: few rows, left padding, or under 10% of the tokens saved.
    Units are short and their lengths spread (he-news: 1-22 bytes, mean 10.6): padding every unit to the longest
    one in a batch doubles the encoder's work; three groups cut it by a third.
    """
    rows, width = attention_mask.shape
    if rows < MIN_ROWS_TO_GROUP:
        return None
    lengths = attention_mask.sum(1)
    positions = torch.arange(width, device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), positions[None, :] < lengths[:, None]):
        return None  # not right-padded: cutting columns would cut real bytes
    order = torch.argsort(lengths, stable=True)
    groups = []
    for part in torch.tensor_split(order, MAX_LENGTH_GROUPS):
        if part.numel():
            groups.append((part, max(int(lengths[part[-1]]), 1)))
    if sum(len(part) * cut for part, cut in groups) > 0.9 * rows * width:
        return None
    return groups


class HFTextEncoder(HFWrapper):
    """Bytes encoder: ``forward(input_ids (N, T), attention_mask (N, T))`` -> ``(N, hidden_size)``.

    ``pooling="mean"`` averages the last hidden states over the real bytes (mask 1); ``"cls"`` takes position 0.
    On a CPU in eager mode a large right-padded batch runs in groups of similar length (:func:`length_groups`, one
    of the fast paths): the same vectors, less padding.
    """

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.group_lengths = True  # set_fast_paths switches it
        self.hidden_size: int = int(model.config.hidden_size)
        self.vocab_size: int = int(model.get_input_embeddings().weight.shape[0])
        # eval with gradients off (generation, evaluation): BERT takes the fused forward of ilt_hf.fast_bert
        self._fused = FusedBertWeights() if fused_bert_supported(model) else None

    def _set_fused(self, enabled: bool) -> list[str]:
        """Inference (eval mode, gradients off) through the fused BERT forward of :mod:`ilt_hf.fast_bert`, for a BERT
        the forward reproduces; off sends every call through the transformers forward (the fused weights kept aside)."""
        self.group_lengths = enabled
        on = switch_fused(self, "_fused", enabled, fused_bert_supported, FusedBertWeights)
        return ["length groups"] * enabled + ["fused BERT inference forward"] * on

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # grouping reads lengths back from the device and changes shapes per batch: a CPU-only, eager-only layer
        grouping = self.group_lengths and input_ids.device.type == "cpu" and not torch.compiler.is_compiling()
        groups = length_groups(attention_mask) if grouping else None
        if groups is None:
            return self._encode(input_ids, attention_mask)
        parts = [self._encode(input_ids[rows, :cut], attention_mask[rows, :cut]) for rows, cut in groups]
        order = torch.cat([rows for rows, _ in groups])
        back = torch.empty_like(order)
        back[order] = torch.arange(order.numel(), device=order.device)
        return torch.cat(parts)[back]

    @property
    def takes_packed_bytes(self) -> bool:
        """``protocols.BytesEncoder``'s optional packed input (:meth:`encode_packed`): mean pooling over a model
        whose forward takes a prepared 4-D mask and position ids (BERT)."""
        return self.pooling == "mean" and getattr(self.model.config, "model_type", None) in PREPARED_MASK_MODEL_TYPES

    def encode_packed(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        segments: torch.Tensor,
        owner: torch.Tensor,
        units: int,
    ) -> torch.Tensor:
        """Vectors ``(units, hidden_size)`` of units packed into rows (:class:`ilt_core.text.byte_packing.PackedBytes`,
        each ``(R, S)``; padding tokens owned by slot ``units``): one call of the model with each unit's bytes kept
        apart by a block mask and their positions restarting at 0, then each unit's mean. The vectors of
        :meth:`forward` on the padded ``(units, T)`` bytes, to float rounding; a unit with no token gets zeros."""
        mask = additive_mask(segment_mask(segments), self.model.dtype)  # (R, 1, S, S)
        hidden = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, return_dict=True
        ).last_hidden_state  # (R, S, D)
        flat = owner.reshape(-1)
        sums = hidden.new_zeros(units + 1, hidden.shape[-1]).index_add(0, flat, hidden.reshape(flat.numel(), -1))
        counts = hidden.new_zeros(units + 1).index_add(0, flat, hidden.new_ones(flat.numel()))
        return sums[:units] / counts[:units, None].clamp(min=1)

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(N, T)`` ids and mask -> pooled ``(N, hidden_size)``, in one call of the model."""
        if (
            self._fused is not None
            and not self.training
            and not torch.is_grad_enabled()
            and getattr(self.model.config, "_attn_implementation", None) in ("sdpa", "eager")
        ):
            hidden = fused_bert_forward(self.model, self._fused, input_ids, attention_mask)
        else:
            mask: torch.Tensor = attention_mask
            if getattr(self.model.config, "model_type", None) in PREPARED_MASK_MODEL_TYPES:
                # a prepared (N, 1, 1, T) additive mask: transformers then asks no device value whether a byte is padding
                mask = additive_mask(attention_mask != 0, self.model.dtype)[:, None, None, :]
            hidden = self.model(input_ids=input_ids, attention_mask=mask, return_dict=True).last_hidden_state
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
    role: str,
    context: BuildContext,
    *,
    pooling: str = "mean",
    length_groups: bool | None = None,
    **source: Unpack[SourceArgs],
) -> HFTextEncoder:
    """A bidirectional transformers text encoder (BERT, ModernBERT, DeBERTa), mean or CLS pooled.

    ``AutoModel`` with the byte vocabulary (``context.vocab_size``); ``pooling``: ``mean`` or ``cls``.
    ``length_groups``: read from older specs and ignored (length groups are a fast path: ``ILTModel.set_fast_paths``).
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
    if length_groups is not None:
        logger.warning(
            "%s: length_groups is ignored: no longer a model property; length groups are one of the fast paths, on "
            "by default (ILTModel.set_fast_paths(False), ilt train --no_fast_paths)",
            where,
        )
    return HFTextEncoder(model, pooling)
