"""SharedImages: word images one forked process draws, the others read from shared pages, never drawn twice."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
from helpers import CountingRenderer

from ilt_core.errors import ILTError
from ilt_core.text.render_cache import RenderCache
from ilt_core.text.shared_images import SharedImages

FORK = multiprocessing.get_context("fork")


def expected(unit: str, setting: int = 1) -> np.ndarray:
    """What CountingRenderer draws for ``unit`` (independently of the cache)."""
    renderer = CountingRenderer()
    renderer.key = ("fake", setting)
    return renderer.render(unit).copy()


def in_child(target, *args) -> object:
    """Run ``target(*args)`` in a forked process; its return value (or its exception) comes back."""
    parent, child = FORK.Pipe()

    def run() -> None:
        try:
            child.send(("ok", target(*args)))
        except BaseException as exc:  # noqa: BLE001 - sent to the test, which fails with it
            child.send(("error", repr(exc)))

    process = FORK.Process(target=run)
    process.start()
    status, value = parent.recv()
    process.join()
    assert status == "ok", value
    return value


def shared_cache(max_bytes: int = 2**16, writers: int = 2) -> tuple[RenderCache, CountingRenderer, SharedImages]:
    renderer = CountingRenderer()
    cache = RenderCache(renderer)
    store = SharedImages(max_bytes, writers, renderer.cache_key())
    cache.share(store)
    return cache, renderer, store


def draw(cache: RenderCache, units: list[str]) -> dict:
    """In a process: render ``units``; what was drawn here, and whether each image is the renderer's."""
    cache.renderer.calls.clear()  # a forked child starts with its parent's counts
    images = cache.render_many(units)
    return {
        "drawn": dict(cache.renderer.calls),
        "right": all(np.array_equal(image, expected(unit)) for unit, image in zip(units, images, strict=True)),
        "read_only": not any(image.flags.writeable for image in images),
        "in_lru": len(cache),
    }


def test_a_forked_process_reads_what_another_drew_without_drawing_it() -> None:
    cache, _, store = shared_cache()
    first = in_child(draw, cache, ["shalom", "olam", "shalom", "ktav"])
    second = in_child(draw, cache, ["olam", "sefer", "ktav", "olam"])
    assert first["drawn"] == {"shalom": 1, "olam": 1, "ktav": 1}
    assert second["drawn"] == {"sefer": 1}  # the other two come from the first process's pages
    assert first["right"] and second["right"] and first["read_only"] and second["read_only"]
    assert first["in_lru"] == second["in_lru"] == 0  # published, so not kept twice
    # each process claimed its own region; the parent sees what both committed
    assert sorted(count for _, count in store.committed()) == [1, 3]
    assert store.sync() == 4 and set(store.images) == {"shalom", "olam", "ktav", "sefer"}
    assert all(np.array_equal(store.images[u], expected(u)) for u in store.images)


def test_a_full_region_stops_taking_images_and_the_lru_keeps_the_rest() -> None:
    one = 12 + len("aa") + 4 * 2 * 3  # an entry: header, UTF-8 key, 4 x 6 pixels
    cache, renderer, store = shared_cache(max_bytes=8 + 2 * 16 + 2 * (2 * one + 5), writers=2)
    units = ["aa", "bb", "cc", "dd", "ee"]
    images = cache.render_many(units)
    assert store.published == 2 and store.full and set(store.images) == {"aa", "bb"}
    assert len(cache) == 3 and renderer.calls == dict.fromkeys(units, 1)
    assert all(np.array_equal(image, expected(u)) for u, image in zip(units, images, strict=True))
    assert store.committed()[store.region] == (2 * one, 2)
    assert all(nbytes <= store.region_bytes for nbytes, _ in store.committed())
    again = cache.render_many(units[::-1])
    assert renderer.calls == dict.fromkeys(units, 1)  # from the store or the LRU, nothing drawn again
    assert all(np.array_equal(image, expected(u)) for u, image in zip(units[::-1], again, strict=True))


def test_a_process_beyond_the_regions_keeps_its_images_but_reads_the_others() -> None:
    cache, _, store = shared_cache(writers=1)
    cache.render_many(["alef", "bet"])  # this process claims the only region
    child = in_child(draw, cache, ["alef", "gimel"])
    assert child["drawn"] == {"gimel": 1} and child["right"] and child["in_lru"] == 1
    assert store.committed() == [(store.committed()[0][0], 2)]  # nothing added by the child


def test_a_store_of_other_renderer_settings_is_refused_and_a_changed_renderer_bypasses_it() -> None:
    renderer = CountingRenderer()
    with pytest.raises(ILTError, match="renderer settings"):
        RenderCache(renderer).share(SharedImages(2**16, 2, ("fake", 2)))
    cache, renderer, store = shared_cache()
    cache.render_many(["dag"])
    renderer.key = ("fake", 2)  # a setting changed: the store's images are not this renderer's any more
    image = cache.render_many(["dag"])[0]
    assert np.array_equal(image, expected("dag", setting=2)) and renderer.calls["dag"] == 2
    assert not np.array_equal(store.images["dag"], image)


@pytest.mark.parametrize(("max_bytes", "writers"), [(2**16, 0), (40, 2)])
def test_a_store_without_room_says_what_it_needs(max_bytes, writers) -> None:
    with pytest.raises(ILTError, match="SharedImages: "):
        SharedImages(max_bytes, writers)
