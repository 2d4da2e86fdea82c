"""Word-level beam search over units.

``num_beams=K > 1``: each live hypothesis proposes its K best next units (a byte-level beam search of width K on
the decoder, rescored exactly); the K best by summed byte log-probability live on; finished hypotheses are ranked
by ``score / (units generated) ** length_penalty``. A prompt stops once K finished hypotheses beat its best live
one (as transformers does). :func:`ilt_core.generation.loop.generate` also runs the greedy continuation and keeps
it whenever no hypothesis beats its penalised score, so beam search is never worse than greedy by that measure.
"""

from __future__ import annotations

from typing import Any

from ilt_core.generation.decoding import (
    Decoding,
    Hypothesis,
    LatentState,
    UnitEmbeddings,
    append_unit,
    decode_unit_ids,
    forced_ids,
    score_unit_ids,
)

__all__ = ["beam_search", "penalised_score"]


def penalised_score(hyp: Hypothesis, length_penalty: float) -> float:
    """``score / decodes ** length_penalty``: how finished hypotheses are ranked."""
    return hyp.score / (max(hyp.decodes, 1) ** length_penalty)


def beam_search(model: Any, hyps: list[Hypothesis], decoding: Decoding) -> list[Hypothesis]:
    """Beam search of width ``decoding.options.num_beams`` from each hypothesis; the best of each prompt, in order.

    With one beam it is greedy decoding (the same units and scores).
    """
    K = decoding.options.num_beams
    lp = decoding.options.length_penalty
    latent = LatentState(model, UnitEmbeddings(model), decoding.options.use_cache)
    finished: dict[int, list[Hypothesis]] = {h.prompt: [] for h in hyps}
    live = [h for h in hyps if not h.done]
    for h in hyps:
        if h.done:
            finished[h.prompt].append(h)
    if live:
        latents = latent.start([h.context for h in live])
    while live:
        extra: dict[str, Any] = {"num_return_sequences": K}
        if K > 1:
            extra.update(num_beams=K, length_penalty=0.0, early_stopping=True, do_sample=False)
        given = forced_ids(model, live)  # a prompt's unfinished unit: its rest is proposed given its bytes
        ids = decode_unit_ids(model, latents, decoding, given, **extra)  # (len(live) * K) rows, K per hypothesis
        if given:
            given = [g for g in given for _ in range(K)]
            full = [g + r for g, r in zip(given, ids, strict=True)]
            scores = score_unit_ids(model, latents.repeat_interleave(K, dim=0), full, [len(g) for g in given])
        else:
            scores = score_unit_ids(model, latents.repeat_interleave(K, dim=0), ids)
        by_prompt: dict[int, list[tuple[float, int, list[int], float]]] = {}
        for i, h in enumerate(live):
            seen = set()
            for j in range(i * K, (i + 1) * K):
                if tuple(ids[j]) in seen:
                    continue
                seen.add(tuple(ids[j]))
                by_prompt.setdefault(h.prompt, []).append((h.score + scores[j], i, ids[j], scores[j]))
        next_live: list[Hypothesis] = []
        parents: list[int] = []
        for prompt, cands in by_prompt.items():
            cands.sort(key=lambda c: -c[0])
            kept = 0
            for _, parent, unit_ids, s in cands:
                if kept == K:
                    break
                p = live[parent]
                child = p.copy()
                child.done, child.finish_reason = False, "max_new_units"
                append_unit(model, child, unit_ids, s, decoding)
                if child.done:
                    finished[prompt].append(child)
                    continue
                next_live.append(child)
                parents.append(parent)
                kept += 1
            # stop this prompt once K finished hypotheses beat its best live one (as transformers does)
            done = sorted((penalised_score(f, lp) for f in finished[prompt]), reverse=True)
            best_live = max((penalised_score(c, lp) for c in next_live if c.prompt == prompt), default=None)
            if len(done) >= K and best_live is not None and best_live <= done[K - 1]:
                drop = [i for i, c in enumerate(next_live) if c.prompt == prompt]
                for i in reversed(drop):
                    finished[prompt].append(next_live.pop(i))
                    parents.pop(i)
        if not next_live:
            break
        latent.select(parents)
        live = next_live
        latents = latent.step([h.last_unit for h in live])
    return [max(finished[h.prompt], key=lambda f: penalised_score(f, lp)) for h in hyps]
