"""Segmentation: lossless, bounded, grapheme-safe, word + following whitespace."""

from __future__ import annotations

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilt_core.errors import ILTError
from ilt_core.text.segmentation import WHITESPACE, segment, utf8_len

BUDGETS = [4, 5, 7, 16, 32, 64]

# Independent oracle for "unspaced script" (Script_Extensions), used to check the grapheme cap.
UNSPACED = regex.compile(
    r"[\p{scx=Hani}\p{scx=Hira}\p{scx=Kana}\p{scx=Bopo}\p{scx=Yiii}\p{scx=Thai}\p{scx=Laoo}"
    r"\p{scx=Khmr}\p{scx=Mymr}\p{scx=Tibt}\p{scx=Tale}\p{scx=Talu}\p{scx=Lana}\p{scx=Tavt}"
    r"\p{scx=Bali}\p{scx=Java}]"
)
PUNCT = regex.compile(r"\p{P}")

# Any code point at all, lone surrogates and unassigned ones included.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)
surrogate_text = st.text(
    st.one_of(st.characters(categories=["Cs"]), st.characters(codec=None, exclude_categories=())), max_size=40
)
# The interesting corners, densely: whitespace of every kind, marks that glue onto a space,
# ZWJ emoji, regional indicators, Prepend, RTL, CJK/Thai/Khmer, punctuation, NUL, surrogates.
TRICKY = list(
    "ab Z9.,\t\n\r\x0b\x0c\x85\xa0\u2028\u3000\x00\x1c\u200b\u200d"
    "\u0301\u0903\u05b0\u0600\U0001f469\U0001f1fa\U0001f1f8\u2764\ufe0f"
    "שלוםعربي漢字かなカナー、。「」（）！สวัสดีກະຂ្មែរ\ud800\udfff\U000e0001\ue000\u1361\u0f0bአ"
) + [" \u0301", "\r\n", "\U0001f469\u200d\U0001f4bb", "e" + "\u0301" * 12, "hello", "שלום"]
tricky_text = st.lists(st.sampled_from(TRICKY), max_size=40).map("".join)
# Spaced scripts only (no unspaced-script characters), with whitespace and glue corner cases.
SPACED = [c for c in TRICKY if not UNSPACED.search(c) and c not in "\u1361\u0f0b"]
spaced_text = st.lists(st.sampled_from(SPACED), max_size=40).map("".join)
texts = st.one_of(any_text, tricky_text, surrogate_text)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def boundaries(units: list[str]) -> list[int]:
    """Positions between consecutive units."""
    out, pos = [], 0
    for u in units[:-1]:
        pos += len(u)
        out.append(pos)
    return out


def cluster_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in regex.finditer(r"\X", text)]


def grapheme_boundaries(text: str) -> set[int]:
    return {s for s, _ in cluster_spans(text)} | {len(text)}


def word_starts(text: str) -> list[int]:
    """Starts of non-whitespace clusters that follow a whitespace-only cluster (the word rule)."""
    spans = cluster_spans(text)
    is_ws = [not text[s:e].strip(WHITESPACE) for s, e in spans]
    return [spans[k][0] for k in range(1, len(spans)) if is_ws[k - 1] and not is_ws[k]]


# --- exact examples -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello world\n", ["hello ", "world\n"]),
        ("שלום עולם", ["שלום ", "עולם"]),
        ("", []),
        ("   ", ["   "]),
        ("\n\t hello", ["\n\t ", "hello"]),
        ("  a  b", ["  ", "a  ", "b"]),
        ("x\r\ny", ["x\r\n", "y"]),
        ("end.\n\n", ["end.\n\n"]),
        ("a\x00b c", ["a\x00b ", "c"]),
        # U+001C..U+001F are not White_Space: part of the word.
        ("a\x1cb", ["a\x1cb"]),
        # A space followed by a combining mark is one grapheme cluster: no boundary inside it.
        ("a \u0301b c", ["a \u0301b ", "c"]),
        ("  \u0301x", [" ", " \u0301x"]),
        ("\t\xa0\u200d", ["\t", "\xa0\u200d"]),
        # An Arabic number sign (Prepend) forms one cluster with the space after it.
        ("\u0600 x y", ["\u0600 x ", "y"]),
        # ZWJ emoji sequence stays whole.
        ("hi \U0001f469\u200d\U0001f4bb ok", ["hi ", "\U0001f469\u200d\U0001f4bb ", "ok"]),
        # Chinese: at most 4 characters, closing punctuation stays behind, opening starts a unit.
        ("我爱北京天安门。你好，世界！「引用」", ["我爱北京", "天安门。", "你好，", "世界！", "「引用」"]),
        ("用Python写代码", ["用", "Python", "写代码"]),
    ],
)
def test_exact(text: str, expected: list[str]) -> None:
    assert segment(text) == expected


def test_lone_surrogate_counts_three_bytes() -> None:
    units = segment("\ud800" * 10, max_unit_bytes=8)
    assert units == ["\ud800\ud800"] * 5
    assert utf8_len("\ud800") == 3


def test_utf8_len() -> None:
    assert utf8_len("") == 0
    assert utf8_len("abc") == 3
    assert utf8_len("é中\U0001f600") == 2 + 3 + 4


# --- unspaced scripts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "我们今天去北京的故宫博物院参观了很多历史文物",
        "東京タワーは日本の電波塔であり観光名所でもある",
        "ภาษาไทยเขียนโดยไม่มีการเว้นวรรคระหว่างคำ",
        "ພາສາລາວຂຽນບໍ່ມີຍະຫວ່າງ",
        "ភាសាខ្មែរសរសេរដោយគ្មានដកឃ្លា",
        "မြန်မာဘာသာစကားသည်စကားလုံးများကြားတွင်",
    ],
)
def test_unspaced_sentence_gives_several_bounded_units(text: str) -> None:
    units = segment(text)
    assert "".join(units) == text
    assert len(units) >= 3
    for u in units:
        assert utf8_len(u) <= 32
        assert sum(1 for c in regex.findall(r"\X", u) if UNSPACED.match(c) and not PUNCT.match(c)) <= 4


def test_word_separators_end_units() -> None:
    # Ethiopic wordspace and Tibetan tsheg separate words where other scripts use a space.
    assert segment("የሰው፡ልጅ፡ሁሉ፡ ነው።፡የተ") == ["የሰው፡", "ልጅ፡", "ሁሉ፡ ", "ነው።፡", "የተ"]
    assert segment("བོད་ཀྱི་སྐད་ཡིག") == ["བོད་", "ཀྱི་", "སྐད་", "ཡིག"]
    # A separator carrying a combining mark is one cluster: the boundary comes after the mark.
    assert segment("a\u1361\u0301b") == ["a\u1361\u0301", "b"]


def test_unspaced_grapheme_cap_is_configurable() -> None:
    text = "一二三四五六七八九十"
    assert segment(text, max_unspaced_graphemes=2) == ["一二", "三四", "五六", "七八", "九十"]
    assert segment(text, max_unspaced_graphemes=10) == [text]


def test_thai_never_splits_a_cluster() -> None:
    text = "สวัสดีครับ ผมชื่อสมชาย"
    units = segment(text)
    assert set(boundaries(units)) <= grapheme_boundaries(text)
    assert "ครับ " in units  # the space still ends the unit it follows


# --- whitespace and long inputs -----------------------------------------------------------------


def test_leading_whitespace_is_its_own_unit() -> None:
    assert segment(" \t\nword rest") == [" \t\n", "word ", "rest"]


def test_long_whitespace_run_is_split() -> None:
    units = segment(" " * 100, max_unit_bytes=32)
    assert units == [" " * 32] * 3 + [" " * 4]
    units = segment("word" + " " * 50, max_unit_bytes=32)
    assert units == ["word" + " " * 28, " " * 22]


def test_crlf_is_never_split() -> None:
    units = segment("\r\n" * 10, max_unit_bytes=5)
    assert "".join(units) == "\r\n" * 10
    assert all(u == "\r\n\r\n" for u in units[:-1])


@pytest.mark.parametrize(("char", "per_unit"), [("a", 32), ("é", 16), ("中", 4), ("\U0001f600", 8)])
def test_hundred_thousand_character_word_is_bounded(char: str, per_unit: int) -> None:
    text = char * 100_000 + " tail"
    units = segment(text)
    assert "".join(units) == text
    assert all(utf8_len(u) <= 32 for u in units)
    assert units[-1] == "tail"
    # Packed to the byte budget (or the 4-character cap for Chinese), not one unit per character.
    word_units = segment(char * 100_000)
    assert word_units == [char * per_unit] * (100_000 // per_unit)


def test_oversized_grapheme_cluster_cut_at_code_points() -> None:
    cluster = "e" + "\u0301" * 200  # one cluster of 401 bytes
    units = segment(cluster + " next", max_unit_bytes=32)
    assert "".join(units) == cluster + " next"
    assert all(utf8_len(u) <= 32 for u in units)
    assert units[0] == "e" + "\u0301" * 15  # packed to the budget
    assert units[-1] == "next"


@pytest.mark.parametrize("bad", [0, 3, -1, 2.5, True, None])
def test_bad_budget_is_a_clear_error(bad) -> None:
    with pytest.raises(ILTError, match="max_unit_bytes"):
        segment("text", max_unit_bytes=bad)


def test_bad_grapheme_cap_is_a_clear_error() -> None:
    with pytest.raises(ILTError, match="max_unspaced_graphemes"):
        segment("text", max_unspaced_graphemes=0)


def test_non_str_is_a_clear_error() -> None:
    with pytest.raises(ILTError, match="str"):
        segment(b"bytes")  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------------


@SETTINGS
@given(texts)
def test_lossless_and_nonempty(text: str) -> None:
    units = segment(text)
    assert "".join(units) == text
    assert all(units)
    assert (units == []) == (text == "")


@SETTINGS
@given(st.one_of(tricky_text, any_text), st.sampled_from(BUDGETS))
def test_bounded_and_grapheme_safe(text: str, budget: int) -> None:
    units = segment(text, max_unit_bytes=budget)
    assert "".join(units) == text
    assert all(0 < utf8_len(u) <= budget for u in units)
    spans = cluster_spans(text)
    starts = {s for s, _ in spans}
    for b in boundaries(units):
        if b not in starts:
            # Only a cluster that alone exceeds the budget may be cut.
            s, e = next((s, e) for s, e in spans if s < b < e)
            assert utf8_len(text[s:e]) > budget, (text, units, b)


@SETTINGS
@given(tricky_text)
def test_unspaced_units_hold_at_most_four_clusters(text: str) -> None:
    for u in segment(text):
        clusters = regex.findall(r"\X", u)
        assert sum(1 for c in clusters if UNSPACED.match(c) and not PUNCT.match(c)) <= 4, u


@SETTINGS
@given(spaced_text)
def test_spaced_units_end_exactly_at_whitespace(text: str) -> None:
    # With an unlimited budget, the boundaries are exactly where a non-whitespace cluster follows
    # a whitespace-only cluster: every unit but the last ends in whitespace.
    units = segment(text, max_unit_bytes=10**9)
    assert boundaries(units) == word_starts(text)
    assert all(u[-1] in WHITESPACE for u in units[:-1])


@SETTINGS
@given(spaced_text, st.sampled_from(BUDGETS))
def test_small_budget_keeps_every_word_boundary(text: str, budget: int) -> None:
    units = segment(text, max_unit_bytes=budget)
    assert set(word_starts(text)) <= set(boundaries(units))


@SETTINGS
@given(st.text(st.sampled_from(list(WHITESPACE)), min_size=1, max_size=60), st.sampled_from(BUDGETS))
def test_whitespace_only(text: str, budget: int) -> None:
    units = segment(text, max_unit_bytes=budget)
    assert "".join(units) == text
    assert all(utf8_len(u) <= budget for u in units)
    if utf8_len(text) <= budget:
        assert units == [text]
