"""Helpers that image-encoder plugins share: word images padded to their patch grid and normalised."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ilt_core.errors import ILTError


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


def normalized_pixels(
    pixel_values: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    patch_height: int,
    patch_width: int,
    where: str,
) -> torch.Tensor:
    """Word images ``(N, 3, H, W)`` in ``[0, 1]`` padded with paper to the patch grid (:func:`pad_to_multiple`) and
    normalised by the backbone's ``mean`` / ``std`` ``(1, 3, 1, 1)``: what a timm or open_clip tower takes.

    Images of another shape are an :class:`ILTError` naming ``where`` (e.g. ``"image_encoder (timm)"``).
    """
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ILTError(f"{where}: pixel_values has shape {tuple(pixel_values.shape)}; expected (N, 3, H, W)")
    x = pad_to_multiple(pixel_values, patch_height, patch_width)
    return (x - mean.to(x.dtype)) / std.to(x.dtype)
