"""Helpers that image-encoder plugins share: padding word images to their patch grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(pixel_values: torch.Tensor, multiple_h: int, multiple_w: int, value: float = 1.0) -> torch.Tensor:
    """Pad ``(N, C, H, W)`` on the bottom/right with ``value`` so H, W are multiples of the patch size.

    ``value`` 1.0 is paper (white) in ``[0, 1]`` pixels, so a word's ink never meets padding of
    another meaning. Returns ``pixel_values`` itself when no padding is needed.
    """
    height, width = pixel_values.shape[-2:]
    pad_h = (-height) % multiple_h
    pad_w = (-width) % multiple_w
    if pad_h == 0 and pad_w == 0:
        return pixel_values
    return F.pad(pixel_values, (0, pad_w, 0, pad_h), value=value)
