"""The word-level generation options as one validated value, :class:`GenerationOptions`.

Two levels of options steer a generation call:

- *word-level* (this module): how many units, which strategy over whole units (greedy, sampling, beams), stop
  strings, the seed, the unit byte limit. They are the fields of :class:`GenerationOptions`.
- *byte-level*: how the bytes decoder writes each unit, in ``transformers.GenerationConfig`` terms (sampling,
  byte-level beams, repetition penalty, ...). They stay ``GenerationConfig`` options: the decoder's own
  ``generation_config`` holds its defaults, and :attr:`GenerationOptions.byte_options` holds what a call adds,
  passed to the decoder's ``generate`` unchanged. The names the word level takes (``do_sample``,
  ``temperature``, ``top_k``, ``top_p``, ``num_beams``, ``length_penalty``) reach the byte level only with a
  ``byte_`` prefix (``byte_do_sample=True``); any other byte option may carry the prefix too.

``GenerationOptions.from_kwargs(**kwargs)`` sorts keyword arguments into the two levels, as
:func:`ilt_core.generation.generate` does with its ``**options``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ilt_core.errors import ILTError

__all__ = ["GenerationOptions", "WORD_LEVEL_NAMES"]

WORD_LEVEL_NAMES = ("do_sample", "temperature", "top_k", "top_p", "num_beams", "length_penalty")
"""Names taken by the word-level strategies; their byte-level twins need the ``byte_`` prefix."""

# byte-level options that choose how bytes are picked: they contradict the word-level strategies' own choice
_BYTE_PICKING = ("do_sample", "num_beams", "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff")
# byte-level names the loop sets itself
_RESERVED = {
    "inputs_embeds": "the loop builds the prefix embeddings",
    "attention_mask": "the loop builds the decoder mask",
    "input_ids": "the decoder reads a latent prefix, not ids",
    "max_new_tokens": "the unit byte limit is max_unit_bytes",
    "max_length": "the unit byte limit is max_unit_bytes",
    "num_return_sequences": "the word-level strategies set it",
}
# byte-level output switches the loop ignores: it reads plain ids, and scores come from return_scores
_IGNORED = ("return_dict_in_generate", "output_scores", "output_logits")


#: The latent cache kinds :attr:`GenerationOptions.cache_implementation` takes.
CACHE_IMPLEMENTATIONS = ("dynamic", "static")


def _integer(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ILTError(f"{name}={value!r}: expected an int >= {low}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _byte_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The decoder's generation options: ``byte_`` prefixes stripped, loop-owned names refused."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        name = key[5:] if key.startswith("byte_") else key
        if name in _RESERVED:
            raise ILTError(f"{key}={value!r}: not a byte-level option here ({_RESERVED[name]})")
        if name in _IGNORED:
            continue
        out[name] = value
    return out


@dataclass(frozen=True)
class GenerationOptions:
    """Every option of one generation call, checked when built (a bad value raises :class:`ILTError`).

    Attributes:
        max_new_units: how many units at most (``0`` gives ``""``).
        use_cache: keep the latent transformer's KV cache (one latent step per unit); ``False`` recomputes every
            row from its whole context at each step (the same text, for checks and benchmarks).
        cache_implementation: ``"dynamic"``, a cache that grows by a column per unit while finished rows leave
            the batch, or ``"static"`` (as transformers names it), a cache allocated once for the prompts and
            every step, rows kept to the end, so that each unit step (greedy and sampling) has the same shapes:
            what a captured graph needs. The same text either way; a latent without ``static_cache`` grows.
        num_beams, length_penalty: word-level beam search over units (``num_beams > 1``); finished hypotheses
            rank by ``score / units ** length_penalty``.
        do_sample, temperature, top_k, top_p, unit_candidates: word-level sampling over units;
            ``unit_candidates`` units are drawn per step when temperature / top-k / top-p are set.
        seed: seeds every random choice of the call (the caller's random state is restored afterwards).
        stop: strings that end a continuation; the text is cut before the first one found.
        return_scores: :func:`~ilt_core.generation.generate` returns ``GenerationResult`` values, not strings.
        max_unit_bytes: the unit byte limit (default: the model's ``spec.max_unit_bytes``, or ``label_bytes``
            for a model trained with ``labels: bytes``).
        byte_options: ``transformers.GenerationConfig`` options for the bytes decoder (no ``byte_`` prefix).
    """

    max_new_units: int = 32
    use_cache: bool = True
    cache_implementation: str = "dynamic"
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    length_penalty: float = 1.0
    return_scores: bool = False
    unit_candidates: int = 8
    max_unit_bytes: int | None = None
    byte_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        stop = self.stop
        if stop is None:
            stop = ()
        if isinstance(stop, str) or not isinstance(stop, Sequence) or not all(isinstance(s, str) and s for s in stop):
            raise ILTError(f"stop={self.stop!r}: expected a list of non-empty strings")
        object.__setattr__(self, "stop", tuple(stop))  # frozen: normalise a list to a tuple once
        object.__setattr__(self, "byte_options", MappingProxyType(_byte_options(self.byte_options)))
        self._check()

    def _check(self) -> None:
        _integer("max_new_units", self.max_new_units, 0)
        _integer("num_beams", self.num_beams, 1)
        _integer("unit_candidates", self.unit_candidates, 1)
        if self.cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise ILTError(
                f"cache_implementation={self.cache_implementation!r}: expected one of {', '.join(CACHE_IMPLEMENTATIONS)}"
            )
        if self.max_unit_bytes is not None:
            _integer("max_unit_bytes", self.max_unit_bytes, 1)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ILTError(f"seed={self.seed!r}: expected an int or None")
        if not _number(self.temperature) or self.temperature <= 0:
            raise ILTError(f"temperature={self.temperature!r}: expected a number > 0")
        if self.top_k is not None:
            _integer("top_k", self.top_k, 1)
        if self.top_p is not None and (not _number(self.top_p) or not 0 < self.top_p <= 1):
            raise ILTError(f"top_p={self.top_p!r}: expected a number in (0, 1]")
        if not _number(self.length_penalty):
            raise ILTError(f"length_penalty={self.length_penalty!r}: expected a number")
        if not self.do_sample:
            for name, default in (("temperature", 1.0), ("top_k", None), ("top_p", None)):
                value = getattr(self, name)
                if value != default:
                    raise ILTError(
                        f"{name}={value!r} without do_sample=True: word-level {name} only applies when sampling"
                    )
        if self.num_beams > 1 and self.do_sample:
            raise ILTError(
                f"num_beams={self.num_beams} with do_sample=True: word-level beam search does not sample; "
                "drop one of them"
            )

        def neutral(value: Any) -> bool:  # the value that leaves greedy decoding as it is
            return value is None or value is False or (not isinstance(value, bool) and value == 1)

        byte = self.byte_options
        picking = [k for k in byte if k in _BYTE_PICKING and not neutral(byte[k])]
        if picking and (self.do_sample or self.num_beams > 1):
            word = "do_sample=True" if self.do_sample else f"num_beams={self.num_beams}"
            raise ILTError(
                f"byte_{picking[0]}={byte[picking[0]]!r} with word-level {word}: the word-level strategy chooses "
                "how the decoder writes its candidates; drop one of them"
            )

    @classmethod
    def from_kwargs(cls, base: GenerationOptions | None = None, **kwargs: Any) -> GenerationOptions:
        """Options from keyword arguments: fields by name, anything else a byte-level option.

        With ``base``, the keywords override its fields and add to its byte options.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"byte_options"}
        fields = {k: v for k, v in kwargs.items() if k in names}
        byte = dict(kwargs.get("byte_options") or {})  # a mapping given whole, then single byte-level keywords
        byte.update({k: v for k, v in kwargs.items() if k not in names and k != "byte_options"})
        if base is None:
            return cls(**fields, byte_options=byte)
        return dataclasses.replace(base, **fields, byte_options={**base.byte_options, **_byte_options(byte)})

    @property
    def resampling(self) -> bool:
        """Word-level sampling that needs several candidates (anything but plain T = 1 sampling)."""
        return self.do_sample and (self.temperature != 1.0 or self.top_k is not None or self.top_p is not None)

    def replace(self, **changes: Any) -> GenerationOptions:
        """A copy with ``changes`` applied (and checked again)."""
        return dataclasses.replace(self, **changes)
