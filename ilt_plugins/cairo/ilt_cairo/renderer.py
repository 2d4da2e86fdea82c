"""``cairo:default``: a word renderer on Pango layout and cairo pixels, with the system's fonts.

Each unit is laid out by Pango as one line (shaping, bidi and font fallback over every font that
fontconfig knows) and drawn into a cairo ``A8`` surface, black ink on white paper. Whitespace and
invisible characters are drawn as visible marks (Pango's "show" flags plus single-paragraph mode),
so ``"a "``, ``"a\\n"``, ``"a\\t"`` and ``"a"`` give different images.

The pixels are machine-dependent: they change with the installed fonts, fontconfig's settings and
the Pango/cairo versions. :meth:`CairoRenderer.cache_key` includes all of them (the font set as a
hash of its family names), so a render cache never mixes machines or font installs.
"""

from __future__ import annotations

import ctypes
import math
import re
import threading
import unicodedata
import warnings
from typing import Any

import numpy as np

from ilt_cairo.pango_ctypes import (
    CAIRO_ANTIALIAS_GRAY,
    CAIRO_HINT_METRICS_OFF,
    CAIRO_HINT_STYLE_NONE,
    PANGO_SCALE,
    SHOW_IGNORABLES,
    SHOW_LINE_BREAKS,
    SHOW_SPACES,
    PangoRectangle,
    load,
)
from ilt_core.errors import ILTError
from ilt_core.plugins.registry import BuildContext, component

RENDER_VERSION = 1  # bump when the drawing code changes pixels: it is part of cache_key()
GENERIC_FAMILIES = {"sans", "sans-serif", "serif", "monospace", "mono", "system-ui", "cursive", "fantasy", "emoji"}
_SURROGATES = re.compile("[\ud800-\udfff]")


def prepare_text(unit: str, max_chars: int) -> tuple[str, bytes]:
    """The text Pango gets for ``unit``: at most ``max_chars`` code points, as valid UTF-8.

    Surrogate code points (not encodable in UTF-8) become U+FFFD and NUL becomes U+2400 (Pango
    stops at NUL); every other character is drawn as itself or as a hex box.
    """
    text = unit[:max_chars]  # bounded work: the rest could not fit in max_width pixels anyway
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATES.sub("\ufffd", text)
        data = text.encode("utf-8")
    if b"\0" in data:
        text = text.replace("\0", "\u2400")
        data = text.encode("utf-8")
    return text, data


def is_rtl(text: str) -> bool:
    """Whether the first strong character is right-to-left (Pango's own rule for the base direction)."""
    for char in text:
        direction = unicodedata.bidirectional(char)
        if direction == "L":
            return False
        if direction in ("R", "AL"):
            return True
    return False


def _positive(name: str, value: Any, kind: type = int) -> Any:
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool) and value > 0
    if not ok:
        what = "a positive number" if kind is float else "a positive integer"
        raise ILTError(f"cairo:default renderer: {name}={value!r} is invalid; expected {what}")
    return value


class CairoRenderer:
    """Draws a unit with Pango and cairo: ``render(unit)`` -> ``uint8`` ``(height, W)``, 0 ink, 255 paper.

    ``W`` is the text's width plus a small margin, rounded up to a multiple of ``width_multiple``,
    at least one multiple and at most ``max_width`` (rounded down to a multiple; longer words are
    cut at their end: the right side for left-to-right text, the left side for right-to-left
    text, which is also right-aligned). ``font_size`` is in pixels (default ``0.625 * height``);
    ``font_family`` is a fontconfig family or a comma-separated list of them.

    Never raises for any ``str``. Thread-safe (one lock per renderer); picklable (rebuilt from its
    settings in the receiving process).
    """

    def __init__(
        self,
        height: int = 32,
        width_multiple: int = 16,
        font_family: str = "sans-serif",
        font_size: float | None = None,
        max_width: int = 512,
    ) -> None:
        self.height = _positive("height", height)
        self.width_multiple = _positive("width_multiple", width_multiple)
        self.max_width = _positive("max_width", max_width)
        self.font_size = _positive("font_size", font_size, float) if font_size is not None else round(0.625 * height)
        if not isinstance(font_family, str) or not font_family.strip() or "\0" in font_family:
            raise ILTError(
                f"cairo:default renderer: font_family={font_family!r} is invalid; expected a font family name "
                "such as 'DejaVu Sans' or 'sans-serif'"
            )
        self.font_family = font_family
        self._width_limit = max(width_multiple, max_width // width_multiple * width_multiple)
        self._max_chars = 2 * self._width_limit  # even narrow glyphs are about a pixel wide
        self._padding = max(1, round(self.font_size / 10))
        self._lock = threading.Lock()

        pango = self._pango = load()
        # A private font map: fontconfig's current font set, not a per-thread default shared with others.
        self._font_map = pango.pango_cairo_font_map_new()
        self._context = pango.pango_font_map_create_context(self._font_map)
        options = pango.cairo_font_options_create()
        # Gray antialiasing without hinting: the same shapes whatever fontconfig's desktop settings say.
        pango.cairo_font_options_set_antialias(options, CAIRO_ANTIALIAS_GRAY)
        pango.cairo_font_options_set_hint_style(options, CAIRO_HINT_STYLE_NONE)
        pango.cairo_font_options_set_hint_metrics(options, CAIRO_HINT_METRICS_OFF)
        pango.pango_cairo_context_set_font_options(self._context, options)  # copies the options
        pango.cairo_font_options_destroy(options)
        pango.pango_cairo_context_set_resolution(self._context, 96.0)
        self._font = pango.pango_font_description_new()
        pango.pango_font_description_set_family(self._font, font_family.encode("utf-8"))
        pango.pango_font_description_set_absolute_size(self._font, float(self.font_size) * PANGO_SCALE)
        self._attributes = pango.pango_attr_list_new()
        pango.pango_attr_list_insert(
            self._attributes, pango.pango_attr_show_new(SHOW_SPACES | SHOW_LINE_BREAKS | SHOW_IGNORABLES)
        )

        families = pango.font_families(self._font_map)
        self.font_name = self._resolved_family()
        self.fonts_fingerprint = pango.fonts_fingerprint(self._font_map)
        requested = {f.strip().lower() for f in font_family.split(",")}
        if not requested & ({f.lower() for f in families} | GENERIC_FAMILIES):
            warnings.warn(
                f"cairo:default renderer: font_family={font_family!r} is not installed; fontconfig substitutes "
                f"{self.font_name!r} (installed families: {', '.join(families[:20])}{', ...' if len(families) > 20 else ''})",
                stacklevel=2,
            )
        # Every unit's baseline sits on this row, wherever fallback fonts put their own line boxes.
        _, logical, baseline = self._measure(b"Hg")
        self._baseline_y = round((self.height - logical.height) / 2 + baseline)
        self._cache_key = (
            "cairo:default",
            RENDER_VERSION,
            f"pango {pango.pango_version}",
            f"cairo {pango.cairo_version}",
            f"pycairo {pango.pycairo_version}",
            self.font_family,
            self.font_name,
            float(self.font_size),
            self.height,
            self.width_multiple,
            self.max_width,
            self.fonts_fingerprint,
        )

    def _resolved_family(self) -> str:
        """The family fontconfig actually picks for ``font_family`` (for Latin text)."""
        pango = self._pango
        font = pango.pango_context_load_font(self._context, self._font)
        if not font:
            raise ILTError(
                "cairo:default renderer: fontconfig finds no font at all; install some, e.g. "
                "apt-get install fonts-dejavu-core"
            )
        description = pango.pango_font_describe(font)
        try:
            return (pango.pango_font_description_get_family(description) or b"?").decode("utf-8", "replace")
        finally:
            pango.pango_font_description_free(description)
            pango.g_object_unref(font)

    def _new_layout(self, data: bytes) -> int:
        pango = self._pango
        layout = pango.pango_layout_new(self._context)
        pango.pango_layout_set_font_description(layout, self._font)
        pango.pango_layout_set_single_paragraph_mode(layout, 1)  # newlines become visible marks, one line
        pango.pango_layout_set_attributes(layout, self._attributes)
        pango.pango_layout_set_text(layout, data, len(data))
        return layout

    def _measure(self, data: bytes) -> tuple[PangoRectangle, PangoRectangle, float]:
        """Ink and logical pixel rectangles and the baseline (pixels from the top) of ``data``."""
        with self._lock:
            layout = self._new_layout(data)
            try:
                return self._extents(layout)
            finally:
                self._pango.g_object_unref(layout)

    def _extents(self, layout: int) -> tuple[PangoRectangle, PangoRectangle, float]:
        ink, logical = PangoRectangle(), PangoRectangle()
        self._pango.pango_layout_get_pixel_extents(layout, ctypes.byref(ink), ctypes.byref(logical))
        return ink, logical, self._pango.pango_layout_get_baseline(layout) / PANGO_SCALE

    def render(self, unit: str) -> np.ndarray:
        """The image of ``unit``: ``uint8`` ``(height, W)``, ``W % width_multiple == 0``, 0 ink, 255 paper."""
        import cairo

        text, data = prepare_text(unit, self._max_chars)
        multiple = self.width_multiple
        with self._lock:
            layout = self._new_layout(data)
            try:
                ink, logical, baseline = self._extents(layout)
                left, right = logical.x, logical.x + logical.width
                if ink.width > 0:  # marks and italics may overhang the logical box
                    left, right = min(left, ink.x), max(right, ink.x + ink.width)
                width = math.ceil((right - left + 2 * self._padding) / multiple) * multiple
                width = min(max(width, multiple), self._width_limit)
                x = width - self._padding - right if is_rtl(text) else self._padding - left
                surface = cairo.ImageSurface(cairo.FORMAT_A8, width, self.height)  # alpha only: the ink
                context = cairo.Context(surface)
                context.move_to(x, self._baseline_y - baseline)
                self._pango.pango_cairo_show_layout(self._pango.context_pointer(context), layout)
                surface.flush()
            finally:
                self._pango.g_object_unref(layout)
        alpha = np.frombuffer(surface.get_data(), dtype=np.uint8).reshape(self.height, surface.get_stride())
        return 255 - alpha[:, :width]  # a new array: 0 ink, 255 paper

    def cache_key(self) -> tuple:
        """Every setting that changes the pixels: versions, fonts (requested, resolved, installed set), sizes."""
        return self._cache_key

    def __repr__(self) -> str:
        return (
            f"CairoRenderer(font_family={self.font_family!r} -> {self.font_name!r}, font_size={self.font_size}, "
            f"height={self.height}, width_multiple={self.width_multiple}, max_width={self.max_width})"
        )

    def __reduce__(self) -> tuple:
        # C pointers do not cross processes: rebuild from the settings (e.g. in DataLoader workers).
        return (
            type(self),
            (self.height, self.width_multiple, self.font_family, self.font_size, self.max_width),
        )

    def __del__(self) -> None:
        pango = getattr(self, "_pango", None)
        if pango is None:
            return
        try:  # interpreter shutdown may already have torn ctypes down
            for name, free in (
                ("_attributes", pango.pango_attr_list_unref),
                ("_font", pango.pango_font_description_free),
                ("_context", pango.g_object_unref),
                ("_font_map", pango.g_object_unref),
            ):
                pointer = getattr(self, name, None)
                if pointer:
                    free(pointer)
        except Exception:
            pass


@component(
    "default",
    roles=("renderer",),
    requires=("cairo",),
    install=(
        "pip install pycairo  (it builds from source: first apt-get install libcairo2-dev libpango1.0-dev "
        "pkg-config, or your system's cairo and pango development packages)"
    ),
)
def build_cairo_renderer(
    role: str,
    context: BuildContext,
    *,
    height: int | None = None,
    width_multiple: int | None = None,
    font_family: str = "sans-serif",
    font_size: float | None = None,
    max_width: int = 512,
) -> CairoRenderer:
    """Pango layout and cairo pixels with the system's fonts (machine-dependent pixels).

    Shaping, bidi and font fallback over every font fontconfig knows; the pixels depend on the installed
    fonts, fontconfig's settings and the Pango/cairo versions (all part of ``cache_key()``). For pixels
    that are the same on every machine use ``freetype:default``. ``height``/``width_multiple`` default
    to the build context's.
    """
    return CairoRenderer(
        height=context.image_height if height is None else height,
        width_multiple=context.width_multiple if width_multiple is None else width_multiple,
        font_family=font_family,
        font_size=font_size,
        max_width=max_width,
    )
