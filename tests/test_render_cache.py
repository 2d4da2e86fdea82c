"""RenderCache (LRU over any Renderer) and images_to_batches (grouping word images by width)."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from helpers import CountingRenderer
from hypothesis import given, settings

from ilt_core.errors import ILTError
from ilt_core.plugins.protocols import Renderer
from ilt_core.text.render_cache import ENTRY_OVERHEAD_BYTES, RenderCache, images_to_batches


def test_fake_renderer_satisfies_protocol():
    assert isinstance(CountingRenderer(), Renderer)


def test_each_unit_is_rendered_once_however_often_asked():
    renderer = CountingRenderer()
    cache = RenderCache(renderer)
    images = cache.render_many(["a", "bc", "a", "a", "bc"])
    assert renderer.calls == {"a": 1, "bc": 1}
    assert (cache.misses, cache.hits) == (2, 3)
    assert images[0] is images[2] is images[3] and images[1] is images[4]
    for _ in range(3):
        assert cache.render("a") is images[0]
    cache.render_many(["bc", "a"])
    assert renderer.calls == {"a": 1, "bc": 1}
    assert (cache.misses, cache.hits) == (2, 8)
    assert len(cache) == 2


def test_images_are_the_renderers_pixels_in_order():
    renderer = CountingRenderer()
    cache = RenderCache(renderer)
    units = ["x", "hello", "", "x", "שלום"]
    images = cache.render_many(units)
    assert len(images) == len(units)
    for unit, image in zip(units, images, strict=True):
        expected = np.full((4, 2 * (len(unit) + 1)), sum(map(ord, unit)) % 256, np.uint8)
        expected[0, 0] = 1
        np.testing.assert_array_equal(image, expected)
        assert image.dtype == np.uint8


def test_lru_eviction_at_maxsize():
    renderer = CountingRenderer()
    cache = RenderCache(renderer, maxsize=2)
    cache.render("a")
    cache.render("b")
    cache.render("a")  # now "b" is the least recently used
    cache.render("c")  # evicts "b"
    assert len(cache) == 2
    cache.render("a")
    assert renderer.calls["a"] == 1
    cache.render("b")  # was evicted: rendered again, and evicts "c"
    assert renderer.calls["b"] == 2
    cache.render_many(["a", "b"])
    assert renderer.calls == {"a": 1, "b": 2, "c": 1}
    cache.render("c")
    assert renderer.calls["c"] == 2


def test_render_many_larger_than_maxsize_still_returns_every_image():
    renderer = CountingRenderer()
    cache = RenderCache(renderer, maxsize=3)
    units = [str(i) for i in range(10)] * 2
    images = cache.render_many(units)
    assert [img.shape[1] for img in images] == [2 * (len(u) + 1) for u in units]
    assert all(renderer.calls[str(i)] == 1 for i in range(10))  # once per call, despite evictions
    assert len(cache) == 3


def test_cache_key_change_misses():
    renderer = CountingRenderer()
    cache = RenderCache(renderer)
    old = cache.render("a")
    renderer.key = ("fake", 2)
    new = cache.render("a")
    assert renderer.calls["a"] == 2
    assert cache.misses == 2 and cache.hits == 0
    assert old[0, 0] == 1 and new[0, 0] == 2
    renderer.key = ("fake", 1)
    assert cache.render("a") is old  # the first key's entry is still there
    assert renderer.calls["a"] == 2


def test_arrays_are_read_only_and_private():
    renderer = CountingRenderer()
    cache = RenderCache(renderer)
    image = cache.render("ab")
    assert not image.flags.writeable
    with pytest.raises(ValueError):
        image[0, 0] = 7
    before = image.copy()
    renderer.buffer[:] = 99  # the renderer reusing its buffer must not reach the cache
    np.testing.assert_array_equal(cache.render("ab"), before)
    assert all(not img.flags.writeable for img in cache.render_many(["ab", "cd"]))


def test_clear_resets_everything():
    renderer = CountingRenderer()
    cache = RenderCache(renderer)
    cache.render_many(["a", "a", "b"])
    cache.clear()
    assert (len(cache), cache.hits, cache.misses) == (0, 0, 0)
    cache.render("a")
    assert renderer.calls["a"] == 2 and cache.misses == 1


class BadRenderer(CountingRenderer):
    def __init__(self, image: np.ndarray) -> None:
        super().__init__()
        self.image = image

    def render(self, unit: str) -> np.ndarray:
        return self.image


@pytest.mark.parametrize(
    "image, words",
    [
        (np.zeros((4, 4), np.float32), "uint8"),
        (np.zeros((4, 4, 1), np.uint8), "uint8"),
        (np.zeros((5, 4), np.uint8), "height"),
        (np.zeros((4, 3), np.uint8), "width_multiple"),
        (np.zeros((4, 0), np.uint8), "width_multiple"),
    ],
)
def test_a_renderer_breaking_the_protocol_gets_a_clear_error(image, words):
    cache = RenderCache(BadRenderer(image))
    with pytest.raises(ILTError, match=words):
        cache.render("x")
    with pytest.raises(ILTError, match="BadRenderer"):
        cache.render_many(["y"])


@pytest.mark.parametrize("maxsize", [0, -1, 1.5, True])
def test_bad_maxsize(maxsize):
    with pytest.raises(ILTError, match="maxsize"):
        RenderCache(CountingRenderer(), maxsize=maxsize)


def _cost(unit: str, height: int = 4) -> int:
    """What CountingRenderer's image of ``unit`` costs in the cache."""
    return height * 2 * (len(unit) + 1) + ENTRY_OVERHEAD_BYTES


def test_byte_cap_evicts_least_recently_used_and_never_exceeds_the_cap():
    renderer = CountingRenderer()
    cap = 3 * _cost("aaaa")
    cache = RenderCache(renderer, maxsize=None, max_bytes=cap)
    units = [f"{i:04d}" for i in range(50)]  # all the same size: 3 fit
    for i, unit in enumerate(units):
        cache.render(unit)
        assert cache.nbytes == sum(img.nbytes + ENTRY_OVERHEAD_BYTES for img in cache._images.values())
        assert cache.nbytes <= cap and len(cache) == min(i + 1, 3)
    cache.render(units[47])  # still cached: a hit
    assert renderer.calls[units[47]] == 1
    cache.render(units[0])  # long evicted: rendered again
    assert renderer.calls[units[0]] == 2
    # a longer word costs more: it pushes out as many old entries as it needs
    cache.render("x" * 20)
    assert cache.nbytes <= cap and len(cache) < 3


def test_byte_cap_change_evicts_at_once_and_an_oversized_image_is_served_not_kept():
    renderer = CountingRenderer()
    cache = RenderCache(renderer, max_bytes=10**6)
    cache.render_many([f"w{i}" for i in range(100)])
    assert len(cache) == 100
    cache.max_bytes = 5 * _cost("w10")
    assert len(cache) <= 5 and cache.nbytes <= cache.max_bytes
    huge = cache.render("y" * 10_000)  # alone larger than the cap
    assert huge.shape == (4, 2 * 10_001) and cache.nbytes <= cache.max_bytes
    cache.render("y" * 10_000)
    assert renderer.calls["y" * 10_000] == 2
    cache.clear()
    assert cache.nbytes == 0


@pytest.mark.parametrize("max_bytes", [-1, 1.5, True, "1G"])
def test_bad_max_bytes(max_bytes):
    with pytest.raises(ILTError, match="max_bytes"):
        RenderCache(CountingRenderer(), max_bytes=max_bytes)


def _image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def test_images_to_batches_groups_by_width():
    widths = [4, 8, 4, 12, 8, 4]
    images = [_image(3, w, i) for i, w in enumerate(widths)]
    batches = images_to_batches(images)
    assert [p.shape[-1] for _, p in batches] == [4, 8, 12]  # one group per width, increasing
    assert [idx.tolist() for idx, _ in batches] == [[0, 2, 5], [1, 4], [3]]
    for indices, pixels in batches:
        assert indices.dtype == torch.long and pixels.dtype == torch.float32
        assert pixels.shape == (len(indices), 3, 3, pixels.shape[-1])
        assert pixels.stride(1) == 0  # the gray channel viewed 3 times, not copied
        for j, i in enumerate(indices.tolist()):
            expected = torch.from_numpy(images[i]).float() / 255
            for channel in range(3):
                torch.testing.assert_close(pixels[j, channel], expected, rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=30))
def test_images_to_batches_round_trips_indices(width_units):
    images = [_image(2, 4 * w, i) for i, w in enumerate(width_units)]
    batches = images_to_batches(images)
    assert len(batches) == len(set(width_units))
    seen = torch.cat([idx for idx, _ in batches]).sort().values
    assert seen.tolist() == list(range(len(images)))  # every image in exactly one group
    rebuilt: list[np.ndarray | None] = [None] * len(images)
    for indices, pixels in batches:
        assert pixels.min() >= 0 and pixels.max() <= 1
        for j, i in enumerate(indices.tolist()):
            rebuilt[i] = (pixels[j, 0] * 255).round().to(torch.uint8).numpy()
    for original, back in zip(images, rebuilt, strict=True):
        np.testing.assert_array_equal(original, back)


def test_images_to_batches_edge_cases():
    assert images_to_batches([]) == []
    with pytest.raises(ILTError, match="height"):
        images_to_batches([_image(3, 4, 0), _image(4, 4, 1)])
    with pytest.raises(ILTError, match="2-d"):
        images_to_batches([np.zeros((3, 4, 1), np.uint8)])


def test_cache_feeds_images_to_batches():
    cache = RenderCache(CountingRenderer())
    units = ["a", "bb", "a", "cc"]
    batches = images_to_batches(cache.render_many(units))
    groups = {p.shape[-1]: idx.tolist() for idx, p in batches}
    assert groups == {4: [0, 2], 6: [1, 3]}
