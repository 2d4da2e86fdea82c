"""Font files from pinned PyPI font packages, loaded once per process for FreeType and HarfBuzz.

No system font is ever used: every face comes from a file inside an installed Python package, so
the same package versions give the same pixels on every machine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import freetype
import numpy as np
import uharfbuzz as hb

from ilt_core.errors import ILTError
from ilt_core.files import sha256_file

# (import name, distribution, path inside the package), in fallback order: a character is drawn
# with the first face whose cmap has it. Noto Sans covers Latin, Greek, Cyrillic and Devanagari.
BASE_FONTS: tuple[tuple[str, str, str], ...] = (
    ("fontpkg_noto_sans", "fontpkg-noto-sans", "files/NotoSans[wdth,wght].ttf"),
    ("justmytype_intl_rtl", "justmytype-intl-rtl", "fonts/ofl/notosanshebrew/NotoSansHebrew[wdth,wght].ttf"),
    ("justmytype_intl_rtl", "justmytype-intl-rtl", "fonts/ofl/notosansarabic/NotoSansArabic[wdth,wght].ttf"),
    ("justmytype_intl_sea", "justmytype-intl-sea", "fonts/ofl/notosansthai/NotoSansThai[wdth,wght].ttf"),
    ("justmytype_intl_sea", "justmytype-intl-sea", "fonts/ofl/notosanslao/NotoSansLao[wdth,wght].ttf"),
    ("justmytype_intl_sea", "justmytype-intl-sea", "fonts/ofl/notosanskhmer/NotoSansKhmer[wdth,wght].ttf"),
    ("justmytype_intl_sea", "justmytype-intl-sea", "fonts/ofl/notosansmyanmar/NotoSansMyanmar[wdth,wght].ttf"),
)
# The optional extra `ilt-freetype[cjk]`: last in the chain so it never changes other scripts.
CJK_FONTS: tuple[tuple[str, str, str], ...] = (
    ("justmytype_intl_cjk", "justmytype-intl-cjk", "fonts/ofl/notosanssc/NotoSansSC[wght].ttf"),
    ("justmytype_intl_cjk", "justmytype-intl-cjk", "fonts/ofl/notosansjp/NotoSansJP[wght].ttf"),
    ("justmytype_intl_cjk", "justmytype-intl-cjk", "fonts/ofl/notosanskr/NotoSansKR[wght].ttf"),
    ("justmytype_intl_cjk", "justmytype-intl-cjk", "fonts/ofl/notosanstc/NotoSansTC[wght].ttf"),
)
INSTALL_HINT = "pip install -e ilt_plugins/freetype  (or: pip install ilt-freetype)"
CJK_INSTALL_HINT = "pip install 'justmytype-intl-cjk==0.1.0'  (the [cjk] extra of ilt-freetype)"


def package_dir(import_name: str) -> Path | None:
    """The folder of an installed package, found without importing it; None when absent."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def cjk_available() -> bool:
    return package_dir("justmytype_intl_cjk") is not None


def font_paths(cjk: bool | None) -> list[tuple[Path, str]]:
    """The fallback chain as ``(file, distribution)``; ``cjk`` None means "when installed"."""
    entries = list(BASE_FONTS)
    if cjk is None:
        cjk = cjk_available()
    elif cjk and not cjk_available():
        raise ILTError(
            f"renderer arg cjk=True needs the CJK fonts package, which is not installed; run: {CJK_INSTALL_HINT}"
        )
    if cjk:
        entries += CJK_FONTS
    out = []
    for import_name, dist, rel in entries:
        root = package_dir(import_name)
        path = root / rel if root is not None else None
        if path is None or not path.is_file():
            raise ILTError(f"font file {rel!r} of package {dist!r} is missing; run: pip install '{dist}'")
        out.append((path, dist))
    return out


@cache
def file_sha256(path: str) -> str:
    """Hex sha256 of a font file (cached: the files never change while a process runs)."""
    return sha256_file(path)


def dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


@dataclass
class LoadedFont:
    """One font file at one pixel size and weight, ready to shape (HarfBuzz) and rasterize (FreeType).

    ``glyphs`` caches ``gid -> (coverage (h, w) uint8, left, top)``: bitmaps are drawn once per
    process and reused for every later unit.
    """

    path: str
    size_26_6: int
    ft_face: freetype.Face
    hb_font: hb.Font
    glyphs: dict[int, tuple[np.ndarray, int, int]] = field(default_factory=dict)
    _has: dict[int, bool] = field(default_factory=dict)

    def has(self, codepoint: int) -> bool:
        """Whether the font's cmap maps ``codepoint`` (memoized; CJK cmaps are too big to list up front)."""
        got = self._has.get(codepoint)
        if got is None:
            got = self._has[codepoint] = self.hb_font.get_nominal_glyph(codepoint) is not None
        return got

    def glyph_bitmap(self, gid: int) -> tuple[np.ndarray, int, int]:
        """``(coverage (h, w) uint8 with 255 = full ink, bitmap_left, bitmap_top)`` for glyph ``gid``."""
        cached = self.glyphs.get(gid)
        if cached is not None:
            return cached
        try:
            # No hinting: HarfBuzz positions are unhinted too, and hinting varies most between builds.
            self.ft_face.load_glyph(gid, freetype.FT_LOAD_NO_HINTING | freetype.FT_LOAD_RENDER)
            slot = self.ft_face.glyph
            bm = slot.bitmap
            if bm.rows and bm.width:
                arr = np.array(bm.buffer, dtype=np.uint8).reshape(bm.rows, bm.pitch)[:, : bm.width]
                arr = np.ascontiguousarray(arr)
            else:
                arr = np.zeros((0, 0), dtype=np.uint8)
            cached = (arr, slot.bitmap_left, slot.bitmap_top)
        except freetype.FT_Exception:  # a broken glyph draws nothing rather than failing a unit
            cached = (np.zeros((0, 0), dtype=np.uint8), 0, 0)
        self.glyphs[gid] = cached
        return cached


def _axis_coords(axes: list[tuple[str, float, float, float]], weight: float) -> dict[str, float]:
    """Design coordinates: every axis at its default except ``wght`` (clamped to the font's range)."""
    coords = {}
    for tag, lo, default, hi in axes:
        coords[tag] = min(max(weight, lo), hi) if tag == "wght" else default
    return coords


@lru_cache(maxsize=64)
def load_font(path: str, size_26_6: int, weight: float) -> LoadedFont:
    """Open ``path`` at ``size_26_6`` (pixel size * 64) and weight; shared by all renderers of a process.

    HarfBuzz's scale equals the FreeType size in 26.6 units, so shaped positions are in 1/64 px.
    """
    ft_face = freetype.Face(path)
    ft_face.set_char_size(size_26_6)
    axes: list[tuple[str, float, float, float]] = []
    if ft_face.has_multiple_masters:
        info = ft_face.get_variation_info()
        axes = [(a.tag, a.minimum, a.default, a.maximum) for a in info.axes]
        coords = _axis_coords(axes, weight)
        # Variable fonts would otherwise be drawn at their default instance (Thin for some files).
        ft_face.set_var_design_coords(tuple(coords[a[0]] for a in axes))
    hb_face = hb.Face(hb.Blob.from_file_path(path))
    hb_font = hb.Font(hb_face)
    hb_font.scale = (size_26_6, size_26_6)
    if axes:
        hb_font.set_variations(_axis_coords(axes, weight))
    return LoadedFont(path=path, size_26_6=size_26_6, ft_face=ft_face, hb_font=hb_font)
