"""Greedy and sampling strategies: the next unit of each row from its latent.

- greedy (default): the decoder writes each unit greedily (or by whatever byte-level options were given).
- ``do_sample=True`` at temperature 1 without top-k / top-p: the decoder samples every byte from the model's
  own distribution, which is exactly a sample of the next unit from p(unit | context) (ancestral sampling).
- ``do_sample=True`` with ``temperature != 1``, ``top_k`` or ``top_p``: sampling-importance-resampling over
  ``unit_candidates`` units drawn as above. Each distinct candidate u is scored by log p(u) (the sum of its
  byte log-probabilities, ``eos`` included); top-k keeps the k most probable distinct candidates, top-p the
  most probable ones whose share of p(u)^(1/T) reaches p; one is drawn with weight
  count(u) * p(u)^(1/T - 1), which tends to p(u)^(1/T) as the number of candidates grows (exact at T = 1).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ilt_core.generation.decoding import Decoding, decode_unit_ids, score_unit_ids

__all__ = ["pick_units"]

# every byte from the model's own distribution, whatever the decoder's generation_config says
_ANCESTRAL = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)


def pick_units(
    model: Any, latents: torch.Tensor, decoding: Decoding, given: list[list[int]] | None = None
) -> tuple[list[list[int]], list[float] | None]:
    """One unit's ids per row of ``latents`` ``(N, D)``, and their scores (nats) when ``decoding.want_scores``.

    ``given``: per row, byte ids the decoder is forced through first (see
    :func:`~ilt_core.generation.decoding.decode_unit_ids`); the ids and scores returned are those written after
    them, scored given them.
    """
    options = decoding.options
    if not options.resampling:
        extra: dict[str, Any] = dict(_ANCESTRAL) if options.do_sample else {}
        ids = decode_unit_ids(model, latents, decoding, given, **extra)
        return ids, (_scores(model, latents, ids, given) if decoding.want_scores else None)

    C = options.unit_candidates
    repeated = latents.repeat_interleave(C, dim=0)  # (N * C, D)
    repeated_given = [g for g in given for _ in range(C)] if given else None
    cands = decode_unit_ids(model, repeated, decoding, repeated_given, **_ANCESTRAL)
    scores = _scores(model, repeated, cands, repeated_given)
    chosen, chosen_scores = [], []
    for n in range(latents.shape[0]):
        group: dict[tuple[int, ...], list[float]] = {}  # distinct candidate -> [log p, count]
        for ids, s in zip(cands[n * C : (n + 1) * C], scores[n * C : (n + 1) * C], strict=True):
            entry = group.setdefault(tuple(ids), [s, 0.0])
            entry[1] += 1
        pick = _resample(group, options.temperature, options.top_k, options.top_p)
        chosen.append(list(pick))
        chosen_scores.append(group[pick][0])
    return chosen, chosen_scores


def _scores(model: Any, latents: torch.Tensor, ids: list[list[int]], given: list[list[int]] | None) -> list[float]:
    """Scores of the written ``ids``, given each row's forced bytes."""
    if not given:
        return score_unit_ids(model, latents, ids)
    return score_unit_ids(model, latents, [g + r for g, r in zip(given, ids, strict=True)], [len(g) for g in given])


def _resample(
    group: dict[tuple[int, ...], list[float]], temperature: float, top_k: int | None, top_p: float | None
) -> tuple[int, ...]:
    """Draw one distinct candidate from ``group`` (candidate -> [log p, count]) as the module docstring says."""
    order = sorted(group, key=lambda k: -group[k][0])  # most probable first
    if top_k is not None:
        order = order[:top_k]
    if top_p is not None:
        q = torch.softmax(torch.tensor([group[k][0] / temperature for k in order], dtype=torch.float64), 0)
        keep = int((q.cumsum(0) < top_p).sum()) + 1
        order = order[:keep]
    weights = torch.tensor(
        [math.log(group[k][1]) + (1.0 / temperature - 1.0) * group[k][0] for k in order], dtype=torch.float64
    )
    return order[int(torch.multinomial(torch.softmax(weights, 0), 1))]
