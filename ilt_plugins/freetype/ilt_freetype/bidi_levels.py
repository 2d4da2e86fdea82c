"""Unicode bidi embedding levels per character, from python-bidi (the Rust unicode-bidi crate).

python-bidi's public API returns only the reordered string, which cannot be mapped back to
character positions once a word has repeated letters. Its debug mode returns the crate's
``BidiInfo`` (resolved level per UTF-8 byte); we read the levels from it. python-bidi is pinned in
the plugin's pyproject, so this format is fixed; if it ever fails to parse we fall back to the
paragraph level for every character (no crash, still deterministic).
"""

from __future__ import annotations

import re
import unicodedata

from bidi import get_base_level
from bidi.bidi import get_display_inner

# Bidi classes as bit flags, OR-ed over a unit to pick a fast path (see ``fast_levels``).
BIDI_L, BIDI_R, BIDI_NUMBER, BIDI_EXPLICIT = 1, 2, 4, 8
_CLASS_FLAGS = {"L": BIDI_L, "R": BIDI_R, "AL": BIDI_R, "EN": BIDI_NUMBER, "AN": BIDI_NUMBER}
_EXPLICIT = frozenset({"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"})


def bidi_flags(ch: str) -> int:
    """The flag of ``ch``'s bidi class: strong L, strong R/AL, a number (EN/AN), explicit, or 0 (neutral/weak)."""
    cls = unicodedata.bidirectional(ch)
    if cls in _EXPLICIT:
        return BIDI_EXPLICIT
    return _CLASS_FLAGS.get(cls, 0)


def fast_levels(flags: int) -> int | None:
    """The level of every character when it is the same for all of them, from the OR of their flags; else None.

    No R/AL and no explicit control: everything is level 0 (EN after L or sos stays L; AN alone gets
    level 2, which displays the same). Strong R/AL with no L, number or explicit control: every neutral
    and mark resolves to R, so everything is level 1 (whitespace too, by L1).
    """
    if not flags & (BIDI_R | BIDI_EXPLICIT):
        return 0
    if not flags & (BIDI_L | BIDI_NUMBER | BIDI_EXPLICIT):
        return 1
    return None


# Paragraph separators would split a unit into paragraphs with their own base directions; we
# treat them as segment separators (tab) instead: one unit is one line.
_PARAGRAPH_SEPARATORS = {c: "\t" for c in ("\n", "\r", "\x1c", "\x1d", "\x1e", "\x85", "\u2029")}
_LEVELS_FIELD = "\n    levels: ["
_NUMBER = re.compile(r"\d+")
# L1: whitespace-like classes reset to the paragraph level before a separator or at line end.
_L1_WHITESPACE = frozenset({"WS", "FSI", "LRI", "RLI", "PDI", "BN"})


def _utf8_len(ch: str) -> int:
    cp = ord(ch)
    return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4


def bidi_text(text: str) -> str:
    """``text`` made safe for the bidi pass, same length: lone surrogates -> U+FFFD, paragraph breaks -> tab."""
    out = []
    for ch in text:
        if "\ud800" <= ch <= "\udfff":
            out.append("\ufffd")
        else:
            out.append(_PARAGRAPH_SEPARATORS.get(ch, ch))
    return "".join(out)


def embedding_levels(text: str) -> tuple[int, list[int]]:
    """``(paragraph level, level of each character)`` of ``text`` as one line (rules P2-P3, X1-I2, L1).

    Odd levels run right to left. ``len(levels) == len(text)``.
    """
    safe = bidi_text(text)
    try:
        base = int(get_base_level(safe))
    except Exception:
        base = 0
    levels = [base] * len(safe)
    try:
        info = get_display_inner(safe, None, True)
        start = info.index(_LEVELS_FIELD) + len(_LEVELS_FIELD)
        end = info.index("]", start)
        per_byte = [int(n) for n in _NUMBER.findall(info, start, end)]
        offset = 0
        for i, ch in enumerate(safe):
            levels[i] = per_byte[offset]
            offset += _utf8_len(ch)
        if offset != len(per_byte):
            raise ValueError("level count does not match the text")
    except Exception:
        levels = [base] * len(safe)
    # L1 (the crate's per-paragraph levels do not include it): separators and trailing whitespace.
    reset = True
    for i in range(len(safe) - 1, -1, -1):
        cls = unicodedata.bidirectional(safe[i])
        if cls in ("S", "B"):
            levels[i] = base
            reset = True
        elif reset and cls in _L1_WHITESPACE:
            levels[i] = base
        else:
            reset = False
    return base, levels


def visual_order(levels: list[int]) -> list[int]:
    """Indices of runs in left-to-right display order, by rule L2 (reverse from the highest level)."""
    order = list(range(len(levels)))
    odd = [lv for lv in levels if lv % 2]
    if not odd:
        return order  # only even levels: reversing twice is the identity
    lowest_odd, highest = min(odd), max(levels)
    n = len(order)
    for level in range(highest, lowest_odd - 1, -1):
        i = 0
        while i < n:
            if levels[order[i]] >= level:
                j = i
                while j < n and levels[order[j]] >= level:
                    j += 1
                order[i:j] = order[i:j][::-1]
                i = j
            else:
                i += 1
    return order
