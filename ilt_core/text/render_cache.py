"""An LRU cache of rendered word images, and their grouping into same-width batches.

Rendering is the slowest text-side step (a font layout per unit), while natural text repeats
the same units constantly (Zipf), so every unit is rendered once and then served from memory.
The cached arrays are shared between all callers, hence read-only.

The cache is capped in bytes (``max_bytes``, default :data:`DEFAULT_MAX_BYTES`; ``ilt train
--render_cache_bytes``): a corpus whose vocabulary grows with its size (every large corpus) must
not make memory grow with it. Each entry is charged its pixels plus :data:`ENTRY_OVERHEAD_BYTES`
for the Python objects around them. Every process (a DataLoader worker, a DDP rank) holds its own
cache, each within the cap; forked DataLoader workers may also share the images they draw through
a :class:`~ilt_core.text.shared_images.SharedImages` (:meth:`RenderCache.share`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from ilt_core.errors import ILTError
from ilt_core.text.shared_images import SharedImages

#: Default byte cap of a :class:`RenderCache` (256 MiB: tens of thousands of the tiny preset's word
#: images, enough for the head of a Zipf vocabulary that takes most lookups).
DEFAULT_MAX_BYTES = 256 * 2**20
#: What one entry costs beside its pixels: the ndarray header, the key tuple and string, the dict
#: node (their ``sys.getsizeof``, summed and rounded up).
ENTRY_OVERHEAD_BYTES = 400


class RenderCache:
    """Wraps any :class:`ilt_core.plugins.protocols.Renderer` with an LRU cache of its images.

    Entries are keyed by ``(renderer.cache_key(), unit)``, so changing a setting that changes the
    pixels (the key changes) never serves a stale image. Images are ``uint8`` ``(height, W)``
    arrays with ``writeable=False``: copy one before changing it.

    Least recently used entries are dropped while the cache holds more than ``max_bytes`` (pixels
    plus :data:`ENTRY_OVERHEAD_BYTES` per entry; ``nbytes`` is the current charge) or more than
    ``maxsize`` entries (None: no count limit). An image larger than the whole cap is returned but
    not kept.

    ``hits`` and ``misses`` count lookups (each requested unit is one lookup; a miss is one call
    to ``renderer.render``). Safe to share between threads.

    With a :class:`~ilt_core.text.shared_images.SharedImages` attached (:meth:`share`), a unit
    is looked up there too, and what :meth:`render_many` draws is published there for the other
    processes (the LRU keeps only what the store has no room for).
    """

    def __init__(self, renderer: Any, maxsize: int | None = 200_000, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if maxsize is not None and (not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1):
            raise ILTError(f"RenderCache: maxsize={maxsize!r} is invalid; expected an integer >= 1 or None")
        self.renderer = renderer
        self.maxsize = maxsize
        self._max_bytes = _check_max_bytes(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        # Keys are (small int standing for a cache_key, unit): hashing a long settings tuple per
        # lookup would cost more than the lookup itself.
        self._key_ids: dict[Hashable, int] = {}
        self._images: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.shared: SharedImages | None = None
        self._shared_key_id = -1

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a model saved with ``pickle``, a processor sent to a spawned worker): the renderer and the
        limits; the images, counts, lock and shared store stay in this process."""
        return {"renderer": self.renderer, "maxsize": self.maxsize, "max_bytes": self._max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["renderer"], state["maxsize"], state["max_bytes"])

    def share(self, store: SharedImages | None) -> None:
        """Look units up in ``store`` and publish new images there (None: stop).

        ``store.key`` must be the renderer's ``cache_key()``: a store of images drawn with other
        settings is refused.
        """
        with self._lock:
            if store is not None and store.key != self.renderer.cache_key():
                raise ILTError(
                    f"RenderCache.share: the store holds images of renderer settings {store.key!r}; "
                    f"this cache's renderer has {self.renderer.cache_key()!r}"
                )
            self.shared = store
            self._shared_key_id = self._key_id() if store is not None else -1

    def __len__(self) -> int:
        return len(self._images)

    @property
    def max_bytes(self) -> int:
        """The byte cap (pixels plus per-entry overhead); setting it evicts at once."""
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        with self._lock:
            self._max_bytes = _check_max_bytes(value)
            self._evict()

    def _key_id(self) -> int:
        key = self.renderer.cache_key()
        key_id = self._key_ids.get(key)
        if key_id is None:
            key_id = self._key_ids[key] = len(self._key_ids)
        return key_id

    def _render_new(self, unit: str) -> np.ndarray:
        """Render one unit, check it against the Renderer protocol, and freeze a private copy."""
        image = self.renderer.render(unit)
        name = type(self.renderer).__name__
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2:
            got = (
                f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            )
            raise ILTError(f"renderer {name}: render({unit[:20]!r}) returned {got}; expected a uint8 (height, W) array")
        height, width_multiple = getattr(self.renderer, "height", None), getattr(self.renderer, "width_multiple", None)
        if height is not None and image.shape[0] != height:
            raise ILTError(
                f"renderer {name}: render({unit[:20]!r}) returned height {image.shape[0]}; expected height={height}"
            )
        if width_multiple and (image.shape[1] == 0 or image.shape[1] % width_multiple):
            raise ILTError(
                f"renderer {name}: render({unit[:20]!r}) returned width {image.shape[1]}; "
                f"expected a positive multiple of width_multiple={width_multiple}"
            )
        # Copy: the renderer may reuse its buffer, and callers must never see a cached image change.
        image = np.array(image, dtype=np.uint8, order="C", copy=True)
        image.flags.writeable = False
        return image

    def render(self, unit: str) -> np.ndarray:
        """The image of ``unit``: ``uint8`` ``(height, W)``, read-only, rendered at most once."""
        with self._lock:
            key = (self._key_id(), unit)
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
                self.hits += 1
                return image
            image = self._render_new(unit)
            self.misses += 1
            self._store(key, image)
            return image

    def render_many(self, units: Sequence[str]) -> list[np.ndarray]:
        """Images of ``units``, in order; each distinct unit is looked up (and rendered) once.

        Repeated units share one array object. Returns ``len(units)`` read-only ``uint8``
        ``(height, W_i)`` arrays.
        """
        with self._lock:
            key_id = self._key_id()
            images = self._images
            # the shared store only while the renderer draws what it holds (its settings can change)
            shared = self.shared if key_id == self._shared_key_id else None
            in_store = shared.images if shared is not None else {}
            found: dict[str, np.ndarray] = {}
            missing: list[str] = []
            for unit in dict.fromkeys(units):  # distinct units, first-seen order
                image = in_store.get(unit)
                if image is None:
                    key = (key_id, unit)
                    image = images.get(key)
                    if image is None:
                        missing.append(unit)
                        continue
                    images.move_to_end(key)
                found[unit] = image
            if missing and shared is not None and shared.sync():  # drawn by another process since
                still = []
                for unit in missing:
                    image = in_store.get(unit)
                    if image is None:
                        still.append(unit)
                    else:
                        found[unit] = image
                missing = still
            drawn = [(unit, self._render_new(unit)) for unit in missing]
            self.misses += len(drawn)
            self.hits += len(units) - len(drawn)
            if shared is not None and drawn:
                published = shared.publish(drawn)
                found.update((unit, in_store[unit]) for unit, _ in drawn[:published])
                drawn = drawn[published:]
            for unit, image in drawn:  # kept here: no store, or no room left in it
                self._store((key_id, unit), image)
                found[unit] = image
            return [found[unit] for unit in units]

    def _store(self, key: tuple[int, str], image: np.ndarray) -> None:
        cost = image.nbytes + ENTRY_OVERHEAD_BYTES
        if cost > self._max_bytes:
            return  # larger than the whole cap: serve it, keep nothing
        self._images[key] = image
        self.nbytes += cost
        self._evict()

    def _evict(self) -> None:
        images = self._images
        while images and (self.nbytes > self._max_bytes or (self.maxsize is not None and len(images) > self.maxsize)):
            _, old = images.popitem(last=False)  # least recently used
            self.nbytes -= old.nbytes + ENTRY_OVERHEAD_BYTES

    def clear(self) -> None:
        """Drop every cached image and reset the counters."""
        with self._lock:
            self._images.clear()
            self._key_ids.clear()
            self.nbytes = 0
            self.hits = 0
            self.misses = 0


def _check_max_bytes(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ILTError(
            f"RenderCache: max_bytes={value!r} is invalid; expected a number of bytes >= 0 (0 keeps nothing)"
        )
    return value


#: The float of each gray level, ``level / 255`` in float32 (``numpy.divide``'s correctly rounded
#: division): word images become model inputs only through this table, so uint8 and float images
#: give the encoder the same floats on every device (a GPU divides by a constant as a multiplication
#: by its reciprocal, which rounds 126 of the 256 levels otherwise).
GRAY_LEVELS = np.divide(np.arange(256, dtype=np.uint8), np.float32(255), dtype=np.float32)
GRAY_LEVELS.flags.writeable = False
_gray_levels_on: dict[torch.device, torch.Tensor] = {}


def images_to_batches(images: Sequence[np.ndarray], pixels: str = "float") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Group word images by size, for image encoders that take one width per call.

    ``images``: N ``uint8`` ``(H, W_i)`` arrays (0 ink, 255 paper) that share ``H``.
    Returns one ``(indices, pixels)`` pair per distinct width, by increasing width:
    ``indices`` is a ``LongTensor (G,)`` of positions in ``images`` (increasing) and ``pixels[j]``
    is ``images[indices[j]]``, as

    - ``pixels="float"``: a ``FloatTensor (G, 3, H, W)`` in ``[0, 1]`` (one gray channel viewed 3
      times: ``expand``, not copied), what an image encoder takes;
    - ``pixels="uint8"``: the gray levels as drawn, ``uint8 (G, 1, H, W)``: a quarter of the bytes
      to send from a DataLoader worker and to a GPU; :func:`pixels_as_float` (the model's image
      entry) makes them exactly the float form.

    Every index appears in exactly one group.
    """
    if pixels not in ("float", "uint8"):
        raise ILTError(f"images_to_batches: pixels={pixels!r}; expected 'float' or 'uint8'")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        if image.ndim != 2:
            raise ILTError(f"images_to_batches: image {i} has shape {image.shape}; expected a 2-d (H, W) array")
        groups.setdefault(image.shape, []).append(i)
    heights = {shape[0] for shape in groups}
    if len(heights) > 1:
        raise ILTError(f"images_to_batches: images have heights {sorted(heights)}; expected one height")
    batches = []
    for shape in sorted(groups, key=lambda s: s[1]):
        indices = groups[shape]
        stacked = np.stack([images[i] for i in indices])[:, None]  # (G, 1, H, W) uint8
        if pixels == "uint8":
            group = torch.from_numpy(stacked)
        else:  # the 3 channels are a view, not 3 copies
            group = torch.from_numpy(GRAY_LEVELS[stacked]).expand(-1, 3, -1, -1)
        batches.append((torch.tensor(indices, dtype=torch.long), group))
    return batches


def pixels_as_float(pixels: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Word images as an image encoder takes them: ``float32 (G, 3, H, W)`` in ``[0, 1]`` on ``device``.

    ``uint8`` pixels (``(G, 1, H, W)`` gray levels, or 3 channels) travel to ``device`` as they are,
    4x smaller than floats, and become there exactly the floats :func:`images_to_batches` makes
    (through :data:`GRAY_LEVELS`); float pixels are only moved. None: stay where they are.
    """
    if pixels.dtype != torch.uint8:
        return pixels if device is None else pixels.to(device)
    if device is not None:
        pixels = pixels.to(device)
    table = _gray_levels_on.get(pixels.device)
    if table is None:  # 1 KiB per device, copied there once
        table = _gray_levels_on[pixels.device] = torch.from_numpy(GRAY_LEVELS.copy()).to(pixels.device)
    return table[pixels.long()].expand(-1, 3, -1, -1)
