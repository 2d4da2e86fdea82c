"""Bits-per-byte: the measure SpaceByte and BLT report, so our figures stand beside theirs.

bits-per-byte = (total negative log-likelihood, in bits, of every UTF-8 byte of the text plus
each unit's closing ``eos`` and the end-of-text ``eos``) / (number of UTF-8 bytes of the text).
Each byte is predicted exactly once: a text longer than the model's context is scored in
consecutive blocks, each starting with its own text-start marker.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ilt_core.errors import ILTError
from ilt_core.text.collator import TextUnits


@dataclass
class BitsPerByte:
    """The result of :func:`bits_per_byte`."""

    bits_per_byte: float
    nll_bits: float
    num_bytes: int
    num_units: int
    num_texts: int


def text_blocks(units: list[str], block_units: int) -> list[TextUnits]:
    """Split a text's units into blocks of at most ``block_units`` units (start marker not counted)."""
    if not units:
        return [TextUnits([], complete=True)]
    blocks = [TextUnits(units[i : i + block_units], complete=False) for i in range(0, len(units), block_units)]
    blocks[-1].complete = True
    return blocks


@torch.no_grad()
def bits_per_byte(model, texts: Iterable[str], batch_size: int = 8, block_units: int | None = None) -> BitsPerByte:
    """Score ``texts`` with ``model`` (an :class:`~ilt_core.modeling.model.ILTModel`) in eval mode."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ILTError(f"batch_size={batch_size!r}: expected an int >= 1 (texts scored at once)")
    if block_units is not None and (
        isinstance(block_units, bool) or not isinstance(block_units, int) or block_units < 1
    ):
        raise ILTError(f"block_units={block_units!r}: expected an int >= 1 (units a block)")
    was_training = model.training
    model.eval()
    processor = model.processor
    block_units = block_units or min(model.max_units - 1, 255)
    blocks: list[TextUnits] = []
    n_texts = n_units = 0
    for text in texts:
        units = processor.segment(text)
        n_texts += 1
        n_units += len(units)
        blocks.extend(text_blocks(units, block_units))
    nll = 0.0
    n_bytes = 0
    for i in range(0, len(blocks), batch_size):
        batch = processor.collate(blocks[i : i + batch_size], labels="unit", max_units=block_units + 1)
        out = model(**batch.model_inputs())
        nll += float(out.unit_losses.double().sum())
        n_bytes += int(batch.num_bytes.sum())
    if was_training:
        model.train()
    bits = nll / math.log(2)
    return BitsPerByte(bits / max(n_bytes, 1), bits, n_bytes, n_units, n_texts)
