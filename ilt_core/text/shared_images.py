"""Word images shared by forked processes: what one DataLoader worker renders, the others read.

Each worker renders the batches of its own shards, and natural text repeats the same words in every
shard: with a render cache per worker, N workers draw the common words N times. Two workers over the
same stream rendered a third more words than one (``benchmarks/bench_stream.py``). A
:class:`SharedImages` is one block of shared memory (an anonymous ``MAP_SHARED`` mapping, made
before the workers are forked, so every worker maps the same pages) split into one append-only
region per writer. A process claims a region on its first :meth:`SharedImages.publish`, appends the
images it rendered there, and reads everything the others appended (:meth:`SharedImages.sync`) as
numpy views on the shared pages: no copy, no pickling.

Entries are never evicted (a view may be in use in any process): a region that is full takes no
more, and its writer keeps what it renders next in its own LRU cache. Since the frequent words of a
Zipf vocabulary are the first ones met, the regions fill with the words that repeat most.

A region's writer appends without a lock; one lock (a semaphore shared by the forked processes) only
guards the committed lengths, so that a reader sees an entry only after all its bytes are written.
Only ``fork`` shares the mapping: with another start method each worker keeps its own cache.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import struct
from collections.abc import Hashable, Sequence

import numpy as np

from ilt_core.errors import ILTError

#: An entry's header: the unit's UTF-8 length, the image's height and width (then the UTF-8 bytes
#: of the unit, then the ``height * width`` gray levels).
_ENTRY = struct.Struct("<III")
#: Per region in the file's header: the committed byte length of the region, and its entry count.
_REGION = struct.Struct("<qq")
_NEXT_REGION = struct.Struct("<q")


class SharedImages:
    """An append-only store of ``uint8`` ``(height, W)`` word images in memory shared after ``fork``.

    ``max_bytes`` (units' UTF-8 bytes, 12 header bytes and the pixels of each entry) is split into
    ``writers`` equal regions, one per process that publishes. ``key`` is the renderer's
    ``cache_key()`` the images were drawn with: a :class:`~ilt_core.text.render_cache.RenderCache`
    uses the store only while its renderer has that key.

    :attr:`images` maps each unit read so far to its read-only view on the shared pages; ``published``
    counts this process's entries, ``full`` says its region took nothing more.
    """

    def __init__(self, max_bytes: int, writers: int, key: Hashable = None) -> None:
        if not isinstance(writers, int) or writers < 1:
            raise ILTError(f"SharedImages: writers={writers!r}; expected an integer >= 1")
        header = _NEXT_REGION.size + writers * _REGION.size
        self.region_bytes = max(0, (int(max_bytes) - header) // writers)
        if self.region_bytes < _ENTRY.size + 1:
            raise ILTError(
                f"SharedImages: max_bytes={max_bytes!r} leaves {self.region_bytes} bytes to each of {writers} "
                f"writers; expected room for at least one image each"
            )
        self.key = key
        self.writers = writers
        self._header = header
        self._map = mmap.mmap(-1, header + writers * self.region_bytes)  # anonymous, MAP_SHARED
        self._readonly = memoryview(self._map).toreadonly()  # views on it are read-only arrays
        # fork's semaphore: inherited by the workers as the mapping is
        self._lock = multiprocessing.get_context("fork").Lock()
        self._reset_process_state()

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self.region: int | None = None  # claimed on the first publish
        self._written = 0  # bytes this process appended to its region (committed)
        self._read = [0] * self.writers  # bytes of each region already read into ``images``
        self._images: dict[str, np.ndarray] = {}
        self.published = 0
        self.full = False

    def _this_process(self) -> None:
        # a forked child starts with its parent's bookkeeping: its own begins empty
        if self._pid != os.getpid():
            self._reset_process_state()

    @property
    def images(self) -> dict[str, np.ndarray]:
        """Each unit read or published so far in this process -> its read-only view on the shared pages."""
        self._this_process()
        return self._images

    def _region_base(self, region: int) -> int:
        return self._header + region * self.region_bytes

    def sync(self) -> int:
        """Read the entries the other processes committed since the last call; returns how many."""
        self._this_process()
        with self._lock:
            lengths = [
                _REGION.unpack_from(self._map, _NEXT_REGION.size + r * _REGION.size)[0] for r in range(self.writers)
            ]
        found = 0
        for region, length in enumerate(lengths):
            at = self._read[region]
            if region == self.region or at >= length:
                continue
            base = self._region_base(region)
            images, data, readonly, entry = self._images, self._map, self._readonly, _ENTRY
            while at < length:
                key_len, height, width = entry.unpack_from(data, base + at)
                start = base + at + entry.size
                unit = data[start : start + key_len].decode("utf-8", "surrogatepass")
                if unit not in images:
                    images[unit] = np.ndarray((height, width), np.uint8, readonly, start + key_len)
                at += entry.size + key_len + height * width
                found += 1
            self._read[region] = at
        return found

    def publish(self, items: Sequence[tuple[str, np.ndarray]]) -> int:
        """Append ``(unit, image)`` pairs to this process's region, as many as fit, in order.

        Each appended image becomes a view on the shared pages in ``images``. Returns how many were
        appended (0 once the region is full, or when every region is claimed by other processes).
        """
        self._this_process()
        if self.full or not items:
            return 0
        if self.region is None:
            with self._lock:
                claimed = _NEXT_REGION.unpack_from(self._map, 0)[0]
                if claimed < self.writers:
                    _NEXT_REGION.pack_into(self._map, 0, claimed + 1)
            if claimed >= self.writers:
                self.full = True  # more processes than regions: this one keeps its images to itself
                return 0
            self.region = claimed
        base = self._region_base(self.region)
        at = self._written
        parts: list = []
        placed: list[tuple[str, int, int, int]] = []  # unit, offset of its pixels, height, width
        for unit, image in items:
            key = unit.encode("utf-8", "surrogatepass")
            height, width = image.shape
            end = at + _ENTRY.size + len(key) + height * width
            if end > self.region_bytes:
                self.full = True
                break
            parts += (_ENTRY.pack(len(key), height, width), key, np.ascontiguousarray(image).data)
            placed.append((unit, base + end - height * width, height, width))
            at = end
        appended = len(placed)
        self._map[base + self._written : base + at] = b"".join(parts)  # one copy into the shared pages
        for unit, offset, height, width in placed:
            self._images[unit] = np.ndarray((height, width), np.uint8, self._readonly, offset)
        if appended:
            self._written = at
            self.published += appended
            with self._lock:  # the bytes above are all written before a reader can see the new length
                _REGION.pack_into(self._map, _NEXT_REGION.size + self.region * _REGION.size, at, self.published)
        return appended

    def committed(self) -> list[tuple[int, int]]:
        """``(bytes, entries)`` committed in each region, as every process sees them."""
        with self._lock:
            return [_REGION.unpack_from(self._map, _NEXT_REGION.size + r * _REGION.size) for r in range(self.writers)]
