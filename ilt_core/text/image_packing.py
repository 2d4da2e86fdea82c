"""Word images as patches packed into rows of fixed length: one image-encoder call per step, one shape.

A word image ``(H, W)`` is a grid of ``H/p x W/p`` patches (``p`` the encoder's patch size). Each image becomes a
*segment* of ``1 + (H/p)(W/p)`` tokens (a class token, then its patches row-major, as a ViT flattens them) and the
segments are laid end to end into ``R`` rows of ``S`` tokens. Attention stays inside each segment (a block mask
from ``segments``), so every image gets the vector it would get alone, while the encoder sees one ``(R, S, .)``
tensor whatever the widths in the batch.

``positions`` index one table holding the class token's position embedding (index 0) then the grid embeddings of
every width, widths ``1 .. max_width/p`` one after another (:func:`position_offset`): an encoder computes that table
once per call from its own position embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ilt_core.errors import ILTError


def position_offset(grid_rows: int, width_patches: int) -> int:
    """Index in the position table of the first patch of a ``grid_rows x width_patches`` grid (class token: 0)."""
    return 1 + grid_rows * (width_patches - 1) * width_patches // 2


def position_table_size(grid_rows: int, max_width_patches: int) -> int:
    """Entries of the position table: the class token and the grids of widths ``1 .. max_width_patches``."""
    return position_offset(grid_rows, max_width_patches + 1)


@dataclass
class PackedImages:
    """Word images packed into rows (``N`` images, ``R`` rows of ``S`` tokens, ``p`` the patch size).

    - ``patches`` ``uint8 (R, S, p * p)``: gray levels of each token's patch (0 at class tokens and padding).
    - ``positions`` ``long (R, S)``: index in the position table (0: class token and padding).
    - ``segments`` ``long (R, S)``: which image of its row a token belongs to (0, 1, ...), -1 at padding.
    - ``cls_index`` ``long (N,)``: flat index (``row * S + column``) of each image's class token.
    """

    patches: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    cls_index: torch.Tensor


@dataclass
class ImagePacking:
    """How a collator packs word images: patch size, tokens per row, and the rows a batch holds.

    A batch packs into :func:`capacity_for` the rows its images need (never fewer: no image is dropped), a step of a
    fixed ladder, so the image encoder sees one of a few shapes, each the same for the same batch in any run.
    ``rows``: the last batch's; ``changes``: how many times it differed from the batch before (a compiled model
    compiles once for each new one).
    """

    patch_size: int
    row_tokens: int
    rows: int = 0
    changes: int = 0
    grow_only: bool = False  # never fewer rows than a batch before took (see FixedShapes.grow_only)

    def pack(self, images: Sequence[np.ndarray], count: int | None = None, rows: int | None = None) -> PackedImages:
        """Pack ``images`` (``uint8 (H, W_i)``, one ``H``, ``W_i`` multiples of the patch size) in order.

        ``count``: how many image slots to return in ``cls_index`` (at least ``len(images)``; the extra slots point
        at token 0, a real class token, so their vectors exist but mean nothing). ``rows``: the rows to return
        (at least those the images need), instead of the ladder's step: a row holds two of the widest images, so
        ``ceil(count / 2)`` rows always suffice and give one shape per ``count``.
        """
        p = self.patch_size
        n = len(images)
        count = n if count is None else count
        if count < n:
            raise ILTError(f"ImagePacking.pack: count={count} is below the {n} images given")
        lengths = []
        for i, image in enumerate(images):
            h, w = image.shape
            if h % p or w % p:
                raise ILTError(f"ImagePacking.pack: image {i} is {h}x{w}, not a multiple of patch size {p}")
            length = 1 + (h // p) * (w // p)
            if length > self.row_tokens:
                raise ILTError(
                    f"ImagePacking.pack: image {i} needs {length} tokens, more than a row's {self.row_tokens}"
                )
            lengths.append(length)
        starts = first_fit(lengths, self.row_tokens)
        needed = rows_used(starts, self.row_tokens)
        if rows is not None and rows < needed:
            raise ILTError(f"ImagePacking.pack: rows={rows} is below the {needed} rows the images need")
        if rows is None:
            rows = next_capacity(needed, self.rows, self.grow_only, most=count)
        self.changes += int(bool(self.rows) and rows != self.rows)
        self.rows = rows
        S, R = self.row_tokens, self.rows
        patches = np.zeros((R * S, p * p), dtype=np.uint8)
        positions = np.zeros(R * S, dtype=np.int64)
        segments = np.full(R * S, -1, dtype=np.int64)
        cls_index = np.zeros(count, dtype=np.int64)
        in_row = segments_in_rows(starts, lengths, S)
        for i, (image, start, seg) in enumerate(zip(images, starts, in_row, strict=True)):
            h, w = image.shape
            gh, gw = h // p, w // p
            end = start + lengths[i]
            segments[start:end] = seg
            cls_index[i] = start
            # (gh, p, gw, p) -> (gh, gw, p, p): patches row-major, each patch's pixels row-major (a conv's order)
            grid = np.asarray(image).reshape(gh, p, gw, p).transpose(0, 2, 1, 3).reshape(gh * gw, p * p)
            patches[start + 1 : end] = grid
            positions[start + 1 : end] = np.arange(position_offset(gh, gw), position_offset(gh, gw) + gh * gw)
        return PackedImages(
            patches=torch.from_numpy(patches).view(R, S, p * p),
            positions=torch.from_numpy(positions).view(R, S),
            segments=torch.from_numpy(segments).view(R, S),
            cls_index=torch.from_numpy(cls_index),
        )


def rows_used(starts: Sequence[int], row_tokens: int) -> int:
    """Rows that segments starting at the flat ``starts`` occupy."""
    return max((s // row_tokens for s in starts), default=-1) + 1


#: the ladder's growth from step to step: fine for eager steps (a new shape costs nothing, padding costs work),
#: coarse under ``grow_only`` (a compiled step compiles once per step it meets)
FINE_GROWTH = 1.0625
COARSE_GROWTH = 1.25


def ladder_growth(grow_only: bool) -> float:
    """The ladder :func:`capacity_for` climbs: :data:`COARSE_GROWTH` with ``grow_only`` (compiled steps), else
    :data:`FINE_GROWTH`."""
    return COARSE_GROWTH if grow_only else FINE_GROWTH


def capacity_for(needed: int, growth: float = COARSE_GROWTH) -> int:
    """The capacity a batch that needs ``needed`` slots gets: the smallest step of a fixed ladder at or above it,
    each step ``growth`` times the last (1.25: 1, 2, 3, 4, 5, 7, 9, 12, 15, 19, 24, ...; 1.0625: 1, 2, ..., 17,
    19, 21, 23, 25, 27, 29, 31, 33, 36, ...).

    A function of the batch alone, never of the batches before it: a resumed run (or a DataLoader worker) gives a
    batch the shape the unbroken run gave it, so dropout draws the same numbers; batches of one corpus land on a
    few steps, a compiled step compiles once per step met; at most ``growth - 1`` of it is padding.
    """
    step = 1
    while step < needed:
        step = max(step + 1, math.ceil(step * growth))
    return step


def next_capacity(needed: int, before: int, grow_only: bool, most: int | None = None) -> int:
    """The capacity a batch needing ``needed`` slots gets, after one that got ``before`` (0: the first batch): the
    ladder's step (:func:`capacity_for` on :func:`ladder_growth`), and with ``grow_only`` never below ``before``
    (fewer shapes, so fewer compilations).

    ``most``: the most slots any batch of the configuration can need (one row per segment, one unit per position),
    or None: the step is cut to it, so the ladder never pads past what no batch reaches (the coarse ladder's
    step above a batch that fills nearly every slot would add up to a quarter of work that is never used).
    """
    capacity = capacity_for(needed, ladder_growth(grow_only))
    if most is not None:
        capacity = min(capacity, max(most, needed))
    return max(capacity, before) if grow_only else capacity


def first_fit(lengths: Sequence[int], row_tokens: int) -> list[int]:
    """Flat start (``row * row_tokens + column``) of each segment of ``lengths`` packed into rows of ``row_tokens``:
    first fit, in order of decreasing length, ties in the order given (few rows, deterministic). A segment longer
    than a row gets a row of its own (the callers check lengths first).

    One length at a time: the segments of one length fill the opened rows in order, each row taking as many as its
    room holds (what placing them one by one, each in the first row with room, does), and the rest open new rows.
    """
    S = row_tokens
    sizes = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if not len(sizes):
        return []
    order = np.argsort(-sizes, kind="stable")
    by_size = sizes[order]
    starts = np.zeros(len(sizes), dtype=np.int64)
    free = np.zeros(0, dtype=np.int64)  # tokens left in each opened row, in the order opened
    cuts = np.flatnonzero(np.diff(by_size)) + 1
    for items, n in zip(np.split(order, cuts), by_size[np.r_[0, cuts]], strict=True):
        n, k = int(n), len(items)
        if n > S:  # a row of its own each, never shared
            starts[items] = (len(free) + np.arange(k)) * S
            free = np.concatenate([free, np.full(k, S - n)])
            continue
        if n == 0:  # empty segments: at the end of the first row not overfilled
            if not (free >= 0).any():
                free = np.concatenate([free, [S]])
            row = int(np.flatnonzero(free >= 0)[0])
            starts[items] = row * S + S - free[row]
            continue
        takes = np.maximum(free, 0) // n  # segments of this length each opened row still holds
        ends = np.cumsum(takes)
        placed = min(k, int(ends[-1])) if len(ends) else 0
        if placed:
            t = np.arange(placed)
            rows = np.searchsorted(ends, t, side="right")
            starts[items[:placed]] = rows * S + S - free[rows] + (t - (ends[rows] - takes[rows])) * n
            free = free - np.clip(placed - (ends - takes), 0, takes) * n
        if rest := k - placed:
            per = S // n
            t = np.arange(rest)
            starts[items[placed:]] = (len(free) + t // per) * S + (t % per) * n
            counts = np.full(-(-rest // per), per)
            counts[-1] = rest - per * (len(counts) - 1)
            free = np.concatenate([free, S - counts * n])
    return starts.tolist()


def row_length(tokens: int) -> int:
    """Tokens per packed row for segments of at most ``tokens`` tokens: rounded up to a multiple of 8, so rows
    stay aligned for vectorised kernels."""
    return -(-max(tokens, 1) // 8) * 8


def segments_in_rows(starts: Sequence[int], lengths: Sequence[int], row_tokens: int) -> list[int]:
    """Each segment's index among the segments of its row, in the order given (-1 for an empty one: no token)."""
    seen: dict[int, int] = {}
    found = []
    for start, k in zip(starts, lengths, strict=True):
        row = start // row_tokens
        found.append(seen.get(row, 0) if k else -1)
        if k:
            seen[row] = found[-1] + 1
    return found


@dataclass
class RowPacking:
    """Segments laid end to end into rows of ``row_tokens`` tokens (:func:`first_fit`), in the rows a batch needs:
    a step of the capacity ladder (:func:`next_capacity`: never fewer, so none is dropped). ``rows``: the last
    batch's; ``changes``: how many times they differed from the batch before (a compiled model compiles once for
    each new one). The label stream and the unit byte stream are ones."""

    row_tokens: int
    rows: int = 0
    changes: int = 0
    grow_only: bool = False  # never fewer rows than a batch before took (see FixedShapes.grow_only)

    def place(self, lengths: Sequence[int], most: int | None = None) -> tuple[list[int], list[int]]:
        """The flat start (``row * row_tokens + column``) and the index within its row of each segment of
        ``lengths``; takes this batch's rows, never more than ``most`` (the most segments a batch of the
        configuration holds: each takes a row at most) unless it needs them."""
        starts = first_fit(lengths, self.row_tokens)
        rows = next_capacity(rows_used(starts, self.row_tokens), self.rows, self.grow_only, most)
        self.changes += int(bool(self.rows) and rows != self.rows)
        self.rows = rows
        return starts, segments_in_rows(starts, lengths, self.row_tokens)


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """Boolean ``(R, 1, S, S)`` attention mask from ``segments`` ``(R, S)``: tokens attend within their image.

    A padding token attends to itself only, so no attention row is empty (SDPA would give NaN).
    """
    same = segments[:, :, None] == segments[:, None, :]
    real = segments[:, None, :] >= 0
    eye = torch.eye(segments.shape[1], dtype=torch.bool, device=segments.device)
    return ((same & real) | eye)[:, None]


__all__ = [
    "ImagePacking",
    "PackedImages",
    "RowPacking",
    "capacity_for",
    "first_fit",
    "ladder_growth",
    "next_capacity",
    "position_offset",
    "position_table_size",
    "row_length",
    "rows_used",
    "segment_mask",
    "segments_in_rows",
]
