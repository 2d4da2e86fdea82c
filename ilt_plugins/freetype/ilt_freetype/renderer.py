"""The FreeType renderer: one unit of text -> one grayscale word image, the same on every machine.

Pipeline for ``render(unit)``:

1. cap the text at ``max_width`` characters (a character is at least a pixel wide, so more can
   never be seen; a 100,000-character word costs no more than a 512-character one);
2. itemize: whitespace and control characters become drawn marks, characters no font has become
   a drawn box with their code point, everything else is split into runs of one font (the first
   face of the fallback chain that has a letter; marks and punctuation stay with their run);
3. bidi (python-bidi) gives each character an embedding level; runs are split at level changes,
   shaped by HarfBuzz (uharfbuzz) in their direction and reordered for display (rule L2);
4. glyph bitmaps (FreeType, cached per font and glyph id) are placed at the shaped positions and
   combined with ``max`` into an ink image, which is returned as ``255 - ink``.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import numpy as np
import uharfbuzz as hb

from ilt_core.errors import ILTError
from ilt_core.plugins.registry import BuildContext, component
from ilt_freetype import marks
from ilt_freetype.bidi_levels import bidi_flags, embedding_levels, fast_levels, visual_order
from ilt_freetype.fonts import LoadedFont, dist_version, file_sha256, font_paths, load_font

# Bump when the drawing code changes pixels for the same fonts and settings.
RENDER_VERSION = 1

# Character kinds (see _char_info).
_MARK, _MISSING, _ATTACH, _LETTER, _OTHER = range(5)
_ATTACH_CATEGORIES = frozenset({"Mn", "Me", "Mc", "Cf"})
_LANGUAGE = "und"  # fixed: HarfBuzz would otherwise take the process locale's language

#: The command ``ilt plugins`` prints when a dependency is missing.
INSTALL = (
    "pip install -e ilt_plugins/freetype  (or: pip install freetype-py==2.5.1 uharfbuzz==0.57.0 "
    "python-bidi==0.6.12 fontpkg-noto-sans==2.15 justmytype-intl-rtl==0.1.0 justmytype-intl-sea==0.1.0)"
)


class FreeTypeRenderer:
    """Renders a unit as a ``(height, W)`` uint8 image, 0 ink on 255 paper, ``W % width_multiple == 0``.

    Args:
        height: image height in pixels.
        width_multiple: every width is rounded up to a multiple of this (the encoder's patch size).
        font_size: pixel size (ppem) of the fonts; default ``0.625 * height`` (20 px at height 32).
        max_width: widest image in pixels (rounded down to a multiple of ``width_multiple``);
            longer units are cropped, keeping their beginning (the right side for right-to-left).
        padding: blank pixels before and after the text.
        baseline: row of the baseline, counted from the top; default ``0.7 * height``.
        weight: the ``wght`` axis of the variable fonts (400 = regular).
        cjk: use the Noto Sans CJK fonts (``True``), never (``False``) or when installed (``None``).

    One instance is not thread-safe (FreeType faces, shared per process); give each DataLoader worker
    its own copy (pickling reopens the fonts).
    """

    def __init__(
        self,
        height: int = 32,
        width_multiple: int = 16,
        font_size: float | None = None,
        max_width: int = 512,
        padding: int = 2,
        baseline: int | None = None,
        weight: float = 400.0,
        cjk: bool | None = None,
    ) -> None:
        _check_int("height", height, 1)
        _check_int("width_multiple", width_multiple, 1)
        _check_int("max_width", max_width, 1)
        _check_int("padding", padding, 0)
        if font_size is None:
            font_size = round(0.625 * height)
        if isinstance(font_size, bool) or not isinstance(font_size, (int, float)) or not 1 <= font_size <= 4 * height:
            raise ILTError(
                f"renderer arg font_size={font_size!r} is invalid; expected a number of pixels in [1, {4 * height}]"
            )
        if baseline is None:
            baseline = round(0.7 * height)
        _check_int("baseline", baseline, 0)
        if baseline > height:
            raise ILTError(f"renderer arg baseline={baseline!r} is below the image; expected a row in [0, {height}]")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 1 <= weight <= 1000:
            raise ILTError(
                f"renderer arg weight={weight!r} is invalid; expected a wght axis value in [1, 1000] (400 = regular)"
            )
        if cjk is not None and not isinstance(cjk, bool):
            raise ILTError(f"renderer arg cjk={cjk!r} is invalid; expected true, false or null (= when installed)")
        self.height = height
        self.width_multiple = width_multiple
        self.font_size = float(font_size)
        self.max_width = max_width
        self.padding = padding
        self.baseline = baseline
        self.weight = float(weight)
        self.cjk = cjk
        self._max_w = max(width_multiple, max_width // width_multiple * width_multiple)
        self._max_chars = max(self._max_w, 16)
        size_26_6 = round(self.font_size * 64)
        self._font_files = font_paths(cjk)
        self._fonts: list[LoadedFont] = [load_font(str(p), size_26_6, self.weight) for p, _ in self._font_files]
        # Per-character memo: char -> (kind, first font index or -1, bidi class flag).
        self._info: dict[str, tuple[int, int, int]] = {}
        self._marks: dict[int, marks.Mark] = {}
        self._tick = marks.format_tick(self.font_size)

    # -- pickling: DataLoader workers get a copy that reopens the fonts ----------------------
    def __getstate__(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "width_multiple": self.width_multiple,
            "font_size": self.font_size,
            "max_width": self.max_width,
            "padding": self.padding,
            "baseline": self.baseline,
            "weight": self.weight,
            "cjk": self.cjk,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        return (
            f"FreeTypeRenderer(height={self.height}, width_multiple={self.width_multiple}, font_size={self.font_size:g}, "
            f"max_width={self.max_width}, padding={self.padding}, baseline={self.baseline}, fonts={len(self._fonts)})"
        )

    def cache_key(self) -> tuple:
        """Every setting that changes pixels: sizes, layout, font files (sha256) and library versions.

        Computed once: the settings never change after construction, and the render cache asks for
        the key on every lookup (package metadata reads would dominate a warm cache).
        """
        key = self.__dict__.get("_cache_key_memo")
        if key is None:
            key = self.__dict__["_cache_key_memo"] = self._compute_cache_key()
        return key

    def _compute_cache_key(self) -> tuple:
        import freetype
        from bidi import VERSION as bidi_version

        fonts = tuple((dist, dist_version(dist), path.name, file_sha256(str(path))) for path, dist in self._font_files)
        return (
            "freetype",
            RENDER_VERSION,
            self.height,
            self.width_multiple,
            self.font_size,
            self._max_w,
            self.padding,
            self.baseline,
            self.weight,
            fonts,
            ("freetype", ".".join(map(str, freetype.version())), dist_version("freetype-py")),
            ("harfbuzz", hb.version_string(), dist_version("uharfbuzz")),
            ("python-bidi", bidi_version),
        )

    # -- per-character classification ---------------------------------------------------------
    def _char_info(self, ch: str) -> tuple[int, int, int]:
        info = self._info.get(ch)
        if info is not None:
            return info
        cp = ord(ch)
        cat = unicodedata.category(ch)
        first = next((i for i, f in enumerate(self._fonts) if f.has(cp)), -1)
        if cat in ("Cc", "Zs", "Zl", "Zp") or ch.isspace():
            kind = _MARK
        elif cat == "Cs":
            kind = _MISSING
        elif cat in _ATTACH_CATEGORIES:
            kind = _ATTACH
        elif first < 0:
            kind = _MISSING
        else:
            kind = _LETTER if cat[0] == "L" else _OTHER
        info = (kind, first, bidi_flags(ch))
        self._info[ch] = info
        return info

    def _mark(self, cp: int, missing: bool) -> marks.Mark:
        key = -cp - 1 if missing else cp
        m = self._marks.get(key)
        if m is None:
            m = marks.missing_mark(self.font_size, cp) if missing else marks.mark_for(cp, self.font_size)
            self._marks[key] = m
        return m

    def _itemize(self, text: str, levels: list[int] | int) -> list[list[int]]:
        """Split ``text`` into items ``[start, end, kind, font, level]`` in logical order.

        A text item is a run of one font and one bidi level; a mark or missing item is one character.
        """
        items: list[list[int]] = []
        fonts = self._fonts
        run_font = -1  # the font of the text run being extended, -1 after a mark or at the start
        for i, ch in enumerate(text):
            kind, first, _ = self._char_info(ch)
            level = levels if isinstance(levels, int) else levels[i]
            if kind == _MARK or kind == _MISSING:
                items.append([i, i + 1, kind, -1, level])
                run_font = -1
                continue
            cp = ord(ch)
            if kind == _LETTER:
                font = first
            elif run_font >= 0 and (fonts[run_font].has(cp) or kind == _ATTACH and first < 0):
                font = run_font  # marks, digits, punctuation stay with the letters before them
            else:
                font = first if first >= 0 else 0  # a mark no font has: the base font's .notdef
            last = items[-1] if items else None
            if last is not None and last[2] == _LETTER and last[3] == font and last[4] == level:
                last[1] = i + 1
            else:
                items.append([i, i + 1, _LETTER, font, level])
            run_font = font
        return items

    # -- rendering -------------------------------------------------------------------------
    def render(self, unit: str) -> np.ndarray:
        """Draw ``unit``; returns ``(height, W)`` uint8, ``W`` a multiple of ``width_multiple`` in ``[wm, max_width]``."""
        if not isinstance(unit, str):
            raise ILTError(f"renderer input {type(unit).__name__} is not a str; expected one unit of text")
        text = unit[: self._max_chars]
        if not text:
            return np.full((self.height, self.width_multiple), 255, dtype=np.uint8)
        flags = 0
        info = self._info
        for ch in text:
            got = info.get(ch)
            flags |= (got if got is not None else self._char_info(ch))[2]
        level = fast_levels(flags)
        if level is None:
            base, levels = embedding_levels(text)
            items = self._itemize(text, levels)
            order: Any = visual_order([it[4] for it in items])
        else:  # one level for all: no bidi pass (most words)
            base, items = level, self._itemize(text, level)
            order = range(len(items) - 1, -1, -1) if level else range(len(items))

        # Place every glyph: (coverage, x px, top row).
        placed: list[tuple[np.ndarray, int, int]] = []
        pen = 0  # 26.6 fixed point
        baseline = self.baseline
        tick = self._tick
        for idx in order:
            start, end, kind, font_idx, run_level = items[idx]
            if kind != _LETTER:
                bmp, left, top, adv = self._mark(ord(text[start]), kind == _MISSING)
                placed.append((bmp, ((pen + 32) >> 6) + left, baseline - top))
                pen += adv << 6
                continue
            font = self._fonts[font_idx]
            buf = hb.Buffer()
            buf.add_codepoints([ord(c) for c in text[start:end]])
            buf.direction = "rtl" if run_level % 2 else "ltr"
            buf.language = _LANGUAGE
            buf.guess_segment_properties()  # only the script is still unset
            hb.shape(font.hb_font, buf, None)
            for glyph, pos in zip(buf.glyph_infos, buf.glyph_positions, strict=True):
                bmp, left, top = font.glyph_bitmap(glyph.codepoint)
                x = pen + pos.x_offset
                if bmp.size:
                    placed.append((bmp, ((x + 32) >> 6) + left, baseline - ((pos.y_offset + 32) >> 6) - top))
                else:  # an invisible glyph (ZWJ, LRM, CGJ, ...): a tick, so that no character vanishes
                    placed.append((tick[0], ((x + 32) >> 6) + tick[1], baseline - tick[2]))
                pen += pos.x_advance
        return self._compose(placed, (pen + 32) >> 6, rtl=bool(base % 2))

    def _compose(self, placed: list[tuple[np.ndarray, int, int]], advance: int, rtl: bool) -> np.ndarray:
        """Paint the placed bitmaps on a page as wide as their extent (rounded up, capped): ``(height, W)`` uint8."""
        lo, hi = 0, advance
        for bmp, x, _ in placed:
            lo = min(lo, x)
            hi = max(hi, x + bmp.shape[1])
        content = hi - lo
        wm = self.width_multiple
        width = max(wm, -(-(content + 2 * self.padding) // wm) * wm)
        if width > self._max_w:
            width = self._max_w
        # Right-to-left paragraphs are right-aligned (and, when too wide, keep their beginning, which is
        # on the right); left-to-right ones are left-aligned.
        shift = width - self.padding - hi if rtl else self.padding - lo
        ink = np.zeros((self.height, width), dtype=np.uint8)
        h = self.height
        painted_lo, painted_hi = width, 0  # columns already inked, to skip max() where nothing overlaps
        for bmp, x, y in placed:
            x += shift
            bh, bw = bmp.shape
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + bw, width), min(y + bh, h)
            if x0 >= x1 or y0 >= y1:
                continue
            src = bmp[y0 - y : y1 - y, x0 - x : x1 - x] if (x0 - x, y0 - y, x1 - x, y1 - y) != (0, 0, bw, bh) else bmp
            if x0 >= painted_hi or x1 <= painted_lo:
                ink[y0:y1, x0:x1] = src  # a plain copy is much cheaper than np.maximum
            else:
                region = ink[y0:y1, x0:x1]
                np.maximum(region, src, out=region)
            painted_lo, painted_hi = min(painted_lo, x0), max(painted_hi, x1)
        return 255 - ink


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ILTError(f"renderer arg {name}={value!r} is invalid; expected an integer >= {minimum}")


@component(
    "default",
    roles=("renderer",),
    requires=("freetype", "uharfbuzz", "bidi", "fontpkg_noto_sans", "justmytype_intl_rtl", "justmytype_intl_sea"),
    install=INSTALL,
)
def build_renderer(
    role: str,
    context: BuildContext,
    height: int | None = None,
    width_multiple: int | None = None,
    font_size: float | None = None,
    max_width: int = 512,
    padding: int = 2,
    baseline: int | None = None,
    weight: float = 400.0,
    cjk: bool | None = None,
) -> FreeTypeRenderer:
    """Word images drawn with FreeType at HarfBuzz-shaped positions, bidi-reordered, from pinned PyPI fonts.

    The same pixels on every machine (Noto fonts for Latin, Greek, Cyrillic, Devanagari, Hebrew, Arabic,
    Thai, Lao, Khmer, Myanmar; CJK with the ``[cjk]`` extra). ``height`` and ``width_multiple`` default to
    the build context's; the other arguments are :class:`FreeTypeRenderer`'s.
    """
    if role != "renderer":
        raise ILTError(f"component 'freetype:default' cannot be a {role}; it is a renderer")
    return FreeTypeRenderer(
        height=context.image_height if height is None else height,
        width_multiple=context.width_multiple if width_multiple is None else width_multiple,
        font_size=font_size,
        max_width=max_width,
        padding=padding,
        baseline=baseline,
        weight=weight,
        cjk=cjk,
    )
