"""Tests of the FreeType renderer plugin (``freetype:default``).

Golden pixel hashes pin the exact pixels for the pinned freetype-py / uharfbuzz / python-bidi /
font package versions. After an intended change of pixels (a version bump, a drawing change),
regenerate them with:

    ILT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_freetype_renderer.py -k golden

and commit tests/golden/freetype_hashes.json with the change.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ilt_freetype.renderer import FreeTypeRenderer

from ilt_core import BuildContext, ILTError, get_registry
from ilt_core.plugins.protocols import Renderer

GOLDEN_PATH = Path(__file__).parent / "golden" / "freetype_hashes.json"

# cjk=False: the optional CJK fonts must never change the golden pixels.
GOLDEN_ARGS = {"height": 32, "width_multiple": 16, "cjk": False}

GOLDEN_TEXTS = [
    # Latin
    "Hello",
    "hello",
    "world, ",
    "naïve",
    "e\u0301",
    # Hebrew without and with niqqud
    "שלום",
    "ישראל,",
    "שָׁלוֹם",
    "בְּרֵאשִׁית ",
    "שלום\n",
    # Arabic (joined forms)
    "سلام",
    "العربية",
    "مرحبا ",
    # Cyrillic, Greek
    "Привет",
    "ёлка",
    "Ελληνικά",
    "αβγ",
    # Thai, Devanagari
    "สวัสดี",
    "ที่นี่",
    "नमस्ते",
    "हिन्दी",
    "क्षत्रिय",
    # digits and punctuation
    "12345",
    "3.14",
    "١٢٣",
    "!?",
    "(a)",
    '"quoted"',
    "\u2014",
    "...",
    # mixed directions
    "abc שלום",
    "שלום abc",
    "ב-2024",
    # emoji and characters no font has
    "😀",
    "👍🏽",
    "\ufdd0",
    # whitespace and control variants
    "a",
    "a ",
    "a  ",
    "a\t",
    "a\n",
    "a\r\n",
    "a\u00a0",
    "a\x00",
    "x\u200dy",
    " ",
    "\n",
    "",
]


@pytest.fixture(scope="module")
def renderer() -> FreeTypeRenderer:
    return FreeTypeRenderer(**GOLDEN_ARGS)


def pixel_hash(image: np.ndarray) -> str:
    """sha256 of the shape and the raw bytes of a uint8 image."""
    digest = hashlib.sha256(f"{image.shape[0]}x{image.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def ink_columns(image: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    return np.where((image[rows] < 255).any(axis=0))[0]


def test_component_is_registered_with_install_hint() -> None:
    component = get_registry().get("freetype:default", "renderer")
    assert component.roles == ("renderer",)
    assert component.available, component.missing
    assert "pip install" in component.install
    assert {"freetype", "uharfbuzz", "bidi"} <= set(component.requires)


def test_build_through_registry_takes_context_and_overrides() -> None:
    registry = get_registry()
    r = registry.build("freetype:default", "renderer", BuildContext(image_height=24, width_multiple=8), {})
    assert isinstance(r, Renderer)
    assert (r.height, r.width_multiple) == (24, 8)
    assert r.render("hi").shape[0] == 24
    r = registry.build("freetype:default", "renderer", BuildContext(), {"height": 40, "font_size": 18, "padding": 0})
    assert (r.height, r.width_multiple, r.font_size, r.padding) == (40, 16, 18.0, 0)


@pytest.mark.parametrize(
    "args",
    [{"bogus": 1}, {"font_size": 0}, {"max_width": 0}, {"padding": -1}, {"weight": "bold"}, {"cjk": "yes"}],
)
def test_bad_args_raise_ilt_error(args: dict) -> None:
    with pytest.raises(ILTError, match=next(iter(args))):
        get_registry().build("freetype:default", "renderer", BuildContext(), args)


def test_golden_hashes(renderer: FreeTypeRenderer) -> None:
    got = []
    for text in GOLDEN_TEXTS:
        image = renderer.render(text)
        got.append({"text": text, "shape": list(image.shape), "sha256": pixel_hash(image)})
    if os.environ.get("ILT_UPDATE_GOLDEN") == "1":
        GOLDEN_PATH.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "_regenerate": "ILT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_freetype_renderer.py -k golden",
            "renderer_args": GOLDEN_ARGS,
            "cache_key": repr(renderer.cache_key()),
            "hashes": got,
        }
        GOLDEN_PATH.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    golden = json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))
    assert [g["text"] for g in golden["hashes"]] == GOLDEN_TEXTS, "golden list changed: regenerate the file"
    bad = [(g["text"], g["shape"], w["shape"]) for g, w in zip(got, golden["hashes"], strict=True) if g != w]
    assert not bad, (
        f"pixels changed for {len(bad)} unit(s): {bad[:5]}; recorded with {golden['cache_key']}, "
        f"now {renderer.cache_key()!r}"
    )


def test_different_units_give_different_images(renderer: FreeTypeRenderer) -> None:
    # Note: bidi-equivalent units ("abc שלום" / "שלום abc") display the same letters in the same order;
    # they differ only because right-to-left paragraphs are right-aligned in the rounded-up width.
    hashes = {}
    for text in GOLDEN_TEXTS + ["a\r", "a\u3000", "a\u2028", "a\x01", "😃", "\U0010ffff", "\udc80"]:
        h = pixel_hash(renderer.render(text))
        assert h not in hashes, f"{text!r} renders like {hashes.get(h)!r}"
        hashes[h] = text


def test_same_unit_same_image_across_calls_instances_and_pickle(renderer: FreeTypeRenderer) -> None:
    other = pickle.loads(pickle.dumps(renderer))
    for text in ["Hello", "שָׁלוֹם ", "العربية", "ที่นี่", "😀 a\n"]:
        first = renderer.render(text)
        assert np.array_equal(first, renderer.render(text))
        assert np.array_equal(first, other.render(text))
    assert other.cache_key() == renderer.cache_key()


@pytest.mark.parametrize("width_multiple", [1, 7, 16, 32])
def test_width_is_a_positive_multiple_and_capped(width_multiple: int) -> None:
    r = FreeTypeRenderer(height=32, width_multiple=width_multiple, max_width=200, cjk=False)
    cap = 200 // width_multiple * width_multiple
    for text in ["", "a", "Hello,", "שלום", "x" * 300, "😀" * 50]:
        image = r.render(text)
        assert image.dtype == np.uint8 and image.ndim == 2 and image.shape[0] == 32
        assert image.shape[1] % width_multiple == 0
        assert width_multiple <= image.shape[1] <= cap


def test_empty_unit_is_one_blank_patch(renderer: FreeTypeRenderer) -> None:
    image = renderer.render("")
    assert image.shape == (32, 16) and (image == 255).all()


def test_ink_is_black_on_white(renderer: FreeTypeRenderer) -> None:
    image = renderer.render("Hello")
    assert image[:, 0].min() == 255 and image[0].min() == 255  # paper around the text
    assert image.min() == 0  # fully covered pixels are black


def test_missing_glyph_is_a_visible_box_and_tells_code_points_apart(renderer: FreeTypeRenderer) -> None:
    for text in ["😀", "\U0010ffff", "\udc80", "\ufdd0"]:
        image = renderer.render(text)
        assert (image < 128).sum() > 20, f"{text!r} is not visibly drawn"
    assert not np.array_equal(renderer.render("😀"), renderer.render("😃"))


def test_whitespace_variants_are_visible(renderer: FreeTypeRenderer) -> None:
    plain = renderer.render("a")
    for text in ["a ", "a\t", "a\n", "a\r", "a\x00", "a\u00a0"]:
        image = renderer.render(text)
        assert not np.array_equal(image[:, : plain.shape[1]], plain) or image.shape != plain.shape, text
        assert ink_columns(image).max() > ink_columns(plain).max(), f"{text!r} adds no mark after the letter"


def test_trailing_space_follows_the_paragraph_direction(renderer: FreeTypeRenderer) -> None:
    below = slice(renderer.baseline + 1, None)  # the space mark hangs below the baseline
    above = slice(None, renderer.baseline)
    ltr, rtl = renderer.render("hello "), renderer.render("שלום ")
    assert ink_columns(ltr, below).min() > ink_columns(ltr, above).max() - 2  # mark right of the word
    assert ink_columns(rtl, below).max() < ink_columns(rtl, above).min() + 2  # mark left of the word


def _glyph_x(image: np.ndarray, glyph: np.ndarray) -> list[int]:
    """Columns where the ink image contains ``glyph`` (a full-height crop of one rendered letter) exactly."""
    h, w = glyph.shape
    return [x for x in range(image.shape[1] - w + 1) if np.array_equal(image[:, x : x + w], glyph)]


def _letter(renderer: FreeTypeRenderer, ch: str) -> np.ndarray:
    image = renderer.render(ch)
    cols = ink_columns(image)
    return image[:, cols.min() : cols.max() + 1]


def test_hebrew_reads_right_to_left_and_latin_left_to_right(renderer: FreeTypeRenderer) -> None:
    alef, bet = _letter(renderer, "א"), _letter(renderer, "ב")
    image = renderer.render("א ב")
    (x_alef,), (x_bet,) = _glyph_x(image, alef), _glyph_x(image, bet)
    assert x_alef > x_bet  # the first letter is on the right
    a, b = _letter(renderer, "a"), _letter(renderer, "b")
    image = renderer.render("a b")
    (x_a,), (x_b,) = _glyph_x(image, a), _glyph_x(image, b)
    assert x_a < x_b


def test_arabic_letters_join(renderer: FreeTypeRenderer) -> None:
    # Joined medial forms of beh are much narrower than the isolated form: shaping ran on the whole word.
    isolated = np.ptp(ink_columns(renderer.render("ب"))) + 1
    joined = np.ptp(ink_columns(renderer.render("ببببب"))) + 1
    assert joined < 0.7 * 5 * isolated
    # One connected stroke: no blank column inside the joined word's ink.
    cols = ink_columns(renderer.render("ببببب"))
    assert (np.diff(cols) == 1).all()


def test_weight_axis_is_applied() -> None:
    regular = FreeTypeRenderer(cjk=False).render("Hello")
    thin = FreeTypeRenderer(weight=100, cjk=False).render("Hello")
    bold = FreeTypeRenderer(weight=700, cjk=False).render("Hello")
    ink = [int((255 - im.astype(int)).sum()) for im in (thin, regular, bold)]
    assert ink[0] < ink[1] < ink[2]


def test_cache_key_tracks_pixel_settings(renderer: FreeTypeRenderer) -> None:
    key = renderer.cache_key()
    hash(key)
    assert key == FreeTypeRenderer(**GOLDEN_ARGS).cache_key()
    assert key != FreeTypeRenderer(**GOLDEN_ARGS, font_size=18).cache_key()
    assert key != FreeTypeRenderer(**GOLDEN_ARGS, padding=3).cache_key()
    shas = [f[3] for f in key[9]]
    assert len(shas) == 7 and all(len(s) == 64 for s in shas)


def test_long_unit_is_cropped_keeping_its_beginning(renderer: FreeTypeRenderer) -> None:
    ltr = renderer.render("abc" + "x" * 100_000)
    assert ltr.shape == (32, 512)
    assert not np.array_equal(ltr[:, :40], renderer.render("x" * 1000)[:, :40])
    rtl = renderer.render("שלום" + "ם" * 100_000)
    assert rtl.shape == (32, 512)
    assert not np.array_equal(rtl[:, -40:], renderer.render("ם" * 1000)[:, -40:])


_SCRIPTS = st.sampled_from(
    list("aZ09 \t\n\r\x00\x7f.-,") + list("שָׁלוֹםسلامПриветαβสวัสดีनमस्ते") + ["\u200d", "\u200f", "\u202e", "\u2067"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.one_of(st.characters(exclude_categories=()), _SCRIPTS), max_size=40))
def test_render_never_raises(renderer: FreeTypeRenderer, text: str) -> None:
    image = renderer.render(text)
    assert image.dtype == np.uint8 and image.shape[0] == 32
    assert image.shape[1] % 16 == 0 and 16 <= image.shape[1] <= 512
    if text:
        assert image.min() < 255, "a non-empty unit must leave a visible trace"
