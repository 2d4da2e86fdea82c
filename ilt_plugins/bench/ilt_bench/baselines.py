"""Baselines that are not ILT models: a plain causal transformer over UTF-8 bytes or over BPE subwords.

These are the "byte-level" and "subword" rows of SpaceByte's Table 1 at our scale: the same GPT-NeoX
body as the tiny ILT's latent transformer (6 layers x 512 by default), built from a config with random
weights (``transformers.GPTNeoXForCausalLM``), reading tokens instead of word embeddings.

- ``bytes``: ids 0..255 are the UTF-8 bytes, plus pad / bos / eos of :mod:`ilt_core.text.byte_tokenizer`.
- ``bpe``: a byte-level BPE (``tokenizers`` library) trained offline on the training split, with one
  special token ``<|endoftext|>`` used as text start, text end and padding. Byte-level BPE encodes
  every string exactly (``decode(encode(t)) == t``), so its NLL is the NLL of the text.

Bits-per-byte is defined exactly as :func:`ilt_core.evaluation.bits_per_byte` defines it for ILT:
each text is scored as ``[start] tokens(text) [end]``; the total NLL in bits of every token after the
start marker (the text's tokens and the end-of-text token) is divided by the text's UTF-8 bytes. A
text longer than the context is scored in consecutive blocks, each with its own start marker, so every
token is predicted exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ilt_core.errors import ILTError
from ilt_core.evaluation import BitsPerByte
from ilt_core.modeling.products import set_cpu_products
from ilt_core.text.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, ByteTokenizer, decode_utf8
from ilt_core.text.segmentation import segment, utf8_len

__all__ = [
    "BPECodec",
    "BaselineLM",
    "BaselineSpec",
    "ByteCodec",
    "TokenRow",
    "TokenStream",
    "build_baseline",
    "parse_baseline_spec",
    "train_bpe",
]

#: The tiny preset's latent transformer (pythia-70m's shape): what both baselines are sized to match.
DEFAULT_BODY: dict[str, Any] = {
    "hidden_size": 512,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "intermediate_size": 2048,
    "hidden_act": "gelu",
    "rotary_pct": 0.25,
    "use_parallel_residual": True,
    "layer_norm_eps": 1.0e-5,
    "initializer_range": 0.02,
}
END_OF_TEXT = "<|endoftext|>"


class BaselineSpec(BaseModel):
    """A baseline mix: ``baseline: bytes|bpe``, the transformer body's config, the BPE vocabulary size."""

    model_config = ConfigDict(extra="forbid")

    name: str = "baseline"
    description: str = ""
    baseline: Literal["bytes", "bpe"]
    model: dict[str, Any] = Field(default_factory=dict, description="GPTNeoXConfig fields (over DEFAULT_BODY)")
    vocab_size: int = Field(4096, ge=300, le=262144, description="BPE vocabulary size (bpe only)")
    max_unit_bytes: int = Field(32, ge=4, le=1024, description="unit definition used to count words")

    def body(self) -> dict[str, Any]:
        return {**DEFAULT_BODY, **self.model}


def parse_baseline_spec(data: dict[str, Any], source: str = "<mix>") -> BaselineSpec:
    """Validate a baseline declaration; errors name ``source`` and the field."""
    try:
        return BaselineSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ILTError(f"{source}: {where}: {err['msg']} (got {err.get('input')!r})") from None


# ---- codecs: text <-> token ids ----------------------------------------------------------------


class ByteCodec:
    """UTF-8 bytes as tokens (vocabulary 259: bytes, pad, bos, eos)."""

    kind = "bytes"
    vocab_size = VOCAB_SIZE
    bos_id = BOS_ID
    eos_id = EOS_ID
    pad_id = PAD_ID

    def __init__(self) -> None:
        self._tok = ByteTokenizer()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return decode_utf8(bytes(i for i in ids if i < 256))

    def token_bytes(self, ids: Sequence[int]) -> list[int]:
        """UTF-8 bytes each token stands for (0 for specials)."""
        return [1 if i < 256 else 0 for i in ids]


class BPECodec:
    """A byte-level BPE ``tokenizers.Tokenizer`` with ``<|endoftext|>`` as start, end and padding."""

    kind = "bpe"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        eot = tokenizer.token_to_id(END_OF_TEXT)
        if eot is None:
            raise ILTError(f"BPE tokenizer: it has no {END_OF_TEXT!r} token; train it with train_bpe()")
        self.bos_id = self.eos_id = self.pad_id = int(eot)
        self.vocab_size = int(tokenizer.get_vocab_size())
        # Byte-level BPE writes each byte as one character of its alphabet: a token's length is its bytes.
        self._bytes = [0] * self.vocab_size
        for token, idx in tokenizer.get_vocab().items():
            self._bytes[idx] = 0 if token == END_OF_TEXT else len(token)

    @classmethod
    def from_file(cls, path: str | Path) -> BPECodec:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) != self.eos_id], skip_special_tokens=True)

    def token_bytes(self, ids: Sequence[int]) -> list[int]:
        return [self._bytes[i] for i in ids]


def train_bpe(texts: Iterable[str], vocab_size: int, path: str | Path | None = None) -> BPECodec:
    """Train a byte-level BPE on ``texts`` (the training split) and save it to ``path`` when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # add_prefix_space=False keeps encoding exact: nothing is added to the text
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(path))
    return BPECodec(tokenizer)


# ---- the training stream ---------------------------------------------------------------------


@dataclass
class TokenRow:
    """A training batch of a baseline: ``input_ids (B, T)``; the model predicts positions 1..T-1.

    ``num_bytes`` / ``num_units``: UTF-8 bytes and words (units) of text among the predicted tokens.
    """

    input_ids: torch.Tensor
    num_bytes: int
    num_units: int
    texts_started: int = 0


@dataclass
class TokenStream:
    """Texts in order -> ``[bos] text [eos] [bos] text [eos] ...`` cut into rows of ``block_size`` tokens.

    (For BPE, whose start and end marker are the one ``<|endoftext|>``: ``[eot] text [eot] text [eot] ...``.)

    Rows overlap by one token (row k+1 starts with row k's last token), so every token of the stream
    is a target exactly once, nanoGPT style; attention crosses text boundaries, as in GPT pretraining.
    """

    texts: Iterator[str]
    codec: Any
    block_size: int
    max_unit_bytes: int = 32
    _ids: list[int] = field(default_factory=list)
    _bytes: list[int] = field(default_factory=list)
    _units: list[int] = field(default_factory=list)
    texts_read: int = 0

    def _append_text(self, text: str) -> None:
        ids = self.codec.encode(text)
        nbytes = self.codec.token_bytes(ids)
        # a token "holds" a unit when the unit's first byte falls inside it
        starts, pos = set(), 0
        for u in segment(text, self.max_unit_bytes):
            starts.add(pos)
            pos += utf8_len(u)
        units, offset = [], 0
        for n in nbytes:
            units.append(sum(1 for s in range(offset, offset + n) if s in starts))
            offset += n
        # every text starts with the start marker, as in scoring; when start and end are one token (BPE's
        # <|endoftext|>) the previous text's end marker is the next one's start
        start = [] if self._ids and self.codec.bos_id == self.codec.eos_id else [self.codec.bos_id]
        self._ids += start + ids + [self.codec.eos_id]
        self._bytes += [0] * len(start) + nbytes + [0]
        self._units += [0] * len(start) + units + [0]
        self.texts_read += 1

    def next_batch(self, batch_size: int) -> TokenRow:
        """The next ``batch_size`` rows; reads texts from the iterator as needed (it must not end)."""
        need = batch_size * (self.block_size - 1) + 1
        before = self.texts_read
        while len(self._ids) < need:
            self._append_text(next(self.texts))
        rows = []
        nbytes = nunits = 0
        for b in range(batch_size):
            start = b * (self.block_size - 1)
            rows.append(self._ids[start : start + self.block_size])
            nbytes += sum(self._bytes[start + 1 : start + self.block_size])
            nunits += sum(self._units[start + 1 : start + self.block_size])
        cut = batch_size * (self.block_size - 1)
        self._ids, self._bytes, self._units = self._ids[cut:], self._bytes[cut:], self._units[cut:]
        return TokenRow(torch.tensor(rows, dtype=torch.long), nbytes, nunits, self.texts_read - before)


# ---- the model --------------------------------------------------------------------------------


class BaselineLM:
    """A ``GPTNeoXForCausalLM`` with its codec; scored, trained and sampled like an ILT mix."""

    def __init__(self, spec: BaselineSpec, codec: Any, block_size: int) -> None:
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        self.spec = spec
        self.codec = codec
        self.block_size = int(block_size)
        body = spec.body()
        body.setdefault("max_position_embeddings", max(2048, self.block_size))
        try:
            config = GPTNeoXConfig(
                vocab_size=codec.vocab_size,
                bos_token_id=codec.bos_id,
                eos_token_id=codec.eos_id,
                pad_token_id=codec.pad_id,
                tie_word_embeddings=False,
                **body,
            )
        except (TypeError, ValueError) as exc:
            raise ILTError(f"{spec.name}: model: not a valid GPTNeoXConfig ({exc})") from exc
        self.model = GPTNeoXForCausalLM(config)
        set_cpu_products(self.model, "numpy")  # as ILT models do by default: wall-clock figures compare alike
        self.model.generation_config.eos_token_id = codec.eos_id
        self.model.generation_config.pad_token_id = codec.pad_id
        self.model.generation_config.bos_token_id = codec.bos_id

    @property
    def config(self) -> Any:
        return self.model.config

    def parameter_counts(self) -> dict[str, int]:
        """Non-embedding parameters (token table and output head excluded, as for ILT components)."""
        from ilt_core.modeling.parameters import count_parameters

        return {"transformer": count_parameters(self.model, vocab_size=self.codec.vocab_size)}

    def training_loss(self, batch: TokenRow, device: torch.device | str) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of a :class:`TokenRow` batch ``(B, T)``."""
        ids = batch.input_ids.to(device)
        return self.model(input_ids=ids, labels=ids).loss

    def text_blocks(self, text: str) -> list[list[int]]:
        """``[start] tokens [end]`` of ``text`` cut into scored blocks of at most ``block_size`` tokens.

        Each block starts with the start marker; only the tokens after it are scored.
        """
        ids = self.codec.encode(text) + [self.codec.eos_id]
        per = self.block_size - 1
        return [[self.codec.bos_id] + ids[i : i + per] for i in range(0, len(ids), per)]

    @torch.no_grad()
    def bits_per_byte(self, texts: Iterable[str], batch_size: int = 8) -> BitsPerByte:
        """Bits-per-byte of ``texts`` (the definition of the module docstring)."""
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        blocks: list[list[int]] = []
        n_bytes = n_units = n_texts = 0
        for text in texts:
            blocks.extend(self.text_blocks(text))
            n_bytes += utf8_len(text)
            n_units += len(segment(text, self.spec.max_unit_bytes))
            n_texts += 1
        nll = 0.0
        for i in range(0, len(blocks), batch_size):
            chunk = blocks[i : i + batch_size]
            width = max(len(b) for b in chunk)
            ids = torch.full((len(chunk), width), self.codec.pad_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, b in enumerate(chunk):
                ids[r, : len(b)] = torch.tensor(b)
                mask[r, : len(b)] = 1
            ids, mask = ids.to(device), mask.to(device)
            # right padding + causal attention: real positions never see padding
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            nll += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
                )
            )
        if was_training:
            model.train()
        bits = nll / math.log(2)
        return BitsPerByte(bits / max(n_bytes, 1), bits, n_bytes, n_units, n_texts)

    @torch.no_grad()
    def generate_ids(self, prompts: Sequence[str], max_new_tokens: int) -> torch.Tensor:
        """Greedy continuations ``(N, max_new_tokens)`` of ``prompts`` (KV cache on).

        Prompts are left-padded; end-of-text is suppressed (``min_new_tokens``) so every row writes the
        same number of tokens, as the ILT speed test suppresses the end of text.
        """
        device = next(self.model.parameters()).device
        encoded = [[self.codec.bos_id] + self.codec.encode(p) for p in prompts]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.codec.pad_id, dtype=torch.long)
        mask = torch.zeros(len(encoded), width, dtype=torch.long)
        for r, e in enumerate(encoded):
            ids[r, width - len(e) :] = torch.tensor(e)
            mask[r, width - len(e) :] = 1
        self.model.eval()
        out = self.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            # never pad / a start marker inside a continuation (they stand for no text)
            suppress_tokens=sorted({self.codec.pad_id, self.codec.bos_id} - {self.codec.eos_id}) or None,
            do_sample=False,
            use_cache=True,
        )
        return out[:, width:].cpu()

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """The continuations of :meth:`generate_ids` as text."""
        return [self.codec.decode(row.tolist()) for row in self.generate_ids(prompts, max_new_tokens)]


def build_baseline(
    spec: BaselineSpec,
    block_size: int,
    train_texts: Sequence[str] | None = None,
    tokenizer_path: str | Path | None = None,
) -> BaselineLM:
    """A baseline model; for ``bpe`` the tokenizer is loaded from ``tokenizer_path`` or trained on ``train_texts``."""
    if spec.baseline == "bytes":
        codec: Any = ByteCodec()
    else:
        path = Path(tokenizer_path) if tokenizer_path is not None else None
        if path is not None and path.is_file():
            codec = BPECodec.from_file(path)
        elif train_texts is not None:
            codec = train_bpe(train_texts, spec.vocab_size, path)
        else:
            raise ILTError(f"{spec.name}: baseline bpe needs training texts or a tokenizer file, got neither")
    return BaselineLM(spec, codec, block_size)
