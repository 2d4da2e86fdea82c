"""The bench's models in lm_eval: ILT mixes as lm_eval's ``ilt`` model, the baselines through :class:`BaselineLMEval`.

The baselines are a transformers ``GPTNeoXForCausalLM`` over a codec of their own (UTF-8 bytes, or a ``tokenizers``
BPE), not a transformers tokenizer, so lm_eval's ``hf`` model cannot read them; this adapter scores them the way
lm_eval's ``hf`` model scores a causal LM:

- ``loglikelihood``: ``[start] context continuation``, the context's trailing whitespace moved into the
  continuation, the continuation's tokens those of the whole text after the context's (as lm_eval's ``hf`` model
  cuts them); the last ``block_size`` tokens are read; ``is_greedy`` when every continuation token is the argmax.
- ``loglikelihood_rolling``: the text as :meth:`~ilt_bench.baselines.BaselineLM.bits_per_byte` scores it (blocks
  of ``[start] tokens [end]``, the end-of-text token included), so lm_eval's bits-per-byte equals the bench's and
  stands beside ILT's, which counts the end of text too.
- ``generate_until``: greedy or sampled ``generate`` of ``max_gen_toks`` tokens (bytes for the byte baseline, BPE
  tokens for the other), cut before the first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM

__all__ = ["BaselineLMEval", "lm_eval_model"]


class BaselineLMEval(LM):
    """lm_eval's ``LM`` around a :class:`~ilt_bench.baselines.BaselineLM` (model, codec, block size)."""

    def __init__(self, baseline: Any, batch_size: int = 16, max_gen_toks: int = 256) -> None:
        super().__init__()
        self.baseline = baseline
        self.model = baseline.model
        self.codec = baseline.codec
        self.block_size = int(baseline.block_size)
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self._device = next(self.model.parameters()).device

    # ---- scoring rows: [start] tokens, the last `scored` tokens summed -------------------------------------------
    def _score(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """``(sum of log-probs, all argmax)`` of the last ``n`` tokens of each ``(ids, n)`` row (ids start with the
        start marker; at most ``block_size`` + 1 of them)."""
        out: list[tuple[float, bool] | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                width = max(len(rows[i][0]) for i in chunk) - 1
                ids = torch.full((len(chunk), width), self.codec.pad_id, dtype=torch.long)
                mask = torch.zeros(len(chunk), width, dtype=torch.long)
                for r, i in enumerate(chunk):
                    inp = rows[i][0][:-1]
                    ids[r, : len(inp)] = torch.tensor(inp)
                    mask[r, : len(inp)] = 1
                logits = self.model(input_ids=ids.to(self._device), attention_mask=mask.to(self._device)).logits
                logp = F.log_softmax(logits.float(), dim=-1)
                for r, i in enumerate(chunk):
                    full, n = rows[i]
                    end = len(full) - 1  # predictions of tokens 1..len-1 sit at positions 0..len-2
                    target = torch.tensor(full[end - n + 1 : end + 1], device=logp.device)
                    scores = logp[r, end - n : end]
                    picked = scores.gather(-1, target[:, None])[:, 0]
                    out[i] = (float(picked.double().sum()), bool((scores.argmax(-1) == target).all()))
        return [o if o is not None else (0.0, True) for o in out]

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        rows = []
        for r in requests:
            context, continuation = r.args
            spaces = len(context) - len(context.rstrip())
            if spaces:  # lm_eval's hf model: the context's trailing whitespace belongs to the continuation
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            context_ids = self.codec.encode(context)
            whole = self.codec.encode(context + continuation)
            cont = whole[len(context_ids) :]
            ids = ([self.codec.bos_id] + whole)[-(self.block_size + 1) :]
            rows.append((ids, min(len(cont), len(ids) - 1)))
        answers = self._score(rows)
        for r, a in zip(requests, answers, strict=True):
            self.cache_hook.add_partial("loglikelihood", r.args, a)
        return answers

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        rows, owner = [], []
        for k, r in enumerate(requests):
            for block in self.baseline.text_blocks(r.args[0]):
                rows.append((block, len(block) - 1))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (logprob, _) in zip(owner, self._score(rows), strict=True):
            totals[k] += logprob
        return totals

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for r in requests:
            context, kwargs = r.args[0], dict(r.args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            new = int(kwargs.pop("max_gen_toks", None) or self.max_gen_toks)
            do_sample = bool(kwargs.pop("do_sample", False))
            temperature = kwargs.pop("temperature", None)
            sampling = {"do_sample": True, "temperature": float(temperature or 1.0)} if do_sample else {}
            ids = ([self.codec.bos_id] + self.codec.encode(context))[-max(1, self.block_size - new) :]
            with torch.inference_mode():
                generated = self.model.generate(
                    input_ids=torch.tensor([ids], device=self._device),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self._device),
                    max_new_tokens=new,
                    eos_token_id=self.codec.eos_id,
                    pad_token_id=self.codec.pad_id,
                    **sampling,
                )
            text = self.codec.decode(generated[0, len(ids) :].tolist())
            cuts = [text.find(s) for s in until if s and s in text]
            out.append(text[: min(cuts)] if cuts else text)
        return out


def lm_eval_model(runner: Any, batch_size: int = 16) -> Any:
    """The lm_eval model of a bench runner: ``ilt`` for an ILT mix, :class:`BaselineLMEval` for a baseline."""
    if hasattr(runner, "lm"):
        return BaselineLMEval(runner.lm, batch_size=batch_size)
    from ilt_lm_eval.model import ILTLM

    return ILTLM(pretrained=runner.model, batch_size=batch_size, progress=False)  # the bench logs its own lines
