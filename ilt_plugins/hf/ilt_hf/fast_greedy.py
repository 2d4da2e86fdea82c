"""Greedy byte decoding without ``transformers.generate``: a short loop over a preallocated KV cache.

A bytes decoder writes a few dozen bytes per unit, and at these sizes (a 2-4 layer decoder, 256 wide) every step is
bound by per-call overhead rather than arithmetic: ``generate`` spends more time preparing inputs, masks and its
cache than in the matrices. Two paths, both giving the same ids as ``generate(do_sample=False)``:

- Llama-family decoders run the fused step of :mod:`ilt_hf.fused_llama` in the loop of :mod:`ilt_hf.byte_loop`
  (preallocated KV buffers, the same shapes at every byte, one CUDA graph on a GPU).
- Any other causal LM runs its own forward in a loop with a ``DynamicCache`` (the ``generate`` overhead goes, the
  model's own stays).

``benchmarks/bench_generation.py`` measures the effect; ``tests/test_fast_greedy.py`` checks equality with
``generate`` for batches, suppressed tokens and early ``eos``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ilt_hf.byte_loop import Rules, first_check, fused_llama_greedy
from ilt_hf.fused_llama import FusedLlamaWeights, fused_llama_supported

__all__ = ["greedy_decode", "fused_llama_supported", "FusedLlamaWeights"]


@torch.no_grad()
def _loop_greedy(lm: Any, embeds: torch.Tensor, rules: Rules, cache_arg: str, check_at: int | None) -> torch.Tensor:
    """Any causal LM's own forward in a loop over a ``DynamicCache``; finished rows write ``pad``, and whether every
    row has ended is read once, after ``check_at`` bytes (as :func:`ilt_hf.byte_loop.fused_llama_greedy`)."""
    from transformers import DynamicCache

    N, max_new_tokens = embeds.shape[0], rules.max_new_tokens
    out = torch.full((N, max_new_tokens), rules.pad_id, dtype=torch.long, device=embeds.device)
    cache = DynamicCache(config=lm.config)
    done = torch.zeros(N, dtype=torch.bool, device=embeds.device)
    result = lm(inputs_embeds=embeds, use_cache=True, return_dict=True, **{cache_arg: cache})
    check = max(first_check(rules, check_at), rules.min_new_tokens + 1)
    for t in range(max_new_tokens):
        logits = result.logits[:, -1].float()
        rules.bar(logits, t)
        token = logits.argmax(-1).masked_fill(done, rules.pad_id)
        out[:, t] = token
        done |= token == rules.eos_id
        if t + 1 == max_new_tokens or (t + 1 == check and bool(done.all())):
            break
        result = lm(input_ids=token[:, None], use_cache=True, return_dict=True, **{cache_arg: cache})
    return out


def greedy_decode(
    lm: Any,
    embeds: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    suppress_tokens: list[int] | None = None,
    min_new_tokens: int = 0,
    fused: FusedLlamaWeights | None = None,
    cache_arg: str = "past_key_values",
    check_at: int | None = None,
) -> torch.Tensor:
    """Greedy ids ``(N, max_new_tokens)`` from prefix embeddings ``(N, T0, D)``; after ``eos`` a row holds ``pad_id``.

    The same ids as ``lm.generate(inputs_embeds=embeds, do_sample=False, suppress_tokens=..., min_new_tokens=...)``
    (float rounding of the fused matrices aside); the prefix is all real (no padding mask). ``check_at``: after how
    many bytes the loop reads (its one host-device synchronisation) whether every row has ended, and stops if so;
    otherwise it runs to ``max_new_tokens`` (default: :data:`ilt_hf.byte_loop.FIRST_CHECK_SHARE` of it). The ids do not depend on it.
    """
    if max_new_tokens <= 0:
        return torch.empty(embeds.shape[0], 0, dtype=torch.long, device=embeds.device)
    rules = Rules(max_new_tokens, eos_id, pad_id, list(suppress_tokens or []), int(min_new_tokens or 0))
    with _few_rows_one_thread(embeds):
        if fused is not None and fused_llama_supported(lm.config):
            return fused_llama_greedy(lm, fused, embeds, rules, check_at)
        return _loop_greedy(lm, embeds, rules, cache_arg, check_at)


#: Up to this many rows the CPU loop runs on one intra-op thread (``None``: as the caller set). Each byte step is
#: a dozen products of a few rows by a small matrix (4 x 256 by 256 x 1280 at the reference setup's batch): with
#: two threads each product is a parallel region whose wake-up and join cost more than the split saves
#: (``benchmarks/bench_generation.py --decoder`` compares greedy against greedy on the caller's threads).
ONE_THREAD_ROWS: int | None = 16


@contextmanager
def _few_rows_one_thread(embeds: torch.Tensor) -> Iterator[None]:
    """One intra-op thread for a CPU batch of at most :data:`ONE_THREAD_ROWS` rows; the caller's count after."""
    threads = torch.get_num_threads()
    if ONE_THREAD_ROWS is None or embeds.device.type != "cpu" or embeds.shape[0] > ONE_THREAD_ROWS or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
