"""What every decoding strategy shares: hypotheses, unit embeddings, the latent over its cache, a unit's bytes.

One step of any strategy (N live rows, D latent width, Dd decoder width)::

    new units ──UnitEmbeddings──▶ (N, 1, D) ──LatentState.step (one step over the KV cache)──▶ latents (N, D)
    latents ──decoder_mapping──▶ prefix (N, 1, Dd) ──decode_unit_ids──▶ ids, cut after eos ──unit_text──▶ units

The model is duck-typed (an ``ILTModel`` or anything with its attributes): this package never imports
``ilt_core.modeling``, so the model can import it. Backbone specifics stay behind the role protocols
(:mod:`ilt_core.plugins.protocols`): the latent's cache is an opaque value that only its own optional methods
``select_cache`` / ``crop_cache_left`` touch, and the decoder's optional ``greedy`` is its fast greedy path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ilt_core.generation.options import GenerationOptions
from ilt_core.text.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, decode_utf8
from ilt_core.text.collator import IGNORE_INDEX
from ilt_core.text.segmentation import WHITESPACE

__all__ = [
    "START",
    "Decoding",
    "Hypothesis",
    "LatentState",
    "UnitEmbeddings",
    "append_unit",
    "decode_unit_ids",
    "finished_unit",
    "forced_ids",
    "score_unit_ids",
    "unit_text",
]

START = None  # the memo key of the text-start marker (bytes [bos], the image of "")
_GREEDY_OPTIONS = {"suppress_tokens", "min_new_tokens"}  # byte options the decoder's greedy() honours itself


@dataclass
class Decoding:
    """What the strategies read besides the options: the model's unit byte limit and label kind.

    ``want_scores``: score every unit (for ``return_scores``, and for beam search's greedy baseline).
    ``byte_steps``: how many bytes the last decode needed (its longest row, ``eos`` included): the fast greedy loop
    reads back whether its rows have ended once, after that many bytes (``protocols.FastGreedy``'s ``check_at``),
    as the next unit is most often about as long. It changes how much work is done, never the ids.
    """

    options: GenerationOptions
    byte_limit: int
    labels: str
    want_scores: bool
    byte_steps: int | None = None

    @classmethod
    def for_model(cls, model: Any, options: GenerationOptions, want_scores: bool | None = None) -> Decoding:
        """Resolve the byte limit from ``options.max_unit_bytes`` or the model's spec."""
        spec = model.spec
        default = spec.label_bytes if spec.labels == "bytes" else spec.max_unit_bytes
        return cls(
            options=options,
            byte_limit=int(options.max_unit_bytes or default),
            labels=spec.labels,
            want_scores=options.return_scores if want_scores is None else want_scores,
        )


@dataclass
class Hypothesis:
    """A row of the loop: one prompt's context and what was generated after it.

    ``context``: memo keys, ``START`` then the prompt's finished units. ``forced``: the prompt's unfinished last
    unit (see :func:`finished_unit`), or None: the first decode is forced through its bytes and writes the rest of
    it, which then joins ``context`` and starts ``text``. ``units``: the units generated after the prompt's.
    ``score``: summed byte log-probabilities (nats) of what the decoder wrote (not of forced bytes). ``decodes``:
    decoder calls scored (units, a completion, plus a final end-of-text).
    """

    prompt: int
    context: list[Any]
    units: list[str] = field(default_factory=list)
    score: float = 0.0
    text: str = ""
    done: bool = False
    finish_reason: str = "max_new_units"
    decodes: int = 0
    forced: str | None = None

    @property
    def last_unit(self) -> Any:
        """The unit the latent reads next: the last generated one, or the completed prompt unit."""
        return self.units[-1] if self.units else self.context[-1]

    def copy(self) -> Hypothesis:
        """An independent copy (its lists are copied)."""
        return Hypothesis(
            self.prompt,
            list(self.context),
            list(self.units),
            self.score,
            self.text,
            self.done,
            self.finish_reason,
            self.decodes,
            self.forced,
        )


def finished_unit(unit: str) -> bool:
    """Whether a prompt's last unit is taken as finished: it ends in whitespace (a word with its space).

    One without is cut inside a word (``"The capital is"``): generation is forced through its bytes and the
    decoder writes the rest of it (``" "`` then ``eos``), as the byte-level chain rule scores it
    (:mod:`ilt_core.likelihood`).
    """
    return bool(unit) and unit[-1] in WHITESPACE


def forced_ids(model: Any, hyps: Sequence[Hypothesis]) -> list[list[int]] | None:
    """The byte ids each row's decoder is forced through (its prompt's unfinished unit), or None when no row has
    one."""
    if all(h.forced is None for h in hyps):
        return None
    return [model.processor.encode_unit(h.forced) if h.forced is not None else [] for h in hyps]


# ---- units -> embeddings, and the latent over them --------------------------------------------------------------
class UnitEmbeddings:
    """Embeddings ``(D,)`` of units, each unit encoded once per generation call (the start marker is ``START``).

    ``tiles``: the new units' word images go to the image encoder packed in rows of a fixed size
    (:class:`~ilt_core.text.image_packing.ImagePacking`, as fixed-shape training batches carry them), ``ceil(n / 2)``
    rows for a call with ``n`` keys, and their bytes padded to ``n`` rows of the unit byte limit (slots of keys
    already encoded hold padding): one call of one shape for a given number of keys, where the image encoder takes
    packed rows (else, and without ``tiles``, one call per image width).
    """

    def __init__(self, model: Any, tiles: bool = False) -> None:
        self.model = model
        self.memo: dict[Any, torch.Tensor] = {}
        packing = getattr(model, "image_packing", None) if tiles else None
        self.packing = dataclasses.replace(packing, rows=0, changes=0) if packing is not None else None

    def __call__(self, keys: Sequence[Any]) -> torch.Tensor:
        """Embeddings ``(N, D)`` for ``keys`` (units or ``START``); new distinct ones are encoded in one batch."""
        new = list(dict.fromkeys(k for k in keys if k not in self.memo))
        if new:
            processor = self.model.processor
            ids = [[BOS_ID] if k is START else processor.encode_unit(k) for k in new]
            width = max(1, max(len(x) for x in ids))
            count = len(ids)
            if self.packing is not None:  # one shape per number of keys: slots for every key, bytes to the limit
                count, width = len(keys), max(width, int(self.model.spec.max_unit_bytes))
            unit_ids = torch.full((count, width), PAD_ID, dtype=torch.long)
            unit_mask = torch.zeros(count, width, dtype=torch.long)
            unit_mask[:, 0] = 1  # a slot with no unit reads one padding byte
            for i, x in enumerate(ids):
                unit_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
                unit_mask[i, : max(1, len(x))] = 1
            groups = packed = None
            if self.model.renderer is not None:
                names = ["" if k is START else k for k in new]
                if self.packing is not None:
                    images = processor.render_units(names, grouped=False)
                    tiles = self.packing.pack(images, count=count, rows=-(-count // 2))
                    packed = (tiles.patches, tiles.positions, tiles.segments, tiles.cls_index)
                else:
                    groups = processor.render_units(names)
            vectors = self.model.encode_units(unit_ids, unit_mask, groups, packed)  # (count, D)
            for k, v in zip(new, vectors[: len(new)], strict=True):
                self.memo[k] = v
        return torch.stack([self.memo[k] for k in keys])


def _left_pad(contexts: Sequence[Sequence[Any]], embed: UnitEmbeddings) -> tuple[torch.Tensor, ...]:
    """Left-padded latent inputs: embeds ``(N, L, D)``, mask ``(N, L)`` and position_ids ``(N, L)``."""
    flat = embed([k for c in contexts for k in c])
    N, L = len(contexts), max(len(c) for c in contexts)
    embeds = flat.new_zeros(N, L, flat.shape[-1])
    mask = torch.zeros(N, L, dtype=torch.long, device=flat.device)
    start = 0
    for i, c in enumerate(contexts):
        embeds[i, L - len(c) :] = flat[start : start + len(c)]
        mask[i, L - len(c) :] = 1
        start += len(c)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return embeds, mask, positions


class LatentState:
    """The latent transformer over the live rows, with or without its KV cache.

    ``start(contexts)`` and ``step(new_units)`` return the last latent of each row ``(N, D)``;
    ``select(rows)`` keeps (and may repeat or reorder) rows, as beam search and finished rows need.
    Without the cache every step recomputes each row from its whole context.

    The cache is the latent's own value; the loop touches it only through the latent's optional methods
    ``select_cache`` (without it, the kept rows are recomputed once into a fresh cache) and ``crop_cache_left``
    (without it, columns that became padding in every row stay, masked).

    ``static_steps``: with the latent's optional ``static_cache(rows, length)``, the cache is allocated once for
    the prompts and that many steps, and every step has the same shapes (a mask ``(N, M)`` over all its columns,
    one column written per step): what a captured graph needs. Rows then stay in the batch (:meth:`select` of
    every row in order only); a finished row's position stops at the latent's last.
    """

    def __init__(self, model: Any, embed: UnitEmbeddings, use_cache: bool, static_steps: int | None = None) -> None:
        self.latent = model.latent_transformer
        self.embed = embed
        self.use_cache = use_cache
        self.max_position = model.max_units - 1
        # a static cache: room for this many steps after the prefill (None: a cache that grows)
        self.static_steps = static_steps if use_cache and hasattr(self.latent, "static_cache") else None
        self.contexts: list[list[Any]] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (N, L_past) 1 for real units, 0 for left padding (static: (N, M))
        self.next_position: torch.Tensor | None = None  # (N,)
        self.filled = 0  # static: the cache columns written

    def _prefill(self) -> torch.Tensor:
        """Run every row's whole context; with the cache, keep it for the next steps."""
        embeds, mask, positions = _left_pad(self.contexts, self.embed)
        cache = None
        if self.static_steps is not None:
            # every row's columns laid out once: the prompt's, then one per step, all rows at the same column
            N, L = mask.shape
            cache = self.latent.static_cache(N, L + self.static_steps)
            mask = torch.cat([mask, mask.new_zeros(N, self.static_steps)], dim=1)  # (N, M)
            self.filled = L
        out = self.latent(
            embeds, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=self.use_cache
        )
        if self.use_cache:
            self.cache, self.mask, self.next_position = out.past_key_values, mask, positions[:, -1] + 1
        return out.hidden_states[:, -1]

    def start(self, contexts: list[list[Any]]) -> torch.Tensor:
        """Latents ``(N, D)`` after each context (lists of units, ``START`` first)."""
        self.contexts = [list(c) for c in contexts]
        return self._prefill()

    def select(self, rows: list[int]) -> None:
        """Keep ``rows`` (indices into the live rows, in this order; they may repeat)."""
        if rows == list(range(len(self.contexts))):
            return
        self.contexts = [list(self.contexts[r]) for r in rows]
        if not self.use_cache or self.cache is None:
            return
        select = getattr(self.latent, "select_cache", None)
        if select is None:
            self.cache = self.mask = self.next_position = None  # the next step recomputes the kept rows
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.cache = select(self.cache, index)
        self.mask, self.next_position = self.mask[index], self.next_position[index]
        # drop columns that are padding in every remaining row (a long prompt has finished)
        keep = int(self.mask.any(0).long().argmax()) if bool(self.mask.any()) else 0
        crop = getattr(self.latent, "crop_cache_left", None)
        if keep > 0 and crop is not None and crop(self.cache, keep):
            self.mask = self.mask[:, keep:]

    def step(self, units: list[str]) -> torch.Tensor:
        """Append one unit to each row; latents ``(N, D)`` after it."""
        for c, u in zip(self.contexts, units, strict=True):
            c.append(u)
        if not self.use_cache or self.cache is None:
            return self._prefill()
        embeds = self.embed(units)[:, None]  # (N, 1, D)
        positions = self.next_position[:, None]
        if self.static_steps is not None:
            self.mask[:, self.filled] = 1  # the same shapes at every step
            self.filled += 1
            positions = positions.clamp(max=self.max_position)  # a finished row's unit is read, never used
        else:
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(units), 1)], dim=1)
        out = self.latent(
            embeds, attention_mask=self.mask, position_ids=positions, past_key_values=self.cache, use_cache=True
        )
        self.cache, self.next_position = out.past_key_values, self.next_position + 1
        return out.hidden_states[:, -1]


# ---- latents -> units -------------------------------------------------------------------------------------------
def is_plain_greedy(options: GenerationOptions) -> bool:
    """Whether the decoder writes each unit greedily with no byte-level option but those its fast greedy loop
    honours: its ids for a row then do not depend on the other rows of the batch."""
    return not options.do_sample and options.num_beams == 1 and set(options.byte_options) <= _GREEDY_OPTIONS


def _decode(
    model: Any, embeds: torch.Tensor, limit: int, kwargs: dict[str, Any], check_at: int | None = None
) -> torch.Tensor:
    """New ids ``(N * R, T_new)`` from decoder inputs ``(N, T0, Dd)`` (prefix, then any forced bytes)."""
    decoder = model.bytes_decoder
    greedy = getattr(decoder, "greedy", None)
    if greedy is not None and set(kwargs) <= _GREEDY_OPTIONS:
        # plain greedy: the decoder's own fast loop (protocols.BytesDecoder.greedy)
        return greedy(
            embeds,
            limit,
            EOS_ID,
            PAD_ID,
            kwargs.get("suppress_tokens"),
            kwargs.get("min_new_tokens") or 0,
            check_at=check_at,
        )
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    out = decoder.generate(embeds, mask, max_new_tokens=limit, **kwargs)
    return getattr(out, "sequences", out)  # (N * R, T_new); a dict output when a decoder's defaults ask for one


def decode_unit_ids(
    model: Any,
    latents: torch.Tensor,
    decoding: Decoding,
    given: Sequence[Sequence[int]] | None = None,
    **extra: Any,
) -> list[list[int]]:
    """Run the bytes decoder from latents ``(N, D)``; each row's new ids, cut after ``eos`` or at the byte limit.

    ``given``: per row, byte ids the decoder is forced through first (a prompt's unfinished unit; they count
    towards the byte limit and are not returned). Rows are decoded in groups of equal ``len(given[i])``, so no row
    is padded. ``extra``: byte-level options of this call on top of ``decoding.options.byte_options``. With
    ``num_return_sequences=R`` the result has N * R rows, R per latent, in order.
    """
    prefix = model.decoder_mapping(latents)[:, None, :]  # (N, 1, Dd)
    kwargs = {**decoding.options.byte_options, **extra}
    if not given or not any(given):
        groups = {0: list(range(prefix.shape[0]))}
    else:
        groups = {}
        for i, g in enumerate(given):
            groups.setdefault(len(g), []).append(i)
    R = int(extra.get("num_return_sequences") or 1)
    rows: list[list[int]] = [[] for _ in range(prefix.shape[0] * R)]
    for length, members in groups.items():
        limit = decoding.byte_limit - length
        if limit <= 0:  # the forced bytes fill the unit: nothing left to write
            continue
        embeds = prefix[members]
        if length:
            ids = torch.tensor([list(given[i]) for i in members], dtype=torch.long, device=prefix.device)
            embeds = torch.cat([embeds, model.bytes_decoder.embed(ids).to(embeds.dtype)], dim=1)
        for j, row in enumerate(_decode(model, embeds, limit, kwargs, decoding.byte_steps).tolist()):
            cut = row.index(EOS_ID) + 1 if EOS_ID in row else len(row)
            rows[members[j // R] * R + j % R] = row[:cut]
    if rows:
        decoding.byte_steps = max(1, max(len(r) for r in rows))
    return rows


def unit_text(model: Any, ids: list[int], labels: str) -> str:
    """The unit written by decoder ids (``""``: end of text). Bytes that are not valid UTF-8 become U+FFFD."""
    data = bytes(i for i in ids if i < 256)  # pad / bos inside a unit carry no text
    text = decode_utf8(data)
    if labels == "bytes" and text:
        # a model trained on byte windows writes the next few bytes of text: its first unit is the next unit
        text = model.processor.segment(text)[0]
    return text


def score_unit_ids(
    model: Any, latents: torch.Tensor, rows: list[list[int]], given: Sequence[int] | None = None
) -> list[float]:
    """Sum of the byte log-probabilities (nats) of each row's ids given its latent ``(N, D)``; teacher forced.

    ``given``: per row, how many leading ids were forced (read, not scored).
    """
    K = max(1, max(len(r) for r in rows))
    labels = torch.full((len(rows), K + 1), IGNORE_INDEX, dtype=torch.long, device=latents.device)
    for i, r in enumerate(rows):
        if r:
            labels[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    # decode_logits reads [prefix, label[:-1]]: the extra ignored column makes it read every real id
    logits = model.decode_logits(latents, labels)  # (N, K + 1, V)
    logp = F.log_softmax(logits.float(), dim=-1)
    skip = labels == IGNORE_INDEX
    if given is not None:
        first = torch.tensor(list(given), device=labels.device)[:, None]
        skip = skip | (torch.arange(K + 1, device=labels.device) < first)
    picked = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0].masked_fill(skip, 0.0)
    return picked.double().sum(-1).tolist()


def _stop_at(text: str, before: int, stop: Sequence[str]) -> int | None:
    """Where the first stop string starts in ``text`` (searching only what may include new text), or None."""
    hits = []
    for s in stop:
        i = text.find(s, max(0, before - len(s) + 1))
        if i >= 0:
            hits.append(i)
    return min(hits) if hits else None


def append_unit(model: Any, hyp: Hypothesis, ids: list[int], score: float | None, decoding: Decoding) -> str | None:
    """Add a decoded unit to ``hyp``, or, while its prompt's last unit is unfinished, complete that unit with
    ``ids`` (the bytes written after the forced ones); returns the new text, marks ``hyp`` done when it stops."""
    hyp.decodes += 1
    if score is not None:
        hyp.score += score
    if hyp.forced is not None:
        forced, hyp.forced = hyp.forced, None
        unit = unit_text(model, model.processor.encode_unit(forced) + ids, decoding.labels)
        hyp.context.append(unit)  # the completed unit: the latent reads it next
        return _add_text(hyp, unit[len(forced) :], decoding)
    unit = unit_text(model, ids, decoding.labels)
    if not unit:
        hyp.done, hyp.finish_reason = True, "end_of_text"
        return None
    hyp.units.append(unit)
    new = _add_text(hyp, unit, decoding)
    if hyp.done:
        return new
    if len(hyp.units) >= decoding.options.max_new_units:
        hyp.done, hyp.finish_reason = True, "max_new_units"
    elif len(hyp.context) + len(hyp.units) > model.max_units:
        hyp.done, hyp.finish_reason = True, "context_full"  # the latent cannot read this unit back
    return new


def _add_text(hyp: Hypothesis, new: str, decoding: Decoding) -> str:
    """Append ``new`` to ``hyp.text``, cut before the first stop string (then ``hyp`` is done); the text added."""
    before = len(hyp.text)
    hyp.text += new
    stop = decoding.options.stop
    cut = _stop_at(hyp.text, before, stop) if stop else None
    if cut is not None:
        hyp.text = hyp.text[:cut]
        hyp.done, hyp.finish_reason = True, "stop"
    return hyp.text[before:]
