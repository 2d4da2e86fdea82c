"""ByteTokenizer: ids 0..255 are bytes; pad/bos/eos; round-trips; invalid UTF-8 never raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ilt_core.errors import ILTError
from ilt_core.text.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, ByteTokenizer, decode_utf8

TOK = ByteTokenizer()
SETTINGS = settings(max_examples=150, deadline=None)

# Every Python str: lone surrogates and unassigned code points included.
any_text = st.text(
    st.one_of(st.characters(categories=["Cs"]), st.characters(codec=None, exclude_categories=())), max_size=60
)
# Bytes that can never start a valid UTF-8 sequence (continuation bytes, C0, C1, F5..FF).
never_valid_start = st.sampled_from([*range(0x80, 0xC0), 0xC0, 0xC1, *range(0xF5, 0x100)])


def test_constants() -> None:
    assert (PAD_ID, BOS_ID, EOS_ID, VOCAB_SIZE) == (256, 257, 258, 259)
    assert (TOK.pad_token_id, TOK.bos_token_id, TOK.eos_token_id, TOK.vocab_size) == (256, 257, 258, 259)


def test_encode_examples() -> None:
    assert TOK.encode("") == []
    assert TOK.encode("hi") == [104, 105]
    assert TOK.encode("é") == [0xC3, 0xA9]
    assert TOK.encode("ש ", add_eos=True) == [0xD7, 0xA9, 0x20, EOS_ID]
    assert TOK.encode("\ud800") == [0xED, 0xA0, 0x80]  # 'surrogatepass'


@SETTINGS
@given(any_text)
def test_round_trip_any_str(text: str) -> None:
    ids = TOK.encode(text, add_eos=True)
    assert ids[-1] == EOS_ID
    assert all(0 <= i < 256 for i in ids[:-1])
    assert TOK.decode(ids) == text
    assert TOK.decode(torch.tensor(ids)) == text


def test_surrogate_pair_halves_round_trip_separately() -> None:
    text = "a\ud83d\ude00b"  # two lone surrogates, not the emoji they would pair into
    assert TOK.decode(TOK.encode(text)) == text
    assert TOK.decode(TOK.encode("\U0001f600")) == "\U0001f600"


# --- invalid UTF-8 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a\xffb", "a\ufffdb"),
        (b"\xe2\x82x", "\ufffd\ufffdx"),  # truncated 3-byte sequence: one U+FFFD per byte
        (b"\xe2\x82", "\ufffd\ufffd"),
        (b"\xc3", "\ufffd"),
        (b"\xc0\xaf", "\ufffd\ufffd"),  # overlong
        (b"\xf4\x90\x80\x80", "\ufffd" * 4),  # above U+10FFFF
        (b"\xed\xa0\x80", "\ud800"),  # encoded surrogate decodes back to it
        (b"\xed\xa0", "\ufffd\ufffd"),
        ("é€😀".encode() + b"\x80", "é€😀\ufffd"),
    ],
)
def test_invalid_utf8_examples(data: bytes, expected: str) -> None:
    assert decode_utf8(data) == expected
    assert TOK.decode(list(data)) == expected


@SETTINGS
@given(st.binary(max_size=64))
def test_decode_random_bytes_never_raises(data: bytes) -> None:
    text = TOK.decode(list(data))
    assert isinstance(text, str)
    # Lossless where the bytes were valid: re-encoding gives them back exactly.
    if "\ufffd" not in text:
        assert TOK.encode(text) == list(data)


@SETTINGS
@given(any_text, st.lists(never_valid_start, min_size=1, max_size=5), any_text)
def test_invalid_bytes_keep_the_valid_parts(before: str, garbage: list[int], after: str) -> None:
    data = TOK.encode(before) + garbage + TOK.encode(after)
    assert TOK.decode(data) == before + "\ufffd" * len(garbage) + after


# --- special and out-of-range ids ---------------------------------------------------------------


def test_special_ids() -> None:
    ids = [BOS_ID, *TOK.encode("ab"), EOS_ID, PAD_ID, PAD_ID]
    assert TOK.decode(ids) == "ab"
    assert TOK.decode(ids, skip_special_tokens=False) == "<bos>ab<eos><pad><pad>"
    # A skipped special id inside a multi-byte character does not break it.
    e_acute = TOK.encode("é")
    assert TOK.decode([e_acute[0], PAD_ID, e_acute[1]]) == "é"


@pytest.mark.parametrize("bad", [VOCAB_SIZE, -1, 1000])
def test_out_of_range_id_is_a_clear_error(bad: int) -> None:
    with pytest.raises(ILTError, match=f"id {bad} at position 1"):
        TOK.decode([65, bad])


def test_decode_rejects_2d() -> None:
    with pytest.raises(ILTError, match="1-D"):
        TOK.decode(torch.zeros(2, 2, dtype=torch.long))


# --- batches ------------------------------------------------------------------------------------


def test_encode_batch_example() -> None:
    ids, mask = TOK.encode_batch(["ab", "", "é"], add_eos=True)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.tolist() == [[97, 98, EOS_ID], [EOS_ID, PAD_ID, PAD_ID], [0xC3, 0xA9, EOS_ID]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 1]]
    ids, mask = TOK.encode_batch(["ab", ""])
    assert ids.tolist() == [[97, 98], [PAD_ID, PAD_ID]]
    assert mask.tolist() == [[1, 1], [0, 0]]


def test_encode_batch_fixed_width() -> None:
    ids, mask = TOK.encode_batch(["a"], add_eos=True, max_length=4)
    assert ids.tolist() == [[97, EOS_ID, PAD_ID, PAD_ID]]
    assert mask.tolist() == [[1, 1, 0, 0]]


def test_encode_batch_too_long_is_a_clear_error() -> None:
    with pytest.raises(ILTError, match="unit 1 takes 4 ids"):
        TOK.encode_batch(["a", "abc"], add_eos=True, max_length=3)


def test_encode_batch_truncate() -> None:
    ids, mask = TOK.encode_batch(["abcd", "ab", "abc"], add_eos=True, max_length=3, truncate=True)
    assert ids.tolist() == [[97, 98, 99], [97, 98, EOS_ID], [97, 98, 99]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 1]]


def test_encode_batch_empty_and_bad_args() -> None:
    ids, mask = TOK.encode_batch([])
    assert ids.shape == (0, 0) and mask.shape == (0, 0)
    ids, mask = TOK.encode_batch([], max_length=5)
    assert ids.shape == (0, 5)
    with pytest.raises(ILTError, match="single str"):
        TOK.encode_batch("abc")  # type: ignore[arg-type]
    with pytest.raises(ILTError, match="max_length"):
        TOK.encode_batch(["a"], max_length=-1)


@SETTINGS
@given(st.lists(any_text, max_size=8), st.booleans(), st.integers(0, 5))
def test_encode_batch_matches_encode(units: list[str], add_eos: bool, slack: int) -> None:
    longest = max((len(TOK.encode(u, add_eos)) for u in units), default=0)
    for max_length in (None, longest + slack):
        ids, mask = TOK.encode_batch(units, add_eos=add_eos, max_length=max_length)
        width = longest if max_length is None else max_length
        assert ids.shape == mask.shape == (len(units), width)
        for row, mrow, unit in zip(ids.tolist(), mask.tolist(), units, strict=True):
            expected = TOK.encode(unit, add_eos=add_eos)
            assert row == expected + [PAD_ID] * (width - len(expected))
            assert mrow == [1] * len(expected) + [0] * (width - len(expected))
        assert TOK.decode_batch(ids) == units
        assert TOK.decode_batch(ids.numpy()) == units


def test_decode_batch_rejects_1d() -> None:
    with pytest.raises(ILTError, match="2-D"):
        TOK.decode_batch(np.zeros(3, dtype=np.int64))
