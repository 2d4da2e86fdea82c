"""The label bytes of a batch as one packed stream of fixed capacity: the bytes decoder's input without padding.

Each labelled position ``f`` (flat, ``row * L + column``) with label bytes ``y_0 .. y_{k-1}`` is a *segment* of
``k`` decoder tokens: the position's prefix (its latent through the decoder mapping), then ``y_0 .. y_{k-2}``; the
targets are ``y_0 .. y_{k-1}``, the positions ``0 .. k-1``. Segments are laid end to end into ``R`` rows of ``S``
tokens; a block-causal mask keeps each inside itself, so every label is decoded as it would be alone, while the
decoder sees one ``(R, S)`` shape and almost no padding (per-label padding to the longest label wastes most of it:
units are short and their lengths spread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ilt_core.text.byte_tokenizer import PAD_ID
from ilt_core.text.image_packing import RowPacking

IGNORE = -100


@dataclass
class PackedLabels:
    """Label segments packed into rows (``R`` rows of ``S`` tokens, ``N = B * L`` positions).

    - ``input_ids`` ``(R, S)``: the byte each token reads (``PAD_ID`` at prefixes and padding).
    - ``prefix`` ``(N,)``: the token (flat, ``row * S + column``) that reads each position's prefix; ``R * S`` (a
      spare token past the end) for a position without a label.
    - ``positions`` ``(R, S)``: position inside the segment (0 at the prefix and at padding).
    - ``segments`` ``(R, S)``: which segment of its row a token belongs to, -1 at padding.
    - ``targets`` ``(R, S)``: the byte to predict, -100 at padding.
    - ``owner`` ``(R, S)``: the flat position whose loss a token adds to, ``N`` at padding (a spare slot).
    """

    input_ids: torch.Tensor
    prefix: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    targets: torch.Tensor
    owner: torch.Tensor


class LabelPacking(RowPacking):
    """How a collator packs label bytes: tokens per row and the rows a batch holds
    (:class:`~ilt_core.text.image_packing.RowPacking`)."""

    def pack(self, labels: Sequence[tuple[int, Sequence[int]]], positions: int) -> PackedLabels:
        """Pack ``labels``, ``(flat position, label byte ids)`` pairs, for a batch of ``positions`` positions."""
        starts, in_row = self.place([len(lab) for _, lab in labels], most=positions)
        size = self.rows * self.row_tokens
        input_ids = np.full(size, PAD_ID, dtype=np.int64)
        prefix = np.full(positions, size, dtype=np.int64)
        pos = np.zeros(size, dtype=np.int64)
        segments = np.full(size, -1, dtype=np.int64)
        targets = np.full(size, IGNORE, dtype=np.int64)
        owner = np.full(size, positions, dtype=np.int64)
        for (flat, lab), start, seg in zip(labels, starts, in_row, strict=True):
            k = len(lab)
            end = start + k
            prefix[flat] = start
            input_ids[start + 1 : end] = lab[:-1]
            pos[start:end] = np.arange(k)
            segments[start:end] = seg
            targets[start:end] = lab
            owner[start:end] = flat
        shape = (self.rows, self.row_tokens)
        rows = [torch.from_numpy(a).view(shape) for a in (input_ids, pos, segments, targets, owner)]
        return PackedLabels(rows[0], torch.from_numpy(prefix), *rows[1:])


__all__ = ["LabelPacking", "PackedLabels"]
