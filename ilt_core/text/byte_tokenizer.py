"""Bytes <-> ids: ids 0..255 are the UTF-8 bytes, then three special ids.

Behaviour at the edges (all tested):

- **Lone surrogates** are encoded with ``'surrogatepass'`` (``"\\ud800"`` -> ``ED A0 80``) and
  decoded back the same way, so *every* Python ``str`` round-trips:
  ``decode(encode(s)) == s``.
- **Invalid UTF-8** (a decoder can sample any byte sequence) never raises: each byte that cannot
  start or continue a valid sequence becomes one U+FFFD, and decoding resumes at the next byte, so
  every valid character around it is kept and the number of bad bytes stays visible.
- **Special ids** (pad, bos, eos) are dropped by ``decode(..., skip_special_tokens=True)``; with
  ``False`` they are written as ``"<pad>"``, ``"<bos>"``, ``"<eos>"``.
- **Ids outside 0..258** are a bug upstream (the model's vocabulary has 259 entries), so
  ``decode`` raises :class:`~ilt_core.errors.ILTError` naming the position and value instead of
  guessing.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ilt_core.errors import ILTError

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "VOCAB_SIZE", "ByteTokenizer", "decode_utf8"]

PAD_ID = 256
BOS_ID = 257
EOS_ID = 258
VOCAB_SIZE = 259

_SPECIAL_TEXT = {PAD_ID: "<pad>", BOS_ID: "<bos>", EOS_ID: "<eos>"}
_ERRORS = "ilt_core.surrogatepass_or_replace_per_byte"


def _surrogatepass_or_replace(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: a 3-byte encoded surrogate decodes to it, any other bad byte to U+FFFD.

    Returning ``start + 1`` makes the decoder resume right after the bad byte, so a truncated
    sequence costs one U+FFFD per byte and never swallows the valid character after it.
    """
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    data, start = exc.object, exc.start
    chunk = data[start : start + 3]
    if len(chunk) == 3 and chunk[0] == 0xED and 0xA0 <= chunk[1] <= 0xBF and 0x80 <= chunk[2] <= 0xBF:
        return bytes(chunk).decode("utf-8", "surrogatepass"), start + 3
    return "\ufffd", start + 1


codecs.register_error(_ERRORS, _surrogatepass_or_replace)


def decode_utf8(data: bytes | bytearray) -> str:
    """Decode bytes that may not be valid UTF-8; never raises (see the module docstring)."""
    return bytes(data).decode("utf-8", _ERRORS)


class ByteTokenizer:
    """UTF-8 byte tokenizer with pad/bos/eos ids; stateless and cheap to construct."""

    pad_token_id: int = PAD_ID
    bos_token_id: int = BOS_ID
    eos_token_id: int = EOS_ID
    vocab_size: int = VOCAB_SIZE

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        """The UTF-8 bytes of ``text`` as ids (lone surrogates via 'surrogatepass'), then EOS if asked."""
        ids = list(text.encode("utf-8", "surrogatepass"))
        if add_eos:
            ids.append(EOS_ID)
        return ids

    def encode_batch(
        self,
        units: Sequence[str],
        add_eos: bool = False,
        max_length: int | None = None,
        truncate: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode units into a right-padded batch.

        Args:
            units: N strings.
            add_eos: append EOS after each unit's bytes.
            max_length: if given, T is exactly ``max_length`` (a fixed shape); a longer unit raises
                :class:`ILTError` unless ``truncate`` is true, which cuts it (its EOS included).
                If None, T is the longest encoded unit.

        Returns:
            ``ids``: LongTensor (N, T), padded with ``pad_token_id``;
            ``attention_mask``: LongTensor (N, T), 1 on real ids (EOS included), 0 on padding.
        """
        if isinstance(units, str):
            raise ILTError("encode_batch: units must be a sequence of str, got a single str; wrap it in a list")
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 0
        ):
            raise ILTError(f"encode_batch: max_length={max_length!r}; expected None or an int >= 0")
        encoded = [u.encode("utf-8", "surrogatepass") for u in units]
        extra = 1 if add_eos else 0
        longest = max((len(b) + extra for b in encoded), default=0)
        width = longest if max_length is None else max_length
        if longest > width and not truncate:
            i = max(range(len(encoded)), key=lambda k: len(encoded[k]))
            raise ILTError(
                f"encode_batch: unit {i} takes {longest} ids (add_eos={add_eos}) but max_length={max_length}; "
                "raise max_length, segment with a smaller max_unit_bytes, or pass truncate=True"
            )
        # Per row: bytes fill [0, n_bytes), EOS (if asked and there is room) sits at n_bytes.
        n_bytes = torch.tensor([min(len(b), width) for b in encoded], dtype=torch.long)  # (N,)
        has_eos = n_bytes < width if add_eos else torch.zeros(len(encoded), dtype=torch.bool)  # (N,)
        positions = torch.arange(width).unsqueeze(0)  # (1, T)
        byte_mask = positions < n_bytes.unsqueeze(1)  # (N, T)
        mask = positions < (n_bytes + has_eos.long()).unsqueeze(1)  # (N, T)
        ids = torch.full((len(encoded), width), PAD_ID, dtype=torch.long)
        flat = b"".join(b[:width] for b in encoded)
        if flat:
            # Boolean-mask assignment fills row-major, i.e. each row's bytes in order.
            ids[byte_mask] = torch.frombuffer(bytearray(flat), dtype=torch.uint8).long()
        rows = torch.nonzero(has_eos).squeeze(1)
        ids[rows, n_bytes[rows]] = EOS_ID
        return ids, mask.long()

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Ids (a list, or a 1-D tensor/array) back to text; never raises on invalid UTF-8.

        Consecutive bytes are decoded together, so a multi-byte character spread over several ids
        is restored (skipped special ids do not interrupt it; written ones do). Raises :class:`ILTError` for an id
        outside ``0..vocab_size-1``.
        """
        if isinstance(ids, torch.Tensor | np.ndarray):
            if ids.ndim != 1:
                raise ILTError(f"decode: ids must be 1-D, got shape {tuple(ids.shape)}; use decode_batch for (N, T)")
            ids = ids.tolist()
        out: list[str] = []
        run = bytearray()
        for pos, i in enumerate(ids):
            i = int(i)
            if 0 <= i < 256:
                run.append(i)
            elif i in _SPECIAL_TEXT:
                if not skip_special_tokens:
                    out.append(decode_utf8(run))
                    run.clear()
                    out.append(_SPECIAL_TEXT[i])
            else:
                raise ILTError(f"decode: id {i} at position {pos} is outside the vocabulary 0..{VOCAB_SIZE - 1}")
        out.append(decode_utf8(run))
        return "".join(out)

    def decode_batch(self, ids: torch.Tensor | Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        """Decode each row of ``ids`` (N, T); padding is dropped when ``skip_special_tokens``."""
        if isinstance(ids, torch.Tensor | np.ndarray):
            if ids.ndim != 2:
                raise ILTError(f"decode_batch: ids must be 2-D (N, T), got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in ids]
