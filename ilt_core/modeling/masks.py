"""The latent transformer's attention mask for packed rows."""

from __future__ import annotations

import torch


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, 1, L, L)`` mask: attend only to earlier positions of the same text.

    Padding (segment -1) attends to itself only, so no attention row is empty.
    """
    L = segment_ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    mask = same & causal
    eye = torch.eye(L, dtype=torch.bool, device=segment_ids.device)
    mask = mask | eye
    return mask[:, None]


__all__ = ["block_causal_mask"]
