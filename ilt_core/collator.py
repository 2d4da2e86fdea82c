"""Texts to one padded batch: units, byte ids, word images and labels, each unit worked once.

Layout of a :class:`Batch` (U = distinct units in the batch, B = rows, L = units per row,
T = bytes per unit, K = label bytes per position):

- ``unit_input_ids`` / ``unit_attention_mask`` ``(U, T)``: the bytes of each distinct unit; row 0
  is always the text-start marker (a lone ``bos``).
- ``image_groups``: ``[(indices (G,), pixels (G, 3, H, W))]``, the distinct units' images grouped
  by width (one width per group, so no image is padded).
- ``unit_index`` ``(B, L)``: which distinct unit sits at each position (0 at padding).
- ``attention_mask`` ``(B, L)``: 1 for real positions. Rows are right-padded.
- ``position_ids`` ``(B, L)``: restart at 0 at every text (packing puts several texts in a row).
- ``segment_ids`` ``(B, L)``: which text of its row a position belongs to, -1 at padding.
- ``labels`` ``(B, L, K)``: what the latent at each position must make the decoder write: the
  bytes of the next unit then ``eos`` (``labels: unit``), or the next ``label_bytes`` bytes of text
  (``labels: bytes``); after a text's last unit, a lone ``eos`` (end of text); -100 is ignored.
- ``num_bytes`` ``(B,)``: UTF-8 bytes of text each row is scored on (for bits-per-byte).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ilt_core.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID
from ilt_core.errors import ILTError

IGNORE_INDEX = -100


@dataclass
class TextUnits:
    """One text's units (without the start marker) and whether the text ends after them."""

    units: list[str]
    complete: bool = True


@dataclass
class Batch:
    """A collated batch; see the module docstring for shapes."""

    unit_input_ids: torch.Tensor
    unit_attention_mask: torch.Tensor
    unit_index: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    labels: torch.Tensor
    num_bytes: torch.Tensor
    image_groups: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    units: list[str] = field(default_factory=list)

    @property
    def packed(self) -> bool:
        """True when some row holds more than one text (needs a block-diagonal mask)."""
        return bool((self.segment_ids > 0).any())

    def to(self, device: torch.device | str) -> Batch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device)
            elif f.name == "image_groups":
                value = [(i.to(device), p.to(device)) for i, p in value]
            moved[f.name] = value
        return Batch(**moved)

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`ILTModel.forward`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "units"}

    # Trainer and accelerate treat a batch as a mapping.
    def keys(self):
        return self.model_inputs().keys()

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Greedy in-order packing: indices of texts per row, each row's total length <= capacity."""
    rows: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if rows and used + n <= capacity:
            rows[-1].append(i)
            used += n
        else:
            rows.append([i])
            used = n
    return rows


def collate_units(
    texts: Sequence[TextUnits],
    encode_unit: Any,
    render_units: Any | None,
    *,
    labels: str = "unit",
    label_bytes: int = 32,
    max_units: int | None = None,
    packing: bool = False,
) -> Batch:
    """Collate already-segmented texts.

    ``encode_unit(unit) -> list[int]`` gives a unit's byte ids (no specials);
    ``render_units(units) -> list[(indices, pixels)]`` renders distinct units grouped by width
    (None when the model has no image encoder). ``max_units`` bounds a row's length including the
    start marker: a longer text is cut (and then not marked complete), a packed row holds
    several texts up to it.
    """
    if labels not in ("unit", "bytes"):
        raise ILTError(f"labels: expected 'unit' or 'bytes', got {labels!r}")
    seqs: list[TextUnits] = []
    for t in texts:
        if max_units is not None and len(t.units) + 1 > max_units:
            t = TextUnits(t.units[: max_units - 1], complete=False)
        seqs.append(t)

    rows = (
        pack_rows([len(t.units) + 1 for t in seqs], max_units or 10**9) if packing else [[i] for i in range(len(seqs))]
    )

    # distinct units: 0 is the start marker, then units in first-seen order
    table: dict[str, int] = {}
    distinct: list[str] = []

    def index_of(unit: str) -> int:
        idx = table.get(unit)
        if idx is None:
            idx = table[unit] = len(distinct) + 1
            distinct.append(unit)
        return idx

    unit_bytes = {}  # unit -> byte ids, computed once
    row_len = max(sum(len(seqs[i].units) + 1 for i in row) for row in rows) if rows else 1
    B = len(rows)
    unit_index = torch.zeros(B, row_len, dtype=torch.long)
    attention_mask = torch.zeros(B, row_len, dtype=torch.long)
    position_ids = torch.zeros(B, row_len, dtype=torch.long)
    segment_ids = torch.full((B, row_len), -1, dtype=torch.long)
    num_bytes = torch.zeros(B, dtype=torch.long)
    row_labels: list[list[list[int] | None]] = []

    for b, row in enumerate(rows):
        pos = 0
        labels_b: list[list[int] | None] = [None] * row_len
        for seg, ti in enumerate(row):
            t = seqs[ti]
            ids_per_unit = []
            for u in t.units:
                if u not in unit_bytes:
                    unit_bytes[u] = encode_unit(u)
                ids_per_unit.append(unit_bytes[u])
            n = len(t.units) + 1
            unit_index[b, pos] = 0
            for j, u in enumerate(t.units):
                unit_index[b, pos + 1 + j] = index_of(u)
            attention_mask[b, pos : pos + n] = 1
            position_ids[b, pos : pos + n] = torch.arange(n)
            segment_ids[b, pos : pos + n] = seg
            if labels == "unit":
                for j in range(n - 1):
                    labels_b[pos + j] = ids_per_unit[j] + [EOS_ID]
                    num_bytes[b] += len(ids_per_unit[j])
            else:
                flat = [x for ids in ids_per_unit for x in ids]
                offset = 0
                for j in range(n - 1):
                    window = flat[offset : offset + label_bytes]
                    if len(window) < label_bytes and t.complete:
                        window = window + [EOS_ID]
                    labels_b[pos + j] = window
                    offset += len(ids_per_unit[j])
                num_bytes[b] += len(flat)
            if t.complete:
                labels_b[pos + n - 1] = [EOS_ID]  # end of text: an empty unit
            pos += n
        row_labels.append(labels_b)

    K = max((len(lab) for r in row_labels for lab in r if lab is not None), default=1)
    label_tensor = torch.full((B, row_len, K), IGNORE_INDEX, dtype=torch.long)
    for b, r in enumerate(row_labels):
        for p, lab in enumerate(r):
            if lab is not None:
                label_tensor[b, p, : len(lab)] = torch.tensor(lab, dtype=torch.long)

    all_ids = [[BOS_ID]] + [unit_bytes[u] for u in distinct]
    T = max(1, max(len(x) for x in all_ids))
    unit_input_ids = torch.full((len(all_ids), T), PAD_ID, dtype=torch.long)
    unit_attention_mask = torch.zeros(len(all_ids), T, dtype=torch.long)
    for i, ids in enumerate(all_ids):
        if ids:
            unit_input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            unit_attention_mask[i, : len(ids)] = 1
        else:  # a unit with no bytes cannot occur from segmentation, but keep one real position
            unit_attention_mask[i, 0] = 1

    image_groups = render_units([""] + distinct) if render_units is not None else []
    return Batch(
        unit_input_ids=unit_input_ids,
        unit_attention_mask=unit_attention_mask,
        unit_index=unit_index,
        attention_mask=attention_mask,
        position_ids=position_ids,
        segment_ids=segment_ids,
        labels=label_tensor,
        num_bytes=num_bytes,
        image_groups=image_groups,
        units=["<start>"] + distinct,
    )
