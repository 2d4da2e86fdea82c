"""The processor: raw text(s) to a collated :class:`~ilt_core.text.collator.Batch`.

It owns the three text-side steps of the data flow, each done once per distinct unit:
segmentation (:func:`ilt_core.text.segmentation.segment`), UTF-8 byte ids
(:class:`ilt_core.text.byte_tokenizer.ByteTokenizer`) and rendering through an LRU
:class:`ilt_core.text.render_cache.RenderCache`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from ilt_core.errors import ILTError
from ilt_core.text.byte_packing import BytePacking
from ilt_core.text.byte_tokenizer import ByteTokenizer
from ilt_core.text.collator import Batch, FixedShapes, TextUnits, collate_units
from ilt_core.text.image_packing import ImagePacking
from ilt_core.text.label_packing import LabelPacking
from ilt_core.text.render_cache import RenderCache, images_to_batches
from ilt_core.text.segmentation import segment


class ILTProcessor:
    """Turns text into model inputs, like a Hugging Face processor.

    ``renderer`` may be None for a model without an image encoder. ``max_units`` (including the
    start marker) is the default row length; longer texts are cut unless the caller splits them.
    ``pixels`` is the form of the word images in a batch (see
    :func:`~ilt_core.text.render_cache.images_to_batches`): ``"float"`` ``(G, 3, H, W)`` in
    ``[0, 1]``, or ``"uint8"`` ``(G, 1, H, W)`` gray levels, a quarter of the bytes, which the
    model turns into the same floats (what training collates: :meth:`with_pixels`).
    """

    def __init__(
        self,
        renderer: Any | None = None,
        *,
        max_unit_bytes: int = 32,
        labels: str = "unit",
        label_bytes: int = 32,
        max_units: int | None = None,
        cache_size: int = 200_000,
        pixels: str = "float",
    ) -> None:
        if pixels not in ("float", "uint8"):
            raise ILTError(f"ILTProcessor: pixels={pixels!r}; expected 'float' or 'uint8'")
        self.tokenizer = ByteTokenizer()
        self.renderer = renderer
        self.cache = RenderCache(renderer, maxsize=cache_size) if renderer is not None else None
        self.max_unit_bytes = max_unit_bytes
        self.labels = labels
        self.label_bytes = label_bytes
        self.max_units = max_units
        self.pixels = pixels

    def with_pixels(self, pixels: str) -> ILTProcessor:
        """This processor with word images in another form (``"float"`` or ``"uint8"``).

        The copy shares the renderer and its cache (one cache, one byte cap).
        """
        if pixels not in ("float", "uint8"):
            raise ILTError(f"ILTProcessor.with_pixels: pixels={pixels!r}; expected 'float' or 'uint8'")
        other = copy.copy(self)
        other.pixels = pixels
        return other

    def segment(self, text: str) -> list[str]:
        """The units of ``text`` (no start marker); ``"".join`` gives ``text`` back."""
        return segment(text, self.max_unit_bytes)

    def encode_unit(self, unit: str) -> list[int]:
        """A unit's byte ids, without specials."""
        return self.tokenizer.encode(unit)

    def render_units(self, units: Sequence[str], grouped: bool = True) -> Any:
        """Images of distinct ``units`` grouped by width: ``[(indices (G,), pixels)]``.

        ``pixels``: float ``(G, 3, H, W)`` or uint8 ``(G, 1, H, W)``, as the processor's ``pixels`` says.
        ``grouped=False``: the images as drawn, ``uint8 (H, W_i)`` arrays in the order of ``units``.
        """
        assert self.cache is not None
        images = self.cache.render_many(units)
        return images_to_batches(images, self.pixels) if grouped else images

    def collate(
        self,
        texts: Sequence[TextUnits],
        *,
        packing: bool = False,
        max_units: int | None = None,
        labels: str | None = None,
        shapes: FixedShapes | None = None,
    ) -> Batch:
        """Collate already-segmented texts (see :func:`ilt_core.text.collator.collate_units`).

        ``labels`` overrides the processor's label mode (bits-per-byte always scores ``"unit"``). ``shapes``: the
        same tensor shapes at every call (:meth:`fixed_shapes` makes them for a model's configuration).
        """
        return collate_units(
            texts,
            self.encode_unit,
            self.render_units if self.cache is not None else None,
            labels=labels or self.labels,
            label_bytes=self.label_bytes,
            max_units=max_units or self.max_units,
            packing=packing,
            shapes=shapes,
        )

    def fixed_shapes(
        self,
        rows: int,
        row_units: int,
        image_packing: ImagePacking | None = None,
        label_stream: LabelPacking | None = None,
        grow_only: bool = False,
        unit_stream: BytePacking | None = None,
    ) -> FixedShapes:
        """Shapes for batches of ``rows`` x ``row_units`` positions under this processor's settings.

        Units hold at most ``max_unit_bytes`` bytes; a label at most that and ``eos`` (``labels: unit``) or
        ``label_bytes`` (``labels: bytes``). ``image_packing``: how the model's image encoder takes packed images
        (``ILTModel.image_packing``), or None for images by width; ``label_stream``: how the model's bytes decoder
        takes the label bytes packed (``ILTModel.label_stream``), or None; ``unit_stream``: how its bytes encoder
        takes the units' bytes packed (``ILTModel.unit_stream``), or None. ``grow_only``: capacities never shrink
        (:attr:`FixedShapes.grow_only`; what ``ilt train --torch_compile`` asks for).
        """
        label_len = self.max_unit_bytes + 1 if self.labels == "unit" else self.label_bytes
        images = copy.copy(image_packing) if image_packing is not None else None
        stream = copy.copy(label_stream) if label_stream is not None else None
        units = copy.copy(unit_stream) if unit_stream is not None else None
        for packing in (images, stream, units):
            if packing is not None:
                packing.grow_only = grow_only
        return FixedShapes(
            rows=rows,
            row_units=row_units,
            unit_bytes=self.max_unit_bytes,
            label_len=max(label_len, 1),
            images=images,
            label_stream=stream,
            unit_stream=units,
            grow_only=grow_only,
        )

    def __call__(self, texts: str | Sequence[str], *, packing: bool = False, max_units: int | None = None) -> Batch:
        """Segment, tokenize, render and collate ``texts`` into one batch."""
        if isinstance(texts, str):
            texts = [texts]
        return self.collate([TextUnits(self.segment(t)) for t in texts], packing=packing, max_units=max_units)
