"""The bytes of a batch's distinct units as one packed stream of fixed capacity: the bytes encoder's input without
padding each unit to the longest.

Each distinct unit ``u`` with byte ids ``b_0 .. b_{k-1}`` is a *segment* of ``k`` tokens at positions ``0 .. k-1``.
Segments are laid end to end into ``R`` rows of ``S`` tokens; a block mask keeps each inside itself, so every unit
is encoded as it would be alone, while the encoder sees one ``(R, S)`` shape and almost no padding (units are short
and their lengths spread: padded to the longest, most of the encoder's slots hold nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ilt_core.text.byte_tokenizer import PAD_ID
from ilt_core.text.image_packing import RowPacking


@dataclass
class PackedBytes:
    """Unit segments packed into rows (``R`` rows of ``S`` tokens, ``U`` units).

    - ``input_ids`` ``(R, S)``: the byte each token reads (``PAD_ID`` at padding).
    - ``positions`` ``(R, S)``: position inside the unit (0 at padding).
    - ``segments`` ``(R, S)``: which segment of its row a token belongs to, -1 at padding.
    - ``owner`` ``(R, S)``: the unit a token belongs to, ``U`` (the batch's unit capacity) at padding: a spare slot
      past the last unit.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    owner: torch.Tensor


class BytePacking(RowPacking):
    """How a collator packs the units' bytes: tokens per row and the rows a batch holds
    (:class:`~ilt_core.text.image_packing.RowPacking`)."""

    def pack(self, units: Sequence[Sequence[int]], count: int) -> PackedBytes:
        """Pack the byte ids of ``units`` (token owner ``i`` for unit ``i``) for a batch of ``count`` unit slots
        (``count >= len(units)``; padding tokens belong to slot ``count``); a unit with no bytes gets no token."""
        lengths = [len(u) for u in units]
        if max(lengths, default=0) > self.row_tokens:
            raise ValueError(f"BytePacking.pack: a unit of {max(lengths)} bytes, more than a row's {self.row_tokens}")
        starts, in_row = self.place(lengths, most=count)
        size = self.rows * self.row_tokens
        input_ids = np.full(size, PAD_ID, dtype=np.int64)
        positions = np.zeros(size, dtype=np.int64)
        segments = np.full(size, -1, dtype=np.int64)
        owner = np.full(size, count, dtype=np.int64)
        for i, (ids, start, seg) in enumerate(zip(units, starts, in_row, strict=True)):
            k = len(ids)
            if not k:
                continue
            end = start + k
            input_ids[start:end] = ids
            positions[start:end] = np.arange(k)
            segments[start:end] = seg
            owner[start:end] = i
        shape = (self.rows, self.row_tokens)
        return PackedBytes(*(torch.from_numpy(a).view(shape) for a in (input_ids, positions, segments, owner)))


__all__ = ["BytePacking", "PackedBytes"]
