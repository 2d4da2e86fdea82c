"""The ``cairo:default`` renderer (Pango layout + cairo pixels, system fonts).

Its pixels are machine-dependent, so these tests check properties (ink where text is, equal
units give equal pixels, whitespace is visible, widths are multiples), never golden hashes.
"""

from __future__ import annotations

import pickle
import warnings

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from ilt_core import BuildContext, ILTError, get_registry
from ilt_core.plugins.protocols import Renderer
from ilt_core.text.render_cache import RenderCache


def build(**args):
    return get_registry().build("cairo:default", "renderer", BuildContext(), args)


@pytest.fixture(scope="module")
def renderer():
    return build()


def ink(image: np.ndarray) -> int:
    """Number of clearly inked pixels."""
    return int((image < 128).sum())


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or not np.array_equal(a, b)


def test_registered_and_satisfies_protocol(renderer):
    component = get_registry().get("cairo:default", "renderer")
    assert component.requires == ("cairo",) and "pip install pycairo" in component.install
    assert "libpango1.0-dev" in component.install
    assert isinstance(renderer, Renderer)
    assert (renderer.height, renderer.width_multiple) == (BuildContext().image_height, BuildContext().width_multiple)


def test_args_override_the_context():
    r = build(height=24, width_multiple=8, font_size=12, max_width=64)
    image = r.render("hello ")
    assert image.shape[0] == 24 and image.shape[1] % 8 == 0
    assert r.render("x" * 500).shape == (24, 64)


@pytest.mark.parametrize("unit", ["Hello ", "שלום ", "مرحبا ", "Ünïcödé,", "42."])
def test_scripts_render_with_ink(renderer, unit):
    image = renderer.render(unit)
    assert image.dtype == np.uint8 and image.ndim == 2
    assert image.shape[0] == 32 and image.shape[1] % 16 == 0
    assert ink(image) > 40
    assert image.max() == 255  # paper stays white
    assert (image[:, -1] == 255).all()  # a margin: the text is not cut at the end


def test_same_unit_same_pixels(renderer):
    first = renderer.render("same ")
    assert np.array_equal(first, renderer.render("same "))
    other = build()  # a fresh renderer with the same settings agrees, key and pixels
    assert other.cache_key() == renderer.cache_key()
    assert np.array_equal(first, other.render("same "))


def test_different_units_differ(renderer):
    units = ["cat ", "cot ", "cat", "Cat ", "שלום ", "שלוס ", "مرحبا ", "مرحب "]
    images = [renderer.render(u) for u in units]
    for i in range(len(units)):
        for j in range(i + 1, len(units)):
            assert differ(images[i], images[j]), (units[i], units[j])


def test_whitespace_is_visible(renderer):
    units = ["a", "a ", "a\n", "a\t", "a\r\n", "a  ", "a\u00a0", "a\u200b", "a\0"]
    images = [renderer.render(u) for u in units]
    for i in range(len(units)):
        for j in range(i + 1, len(units)):
            assert differ(images[i], images[j]), (units[i], units[j])
    for unit in [" ", "\n", "\t", "\u3000"]:
        assert ink(renderer.render(unit)) > 0, repr(unit)


def test_width_is_a_bounded_multiple():
    r = build(width_multiple=10, max_width=95)
    for unit in ["", "i", "hello ", "x" * 40, "ש" * 40]:
        width = r.render(unit).shape[1]
        assert width % 10 == 0 and 10 <= width <= 90, (unit, width)
    assert r.render("").shape == (32, 10)
    assert (r.render("") == 255).all()


def test_long_words_keep_their_start(renderer):
    # Cut at max_width, a word keeps its first letters (left for Latin, right for Hebrew) and loses its end.
    for start_a, start_b, body in [("ab", "cd", "x" * 300), ("אב", "גד", "ש" * 300)]:
        assert renderer.render(start_a + body).shape == (32, 512)
        assert differ(renderer.render(start_a + body), renderer.render(start_b + body))
        assert np.array_equal(renderer.render(body + start_a), renderer.render(body + start_b))


def test_text_is_aligned_to_its_reading_start():
    wide = build(width_multiple=64)  # plenty of slack around a short word

    def margins(image):
        columns = np.flatnonzero((image < 128).any(axis=0))
        return columns[0], image.shape[1] - 1 - columns[-1]

    left, right = margins(wide.render("ab"))
    assert left < right
    left, right = margins(wide.render("שלום"))
    assert right < left


def test_font_settings_change_pixels_and_key(renderer):
    bigger = build(font_size=26)
    assert bigger.cache_key() != renderer.cache_key()
    assert differ(bigger.render("word"), renderer.render("word"))
    key = renderer.cache_key()
    hash(key)
    text = " ".join(map(str, key))
    assert "pango" in text and "cairo" in text and "sans-serif" in text and renderer.font_name in key


def test_long_and_hostile_inputs_are_bounded(renderer):
    for unit in ["x" * 100_000, "\u05e9" * 100_000, "a" + "\u0301" * 100_000, "\0" * 5000, "\ud800" * 5000]:
        image = renderer.render(unit)
        assert image.shape[0] == 32 and 16 <= image.shape[1] <= 512 and image.shape[1] % 16 == 0


def test_lone_surrogates_and_nul_render(renderer):
    assert ink(renderer.render("\ud800")) > 0
    assert ink(renderer.render("\0")) > 0
    assert differ(renderer.render("a\udfff\ud800b"), renderer.render("ab"))


_any_char = st.one_of(
    st.characters(),
    st.integers(0xD800, 0xDFFF).map(chr),  # lone surrogates
    st.sampled_from(["\0", "\n", "\r", "\t", " ", "\u200b", "\u202e", "\ufeff", "\U0001f600", "\u0301"]),
)


@settings(max_examples=30, deadline=None)
@given(st.text(_any_char, max_size=40))
def test_never_raises(renderer, unit):
    image = renderer.render(unit)
    assert image.dtype == np.uint8 and image.shape[0] == 32
    assert image.shape[1] % 16 == 0 and 16 <= image.shape[1] <= 512


def test_bad_args_give_clear_errors():
    with pytest.raises(ILTError, match="unknown argument.*font_name"):
        build(font_name="x")
    with pytest.raises(ILTError, match="height=0"):
        build(height=0)
    with pytest.raises(ILTError, match="font_size"):
        build(font_size=-3)
    with pytest.raises(ILTError, match="font_family"):
        build(font_family="")


def test_missing_family_warns_and_still_renders():
    with pytest.warns(UserWarning, match="not installed"):
        r = build(font_family="No Such Font Family 12345")
    assert ink(r.render("ok")) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(font_family="serif")  # a generic family never warns


def test_pickle_rebuilds_the_same_renderer(renderer):
    clone = pickle.loads(pickle.dumps(renderer))
    assert clone.cache_key() == renderer.cache_key()
    assert np.array_equal(clone.render("pickled "), renderer.render("pickled "))


def test_works_behind_the_render_cache(renderer):
    cache = RenderCache(renderer)
    images = cache.render_many(["to ", "be ", "or ", "not ", "to ", "be "])
    assert images[0] is images[4] and cache.misses == 4
    assert np.array_equal(images[3], renderer.render("not "))
