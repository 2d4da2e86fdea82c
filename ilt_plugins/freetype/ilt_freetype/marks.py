"""Drawn marks for what fonts do not show: whitespace, control characters and missing glyphs.

Why: a unit is a word plus its trailing whitespace, so ``"a"``, ``"a "``, ``"a\\t"`` and ``"a\\n"``
must give different images, and a character that no font has must still be seen (and told apart
from another missing character). Each mark is a small coverage bitmap built from rectangles.

Every function returns ``(coverage, left, top, advance)``: ``coverage`` is an ``(h, w)`` uint8
array (255 = full ink) whose top-left corner sits ``left`` px right of the pen and ``top`` px
above the baseline; ``advance`` is the pen advance in whole pixels.
"""

from __future__ import annotations

import numpy as np

Mark = tuple[np.ndarray, int, int, int]

# Code-point grids: 4 columns x 6 rows = 24 bits; bit 23 is always set so that U+0000 is not an
# empty grid.
GRID_COLS, GRID_ROWS = 4, 6


def _unit(size: float) -> int:
    """Stroke width in pixels for a font size in pixels (2 px at the default 20 px)."""
    return max(1, round(size / 10))


def _canvas(w: int, h: int) -> np.ndarray:
    return np.zeros((max(h, 1), max(w, 1)), dtype=np.uint8)


def _fill(img: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    """Ink the rectangle ``[x0, x1) x [y0, y1)`` (clipped)."""
    h, w = img.shape
    img[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)] = 255


def _grid(img: np.ndarray, x0: int, y0: int, u: int, codepoint: int) -> None:
    """Write ``codepoint`` (with bit 23 set) as a 4x6 grid of ``u``-px cells at ``(x0, y0)``."""
    bits = codepoint | (1 << 23)
    for i in range(GRID_COLS * GRID_ROWS):
        if bits >> i & 1:
            col, row = i % GRID_COLS, i // GRID_COLS
            _fill(img, x0 + col * u, y0 + row * u, x0 + (col + 1) * u, y0 + (row + 1) * u)


def space_mark(size: float) -> Mark:
    """U+0020: a bracket under the baseline (like the open-box sign), narrower than ``_``."""
    u = _unit(size)
    adv = max(3 * u + 2, round(0.35 * size))
    h = 3 * u
    img = _canvas(adv, h)
    _fill(img, 1, 2 * u, adv - 1, 3 * u)  # the bar, u px below the baseline
    _fill(img, 1, 0, 1 + u, 3 * u)  # left tick
    _fill(img, adv - 1 - u, 0, adv - 1, 3 * u)  # right tick
    return img, 0, 0, adv


def tab_mark(size: float) -> Mark:
    """U+0009: a right arrow to a bar (like ⇥) at half x-height."""
    u = _unit(size)
    adv = max(8 * u, round(0.8 * size))
    head = 2 * u
    h = 2 * head + u
    img = _canvas(adv, h)
    mid = head  # the shaft row
    right = adv - 1 - u
    _fill(img, u, mid, right, mid + u)
    for k in range(1, head + 1):  # arrow head: two diagonals ending at the tip
        _fill(img, right - k - u, mid - k, right - k, mid - k + u)
        _fill(img, right - k - u, mid + k, right - k, mid + k + u)
    _fill(img, right, 0, right + u, h)  # the stop bar
    top = round(0.27 * size) + mid
    return img, 0, top, adv


def newline_mark(size: float) -> Mark:
    """U+000A: a return arrow (like ↵): a stem down on the right, then left to an arrow head."""
    u = _unit(size)
    adv = max(6 * u, round(0.6 * size))
    head = 2 * u
    stem_h = round(0.45 * size)
    h = stem_h + head + u
    img = _canvas(adv, h)
    right = adv - 1 - u
    base_row = stem_h  # the shaft row
    _fill(img, right, 0, right + u, base_row + u)  # stem
    _fill(img, u, base_row, right + u, base_row + u)  # shaft
    for k in range(1, head + 1):
        _fill(img, u + k, base_row - k, u + k + u, base_row - k + u)
        _fill(img, u + k, base_row + k, u + k + u, base_row + k + u)
    top = stem_h  # the shaft lies on the baseline
    return img, 0, top, adv


def carriage_return_mark(size: float) -> Mark:
    """U+000D: a left arrow from a bar (like ⇤) low in the line, unlike the newline's hook."""
    u = _unit(size)
    adv = max(6 * u, round(0.6 * size))
    head = 2 * u
    h = 2 * head + u
    img = _canvas(adv, h)
    mid = head
    _fill(img, u, 0, 2 * u, h)  # bar on the left
    _fill(img, 2 * u, mid, adv - 1, mid + u)  # shaft
    for k in range(1, head + 1):
        _fill(img, 2 * u + k, mid - k, 3 * u + k, mid - k + u)
        _fill(img, 2 * u + k, mid + k, 3 * u + k, mid + k + u)
    top = mid + u
    return img, 0, top, adv


def control_mark(size: float, codepoint: int) -> Mark:
    """Other whitespace and control characters: the space bracket with the code point as a grid above.

    Distinct from U+0020 (which has no grid) and from every other control (the grid encodes it).
    """
    u = _unit(size)
    grid_w, grid_h = GRID_COLS * u, GRID_ROWS * u
    adv = grid_w + 4 * u
    h = grid_h + u + 3 * u
    img = _canvas(adv, h)
    _grid(img, 2 * u, 0, u, codepoint)
    bracket_y = grid_h + u
    _fill(img, u, bracket_y + 2 * u, adv - u, bracket_y + 3 * u)
    _fill(img, u, bracket_y, 2 * u, bracket_y + 3 * u)
    _fill(img, adv - 2 * u, bracket_y, adv - u, bracket_y + 3 * u)
    top = bracket_y  # the bracket's top on the baseline, as in space_mark
    return img, 0, top, adv


def missing_mark(size: float, codepoint: int) -> Mark:
    """A character no font has (emoji, unassigned, lone surrogate): a box holding its code point."""
    u = _unit(size)
    grid_w, grid_h = GRID_COLS * u, GRID_ROWS * u
    box_w, box_h = grid_w + 4 * u, grid_h + 4 * u
    adv = box_w + 2 * u
    img = _canvas(box_w, box_h)
    _fill(img, 0, 0, box_w, u)
    _fill(img, 0, box_h - u, box_w, box_h)
    _fill(img, 0, 0, u, box_h)
    _fill(img, box_w - u, 0, box_w, box_h)
    _grid(img, 2 * u, 2 * u, u, codepoint)
    return img, u, box_h, adv  # the box stands on the baseline


def format_tick(size: float) -> Mark:
    """An invisible glyph (ZWJ, ZWNJ, LRM, soft hyphen, CGJ...): a short tick below the descender.

    Drawn on top of shaped text, so it does not change the shaping of the letters around it.
    """
    u = _unit(size)
    h = 2 * u
    img = _canvas(u, h)
    img[:] = 255
    return img, 0, -round(0.3 * size), 0


def mark_for(codepoint: int, size: float) -> Mark:
    """The drawn mark of a whitespace or control character."""
    if codepoint == 0x20:
        return space_mark(size)
    if codepoint == 0x09:
        return tab_mark(size)
    if codepoint == 0x0A:
        return newline_mark(size)
    if codepoint == 0x0D:
        return carriage_return_mark(size)
    return control_mark(size, codepoint)
