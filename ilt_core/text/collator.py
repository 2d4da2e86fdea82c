"""Texts to one padded batch: units, byte ids, word images and labels, each unit worked once.

Layout of a :class:`Batch` (U = distinct units in the batch, B = rows, L = units per row,
T = bytes per unit, K = label bytes per position):

- ``unit_input_ids`` / ``unit_attention_mask`` ``(U, T)``: the bytes of each distinct unit; row 0
  is always the text-start marker (a lone ``bos``).
- ``image_groups``: ``[(indices (G,), pixels)]``, the distinct units' images grouped by width (one
  width per group, so no image is padded); ``pixels`` float ``(G, 3, H, W)`` in ``[0, 1]``, or, as
  training collates them (``ILTProcessor.with_pixels("uint8")``), the gray levels ``uint8 (G, 1, H, W)``:
  a quarter of the bytes, made the same floats by the model's image entry.
- ``unit_index`` ``(B, L)``: which distinct unit sits at each position (0 at padding).
- ``attention_mask`` ``(B, L)``: 1 for real positions. Rows are right-padded.
- ``position_ids`` ``(B, L)``: restart at 0 at every text (packing puts several texts in a row).
- ``segment_ids`` ``(B, L)``: which text of its row a position belongs to, -1 at padding.
- ``labels`` ``(B, L, K)``: what the latent at each position must make the decoder write: the
  bytes of the next unit then ``eos`` (``labels: unit``), or the next ``label_bytes`` bytes of text
  (``labels: bytes``); after a text's last unit, a lone ``eos`` (end of text); -100 is ignored.
- ``num_bytes`` ``(B,)``: UTF-8 bytes of text each row is scored on (for bits-per-byte).

With :class:`FixedShapes` every tensor has one of a few shapes, the same for the same batch in any run: ``B`` is
the configured rows (extra rows are all padding), ``L`` the row length, ``T`` the longest unit's bytes, ``K`` the
longest label, and ``U`` (distinct units; unused slots are padding units nothing points to) a step of a fixed
ladder at or above what the batch needs (:func:`~ilt_core.text.image_packing.capacity_for`: never fewer, at most
a sixteenth more; a quarter more with ``grow_only``, whose coarser ladder meets fewer shapes). The word images come
packed into rows of patches (``image_patches`` ``uint8 (R, S, p*p)``, ``image_positions`` / ``image_segments``
``(R, S)``, ``image_cls`` ``(U,)``; see :mod:`ilt_core.text.image_packing`) instead of ``image_groups``, when the
image encoder takes them, and the label bytes as one packed stream for the
bytes decoder (``decoder_*`` ``(R', S')``, ``decoder_prefix`` ``(B * L,)``; see :mod:`ilt_core.text.label_packing`),
when the decoder takes packed rows, and the units' bytes as one packed stream for the bytes encoder
(``unit_stream_*`` ``(R'', S'')``; see :mod:`ilt_core.text.byte_packing`) when it takes them (``unit_input_ids``
stay as they are); ``R``, ``R'`` and ``R''`` are ladder steps too. A capacity is a function of the batch alone, so a resumed run or a
DataLoader worker gives a batch the shapes (and the dropout draws) the unbroken run gave it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from ilt_core.errors import ILTError
from ilt_core.text.byte_packing import BytePacking
from ilt_core.text.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID
from ilt_core.text.image_packing import ImagePacking, next_capacity
from ilt_core.text.label_packing import LabelPacking

IGNORE_INDEX = -100


@dataclass
class TextUnits:
    """One text's units (without the start marker) and whether the text ends after them."""

    units: list[str]
    complete: bool = True


@dataclass
class FixedShapes:
    """The shapes every batch of a configuration gets (see the module docstring).

    ``rows`` x ``row_units``: ``(B, L)``; ``unit_bytes``: ``T``; ``label_len``: ``K``; ``unit_capacity``: the last
    batch's ``U``; ``images``: how word images are packed (None: by width, in ``image_groups``); ``label_stream``:
    how label bytes are packed for the bytes decoder (None: ``labels`` only); ``unit_stream``: how the units' bytes
    are packed for the bytes encoder (None: ``unit_input_ids`` only). ``changes`` counts the batches whose ``U``
    differed from the batch before. ``grow_only`` (set on the packings too by
    :meth:`~ilt_core.text.processor.TextProcessor.fixed_shapes`): a capacity never falls back to a smaller step,
    so a compiled step meets each shape once and stops meeting new ones; the padding is larger and a resumed run
    may take other shapes, but padding never changes a result.
    """

    rows: int
    row_units: int
    unit_bytes: int
    label_len: int
    unit_capacity: int = 0
    images: ImagePacking | None = None
    label_stream: LabelPacking | None = None
    unit_stream: BytePacking | None = None
    changes: int = 0
    grow_only: bool = False

    def units_for(self, needed: int) -> int:
        """The unit capacity for a batch of ``needed`` distinct units (start marker included): the ladder's step, or
        with ``grow_only`` the largest step any batch so far took (fewer shapes, so fewer compilations); never more
        than a batch of distinct units fills (one per position, and the start marker)."""
        capacity = next_capacity(needed, self.unit_capacity, self.grow_only, most=self.rows * self.row_units + 1)
        self.changes += int(bool(self.unit_capacity) and capacity != self.unit_capacity)
        self.unit_capacity = capacity
        return capacity


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
    image_patches: torch.Tensor | None = None
    image_positions: torch.Tensor | None = None
    image_segments: torch.Tensor | None = None
    image_cls: torch.Tensor | None = None
    decoder_input_ids: torch.Tensor | None = None
    decoder_prefix: torch.Tensor | None = None
    decoder_positions: torch.Tensor | None = None
    decoder_segments: torch.Tensor | None = None
    decoder_targets: torch.Tensor | None = None
    decoder_owner: torch.Tensor | None = None
    unit_stream_ids: torch.Tensor | None = None
    unit_stream_positions: torch.Tensor | None = None
    unit_stream_segments: torch.Tensor | None = None
    unit_stream_owner: torch.Tensor | None = None
    fixed: bool = False
    units: list[str] = field(default_factory=list)

    @property
    def packed(self) -> bool:
        """True when some row holds more than one text.

        Position ids restart at each text, so a latent transformer that builds its attention mask from
        them (``masks_from_position_ids``) keeps the texts apart with no mask passed; only one that
        cannot is given a dense block-causal mask built from ``segment_ids`` (see ``ILTModel._latent_mask``).
        """
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
        """Keyword arguments for :meth:`ILTModel.forward` (fields that are None left out)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "units" and getattr(self, f.name) is not None
        }

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
    shapes: FixedShapes | None = None,
) -> Batch:
    """Collate already-segmented texts.

    ``encode_unit(unit) -> list[int]`` gives a unit's byte ids (no specials);
    ``render_units(units) -> list[(indices, pixels)]`` renders distinct units grouped by width
    (None when the model has no image encoder). ``max_units`` bounds a row's length including the
    start marker: a longer text is cut (and then not marked complete), a packed row holds
    several texts up to it. ``shapes``: give every tensor the shape it sets (``max_units`` is then
    ``shapes.row_units``).
    """
    if labels not in ("unit", "bytes"):
        raise ILTError(f"labels: expected 'unit' or 'bytes', got {labels!r}")
    if shapes is not None:
        max_units = shapes.row_units
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

    unit_bytes: dict[str, list[int]] = {}  # unit -> byte ids, computed once
    row_len = max(sum(len(seqs[i].units) + 1 for i in row) for row in rows) if rows else 1
    if shapes is not None:
        if len(rows) > shapes.rows:
            raise ILTError(f"collate: {len(rows)} rows of texts, more than the fixed shapes' {shapes.rows} rows")
        row_len = shapes.row_units
        rows = rows + [[] for _ in range(shapes.rows - len(rows))]
    B = len(rows)
    # Built as Python lists and numpy arrays, then turned into tensors once: writing tensors one
    # element at a time costs microseconds per write and dominated collation.
    index_rows: list[list[int]] = []
    mask_rows: list[list[int]] = []
    position_rows: list[list[int]] = []
    segment_rows: list[list[int]] = []
    num_bytes_list: list[int] = []
    row_labels: list[list[tuple[int, list[int]]]] = []  # per row: (position, label ids)

    for row in rows:
        pos = 0
        index_b: list[int] = []
        positions_b: list[int] = []
        segments_b: list[int] = []
        labels_b: list[tuple[int, list[int]]] = []
        bytes_b = 0
        for seg, ti in enumerate(row):
            t = seqs[ti]
            ids_per_unit = []
            for u in t.units:
                ids = unit_bytes.get(u)
                if ids is None:
                    ids = unit_bytes[u] = encode_unit(u)
                ids_per_unit.append(ids)
            n = len(t.units) + 1
            index_b.append(0)
            index_b.extend(index_of(u) for u in t.units)
            positions_b.extend(range(n))
            segments_b.extend([seg] * n)
            if labels == "unit":
                for j in range(n - 1):
                    labels_b.append((pos + j, ids_per_unit[j] + [EOS_ID]))
                    bytes_b += len(ids_per_unit[j])
            else:
                flat = [x for ids in ids_per_unit for x in ids]
                offset = 0
                for j in range(n - 1):
                    window = flat[offset : offset + label_bytes]
                    if len(window) < label_bytes and t.complete:
                        window = window + [EOS_ID]
                    labels_b.append((pos + j, window))
                    offset += len(ids_per_unit[j])
                bytes_b += len(flat)
            if t.complete:
                labels_b.append((pos + n - 1, [EOS_ID]))  # end of text: an empty unit
            pos += n
        pad = row_len - pos
        index_rows.append(index_b + [0] * pad)
        mask_rows.append([1] * pos + [0] * pad)
        position_rows.append(positions_b + [0] * pad)
        segment_rows.append(segments_b + [-1] * pad)
        num_bytes_list.append(bytes_b)
        row_labels.append(labels_b)

    unit_index = torch.tensor(index_rows, dtype=torch.long).view(B, row_len)
    attention_mask = torch.tensor(mask_rows, dtype=torch.long).view(B, row_len)
    position_ids = torch.tensor(position_rows, dtype=torch.long).view(B, row_len)
    segment_ids = torch.tensor(segment_rows, dtype=torch.long).view(B, row_len)
    num_bytes = torch.tensor(num_bytes_list, dtype=torch.long)

    K = max((len(lab) for r in row_labels for _, lab in r), default=1)
    if shapes is not None:
        if K > shapes.label_len:
            raise ILTError(f"collate: a label of {K} bytes, longer than the fixed shapes' label_len {shapes.label_len}")
        K = shapes.label_len
    label_array = np.full((B, row_len, K), IGNORE_INDEX, dtype=np.int64)
    for b, r in enumerate(row_labels):
        for p, lab in r:
            label_array[b, p, : len(lab)] = lab
    label_tensor = torch.from_numpy(label_array)

    all_ids = [[BOS_ID]] + [unit_bytes[u] for u in distinct]
    T = max(1, max(len(x) for x in all_ids))
    U = len(all_ids)
    if shapes is not None:
        if T > shapes.unit_bytes:
            raise ILTError(
                f"collate: a unit of {T} bytes, longer than the fixed shapes' unit_bytes {shapes.unit_bytes}"
            )
        T = shapes.unit_bytes
        U = shapes.units_for(len(all_ids))
    ids_array = np.full((U, T), PAD_ID, dtype=np.int64)
    mask_array = np.zeros((U, T), dtype=np.int64)
    mask_array[len(all_ids) :, 0] = 1  # padding units: one real position, so no attention row is empty
    for i, ids in enumerate(all_ids):
        if ids:
            ids_array[i, : len(ids)] = ids
            mask_array[i, : len(ids)] = 1
        else:  # a unit with no bytes cannot occur from segmentation, but keep one real position
            mask_array[i, 0] = 1
    unit_input_ids = torch.from_numpy(ids_array)
    unit_attention_mask = torch.from_numpy(mask_array)

    unit_stream = None
    if shapes is not None and shapes.unit_stream is not None:
        unit_stream = shapes.unit_stream.pack(all_ids, count=U)
    stream = None
    if shapes is not None and shapes.label_stream is not None:
        flat = [(b * row_len + p, lab) for b, r in enumerate(row_labels) for p, lab in r if lab]
        stream = shapes.label_stream.pack(flat, B * row_len)
    packed = None
    if shapes is not None and shapes.images is not None and render_units is not None:
        packed = shapes.images.pack(render_units([""] + distinct, grouped=False), count=U)
        image_groups = []
    else:
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
        image_patches=packed.patches if packed is not None else None,
        image_positions=packed.positions if packed is not None else None,
        image_segments=packed.segments if packed is not None else None,
        image_cls=packed.cls_index if packed is not None else None,
        decoder_input_ids=stream.input_ids if stream is not None else None,
        decoder_prefix=stream.prefix if stream is not None else None,
        decoder_positions=stream.positions if stream is not None else None,
        decoder_segments=stream.segments if stream is not None else None,
        decoder_targets=stream.targets if stream is not None else None,
        decoder_owner=stream.owner if stream is not None else None,
        unit_stream_ids=unit_stream.input_ids if unit_stream is not None else None,
        unit_stream_positions=unit_stream.positions if unit_stream is not None else None,
        unit_stream_segments=unit_stream.segments if unit_stream is not None else None,
        unit_stream_owner=unit_stream.owner if unit_stream is not None else None,
        fixed=shapes is not None,
        units=["<start>"] + distinct,
    )
