"""The training collator: rows of blocks (lists of :class:`~ilt_core.text.collator.TextUnits`) -> model inputs.

:class:`UnitCollator` is Trainer's ``collate_fn`` for map-style and streamed rows alike: it renders and
byte-encodes each batch through the processor (:func:`ilt_core.text.collator.collate_units`) and counts
what it collated, for throughput figures and the replica check.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ilt_core.text.collator import FixedShapes, TextUnits


def make_collator(
    processor: Any, block_size: int, packing: bool = True, shapes: FixedShapes | None = None
) -> UnitCollator:
    """The training collator of ``processor`` (map-style and streamed rows alike).

    Its batches carry the word images as uint8 gray levels ``(G, 1, H, W)`` (``processor.with_pixels``):
    a quarter of the bytes of floats to send from a DataLoader worker and to an accelerator; the
    model makes them the same floats (:func:`ilt_core.text.render_cache.pixels_as_float`). ``shapes``: every
    batch the same tensor shapes (:class:`~ilt_core.text.collator.FixedShapes`).
    """
    return UnitCollator(processor.with_pixels("uint8"), block_size, packing, shapes)


@dataclass
class UnitCollator:
    """``collate_fn`` for Trainer: rows of blocks -> ``Batch.model_inputs()`` (a dict of kwargs).

    Rendering and byte encoding happen here, per batch, through ``processor`` (its render cache makes
    repeated words free). ``block_size`` is the row length in positions (start markers included).
    ``stats`` counts batches, rows, texts, units (start markers excluded), UTF-8 bytes and the seconds
    spent collating, for throughput figures (``benchmarks/bench_training.py``).
    """

    processor: Any
    block_size: int
    packing: bool = True
    shapes: FixedShapes | None = None
    stats: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("batches", "rows", "texts", "units", "bytes", "seconds"), 0)
    )
    _digest: Any = field(default_factory=hashlib.sha256, repr=False)

    @property
    def data_fingerprint(self) -> str:
        """SHA-256 over every text collated so far, in order (which data a process trained on)."""
        return self._digest.hexdigest()

    def __call__(self, rows: Sequence[Sequence[TextUnits]]) -> dict[str, Any]:
        start = time.perf_counter()
        texts = [t for row in rows for t in row]
        batch = self.processor.collate(texts, packing=self.packing, max_units=self.block_size, shapes=self.shapes)
        s = self.stats
        s["seconds"] += time.perf_counter() - start
        s["batches"] += 1
        s["rows"] += len(rows)
        s["texts"] += len(texts)
        s["units"] += sum(len(t.units) for t in texts)
        s["bytes"] += int(batch.num_bytes.sum())
        for t in texts:
            self._digest.update("\x1f".join(t.units).encode("utf-8", "surrogatepass") + b"\x1e")
        return batch.model_inputs()


__all__ = ["UnitCollator", "make_collator"]
