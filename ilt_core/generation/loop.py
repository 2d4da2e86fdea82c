"""Word-level text generation: the latent transformer runs once per unit, the bytes decoder once per byte.

The decoding loop (B prompts, D latent width, Dd decoder width)::

    prompt ──segment──▶ [start, u1 .. un] ──encode_units──▶ (B, L, D), left-padded
      ──latent_transformer (KV cache)──▶ latent of the last unit (B, D) ──decoder_mapping──▶ prefix (B, 1, Dd)
      ──bytes_decoder──▶ bytes until eos or the unit byte limit ──▶ the next unit
      ──render + encode──▶ (B, 1, D) ──one latent step over the cache──▶ ... until a stop

A row stops at ``max_new_units``, at an end-of-text unit (the decoder writes ``eos`` first: an empty unit), at a
stop string, or when its context is full. Rows finish independently; finished rows leave the latent cache and
the decoder batch.

Options are one :class:`~ilt_core.generation.options.GenerationOptions` value (word-level fields, plus the
bytes decoder's ``transformers.GenerationConfig`` options); :func:`generate` and :func:`stream_generate` also take
them as keywords. Strategies: greedy and sampling in :mod:`~ilt_core.generation.sampling`, beam search in
:mod:`~ilt_core.generation.beams` (see :data:`WORD_LEVEL_COSTS` for what each costs); the parts they share in
:mod:`~ilt_core.generation.decoding`. This module holds the loop, the session (eval mode, no gradients, the
seeded random state) and the public entry points.

Edge cases (all tested): an empty prompt generates from the start marker alone; a prompt longer than the
latent's context (``model.max_units`` units, start marker included) raises :class:`ILTError`; a row whose
context fills up stops there; ``max_new_units=0`` gives ``""``; a decoder that never writes ``eos`` is cut at
the unit byte limit (``spec.max_unit_bytes``, or ``label_bytes`` for a model trained with ``labels: bytes``);
invalid UTF-8 from the decoder becomes U+FFFD; a unit with no bytes ends the text. A returned text ends *before*
the first stop string found in the continuation.

A prompt cut inside a word (its last unit has no trailing whitespace: ``"The capital is"``) is not a finished
unit: its context is the units before that one, the decoder is forced through that unit's bytes and writes the
rest of it (``" "``, then ``eos``), then generation goes on unit by unit; the returned text starts with that rest.
This is the byte-level chain rule of :mod:`ilt_core.likelihood`, at any batch size (rows are forced in groups of
equal byte counts) and with every strategy (sampling and beams draw and rank the rest of the unit by its
probability given the forced bytes). The completion does not count towards ``max_new_units``; a prompt ending in
whitespace is taken as finished, as before.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ilt_core.errors import ILTError
from ilt_core.generation.beams import beam_search, penalised_score
from ilt_core.generation.decoding import (
    START,
    Decoding,
    Hypothesis,
    LatentState,
    UnitEmbeddings,
    append_unit,
    finished_unit,
    forced_ids,
    is_plain_greedy,
)
from ilt_core.generation.options import GenerationOptions
from ilt_core.generation.sampling import pick_units

__all__ = [
    "Generation",
    "GenerationOptions",
    "GenerationResult",
    "GenerationSession",
    "WORD_LEVEL_COSTS",
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


@dataclass
class GenerationResult:
    """One prompt's continuation with ``return_scores=True``.

    ``text``: the continuation (cut before a stop string). ``units``: the units generated after the prompt's, in
    order (for a prompt cut inside a word, ``text`` starts with the rest of that word, which is not among them).
    ``score``: the sum of the natural-log probabilities of every byte the decoder wrote for them, each unit's
    ``eos`` and a final end-of-text ``eos`` included. ``finish_reason``: ``"end_of_text"``, ``"max_new_units"``,
    ``"stop"`` or ``"context_full"``.
    """

    text: str
    units: list[str]
    score: float
    finish_reason: str


#: Up to this many rows (prompts x beams x candidates) generation on a CPU runs on one intra-op thread (``None``:
#: the caller's count). Its products have a few rows (4 x 512 by 512 x 2048 in the latent's cached step, 4 x 256
#: by 256 x 1280 per byte in the decoder), and with two threads each is a parallel region whose wake-up and join
#: cost more than the split saves (``benchmarks/bench_generation.py --reference img --parts`` times the whole step
#: both ways, interleaved; figures in ``benchmarks/REPORT.md``).
ONE_THREAD_ROWS: int | None = 16


class GenerationSession:
    """Eval mode, no gradients, the seeded random state and (a few rows on a CPU, :data:`ONE_THREAD_ROWS`) one
    intra-op thread for one generation call; restores all four on exit.

    It may be entered and left many times (streaming enters it around each step only, so nothing leaks into the
    caller's code between yields): the seeded random state carries on from one entry to the next.

    Generation calls may run on several threads at once, each giving what it gives alone: a session that must
    change state the threads share (torch's global random state for a seed, the model's training mode) holds
    :data:`SHARED_STATE` while entered, so such sessions take turns; greedy decoding of a model in eval mode holds
    nothing (the intra-op thread count is the calling thread's own).
    """

    #: Held by every session entered with a seed or on a model in training mode.
    SHARED_STATE = threading.RLock()

    def __init__(self, model: Any, seed: int | None, rows: int = 1) -> None:
        self.model, self.seed = model, seed
        device = model.encoder_mapping.weight.device
        self.cuda = device if device.type == "cuda" else None
        self.one_thread = device.type == "cpu" and ONE_THREAD_ROWS is not None and rows <= ONE_THREAD_ROWS
        self.state: tuple[torch.Tensor, torch.Tensor | None] | None = None  # our random state between entries

    def _rng(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.get_rng_state(), (torch.cuda.get_rng_state(self.cuda) if self.cuda is not None else None)

    def _set_rng(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if self.cuda is not None and state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.cuda)

    def __enter__(self) -> GenerationSession:
        self.locked = self.seed is not None or self.model.training
        if self.locked:
            self.SHARED_STATE.acquire()
        self.threads = torch.get_num_threads()
        if self.one_thread and self.threads > 1:
            torch.set_num_threads(1)
        self.was_training = self.model.training
        if self.was_training:
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
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        if self.locked:
            self.SHARED_STATE.release()


def _prompts_to_hypotheses(model: Any, prompts: list[str]) -> list[Hypothesis]:
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
        if units and not finished_unit(units[-1]):  # cut inside a word: the decoder completes it first
            hyps.append(Hypothesis(i, [START, *units[:-1]], forced=units[-1]))
        else:
            hyps.append(Hypothesis(i, [START, *units]))
    return hyps


def _plain_steps(model: Any, hyps: list[Hypothesis], decoding: Decoding) -> Iterator[tuple[int, str]]:
    """Greedy / sampling / byte-level strategies: yields ``(prompt, new text)`` as each unit is decoded."""
    options = decoding.options
    live = [h for h in hyps if not h.done]
    if not live:
        return
    # a static cache where asked for and the latent offers one (protocols.StaticLatentCache), else a growing one
    static = (
        options.cache_implementation == "static"
        and options.use_cache
        and hasattr(model.latent_transformer, "static_cache")
    )
    # a static cache holds the prompts and every step: at most max_new_units, a completion, and the context's room
    steps = min(options.max_new_units + 1, model.max_units) if static else None
    latent = LatentState(model, UnitEmbeddings(model, tiles=static), options.use_cache, steps)
    latents = latent.start([h.context for h in live])
    # with a static cache, greedy decoding writes for every row too (its ids do not depend on the batch), so the
    # decoder's shapes stay; sampling writes for unfinished rows only, drawing what it draws with a growing cache
    every_row = static and is_plain_greedy(decoding.options)
    active = live
    while True:
        ids, scores = pick_units(model, latents, decoding, forced_ids(model, active))
        for i, h in enumerate(active):
            if not h.done:
                new = append_unit(model, h, ids[i], scores[i] if scores is not None else None, decoding)
                if new:
                    yield h.prompt, new
        keep = [i for i, h in enumerate(live) if not h.done]
        if not keep:
            return
        if not static:  # finished rows leave the batch; a static one keeps its shapes
            latent.select(keep)
            live = [live[i] for i in keep]
        latents = latent.step([h.last_unit for h in live])
        active = live if not static or every_row else [live[i] for i in keep]
        if len(active) < len(live):
            latents = latents[torch.tensor(keep, device=latents.device)]


def _beam_search_or_greedy(model: Any, hyps: list[Hypothesis], decoding: Decoding) -> list[Hypothesis]:
    """Beam search, keeping the greedy continuation whenever no hypothesis beats its penalised score."""
    greedy = [h.copy() for h in hyps]
    greedy_decoding = dataclasses.replace(decoding, options=decoding.options.replace(num_beams=1), want_scores=True)
    for _ in _plain_steps(model, greedy, greedy_decoding):
        pass
    beams = beam_search(model, [h.copy() for h in hyps], decoding)
    lp = decoding.options.length_penalty
    return [b if penalised_score(b, lp) >= penalised_score(g, lp) else g for b, g in zip(beams, greedy, strict=True)]


class Generation:
    """One generation call: the prompts as hypotheses, the checked options and the session.

    ``Generation(model, prompts, options).results()`` is what :func:`generate` returns (as results);
    :meth:`steps` yields the text unit by unit, as :func:`stream_generate` and the benchmarks read it.
    """

    def __init__(self, model: Any, prompts: str | Sequence[str], options: GenerationOptions | None = None) -> None:
        self.model = model
        self.options = options = options if options is not None else GenerationOptions()
        if not isinstance(options, GenerationOptions):
            raise ILTError(f"options: expected a GenerationOptions, got {type(options).__name__}")
        self.decoding = Decoding.for_model(model, options)
        self.hypotheses = _prompts_to_hypotheses(model, [prompts] if isinstance(prompts, str) else list(prompts))
        if options.max_new_units == 0:
            for h in self.hypotheses:
                h.done = True
        # rows the model runs at once: beams, or word-level sampling's candidates, multiply the prompts
        rows = len(self.hypotheses) * max(options.num_beams, options.unit_candidates if options.do_sample else 1)
        self.session = GenerationSession(model, options.seed, rows)

    def steps(self) -> Iterator[tuple[int, str]]:
        """Yield ``(prompt index, new text)`` each time a row's unit is decoded (greedy and sampling only).

        The model's work runs inside the session; the caller's code between yields runs as it would outside.
        """
        if self.options.num_beams > 1:
            raise ILTError("Generation.steps: beam search commits to no unit before it ends; call results()")
        steps = _plain_steps(self.model, self.hypotheses, self.decoding)
        while True:
            with self.session:
                try:
                    item = next(steps)
                except StopIteration:
                    return
            yield item

    def results(self) -> list[GenerationResult]:
        """Run to the end: one result per prompt, in order."""
        if self.options.num_beams > 1:
            with self.session:
                best = _beam_search_or_greedy(self.model, self.hypotheses, self.decoding)
        else:
            for _ in self.steps():
                pass
            best = self.hypotheses
        return [GenerationResult(h.text, h.units, h.score, h.finish_reason) for h in best]


def _options_of(
    max_new_units: int | None, options: GenerationOptions | None, kwargs: dict[str, Any]
) -> GenerationOptions:
    if options is not None and not isinstance(options, GenerationOptions):
        raise ILTError(f"options: expected a GenerationOptions, got {type(options).__name__}")
    if max_new_units is not None:
        kwargs = {**kwargs, "max_new_units": max_new_units}
    return GenerationOptions.from_kwargs(options, **kwargs)


# ---- public API ---------------------------------------------------------------------------------------------------
def generate(
    model: Any,
    prompts: str | list[str],
    max_new_units: int | None = None,
    *,
    options: GenerationOptions | None = None,
    **kwargs: Any,
) -> list[str] | list[GenerationResult]:
    """Continue each prompt by up to ``max_new_units`` units (default 32); returns one continuation per prompt.

    Args:
        model: an :class:`~ilt_core.modeling.model.ILTModel` (put in eval mode for the call, then restored).
        prompts: a text or a list of texts (``""``: generate from the start marker alone).
        max_new_units: how many units at most (``0`` gives ``""``); overrides ``options.max_new_units``.
        options: a :class:`GenerationOptions`; keywords override its fields.
        **kwargs: :class:`GenerationOptions` fields by name (``use_cache``, ``num_beams``, ``length_penalty``,
            ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``unit_candidates``, ``seed``, ``stop``,
            ``return_scores``, ``max_unit_bytes``), and ``transformers.GenerationConfig`` options for the bytes
            decoder, passed on unchanged (``byte_`` prefix for the names the word level takes, e.g.
            ``byte_do_sample=True``).

    Returns:
        The continuations, or :class:`GenerationResult` values (text, units, score = summed byte log-probs,
        finish reason) with ``return_scores=True``. The same seed, prompts and options give the same text;
        greedy and beam search need no seed.

    Raises:
        ILTError: a bad option, contradictory options (named), or a prompt longer than the latent's context.
    """
    opts = _options_of(max_new_units, options, kwargs)
    results = Generation(model, prompts, opts).results()
    if opts.return_scores:
        return results
    return [r.text for r in results]


def stream_generate(
    model: Any,
    prompt: str,
    max_new_units: int | None = None,
    *,
    options: GenerationOptions | None = None,
    **kwargs: Any,
) -> Iterator[str]:
    """Yield the continuation of one ``prompt`` unit by unit, each as soon as it is decoded.

    Takes the options of :func:`generate` (not ``return_scores``). ``"".join`` of what it yields equals
    ``generate(model, prompt, ...)[0]``. With ``stop`` strings, the tail of the text that could begin a stop
    string is held back until it is settled. Beam search cannot commit to a unit before it ends, so with
    ``num_beams > 1`` the continuation comes as one piece when the search is over.
    """
    if not isinstance(prompt, str):
        raise ILTError(f"stream_generate: prompt must be one str, got {type(prompt).__name__}")
    opts = _options_of(max_new_units, options, kwargs)
    if opts.return_scores:
        raise ILTError("stream_generate: return_scores=True is not supported; call generate(..., return_scores=True)")
    generation = Generation(model, [prompt], opts)
    if opts.num_beams > 1:
        yield from [r.text for r in generation.results()]
        return
    held = ""  # text that may be the start of a stop string
    row = generation.hypotheses[0]
    for _, piece in generation.steps():
        if not opts.stop:
            yield piece
            continue
        held += piece
        if row.done and row.finish_reason == "stop":
            break
        safe = len(held) - _longest_stop_prefix(held, opts.stop)
        if safe > 0:
            yield held[:safe]
            held = held[safe:]
    if held:
        yield held


def _longest_stop_prefix(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
