"""The lm_eval model ``ilt``: an :class:`~ilt_core.modeling.model.ILTModel` behind lm_eval's ``LM`` interface.

``model_args`` (``--model_args pretrained=DIR,batch_size=16,...``):

- ``pretrained``: a checkpoint folder written by ``save_pretrained`` / ``ilt train`` (or a hub id), or a model in
  memory (Python).
- ``device`` (default ``cuda`` when present, else ``cpu``), ``dtype`` (``float32``, ``bfloat16``, ``float16``).
- ``batch_size``: rows per forward (default 16; lm_eval's ``auto`` means the default here).
- ``window_units``: units a row holds after its start marker (default ``min(max_units - 1, 255)``, the blocks ``ilt
  eval`` scores); longer inputs are scored in several rows (:mod:`ilt_core.likelihood`).
- ``rolling_context``: units of context each ``loglikelihood_rolling`` window after the first reads besides the
  units it scores (default 0: consecutive blocks, each from its own start marker, exactly ``ilt eval``'s
  bits-per-byte; more gives each prediction more context, as lm_eval's rolling windows do, at more rows).
- ``max_gen_toks_unit``: what ``max_gen_toks`` counts in ``generate_until``: ``units`` (words with their
  whitespace, the default: the loop's ``max_new_units``) or ``bytes`` (UTF-8 bytes: it generates up to that many
  units and cuts the text at that many bytes, on a character boundary). ``max_gen_toks`` (default 256) is
  lm_eval's default when a task gives none.
- ``seed``: seeds sampling in ``generate_until`` (default: lm_eval's torch seed as set by its evaluator).
- ``progress``: progress bars (default true).

Requests:

- ``loglikelihood(context, continuation)``: ``log P(continuation | context)`` by the byte-level chain rule and
  ``is_greedy`` (:func:`ilt_core.likelihood.continuation_logprobs`); the pair may meet inside a unit (lm_eval's
  ``"...is" + " Paris"``).
- ``loglikelihood_rolling(text)``: the whole text's log-probability, every unit's ``eos`` and the end-of-text
  included (:func:`ilt_core.likelihood.text_logprobs`): lm_eval's ``bits_per_byte`` on it equals ``ilt eval``'s.
- ``generate_until(context, {until, max_gen_toks, do_sample, temperature, top_k, top_p, ...})``:
  :func:`ilt_core.generation.generate` (continuing inside a word when the context ends inside one), cut before
  the first stop string; ``do_sample`` with ``temperature`` / ``top_k`` / ``top_p`` is word-level sampling, other
  keys are :class:`~ilt_core.generation.GenerationOptions` fields or byte-level options. A context longer than
  the latent's reach keeps its last units, leaving room for the continuation.

Requests run sorted by length in batches of ``batch_size`` rows, on the model's device, with a progress bar; each
answer goes to lm_eval's request cache (``--use_cache``). One process, one device (no data parallelism).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from ilt_core.errors import ILTError
from ilt_core.generation import GenerationOptions, generate
from ilt_core.likelihood import continuation_logprobs, text_logprobs
from ilt_core.modeling.model import ILTModel

__all__ = ["ILTLM"]

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_TOKS = 256
# lm_eval's generation keys that are not GenerationOptions fields, and the ones handled here
_LM_EVAL_KEYS = {"until", "max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"}


def _batch_size(value: Any) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ILTError(f"batch_size={value!r}: expected a positive int (or auto)") from None
    if size < 1:
        raise ILTError(f"batch_size={value!r}: expected a positive int (or auto)")
    return size


class _Progress:
    """A tqdm bar fed by the core's ``progress(done, total)`` callbacks (rows, known after the first batch)."""

    def __init__(self, desc: str, disable: bool) -> None:
        self.desc, self.disable = desc, disable
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="row", disable=self.disable)
        self.bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@register_model("ilt")
class ILTLM(LM):
    """lm_eval's ``LM`` for ILT models; see the module docstring for ``model_args`` and the three requests."""

    def __init__(
        self,
        pretrained: str | ILTModel,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,
        window_units: int | None = None,
        rolling_context: int = 0,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        max_gen_toks_unit: str = "units",
        seed: int | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(f"ilt: device={device!r} but no CUDA device is available: running on the CPU", stacklevel=2)
            device = "cpu"  # lm_eval's command line asks for cuda unless told otherwise
        if isinstance(pretrained, ILTModel):
            model = pretrained
            if device is not None:
                model = model.to(device)
        else:
            if not isinstance(pretrained, str) or not pretrained:
                raise ILTError(f"pretrained={pretrained!r}: expected a checkpoint folder (model_args pretrained=DIR)")
            wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = ILTModel.from_pretrained(pretrained, map_location=wanted, dtype=dtype)
        if dtype is not None and isinstance(pretrained, ILTModel):
            found = getattr(torch, str(dtype), None)
            if not isinstance(found, torch.dtype):
                raise ILTError(f"dtype={dtype!r}: expected a torch dtype (float32, bfloat16, float16)")
            model = model.to(found)
        self.model = model  # each request runs it in eval mode and gives the caller's mode back
        self._device = self.model.encoder_mapping.weight.device
        self.batch_size = _batch_size(batch_size)
        if max_gen_toks_unit not in ("units", "bytes"):
            raise ILTError(f"max_gen_toks_unit={max_gen_toks_unit!r}: expected 'units' or 'bytes'")
        self.max_gen_toks_unit = max_gen_toks_unit
        self.max_gen_toks = int(max_gen_toks)
        self.window_units = None if window_units is None else int(window_units)
        self.rolling_context = int(rolling_context)
        self.seed = None if seed is None else int(seed)
        self.progress = bool(progress)
        self.model_name = pretrained if isinstance(pretrained, str) else type(pretrained).__name__

    @property
    def max_length(self) -> int:
        """Units the latent reads, its start marker included."""
        return int(self.model.max_units)

    # ---- the three requests -----------------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log P(continuation | context), is_greedy)`` for each request's ``args = (context, continuation)``."""
        pairs = [tuple(r.args) for r in requests]
        progress = _Progress("ilt loglikelihood", self._quiet(disable_tqdm))
        try:
            scores = continuation_logprobs(
                self.model, pairs, batch_size=self.batch_size, window_units=self.window_units, progress=progress
            )
        finally:
            progress.close()
        out = []
        for pair, s in zip(pairs, scores, strict=True):
            answer = (float(s.logprob), bool(s.is_greedy))
            self.cache_hook.add_partial("loglikelihood", pair, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        """Each request's whole text ``args = (text,)``: its log-probability, ``eos`` and end of text included."""
        texts = [r.args[0] for r in requests]
        progress = _Progress("ilt loglikelihood_rolling", self._quiet(disable_tqdm))
        try:
            scores = text_logprobs(
                self.model,
                texts,
                batch_size=self.batch_size,
                window_units=self.window_units,
                context_units=self.rolling_context,
                progress=progress,
            )
        finally:
            progress.close()
        out = []
        for text, s in zip(texts, scores, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), float(s.logprob))
            out.append(float(s.logprob))
        return out

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Continue each request's ``args = (context, gen_kwargs)``; the text before the first stop string."""
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # one option set per group, as lm_eval batches them
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), desc="ilt generate_until", disable=self._quiet(disable_tqdm))
        for members in groups.values():
            kwargs = dict(requests[members[0]].args[1])
            options, max_gen, until = self._options(kwargs)
            prompts = {i: self._fit_prompt(requests[i].args[0], options.max_new_units) for i in members}
            order = sorted(members, key=lambda i: -len(prompts[i]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                texts = generate(self.model, [prompts[i] for i in chunk], options=options)
                for i, text in zip(chunk, texts, strict=True):
                    if self.max_gen_toks_unit == "bytes":
                        text = text.encode("utf-8", "surrogatepass")[:max_gen].decode("utf-8", "ignore")
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[1]), text)
                bar.update(len(chunk))
        bar.close()
        return [r if r is not None else "" for r in results]

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _quiet(self, disable_tqdm: bool) -> bool:
        return disable_tqdm or not self.progress or self.rank != 0

    def _options(self, kwargs: dict[str, Any]) -> tuple[GenerationOptions, int, list[str]]:
        """GenerationOptions for one group of lm_eval's ``gen_kwargs``; the ``max_gen_toks`` and stop strings."""
        until = kwargs.pop("until", None) or []
        if isinstance(until, str):
            until = [until]
        max_gen = self.max_gen_toks
        for key in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"):
            if kwargs.get(key) is not None:
                max_gen = int(kwargs[key])
                break
        for key in _LM_EVAL_KEYS:
            kwargs.pop(key, None)
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = kwargs.pop("temperature", None)
        if temperature is not None and float(temperature) == 0.0:  # lm_eval's greedy
            do_sample, temperature = False, None
        fields: dict[str, Any] = {"do_sample": do_sample}
        if do_sample:
            if temperature is not None:
                fields["temperature"] = float(temperature)
            for key in ("top_k", "top_p"):
                if kwargs.get(key) is not None:
                    fields[key] = kwargs.pop(key)
        else:
            kwargs.pop("top_k", None), kwargs.pop("top_p", None)
        if self.seed is not None:
            fields.setdefault("seed", self.seed)
        try:
            options = GenerationOptions.from_kwargs(
                max_new_units=max(1, max_gen), stop=[s for s in until if s], **fields, **kwargs
            )
        except TypeError as exc:
            raise ILTError(f"generate_until: gen_kwargs {kwargs!r}: {exc}") from None
        return options, max_gen, until

    def _fit_prompt(self, prompt: str, new_units: int) -> str:
        """The prompt, or its last units when it is longer than the latent's reach less room for new units."""
        units = self.model.processor.segment(prompt)
        room = self.max_length - 1 - min(new_units, (self.max_length - 1) // 2)
        return prompt if len(units) <= room else "".join(units[-room:])
