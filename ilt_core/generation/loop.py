"""Word-level text generation: the latent transformer runs once per unit, the bytes decoder once per byte.

The decoding loop (B prompts, D latent width, Dd decoder width)::

    prompt ──segment──▶ [start, u1 .. un] ──encode_units──▶ (B, L, D), left-padded
      ──latent_transformer (KV cache)──▶ latent of the last unit (B, D) ──decoder_mapping──▶ prefix (B, 1, Dd)
      ──bytes_decoder.generate──▶ bytes until eos or the unit byte limit ──▶ the next unit
      ──render + encode──▶ (B, 1, D) ──one latent step over the cache──▶ ... until a stop

A row stops at ``max_new_units``, at an end-of-text unit (the decoder writes ``eos`` first: an empty unit), at a
stop string, or when its context is full. Rows finish independently; finished rows leave the latent cache and
the decoder batch.

Strategies. *Byte-level* options are anything ``transformers.GenerationConfig`` takes (greedy, sampling with
temperature / top-k / top-p, byte-level beam search, repetition penalty, ...): pass them as extra keywords and
they reach the bytes decoder unchanged. The word-level names below (``do_sample``, ``temperature``, ``top_k``,
``top_p``, ``num_beams``, ``length_penalty``) are taken by the *word-level* strategies, so give their byte-level
twins a ``byte_`` prefix (``byte_do_sample=True, byte_temperature=0.7``); any other option may carry the prefix
too (``byte_repetition_penalty=1.3`` equals ``repetition_penalty=1.3``).

*Word-level* strategies work on whole units (see :data:`WORD_LEVEL_COSTS` for what each costs):

- greedy (default): the decoder writes each unit greedily.
- ``do_sample=True`` at temperature 1 without top-k / top-p: the decoder samples every byte from the model's
  own distribution, which is exactly a sample of the next unit from p(unit | context) (ancestral sampling).
- ``do_sample=True`` with ``temperature != 1``, ``top_k`` or ``top_p``: sampling-importance-resampling over
  ``unit_candidates`` units drawn as above. Each distinct candidate u is scored by log p(u) (the sum of its
  byte log-probabilities, ``eos`` included); top-k keeps the k most probable distinct candidates, top-p the
  most probable ones whose share of p(u)^(1/T) reaches p; one is drawn with weight
  count(u) * p(u)^(1/T - 1), which tends to p(u)^(1/T) as the number of candidates grows (exact at T = 1).
- ``num_beams=K > 1``: beam search over units. Each live hypothesis proposes its K best next units (a byte-level
  beam search of width K on the decoder, rescored exactly); the K best by summed byte log-probability live on;
  finished hypotheses are ranked by ``score / (units generated) ** length_penalty``. The greedy continuation
  of the same batch is computed first and returned whenever no hypothesis beats its penalised score, so beam
  search is never worse than greedy by that measure (by raw score when ``length_penalty=0``).

Edge cases (all tested): an empty prompt generates from the start marker alone; a prompt longer than the
latent's context (``model.max_units`` units, start marker included) raises :class:`ILTError`; a row whose
context fills up stops there; ``max_new_units=0`` gives ``""``; a decoder that never writes ``eos`` is cut at
the unit byte limit (``spec.max_unit_bytes``, or ``label_bytes`` for a model trained with ``labels: bytes``);
invalid UTF-8 from the decoder becomes U+FFFD; a unit with no bytes ends the text. A prompt whose last word
has no trailing space is taken as it is (the model then continues after that unit, as after any unit);
end prompts with a space for the most natural continuation. A returned text ends *before* the first stop
string found in the continuation.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ilt_core.errors import ILTError
from ilt_core.text.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, decode_utf8
from ilt_core.text.collator import IGNORE_INDEX

__all__ = [
    "GenerationResult",
    "WORD_LEVEL_COSTS",
    "add_generate_parser",
    "generate",
    "stream_generate",
]

WORD_LEVEL_COSTS = """\
Cost per generated unit, for a batch of B prompts, c latent steps over the KV cache and n decoder steps
(n = bytes of the unit + eos, at most the byte limit):
- greedy and plain sampling (T = 1, no top-k/top-p): one latent step for B rows and one decoder generate over
  B rows (n decoder steps); the same as the byte-level strategies.
- word-level sampling with temperature / top-k / top-p: the decoder runs on B * unit_candidates rows
  (n steps, in parallel), then one teacher-forced decoder pass over them to score each candidate exactly;
  the latent cost is unchanged. About unit_candidates times the decoder work of greedy.
- word-level beam search with K beams: the latent runs on B * K rows; each hypothesis proposes K units by a
  byte-level beam search of width K, so the decoder carries B * K * K rows, plus one scoring pass over them;
  and the greedy continuation is computed first (one greedy run). About K^2 the decoder work and K times the
  latent work of greedy, plus the greedy run.
"""

START = None  # the memo key of the text-start marker (bytes [bos], the image of "")
_WORD_LEVEL_NAMES = ("do_sample", "temperature", "top_k", "top_p", "num_beams", "length_penalty")
# byte-level options that choose how bytes are picked: they contradict the word-level strategies' own choice
_BYTE_PICKING = ("do_sample", "num_beams", "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff")
_RESERVED = {
    "inputs_embeds": "the loop builds the prefix embeddings",
    "attention_mask": "the loop builds the decoder mask",
    "input_ids": "the decoder reads a latent prefix, not ids",
    "max_new_tokens": "the unit byte limit is max_unit_bytes",
    "max_length": "the unit byte limit is max_unit_bytes",
    "num_return_sequences": "the word-level strategies set it",
}


@dataclass
class GenerationResult:
    """One prompt's continuation with ``return_scores=True``.

    ``text``: the continuation (cut before a stop string). ``units``: the generated units, in order.
    ``score``: the sum of the natural-log probabilities of every byte the decoder wrote for them, each unit's
    ``eos`` and a final end-of-text ``eos`` included. ``finish_reason``: ``"end_of_text"``, ``"max_new_units"``,
    ``"stop"`` or ``"context_full"``.
    """

    text: str
    units: list[str]
    score: float
    finish_reason: str


@dataclass
class _Hypothesis:
    """A row of the loop: one prompt's context and what was generated after it."""

    prompt: int
    context: list[Any]  # memo keys: START, then units
    units: list[str] = field(default_factory=list)
    score: float = 0.0
    text: str = ""
    done: bool = False
    finish_reason: str = "max_new_units"
    decodes: int = 0  # decoder calls scored (units + a final end-of-text)


@dataclass
class _Options:
    """Validated options shared by the loops."""

    max_new_units: int
    use_cache: bool
    stop: list[str]
    byte_limit: int
    byte_kwargs: dict[str, Any]
    want_scores: bool
    labels: str
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    unit_candidates: int = 8
    num_beams: int = 1
    length_penalty: float = 1.0

    @property
    def resampling(self) -> bool:
        """Word-level sampling that needs several candidates (anything but plain T = 1 sampling)."""
        return self.do_sample and (self.temperature != 1.0 or self.top_k is not None or self.top_p is not None)


# ---- units -> embeddings, and the latent over them --------------------------------------------------------------
class _UnitEmbeddings:
    """Embeddings ``(D,)`` of units, each unit encoded once per generation call (the start marker is ``START``)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.memo: dict[Any, torch.Tensor] = {}

    def __call__(self, keys: Sequence[Any]) -> torch.Tensor:
        """Embeddings ``(N, D)`` for ``keys`` (units or ``START``); new distinct ones are encoded in one batch."""
        new = list(dict.fromkeys(k for k in keys if k not in self.memo))
        if new:
            processor = self.model.processor
            ids = [[BOS_ID] if k is START else processor.encode_unit(k) for k in new]
            width = max(1, max(len(x) for x in ids))
            unit_ids = torch.full((len(ids), width), PAD_ID, dtype=torch.long)
            unit_mask = torch.zeros(len(ids), width, dtype=torch.long)
            for i, x in enumerate(ids):
                unit_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
                unit_mask[i, : max(1, len(x))] = 1
            groups = None
            if self.model.renderer is not None:
                groups = processor.render_units(["" if k is START else k for k in new])
            vectors = self.model.encode_units(unit_ids, unit_mask, groups)  # (len(new), D)
            for k, v in zip(new, vectors, strict=True):
                self.memo[k] = v
        return torch.stack([self.memo[k] for k in keys])


def _left_pad(contexts: Sequence[Sequence[Any]], embed: _UnitEmbeddings) -> tuple[torch.Tensor, ...]:
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


class _Latent:
    """The latent transformer over the live rows, with or without its KV cache.

    ``start(contexts)`` and ``step(new_units)`` return the last latent of each row ``(N, D)``;
    ``select(rows)`` keeps (and may repeat or reorder) rows, as beam search and finished rows need.
    Without the cache every step recomputes each row from its whole context.
    """

    def __init__(self, model: Any, embed: _UnitEmbeddings, use_cache: bool) -> None:
        self.latent = model.latent_transformer
        self.embed = embed
        self.use_cache = use_cache
        self.contexts: list[list[Any]] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (N, L_past) 1 for real units, 0 for left padding
        self.next_position: torch.Tensor | None = None  # (N,)

    def start(self, contexts: list[list[Any]]) -> torch.Tensor:
        self.contexts = [list(c) for c in contexts]
        embeds, mask, positions = _left_pad(self.contexts, self.embed)
        out = self.latent(embeds, attention_mask=mask, position_ids=positions, use_cache=self.use_cache)
        if self.use_cache:
            self.cache, self.mask, self.next_position = out.past_key_values, mask, positions[:, -1] + 1
        return out.hidden_states[:, -1]

    def select(self, rows: list[int]) -> None:
        if rows == list(range(len(self.contexts))):
            return
        self.contexts = [list(self.contexts[r]) for r in rows]
        if self.use_cache:
            index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
            self.cache.reorder_cache(index)  # index_select over the batch: rows may repeat (beams)
            self.mask, self.next_position = self.mask[index], self.next_position[index]
            # drop columns that are padding in every remaining row (a long prompt has finished)
            keep = int(self.mask.any(0).long().argmax()) if bool(self.mask.any()) else 0
            if keep > 0 and _can_crop_left(self.cache):
                self.mask = self.mask[:, keep:]
                _crop_left(self.cache, keep)

    def step(self, units: list[str]) -> torch.Tensor:
        for c, u in zip(self.contexts, units, strict=True):
            c.append(u)
        if not self.use_cache:
            embeds, mask, positions = _left_pad(self.contexts, self.embed)
            return self.latent(embeds, attention_mask=mask, position_ids=positions).hidden_states[:, -1]
        embeds = self.embed(units)[:, None]  # (N, 1, D)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(units), 1)], dim=1)
        out = self.latent(
            embeds,
            attention_mask=self.mask,
            position_ids=self.next_position[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache, self.next_position = out.past_key_values, self.next_position + 1
        return out.hidden_states[:, -1]


def _can_crop_left(cache: Any) -> bool:
    # only plain full-attention layers hold every past key at a fixed column; leave sliding windows alone
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def _crop_left(cache: Any, n: int) -> None:
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys[..., n:, :]
            layer.values = layer.values[..., n:, :]


# ---- latents -> units -------------------------------------------------------------------------------------------
def _decode_ids(model: Any, latents: torch.Tensor, opts: _Options, **extra: Any) -> list[list[int]]:
    """Run the bytes decoder from latents ``(N, D)``; each row's ids, cut after ``eos`` or at the byte limit.

    With ``num_return_sequences=R`` in ``extra`` the result has N * R rows, R per latent, in order.
    """
    prefix = model.decoder_mapping(latents)[:, None, :]  # (N, 1, Dd)
    kwargs = {**opts.byte_kwargs, **extra}
    decoder = model.bytes_decoder
    if hasattr(decoder, "greedy") and set(kwargs) <= {"suppress_tokens", "min_new_tokens"}:
        # plain greedy: the decoder's own loop, without transformers.generate's per-step overhead
        ids = decoder.greedy(
            prefix, opts.byte_limit, EOS_ID, PAD_ID, kwargs.get("suppress_tokens"), kwargs.get("min_new_tokens") or 0
        )
    else:
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        out = decoder.generate(prefix, mask, max_new_tokens=opts.byte_limit, **kwargs)
        ids = getattr(out, "sequences", out)  # (N * R, T_new)
    rows = []
    for row in ids.tolist():
        cut = row.index(EOS_ID) + 1 if EOS_ID in row else len(row)
        rows.append(row[:cut])
    return rows


def _unit_of(model: Any, ids: list[int], labels: str) -> str:
    """The unit written by decoder ids (``""``: end of text). Bytes that are not valid UTF-8 become U+FFFD."""
    data = bytes(i for i in ids if i < 256)  # pad / bos inside a unit carry no text
    text = decode_utf8(data)
    if labels == "bytes" and text:
        # a model trained on byte windows writes the next few bytes of text: its first unit is the next unit
        text = model.processor.segment(text)[0]
    return text


def _score_ids(model: Any, latents: torch.Tensor, rows: list[list[int]]) -> list[float]:
    """Sum of the byte log-probabilities (nats) of each row's ids given its latent ``(N, D)``; teacher forced."""
    K = max(1, max(len(r) for r in rows))
    labels = torch.full((len(rows), K + 1), IGNORE_INDEX, dtype=torch.long, device=latents.device)
    for i, r in enumerate(rows):
        if r:
            labels[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    # decode_logits reads [prefix, label[:-1]]: the extra ignored column makes it read every real id
    logits = model.decode_logits(latents, labels)  # (N, K + 1, V)
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0].masked_fill(labels == IGNORE_INDEX, 0.0)
    return picked.double().sum(-1).tolist()


def _pick_units(model: Any, latents: torch.Tensor, opts: _Options) -> tuple[list[list[int]], list[float] | None]:
    """One unit's ids per row of ``latents`` (N, D) by the plain strategy, and their scores when wanted."""
    if not opts.resampling:
        extra: dict[str, Any] = {}
        if opts.do_sample:  # exact ancestral sampling: every byte from the model's own distribution
            extra = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        ids = _decode_ids(model, latents, opts, **extra)
        return ids, (_score_ids(model, latents, ids) if opts.want_scores else None)

    C = opts.unit_candidates
    repeated = latents.repeat_interleave(C, dim=0)  # (N * C, D)
    cands = _decode_ids(model, repeated, opts, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    scores = _score_ids(model, repeated, cands)
    chosen, chosen_scores = [], []
    for n in range(latents.shape[0]):
        group: dict[tuple[int, ...], list[float]] = {}  # distinct candidate -> [log p, count]
        for ids, s in zip(cands[n * C : (n + 1) * C], scores[n * C : (n + 1) * C], strict=True):
            entry = group.setdefault(tuple(ids), [s, 0.0])
            entry[1] += 1
        order = sorted(group, key=lambda k: -group[k][0])  # most probable first
        if opts.top_k is not None:
            order = order[: opts.top_k]
        if opts.top_p is not None:
            q = torch.softmax(torch.tensor([group[k][0] / opts.temperature for k in order], dtype=torch.float64), 0)
            keep = int((q.cumsum(0) < opts.top_p).sum()) + 1
            order = order[:keep]
        weights = torch.tensor(
            [math.log(group[k][1]) + (1.0 / opts.temperature - 1.0) * group[k][0] for k in order], dtype=torch.float64
        )
        pick = order[int(torch.multinomial(torch.softmax(weights, 0), 1))]
        chosen.append(list(pick))
        chosen_scores.append(group[pick][0])
    return chosen, chosen_scores


# ---- the loops ---------------------------------------------------------------------------------------------------
def _stop_at(text: str, before: int, stop: list[str]) -> int | None:
    """Where the first stop string starts in ``text`` (searching only what may include new text), or None."""
    hits = []
    for s in stop:
        i = text.find(s, max(0, before - len(s) + 1))
        if i >= 0:
            hits.append(i)
    return min(hits) if hits else None


def _append(model: Any, hyp: _Hypothesis, ids: list[int], score: float | None, opts: _Options) -> str | None:
    """Add a decoded unit to ``hyp``; returns the new text it contributes, marks it done when it stops."""
    unit = _unit_of(model, ids, opts.labels)
    hyp.decodes += 1
    if score is not None:
        hyp.score += score
    if not unit:
        hyp.done, hyp.finish_reason = True, "end_of_text"
        return None
    hyp.units.append(unit)
    before = len(hyp.text)
    hyp.text += unit
    cut = _stop_at(hyp.text, before, opts.stop) if opts.stop else None
    if cut is not None:
        hyp.text = hyp.text[:cut]
        hyp.done, hyp.finish_reason = True, "stop"
        return hyp.text[before:]
    if len(hyp.units) >= opts.max_new_units:
        hyp.done, hyp.finish_reason = True, "max_new_units"
    elif len(hyp.context) + len(hyp.units) > model.max_units:
        hyp.done, hyp.finish_reason = True, "context_full"  # the latent cannot read this unit back
    return unit


def _iter_plain(model: Any, hyps: list[_Hypothesis], opts: _Options) -> Iterator[tuple[int, str]]:
    """Greedy / sampling / byte-level strategies: yields ``(prompt, new text)`` as each unit is decoded."""
    embed = _UnitEmbeddings(model)
    latent = _Latent(model, embed, opts.use_cache)
    live = [h for h in hyps if not h.done]
    if not live:
        return
    latents = latent.start([h.context for h in live])
    while True:
        ids, scores = _pick_units(model, latents, opts)
        for i, h in enumerate(live):
            new = _append(model, h, ids[i], scores[i] if scores is not None else None, opts)
            if new:
                yield h.prompt, new
        keep = [i for i, h in enumerate(live) if not h.done]
        if not keep:
            return
        latent.select(keep)
        live = [live[i] for i in keep]
        latents = latent.step([h.units[-1] for h in live])


def _penalised(h: _Hypothesis, length_penalty: float) -> float:
    return h.score / (max(h.decodes, 1) ** length_penalty)


def _beam_search(model: Any, hyps: list[_Hypothesis], opts: _Options) -> list[_Hypothesis]:
    """Word-level beam search (see the module docstring); returns the best hypothesis of each prompt."""
    K = opts.num_beams
    embed = _UnitEmbeddings(model)
    latent = _Latent(model, embed, opts.use_cache)
    finished: dict[int, list[_Hypothesis]] = {h.prompt: [] for h in hyps}
    live = [h for h in hyps if not h.done]
    for h in hyps:
        if h.done:
            finished[h.prompt].append(h)
    if live:
        latents = latent.start([h.context for h in live])
    while live:
        extra = {"num_return_sequences": K}
        if K > 1:
            extra.update(num_beams=K, length_penalty=0.0, early_stopping=True, do_sample=False)
        ids = _decode_ids(model, latents, opts, **extra)  # (len(live) * K) rows, K per hypothesis
        scores = _score_ids(model, latents.repeat_interleave(K, dim=0), ids)
        by_prompt: dict[int, list[tuple[float, int, list[int], float]]] = {}
        for i, h in enumerate(live):
            seen = set()
            for j in range(i * K, (i + 1) * K):
                if tuple(ids[j]) in seen:
                    continue
                seen.add(tuple(ids[j]))
                by_prompt.setdefault(h.prompt, []).append((h.score + scores[j], i, ids[j], scores[j]))
        next_live, parents = [], []
        for prompt, cands in by_prompt.items():
            cands.sort(key=lambda c: -c[0])
            kept = 0
            for _, parent, unit_ids, s in cands:
                if kept == K:
                    break
                p = live[parent]
                child = _Hypothesis(p.prompt, p.context, list(p.units), p.score, p.text, decodes=p.decodes)
                _append(model, child, unit_ids, s, opts)
                if child.done:
                    finished[prompt].append(child)
                    continue
                next_live.append(child)
                parents.append(parent)
                kept += 1
            # stop this prompt once K finished hypotheses beat its best live one (as transformers does)
            done = sorted((_penalised(f, opts.length_penalty) for f in finished[prompt]), reverse=True)
            best_live = max((_penalised(c, opts.length_penalty) for c in next_live if c.prompt == prompt), default=None)
            if len(done) >= K and best_live is not None and best_live <= done[K - 1]:
                drop = [i for i, c in enumerate(next_live) if c.prompt == prompt]
                for i in reversed(drop):
                    finished[prompt].append(next_live.pop(i))
                    parents.pop(i)
        if not next_live:
            break
        latent.select(parents)
        live = next_live
        latents = latent.step([h.units[-1] for h in live])
    return [max(finished[h.prompt], key=lambda f: _penalised(f, opts.length_penalty)) for h in hyps]


# ---- options ------------------------------------------------------------------------------------------------------
def _byte_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The decoder's generation options: ``byte_`` prefixes stripped, loop-owned names refused."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        name = key[5:] if key.startswith("byte_") else key
        if name in _RESERVED:
            raise ILTError(f"{key}={value!r}: not a byte-level option here ({_RESERVED[name]})")
        if name in ("return_dict_in_generate", "output_scores", "output_logits"):
            continue  # the loop reads plain ids; scores come from return_scores
        out[name] = value
    return out


def _check_options(
    max_new_units: Any,
    num_beams: Any,
    do_sample: bool,
    temperature: Any,
    top_k: Any,
    top_p: Any,
    unit_candidates: Any,
    byte_kwargs: dict[str, Any],
    max_unit_bytes: Any,
) -> None:
    def integer(name: str, value: Any, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ILTError(f"{name}={value!r}: expected an int >= {low}")

    integer("max_new_units", max_new_units, 0)
    integer("num_beams", num_beams, 1)
    integer("unit_candidates", unit_candidates, 1)
    if max_unit_bytes is not None:
        integer("max_unit_bytes", max_unit_bytes, 1)
    if not isinstance(temperature, int | float) or temperature <= 0:
        raise ILTError(f"temperature={temperature!r}: expected a number > 0")
    if top_k is not None:
        integer("top_k", top_k, 1)
    if top_p is not None and (not isinstance(top_p, int | float) or not 0 < top_p <= 1):
        raise ILTError(f"top_p={top_p!r}: expected a number in (0, 1]")
    if not do_sample:
        for name, value, default in (("temperature", temperature, 1.0), ("top_k", top_k, None), ("top_p", top_p, None)):
            if value != default:
                raise ILTError(f"{name}={value!r} without do_sample=True: word-level {name} only applies when sampling")
    if num_beams > 1 and do_sample:
        raise ILTError(
            f"num_beams={num_beams} with do_sample=True: word-level beam search does not sample; drop one of them"
        )

    def neutral(value: Any) -> bool:  # the value that leaves greedy decoding as it is
        return value is None or value is False or (not isinstance(value, bool) and value == 1)

    picking = [k for k in byte_kwargs if k in _BYTE_PICKING and not neutral(byte_kwargs[k])]
    if picking and (do_sample or num_beams > 1):
        word = "do_sample=True" if do_sample else f"num_beams={num_beams}"
        raise ILTError(
            f"byte_{picking[0]}={byte_kwargs[picking[0]]!r} with word-level {word}: the word-level strategy chooses "
            "how the decoder writes its candidates; drop one of them"
        )


def _prompts_to_hypotheses(model: Any, prompts: list[str]) -> list[_Hypothesis]:
    hyps = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ILTError(f"prompts[{i}]: expected a str, got {type(p).__name__}")
        units = model.processor.segment(p)
        if len(units) + 1 > model.max_units:
            raise ILTError(
                f"prompts[{i}] has {len(units)} units but the latent transformer reads at most {model.max_units} "
                f"(the start marker included): keep its last {model.max_units - 1} units or fewer"
            )
        hyps.append(_Hypothesis(i, [START, *units]))
    return hyps


def _setup(
    model: Any,
    prompts: str | Sequence[str],
    max_new_units: int,
    use_cache: bool,
    num_beams: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    stop: list[str] | None,
    length_penalty: float,
    return_scores: bool,
    unit_candidates: int,
    max_unit_bytes: int | None,
    byte_generation_kwargs: dict[str, Any],
) -> tuple[list[_Hypothesis], _Options]:
    byte_kwargs = _byte_options(byte_generation_kwargs)
    _check_options(
        max_new_units, num_beams, do_sample, temperature, top_k, top_p, unit_candidates, byte_kwargs, max_unit_bytes
    )
    if stop is not None and (isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop)):
        raise ILTError(f"stop={stop!r}: expected a list of non-empty strings")
    if isinstance(prompts, str):
        prompts = [prompts]
    labels = model.spec.labels
    limit = max_unit_bytes or (model.spec.label_bytes if labels == "bytes" else model.spec.max_unit_bytes)
    opts = _Options(
        max_new_units=max_new_units,
        use_cache=use_cache,
        stop=list(stop or []),
        byte_limit=limit,
        byte_kwargs=byte_kwargs,
        want_scores=return_scores,
        labels=labels,
        do_sample=do_sample,
        temperature=float(temperature),
        top_k=top_k,
        top_p=top_p,
        unit_candidates=unit_candidates,
        num_beams=num_beams,
        length_penalty=float(length_penalty),
    )
    hyps = _prompts_to_hypotheses(model, list(prompts))
    if max_new_units == 0:
        for h in hyps:
            h.done = True
    return hyps, opts


class _Session:
    """Eval mode, no gradients and the seeded random state for one generation call; restores all three on exit.

    It may be entered and left many times (streaming enters it around each step only, so nothing leaks into the
    caller's code between yields): the seeded random state carries on from one entry to the next.
    """

    def __init__(self, model: Any, seed: int | None) -> None:
        self.model, self.seed = model, seed
        device = model.encoder_mapping.weight.device
        self.cuda = device if device.type == "cuda" else None
        self.state: tuple[torch.Tensor, torch.Tensor | None] | None = None  # our random state between entries

    def _rng(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.get_rng_state(), (torch.cuda.get_rng_state(self.cuda) if self.cuda is not None else None)

    def _set_rng(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if self.cuda is not None and state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.cuda)

    def __enter__(self) -> _Session:
        self.was_training = self.model.training
        self.model.eval()
        self.grad = torch.inference_mode()
        self.grad.__enter__()
        if self.seed is not None:
            self.saved = self._rng()  # the caller's random state, given back on exit
            if self.state is None:
                torch.manual_seed(self.seed)
            else:
                self._set_rng(self.state)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.seed is not None:
            self.state = self._rng()
            self._set_rng(self.saved)
        self.grad.__exit__(*exc)
        if self.was_training:
            self.model.train()


# ---- public API ---------------------------------------------------------------------------------------------------
def generate(
    model: Any,
    prompts: str | list[str],
    max_new_units: int = 32,
    *,
    use_cache: bool = True,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: list[str] | None = None,
    length_penalty: float = 1.0,
    return_scores: bool = False,
    unit_candidates: int = 8,
    max_unit_bytes: int | None = None,
    **byte_generation_kwargs: Any,
) -> list[str] | list[GenerationResult]:
    """Continue each prompt by up to ``max_new_units`` units; returns one continuation per prompt.

    Args:
        model: an :class:`~ilt_core.modeling.model.ILTModel` (put in eval mode for the call, then restored).
        prompts: a text or a list of texts (``""``: generate from the start marker alone).
        max_new_units: how many units at most (``0`` gives ``""``).
        use_cache: keep the latent transformer's KV cache (one latent step per unit); ``False`` recomputes every
            row from its whole context at each step (same text, for checking and benchmarks).
        num_beams, length_penalty: word-level beam search over units (``num_beams > 1``); finished hypotheses
            rank by ``score / units ** length_penalty``.
        do_sample, temperature, top_k, top_p, unit_candidates: word-level sampling over units (module
            docstring); ``unit_candidates`` units are drawn per step when temperature / top-k / top-p are set.
        seed: seeds every random choice of this call (the caller's random state is restored afterwards); the
            same seed, prompts and options give the same text. Greedy and beam search need none.
        stop: strings that end a continuation; the text is cut before the first one found.
        return_scores: return :class:`GenerationResult` (text, units, score = summed byte log-probs, finish
            reason) instead of strings.
        max_unit_bytes: the unit byte limit (default ``spec.max_unit_bytes``): a decoder that writes no ``eos``
            by then ends the unit there.
        **byte_generation_kwargs: ``transformers.GenerationConfig`` options for the bytes decoder, passed on
            unchanged (``byte_`` prefix for the names the word level takes, e.g. ``byte_do_sample=True``).

    Raises:
        ILTError: a bad option, contradictory options (named), or a prompt longer than the latent's context.
    """
    hyps, opts = _setup(
        model,
        prompts,
        max_new_units,
        use_cache,
        num_beams,
        do_sample,
        temperature,
        top_k,
        top_p,
        stop,
        length_penalty,
        return_scores,
        unit_candidates,
        max_unit_bytes,
        byte_generation_kwargs,
    )
    with _Session(model, seed):
        if opts.num_beams > 1:
            best = _beam_search_or_greedy(model, hyps, opts)
        else:
            for _ in _iter_plain(model, hyps, opts):
                pass
            best = hyps
    if return_scores:
        return [GenerationResult(h.text, h.units, h.score, h.finish_reason) for h in best]
    return [h.text for h in best]


def _copy(h: _Hypothesis) -> _Hypothesis:
    return _Hypothesis(h.prompt, list(h.context), list(h.units), h.score, h.text, h.done, h.finish_reason, h.decodes)


def _beam_search_or_greedy(model: Any, hyps: list[_Hypothesis], opts: _Options) -> list[_Hypothesis]:
    """Beam search, keeping the greedy continuation whenever no hypothesis beats its penalised score."""
    greedy = [_copy(h) for h in hyps]
    greedy_opts = _Options(**{**opts.__dict__, "num_beams": 1, "want_scores": True})
    for _ in _iter_plain(model, greedy, greedy_opts):
        pass
    beams = _beam_search(model, [_copy(h) for h in hyps], opts)
    lp = opts.length_penalty
    return [b if _penalised(b, lp) >= _penalised(g, lp) else g for b, g in zip(beams, greedy, strict=True)]


def stream_generate(
    model: Any,
    prompt: str,
    max_new_units: int = 32,
    **options: Any,
) -> Iterator[str]:
    """Yield the continuation of one ``prompt`` unit by unit, each as soon as it is decoded.

    Takes the options of :func:`generate` (not ``return_scores``). ``"".join`` of what it yields equals
    ``generate(model, prompt, ...)[0]``. With ``stop`` strings, the tail of the text that could begin a stop
    string is held back until it is settled. Beam search cannot commit to a unit before it ends, so with
    ``num_beams > 1`` the continuation comes as one piece when the search is over.
    """
    if not isinstance(prompt, str):
        raise ILTError(f"stream_generate: prompt must be one str, got {type(prompt).__name__}")
    if options.get("return_scores"):
        raise ILTError("stream_generate: return_scores=True is not supported; call generate(..., return_scores=True)")
    if options.get("num_beams", 1) > 1:
        yield from generate(model, prompt, max_new_units, **options)[0:1]
        return
    keys = ("use_cache", "do_sample", "temperature", "top_k", "top_p", "stop", "unit_candidates", "max_unit_bytes")
    named = {k: options.pop(k) for k in keys if k in options}
    seed = options.pop("seed", None)
    for unused in ("length_penalty", "num_beams", "return_scores"):
        options.pop(unused, None)
    hyps, opts = _setup(
        model,
        [prompt],
        max_new_units,
        named.get("use_cache", True),
        1,
        named.get("do_sample", False),
        named.get("temperature", 1.0),
        named.get("top_k"),
        named.get("top_p"),
        named.get("stop"),
        1.0,
        False,
        named.get("unit_candidates", 8),
        named.get("max_unit_bytes"),
        options,
    )
    session = _Session(model, seed)
    steps = _iter_plain(model, hyps, opts)
    held = ""  # text that may be the start of a stop string
    while True:
        with session:  # only around the model's work: the caller's code between yields runs as it would
            try:
                _, piece = next(steps)
            except StopIteration:
                break
        if not opts.stop:
            yield piece
            continue
        held += piece
        if hyps[0].done and hyps[0].finish_reason == "stop":
            break
        safe = len(held) - _longest_stop_prefix(held, opts.stop)
        if safe > 0:
            yield held[:safe]
            held = held[safe:]
    if held:
        yield held


def _longest_stop_prefix(text: str, stop: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


# ---- command line -------------------------------------------------------------------------------------------------
def _parse_byte_option(text: str) -> tuple[str, Any]:
    import json

    if "=" not in text:
        raise ILTError(f"--byte-option {text!r}: expected KEY=VALUE, e.g. repetition_penalty=1.3")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def cmd_generate(args: argparse.Namespace) -> int:
    """``ilt generate``: print each prompt's continuation (unit by unit with ``--stream``)."""
    from ilt_core.modeling.model import ILTModel

    model = ILTModel.from_pretrained(args.model)
    options: dict[str, Any] = dict(
        use_cache=not args.no_cache,
        num_beams=args.num_beams,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop or None,
        length_penalty=args.length_penalty,
    )
    for item in args.byte_option or []:
        key, value = _parse_byte_option(item)
        options[key if key.startswith("byte_") else f"byte_{key}"] = value
    prompts = args.prompt
    if args.stream:
        if len(prompts) != 1:
            raise ILTError(f"--stream takes one --prompt, got {len(prompts)}")
        for piece in stream_generate(model, prompts[0], args.max_new_units, **options):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        return 0
    for text in generate(model, prompts, args.max_new_units, **options):
        print(text, flush=True)
    return 0


def add_generate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ilt generate`` to an argparse ``subparsers``; its handler is ``func=cmd_generate``."""
    p = subparsers.add_parser("generate", help="continue a prompt with a trained model")
    p.add_argument("--model", required=True, help="checkpoint folder (from save_pretrained / ilt build --save)")
    p.add_argument("--prompt", required=True, action="append", help="text to continue (repeat for a batch)")
    p.add_argument("--max-new-units", type=int, default=32, help="most units to generate (default 32)")
    p.add_argument("--num-beams", type=int, default=1, help="word-level beam search over units")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam ranking: score / units ** this")
    p.add_argument("--do-sample", action="store_true", help="sample units instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="word-level temperature (with --do-sample)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most probable candidate units")
    p.add_argument("--top-p", type=float, default=None, help="keep the most probable units up to this mass")
    p.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    p.add_argument("--stop", action="append", help="stop before this string (repeatable)")
    p.add_argument(
        "--byte-option",
        action="append",
        metavar="KEY=VALUE",
        help="a transformers GenerationConfig option for the bytes decoder, e.g. repetition_penalty=1.3",
    )
    p.add_argument("--no-cache", action="store_true", help="recompute the latent at every step (slow; for checks)")
    p.add_argument("--stream", action="store_true", help="print each unit as soon as it is decoded")
    p.set_defaults(func=cmd_generate)
    return p
