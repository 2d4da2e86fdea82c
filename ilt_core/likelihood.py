"""Log-likelihoods at any character boundary: the byte-level chain rule over units.

The model gives a text the probability of its units (segmentation), each unit the product of its bytes' and its
closing ``eos``'s probabilities given the latent after the units before it; a whole text ends with an end-of-text
``eos`` (:mod:`ilt_core.evaluation` scores exactly that). Written out, a text is a sequence of byte-level *events*:
each byte of each unit, then that unit's ``eos``.

A context and a continuation may meet anywhere, inside a unit too (lm_eval's ``"The capital is" + " Paris"``).
``log P(continuation | context)`` is the sum of the log-probabilities of the events of ``context + continuation``
(segmented as one text) that the context does not hold:

- the units the context completes are read, not scored; the context's last unit is never complete (more text
  could always extend it): its given bytes are read by the decoder (teacher-forced), not scored;
- then every later byte, and every ``eos`` after the context's end, is scored; the text's last unit gets no
  ``eos`` and there is no end-of-text (the continuation may go on).

So ``log P(ctx) + log P(cont | ctx) = log P(ctx + cont)`` with ``log P(s) = continuation_logprobs(model, [("",
s)])``, wherever segmenting ``ctx + cont`` keeps the units of ``ctx`` (true of spaced scripts away from a few
Unicode corner cases: a whitespace glued to a following combining mark, a word cut at the unit byte limit inside a
grapheme).

``is_greedy``: every scored byte and ``eos`` is the decoder's argmax, so greedy generation from the context
(:func:`ilt_core.generation.generate`, which is forced through an unfinished last unit) writes the continuation.
Two ``eos`` are scored but not checked, as generation never asks for them: the one right after a context whose
last unit ends in whitespace (generation takes that unit as finished), and the one after a unit of the byte limit
(generation cuts it there). A decoder that writes units segmentation would cut otherwise (a space inside a unit)
can generate a continuation whose own units are not greedy: ``is_greedy`` follows the text's segmentation.

Long inputs: a row holds at most ``window_units`` units after its start marker (default ``min(max_units - 1, 255)``,
the blocks :func:`ilt_core.evaluation.bits_per_byte` scores); earlier context is dropped from the left, and a
continuation longer than a row is scored in several rows. :func:`text_logprobs` scores whole texts (``eos`` and
end-of-text included) in those blocks, so its bits-per-byte equals :func:`~ilt_core.evaluation.bits_per_byte`'s.

Rows are sorted by length and run ``batch_size`` at a time through the model's forward (the latents ``(B, L, D)``),
then the scored units' bytes through :meth:`ILTModel.decode_logits` (teacher-forced ``(M, K, V)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ilt_core.errors import ILTError
from ilt_core.generation.decoding import finished_unit
from ilt_core.text.byte_tokenizer import EOS_ID
from ilt_core.text.collator import IGNORE_INDEX, TextUnits

__all__ = ["ContinuationScore", "TextScore", "continuation_logprobs", "text_logprobs", "window_units_of"]

#: Labels decoded at once: ``(M, K, V)`` float logits, about 34 MB at K = 33 bytes.
_LABEL_CHUNK = 1024


@dataclass(frozen=True)
class ContinuationScore:
    """``logprob``: natural log of P(continuation | context). ``is_greedy``: greedy decoding writes it."""

    logprob: float
    is_greedy: bool


@dataclass(frozen=True)
class TextScore:
    """A whole text's natural-log probability (every unit's ``eos`` and the end-of-text ``eos`` included), its
    UTF-8 bytes and units; bits-per-byte over texts is ``-sum(logprob) / ln 2 / sum(num_bytes)``."""

    logprob: float
    num_bytes: int
    num_units: int


@dataclass
class _Target:
    """One latent position's label: ``ids`` (a unit's bytes, ``eos`` unless it is the text's open end; or a lone
    end-of-text ``eos``). ``ids[:given]`` are read, not scored; ``ids[greedy_from:greedy_to]`` are checked for argmax."""

    request: int
    position: int
    ids: list[int]
    given: int = 0
    greedy_from: int = 0
    greedy_to: int | None = None  # None: to the end


@dataclass
class _Row:
    """What the latent reads after the start marker, and the labels of its positions."""

    units: list[str]
    targets: list[_Target] = field(default_factory=list)


def window_units_of(model: Any, window_units: int | None = None) -> int:
    """Units a row holds after its start marker: ``window_units`` or ``min(max_units - 1, 255)`` (as
    :func:`ilt_core.evaluation.bits_per_byte` blocks texts)."""
    limit = model.max_units - 1
    if window_units is None:
        return min(limit, 255)
    if isinstance(window_units, bool) or not isinstance(window_units, int) or not 1 <= window_units <= limit:
        raise ILTError(f"window_units={window_units!r}: expected an int in [1, {limit}] (the latent's context - 1)")
    return window_units


def _unit_ids(model: Any, units: Sequence[str]) -> list[list[int]]:
    return [model.processor.encode_unit(u) for u in units]


def _windows(first: int, n_units: int, window: int) -> list[tuple[int, int, int]]:
    """Rows ``(lo, a, b)`` that score units ``[a, b)`` (every unit of ``[first, n_units)`` once), each reading units
    ``[lo, b - 1)`` after its start marker (position ``i - lo`` predicts unit ``i``), at most ``window`` positions.

    One row when the scored units fit with their context cut from the left; a longer stretch is scored
    ``window // 2`` units a row, so each unit reads at least that many units before it (where the text has them).
    """
    if n_units - first <= window:
        return [(max(0, n_units - window), first, n_units)]
    out = []
    a = first
    while a < n_units:
        b = min(n_units, a + (window if a == 0 else max(1, window // 2)))
        out.append((max(0, b - window), a, b))
        a = b
    return out


def _continuation_rows(model: Any, request: int, context: str, continuation: str, window: int) -> list[_Row]:
    processor = model.processor
    units = processor.segment(context + continuation)
    ids = _unit_ids(model, units)
    split = len(processor.encode_unit(context))  # bytes of the context
    starts = [0]
    for x in ids:
        starts.append(starts[-1] + len(x))
    n = len(units)
    spec = model.spec
    byte_limit = spec.label_bytes if spec.labels == "bytes" else spec.max_unit_bytes  # generation's default
    # the first unit with an event after the split: its bytes run past it, or its eos falls at it
    first = next(i for i in range(n) if starts[i + 1] >= split)
    rows = []
    for lo, a, b in _windows(first, n, window):
        row = _Row(units[lo : b - 1])
        for i in range(a, b):
            label = ids[i] + ([EOS_ID] if i < n - 1 else [])
            given = max(0, split - starts[i])
            greedy_from, greedy_to = given, None
            if given == len(ids[i]) and finished_unit(units[i]):
                greedy_from += 1  # generation takes a context ending in whitespace as finished: no eos asked
            if len(ids[i]) >= byte_limit:
                greedy_to = len(ids[i])  # generation cuts a unit at the byte limit without asking for eos
            row.targets.append(_Target(request, i - lo, label, given, greedy_from, greedy_to))
        rows.append(row)
    return rows


def _text_rows(model: Any, request: int, text: str, window: int, context_units: int) -> tuple[list[_Row], int, int]:
    units = model.processor.segment(text)
    ids = _unit_ids(model, units)
    n = len(units)
    rows = []
    step = window - context_units
    a = 0
    while True:
        b = min(n, a + (window if a == 0 else step))
        lo = max(0, a - context_units) if a > 0 else 0
        row = _Row(units[lo:b])
        for i in range(a, b):
            row.targets.append(_Target(request, i - lo, ids[i] + [EOS_ID]))
        if b == n:  # end of text: a lone eos after the last unit
            row.targets.append(_Target(request, b - lo, [EOS_ID]))
            rows.append(row)
            break
        rows.append(row)
        a = b
    return rows, sum(len(x) for x in ids), n


def _score_rows(
    model: Any, rows: list[_Row], n_requests: int, batch_size: int, progress: Callable[[int, int], None] | None
) -> tuple[list[float], list[bool]]:
    """Summed log-probabilities (float64) and greedy flags per request."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ILTError(f"batch_size={batch_size!r}: expected an int >= 1")
    logprob = [0.0] * n_requests
    greedy = [True] * n_requests
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r].units))  # longest first: a full batch fails early
    was_training = model.training
    model.eval()
    processor = model.processor
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch_rows = [rows[r] for r in order[start : start + batch_size]]
                longest = max(len(r.units) for r in batch_rows) + 1
                batch = processor.collate(
                    [TextUnits(r.units, complete=False) for r in batch_rows], labels="unit", max_units=longest
                )
                inputs = batch.model_inputs()
                inputs["labels"] = None  # the latents only: the labels are built here
                hidden = model(**inputs).hidden_states  # (B, L, D)
                targets = [(b, t) for b, r in enumerate(batch_rows) for t in r.targets]
                for c in range(0, len(targets), _LABEL_CHUNK):
                    _score_targets(model, hidden, targets[c : c + _LABEL_CHUNK], logprob, greedy)
                if progress is not None:
                    progress(len(batch_rows), len(rows))
    finally:
        if was_training:
            model.train()
    return logprob, greedy


def _score_targets(
    model: Any, hidden: torch.Tensor, targets: list[tuple[int, _Target]], logprob: list[float], greedy: list[bool]
) -> None:
    device = hidden.device
    M, K = len(targets), max(len(t.ids) for _, t in targets)
    rows = torch.tensor([b for b, _ in targets], device=device)
    positions = torch.tensor([t.position for _, t in targets], device=device)
    labels = torch.full((M, K), IGNORE_INDEX, dtype=torch.long)
    scored = torch.zeros(M, K, dtype=torch.bool)
    checked = torch.zeros(M, K, dtype=torch.bool)
    for m, (_, t) in enumerate(targets):
        labels[m, : len(t.ids)] = torch.tensor(t.ids, dtype=torch.long)
        scored[m, t.given : len(t.ids)] = True
        checked[m, t.greedy_from : len(t.ids) if t.greedy_to is None else t.greedy_to] = True
    labels, scored, checked = labels.to(device), scored.to(device), checked.to(device)
    logits = model.decode_logits(hidden[rows, positions], labels).float()  # (M, K, V)
    logp = F.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    sums = logp.double().masked_fill(~scored, 0.0).sum(-1).tolist()
    argmax_ok = ((logits.argmax(-1) == labels) | ~checked).all(-1).tolist()
    for (_, t), s, ok in zip(targets, sums, argmax_ok, strict=True):
        logprob[t.request] += s
        greedy[t.request] = greedy[t.request] and bool(ok)


def continuation_logprobs(
    model: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    window_units: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[ContinuationScore]:
    """``log P(continuation | context)`` and ``is_greedy`` for each ``(context, continuation)`` pair (see the
    module docstring); an empty continuation scores ``0.0``, greedy.

    ``progress(rows_done, rows_total)`` is called after each batch (a long pair may take several rows).
    """
    window = window_units_of(model, window_units)
    rows: list[_Row] = []
    for k, pair in enumerate(pairs):
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise ILTError(f"pairs[{k}]: expected (context, continuation) strings, got {pair!r:.80}")
        if pair[1]:
            rows.extend(_continuation_rows(model, k, pair[0], pair[1], window))
    logprob, greedy = _score_rows(model, rows, len(pairs), batch_size, progress)
    return [ContinuationScore(lp, g) for lp, g in zip(logprob, greedy, strict=True)]


def text_logprobs(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    window_units: int | None = None,
    context_units: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[TextScore]:
    """Each whole text's log-probability, in rows of ``window_units`` units (default as :func:`window_units_of`).

    ``context_units=0``: consecutive blocks, each from its own start marker, as training and
    :func:`~ilt_core.evaluation.bits_per_byte` cut a long text (the same figures). ``context_units=c > 0``: every
    row after the first also reads the ``c`` units before the ones it scores (lm_eval's rolling windows with
    context): more context per prediction, more rows.
    """
    window = window_units_of(model, window_units)
    if isinstance(context_units, bool) or not isinstance(context_units, int) or not 0 <= context_units < window:
        raise ILTError(f"context_units={context_units!r}: expected an int in [0, {window - 1}] (below the window)")
    rows: list[_Row] = []
    sizes = []
    for k, text in enumerate(texts):
        if not isinstance(text, str):
            raise ILTError(f"texts[{k}]: expected a str, got {type(text).__name__}")
        text_rows, n_bytes, n_units = _text_rows(model, k, text, window, context_units)
        rows.extend(text_rows)
        sizes.append((n_bytes, n_units))
    logprob, _ = _score_rows(model, rows, len(sizes), batch_size, progress)
    return [TextScore(lp, b, u) for lp, (b, u) in zip(logprob, sizes, strict=True)]


def bits_per_byte_of(scores: Sequence[TextScore]) -> float:
    """Bits-per-byte over scored texts: ``-sum(logprob) / ln 2 / sum(num_bytes)``."""
    return -sum(s.logprob for s in scores) / math.log(2) / max(1, sum(s.num_bytes for s in scores))
