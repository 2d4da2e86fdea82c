"""Split text into units: a word with the whitespace that follows it.

The rule, in order of precedence:

1. **Lossless.** ``"".join(segment(t)) == t`` for every Python ``str`` (control characters, NUL,
   unassigned code points and lone surrogates included).
2. **Bounded.** Every unit is at most ``max_unit_bytes`` UTF-8 bytes (a lone surrogate counts as
   the 3 bytes ``'surrogatepass'`` writes for it), so the bytes decoder has a fixed maximum length.
3. **Grapheme-safe.** A unit boundary never falls inside an extended grapheme cluster (the
   ``regex`` module's ``\\X``), except when that one cluster is itself longer than
   ``max_unit_bytes`` (e.g. ``"e"`` followed by 200 combining marks): then, as a last resort, it is
   cut at code point boundaries (never inside a UTF-8 sequence), packing as many code points per
   unit as fit.

Within those constraints:

- **Spaced scripts** (Latin, Hebrew, Arabic, Cyrillic, Greek, Hangul, ...): a unit is a run of
  non-whitespace grapheme clusters plus the run of whitespace clusters that follows it
  (``"hello world\\n"`` -> ``["hello ", "world\\n"]``); whitespace at the start of a text is a
  unit of its own. A whitespace cluster is one made only of whitespace code points; the rare
  cluster that mixes them (a space carrying a combining mark, ``" \\u0301"``, or an Arabic number
  sign before a space, ``"\\u0600 "``) counts as part of a word, so no boundary falls inside it.
- **Scripts written without spaces** (Han, Hiragana, Katakana, Bopomofo, Yi, Thai, Lao, Khmer,
  Myanmar, Tibetan, Tai Le, New Tai Lue, Tai Tham, Tai Viet, Balinese, Javanese; membership by the
  Unicode Script_Extensions property, so "、", "。" and "ー" count too): there is no dictionary-free
  way to find word boundaries, so a run of such grapheme clusters is cut into units of at most
  ``max_unspaced_graphemes`` clusters (default 4: about two Chinese words, or one or two Thai
  syllables). Punctuation ends such a unit the way whitespace ends a spaced word: closing and other
  punctuation (``"，"``, ``"。"``, ``"」"``) stays with the unit before it and does not count towards
  the limit; opening punctuation (``"「"``, ``"（"``) starts the next unit. A change between an
  unspaced script and anything else (``"用Python写"``) is also a boundary.
- **Word separators that are not whitespace** (:data:`WORD_SEPARATORS`: the Ethiopic wordspace
  ``"፡"``, which Amharic text often uses instead of a space, and the Tibetan tsheg ``"་"``) end a
  unit like whitespace does: ``"የሰው፡ልጅ፡"`` -> ``["የሰው፡", "ልጅ፡"]``.
- **Too long.** A word or whitespace run longer than ``max_unit_bytes`` is cut greedily at grapheme
  boundaries into pieces of at most ``max_unit_bytes``; trailing whitespace joins the last piece of
  its word while it fits, and what does not fit forms whitespace-only units.

Whitespace means the Unicode White_Space property (a fixed list, :data:`WHITESPACE`); in particular
the ASCII separators U+001C..U+001F, which ``str.isspace`` accepts, are not whitespace here.

No start-of-text marker is added: the processor adds its own.

Speed: one regex pass (``re``) plus one scan for unspaced scripts, separators and grapheme glue;
texts without those take no per-cluster work (the per-cluster path, for Chinese, Japanese or Thai,
is the slower one). ``python -m ilt_core.text.segmentation [files]`` measures it.
"""

from __future__ import annotations

import re

import regex

from ilt_core.errors import ILTError

__all__ = ["UNSPACED_SCRIPTS", "WHITESPACE", "WORD_SEPARATORS", "segment", "utf8_len"]

#: The Unicode White_Space code points (stable since Unicode 6.3), spelled out so that ``re`` and
#: ``regex`` (which disagree on U+001C..U+001F) agree here.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_WS_CLASS = re.escape(WHITESPACE)

# Fast path: maximal non-whitespace run plus the whitespace after it; a leading whitespace run alone.
_UNIT_RE = re.compile(f"[^{_WS_CLASS}]+[{_WS_CLASS}]*|[{_WS_CLASS}]+")

# Characters that glue onto the code point before them inside a grapheme cluster (rules GB9, GB9a).
_GLUE_MARK = r"[\p{Grapheme_Cluster_Break=Extend}\p{Grapheme_Cluster_Break=ZWJ}\p{Grapheme_Cluster_Break=SpacingMark}]"
_GLUE_MARK_RE = regex.compile(_GLUE_MARK)
# Whitespace that forms one cluster with a following mark (the space-like ones; controls such as
# "\t" or "\n" never do), or with a Prepend character before it (GB9b). Computed with the same
# ``regex`` build that ``\X`` uses, so the two agree.
_GLUE_WS = "".join(c for c in WHITESPACE if len(regex.findall(r"\X", c + "\u0301")) == 1)
_PREPEND = r"\p{Grapheme_Cluster_Break=Prepend}"
_GLUE_WS_RE = f"(?:[{regex.escape(_GLUE_WS)}](?={_GLUE_MARK})|(?<={_PREPEND})[{regex.escape(_GLUE_WS)}])"
_FREE_WS_RE = f"(?:(?!{_GLUE_WS_RE})[{_WS_CLASS}])"
# Slow first pass, used only when the text holds such a glued whitespace: whitespace inside a
# cluster with a non-whitespace character is treated as part of the word, so no boundary falls
# inside that cluster.
_GRAPHEME_UNIT_RE = regex.compile(
    f"(?:[^{_WS_CLASS}]|{_GLUE_WS_RE})+{_FREE_WS_RE}*|{_FREE_WS_RE}+",
    regex.VERSION1,
)

#: Scripts written without spaces between words (ISO 15924 codes).
UNSPACED_SCRIPTS = (
    "Hani",
    "Hira",
    "Kana",
    "Bopo",
    "Yiii",
    "Thai",
    "Laoo",
    "Khmr",
    "Mymr",
    "Tibt",
    "Tale",
    "Talu",
    "Lana",
    "Tavt",
    "Bali",
    "Java",
)
_UNSPACED_CLASS = "[" + "".join(f"\\p{{scx={s}}}" for s in UNSPACED_SCRIPTS) + "]"
_UNSPACED_RE = regex.compile(_UNSPACED_CLASS)
# One scan tells whether a text needs the per-cluster path at all.
#: Word separators that are not whitespace: a unit ends after them as it does after a space.
#: U+1361 ETHIOPIC WORDSPACE (Amharic text often separates words with it) and U+0F0B TIBETAN MARK
#: INTERSYLLABIC TSHEG (Tibetan has no spaces; its syllables are the natural unit).
WORD_SEPARATORS = "\u1361\u0f0b"
# A unit that contains one of these needs the per-cluster packer even when it fits the budget.
_CLUSTER_HINT_RE = regex.compile(f"{_UNSPACED_CLASS}|[{WORD_SEPARATORS}]")
_NEEDS_CLUSTERS_RE = regex.compile(f"{_UNSPACED_CLASS}|[{WORD_SEPARATORS}]|{_GLUE_WS_RE}")
_GRAPHEME_RE = regex.compile(r"\X")
_OPEN_PUNCT_RE = regex.compile(r"[\p{Ps}\p{Pi}]")
_PUNCT_RE = regex.compile(r"\p{P}")

# Cluster kinds used by the packer.
_SPACED, _UNSPACED, _PUNCT, _OPEN, _WS, _SEP, _CONT = range(7)


def utf8_len(s: str) -> int:
    """Number of UTF-8 bytes of ``s``; a lone surrogate counts 3 (``'surrogatepass'``)."""
    if s.isascii():
        return len(s)
    return len(s.encode("utf-8", "surrogatepass"))


def segment(text: str, max_unit_bytes: int = 32, *, max_unspaced_graphemes: int = 4) -> list[str]:
    """Split ``text`` into units whose concatenation is ``text`` exactly.

    Args:
        text: any Python string.
        max_unit_bytes: the most UTF-8 bytes a unit may hold (at least 4, so one code point fits).
        max_unspaced_graphemes: the most grapheme clusters of a script written without spaces
            (Chinese, Japanese, Thai, ...) in one unit; punctuation after them is not counted.

    Returns:
        The units, in order; ``[]`` for ``""``. See the module docstring for the exact rule.
    """
    if not isinstance(text, str):
        raise ILTError(f"segment: text must be a str, got {type(text).__name__}")
    if isinstance(max_unit_bytes, bool) or not isinstance(max_unit_bytes, int) or max_unit_bytes < 4:
        raise ILTError(
            f"segment: max_unit_bytes={max_unit_bytes!r}; expected an int >= 4 (a code point takes up to 4 bytes)"
        )
    if (
        isinstance(max_unspaced_graphemes, bool)
        or not isinstance(max_unspaced_graphemes, int)
        or max_unspaced_graphemes < 1
    ):
        raise ILTError(f"segment: max_unspaced_graphemes={max_unspaced_graphemes!r}; expected an int >= 1")
    if not text:
        return []

    if _NEEDS_CLUSTERS_RE.search(text) is None:
        units = _UNIT_RE.findall(text)
        if text.isascii():
            if max(map(len, units)) <= max_unit_bytes:
                return units
            return _bound(units, max_unit_bytes, max_unspaced_graphemes, check_clusters=False)
        # A unit of n code points has at most 4n bytes: only longer ones need encoding.
        short = max_unit_bytes // 4
        if all(len(u) <= short or utf8_len(u) <= max_unit_bytes for u in units):
            return units
        return _bound(units, max_unit_bytes, max_unspaced_graphemes, check_clusters=False)

    units = _GRAPHEME_UNIT_RE.findall(text)
    return _bound(units, max_unit_bytes, max_unspaced_graphemes, check_clusters=True)


def _bound(units: list[str], max_bytes: int, max_graphemes: int, check_clusters: bool) -> list[str]:
    """Keep units that fit and need no cluster rule; re-split the others cluster by cluster."""
    out: list[str] = []
    short = max_bytes // 4
    for unit in units:
        if (len(unit) <= short or utf8_len(unit) <= max_bytes) and not (
            check_clusters and _CLUSTER_HINT_RE.search(unit)
        ):
            out.append(unit)
        else:
            out.extend(_split_unit(unit, max_bytes, max_graphemes))
    return out


def _cluster_kind(cluster: str) -> int:
    """Classify a grapheme cluster by its first code point (whitespace: by all of them)."""
    if not cluster.strip(WHITESPACE):
        return _WS
    if cluster[0] in WORD_SEPARATORS:
        return _SEP
    if _PUNCT_RE.match(cluster):
        return _OPEN if _OPEN_PUNCT_RE.match(cluster) else _PUNCT
    if _UNSPACED_RE.match(cluster):
        return _UNSPACED
    return _SPACED


def _split_unit(unit: str, max_bytes: int, max_graphemes: int) -> list[str]:
    """Cut one first-pass unit (word + trailing whitespace, or a whitespace run) into bounded units.

    Greedy over grapheme clusters; a new unit starts when the byte budget would overflow, when the
    text switches between an unspaced script and anything else, after ``max_graphemes`` unspaced
    clusters, after punctuation that closes an unspaced run, after a word separator, and before
    opening punctuation in an unspaced run. Whitespace clusters only ever end a unit (they break on the byte budget alone).
    """
    pieces: list[str] = []
    cur: list[str] = []
    cur_bytes = 0
    cur_kind = None  # _SPACED, _UNSPACED or None (nothing that decides it yet)
    count = 0  # unspaced clusters in the current unit
    closed = False  # the current unspaced unit ended with closing punctuation or whitespace

    def flush() -> None:
        nonlocal cur, cur_bytes, cur_kind, count, closed
        if cur:
            pieces.append("".join(cur))
        cur, cur_bytes, cur_kind, count, closed = [], 0, None, 0, False

    for cluster in _GRAPHEME_RE.findall(unit):
        kind = _cluster_kind(cluster)
        size = utf8_len(cluster)
        if size > max_bytes:
            # Last resort: one cluster over the budget is cut at code point boundaries. The first
            # code point follows the usual rules; the rest only break on the byte budget.
            parts = [(cluster[0], kind)] + [(cp, _CONT) for cp in cluster[1:]]
        else:
            parts = [(cluster, kind)]
        for part, part_kind in parts:
            part_bytes = size if len(parts) == 1 else utf8_len(part)
            if part_kind == _UNSPACED:
                brk = closed or cur_kind == _SPACED or (cur_kind == _UNSPACED and count >= max_graphemes)
            elif part_kind == _SPACED:
                brk = closed or cur_kind == _UNSPACED
            elif part_kind == _OPEN:
                brk = closed or cur_kind == _UNSPACED
            else:  # closing/other punctuation, separators, whitespace, continuation: only the budget
                brk = False
            if cur and (brk or cur_bytes + part_bytes > max_bytes):
                flush()
            cur.append(part)
            cur_bytes += part_bytes
            if part_kind == _UNSPACED:
                cur_kind = _UNSPACED
                count += 1
            elif part_kind == _SPACED:
                cur_kind = _SPACED
            elif part_kind == _SEP or (part_kind in (_PUNCT, _WS) and cur_kind == _UNSPACED):
                closed = True
    flush()
    return pieces
