"""What :meth:`ILTModel.forward <ilt_core.modeling.model.ILTModel.forward>` returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ILTOutput:
    """What :meth:`ILTModel.forward` returns.

    ``loss``: mean cross-entropy (nats) over every label byte in the batch, or None without labels.
    ``logits``: ``(M, K, V)`` for the M labelled positions. ``unit_losses``: ``(B, L)`` summed
    negative log-likelihood (nats) of each position's label (0 where none).
    ``hidden_states``: the latent ``(B, L, D)``. ``num_label_tokens``: how many bytes the loss
    averaged over.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    unit_losses: torch.Tensor | None
    hidden_states: torch.Tensor
    num_label_tokens: int | torch.Tensor = 0

    # Trainer reads outputs["loss"] or outputs[0]
    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return [self.loss, self.logits][key]
        return getattr(self, key)

    def keys(self) -> list[str]:
        return ["loss", "logits", "unit_losses", "hidden_states"]


__all__ = ["ILTOutput"]
