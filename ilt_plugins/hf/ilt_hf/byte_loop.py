"""The greedy byte loop of the fused Llama step: buffers kept per shape, every byte step the same shapes.

Every row stays in the batch until the unit is done (finished rows write ``pad``), the KV buffers are preallocated
and the position is a device tensor, so every byte step runs the same ops on the same shapes and reads nothing back
to the host but one check of whether every row has ended; on a CUDA device the step is captured once as a CUDA graph
(:data:`CUDA_GRAPHS`). The step's weights and maths: :mod:`ilt_hf.fused_llama`; the entry point:
:func:`ilt_hf.fast_greedy.greedy_decode`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ilt_hf import fused_llama
from ilt_hf.cuda_graphs import capture
from ilt_hf.fused_llama import Dims, FusedLlamaWeights

__all__ = ["ByteLoop", "Rules", "first_check", "fused_llama_greedy"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rules:
    """What both loops obey: how many ids to write, the special ids, the barred ids, the minimum before ``eos``."""

    max_new_tokens: int
    eos_id: int
    pad_id: int
    suppress: list[int]
    min_new_tokens: int

    def bar(self, logits: torch.Tensor, t: int) -> None:
        """Bar ``suppress`` (and ``eos`` before ``min_new_tokens``) at step ``t`` in place, as transformers does."""
        if self.suppress:
            logits[:, self.suppress] = float("-inf")
        if t < self.min_new_tokens:
            logits[:, self.eos_id] = float("-inf")

    def biases(self, vocab: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive logit biases ``(V,)``: 0, or -inf where barred; the first also bars ``eos`` (before the minimum).

        Adding 0 leaves a logit exactly as it was, so ``argmax(logits + bias)`` is what :meth:`bar` then ``argmax``
        give, in one ``addmm`` with the output head.
        """
        late = like.new_zeros(vocab)
        if self.suppress:
            late[self.suppress] = float("-inf")
        early = late.clone()
        early[self.eos_id] = float("-inf")
        return early, late


class ByteLoop:
    """The fused Llama decoder's state for one greedy call, and its two steps.

    Buffers (``N`` rows, ``total = T0 + max_new_tokens`` columns): keys/values ``(N, Hkv, total, hd)`` per layer
    (zeros: a column not yet written is masked, and must hold no NaN for the masked product), ``out``
    ``(N, max_new_tokens)`` ids, ``token`` ``(N,)`` the last id of each row, ``done`` ``(N,)`` rows that wrote
    ``eos``, ``pos`` ``(1,)`` the column of the next byte. :meth:`prefix` reads the ``T0`` prefix positions;
    :meth:`step` writes one byte for every row, finished ones included (they write ``pad``), in place and with the
    same shapes at every position: no value is read back to the host, so a run of steps is one CUDA graph.
    """

    def __init__(self, lm: Any, fused: FusedLlamaWeights, embeds: torch.Tensor, rules: Rules) -> None:
        cfg = lm.config
        self.fused, self.rules = fused, rules
        N, T0, D = embeds.shape
        H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        hd = getattr(cfg, "head_dim", None) or D // H
        total = T0 + rules.max_new_tokens
        dtype = lm.model.embed_tokens.weight.dtype
        device = embeds.device
        positions = torch.arange(total, device=device)
        cos, sin = lm.model.rotary_emb(embeds.to(dtype), positions[None])  # (1, total, hd)
        # per position, one row for q's and k's heads side by side: (total, Q + K). rotate_half(x) * sin, per head
        # [-x2 * s1, x1 * s2], is the halves swapped times [-s1, s2] (negation is exact)
        self.cos = cos[0].to(dtype).repeat(1, H + Hkv)
        sign = torch.tensor([-1.0, 1.0], dtype=dtype, device=device)[:, None]
        self.sin = (sin[0].to(dtype).view(total, 2, hd // 2) * sign).reshape(total, hd).repeat(1, H + Hkv)
        self.keys = [embeds.new_zeros(N, Hkv, total, hd, dtype=dtype) for _ in fused.layers]
        self.values = [embeds.new_zeros(N, Hkv, total, hd, dtype=dtype) for _ in fused.layers]
        self.columns = positions  # (total,)
        self.norm_w = lm.model.norm.weight.detach()
        self.head_t = lm.get_output_embeddings().weight.detach().t()  # (D, V)
        self.embed_w = lm.model.embed_tokens.weight.detach()
        self.early, self.late = rules.biases(self.head_t.shape[1], self.head_t)
        inter = fused.layers[0][4].shape[0] // 2 if fused.layers else 0
        self.dims = Dims(D, H, Hkv, hd, H * hd, Hkv * hd, inter, float(cfg.rms_norm_eps), H != Hkv)
        self.N, self.T0, self.dtype = N, T0, dtype
        self.out = torch.full((N, rules.max_new_tokens), rules.pad_id, dtype=torch.long, device=device)
        self.token = torch.full((N,), rules.pad_id, dtype=torch.long, device=device)
        self.done = torch.zeros(N, dtype=torch.bool, device=device)
        self.pos = torch.full((1,), T0, dtype=torch.long, device=device)
        self.cpu = device.type == "cpu"
        self.lock = threading.Lock()  # one call at a time uses these buffers
        self.graph: Any = None  # the captured step (CUDA), or None: eager steps
        self.graph_failed = False

    def reset(self) -> None:
        """Ready the buffers for a new call, in place (a captured graph keeps reading the same tensors). Columns
        still holding an earlier call's keys are masked until this call writes them."""
        self.out.fill_(self.rules.pad_id)
        self.token.fill_(self.rules.pad_id)
        self.done.zero_()
        self.pos.fill_(self.T0)

    def capture(self) -> None:
        """Record :meth:`step` as one CUDA graph (after two warm-up steps on a side stream, as CUDA graphs need);
        on failure the loop stays eager and says why once. The buffers need a :meth:`reset` after it."""
        try:
            self.graph, _ = capture(self.step, self.out.device, warmup=2)
        except Exception as exc:  # a capture the device or its driver refuses: eager steps give the same ids
            self.graph_failed = True
            logger.warning("ilt_hf: the greedy byte step could not be captured as a CUDA graph, running eager: %s", exc)

    def advance(self) -> None:
        """One byte step: the captured graph's replay, or :meth:`step`."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.step()

    def _layers(self, x: torch.Tensor, rows: int, attend: Any) -> torch.Tensor:
        numpy_layers = (
            self.fused.numpy_layers if fused_llama.NUMPY_PRODUCTS and self.cpu else []
        )  # decided at every call
        # multiply-adds of one row's largest product
        if numpy_layers and rows * max(w.size for w in numpy_layers[0]) <= fused_llama.NUMPY_MAX_MULTIPLY_ADDS:
            return fused_llama.numpy_layers(x, self.fused, numpy_layers, attend, self.dims)
        return fused_llama.torch_layers(x, self.fused, attend, self.dims)

    def _next(self, last: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The greedy id ``(N,)`` after hidden states ``(N, D)``; the output head adds ``bias`` in its product."""
        d, numpy_head = self.dims, self.fused.numpy_head
        normed = F.rms_norm(last, (d.D,), self.norm_w, d.eps)
        if (
            numpy_head is not None
            and fused_llama.NUMPY_PRODUCTS
            and self.N * numpy_head.size <= fused_llama.NUMPY_MAX_MULTIPLY_ADDS
        ):
            logits = fused_llama.numpy_matmul(normed, numpy_head).add_(bias)
        else:
            logits = torch.addmm(bias, normed, self.head_t)
        return logits.argmax(-1)

    def prefix(self, embeds: torch.Tensor) -> None:
        """Read the prefix ``(N, T0, D)`` into columns ``0 .. T0``; write the first id."""
        N, T0, D = self.N, self.T0, self.dims.D
        c, s = self.cos[:T0], self.sin[:T0]

        def attend(y: torch.Tensor, i: int) -> torch.Tensor:
            return fused_llama.attend_prefix(y, i, N, T0, 0, c, s, self.keys, self.values, self.dims)

        x = self._layers(embeds.to(self.dtype).reshape(N * T0, D), N * T0, attend)
        last = x if T0 == 1 else x.view(N, T0, D)[:, -1]
        token = self._next(last, self.early if self.rules.min_new_tokens > 0 else self.late)
        self._write(token, 0)

    def _write(self, token: torch.Tensor, column: int | torch.Tensor) -> None:
        """Record ids ``(N,)`` at ``column`` of ``out`` (``pad`` for rows already done), in place."""
        token = token.masked_fill(self.done, self.rules.pad_id)
        if isinstance(column, int):
            self.out[:, column] = token
        else:
            self.out.index_copy_(1, column, token[:, None])
        self.done.logical_or_(token == self.rules.eos_id)
        self.token.copy_(token)

    def step(self) -> None:
        """One byte for every row at column ``pos``, all in place; ``pos`` moves on by one."""
        pos = self.pos
        c, s = self.cos.index_select(0, pos), self.sin.index_select(0, pos)  # (1, Q + K)
        visible = (self.columns <= pos).view(1, 1, 1, -1)

        def attend(y: torch.Tensor, i: int) -> torch.Tensor:
            return fused_llama.attend_static(y, i, pos, c, s, visible, self.keys, self.values, self.dims)

        x = self._layers(F.embedding(self.token, self.embed_w), self.N, attend)
        t = pos - (self.T0 - 1)  # (1,): the id this step writes
        bias = self.late
        if self.rules.min_new_tokens > 0:
            bias = torch.where(t < self.rules.min_new_tokens, self.early, self.late)
        self._write(self._next(x, bias), t)
        pos.add_(1)


#: Bytes the fused loop writes before it first reads whether every row has ended, when the caller gives no hint
#: (``check_at``): a fraction of the byte limit.
FIRST_CHECK_SHARE = 0.5


@torch.no_grad()
def fused_llama_greedy(
    lm: Any, fused: FusedLlamaWeights, embeds: torch.Tensor, rules: Rules, check_at: int | None
) -> torch.Tensor:
    """The fused Llama loop: ids ``(N, max_new_tokens)``.

    Tokens are rows of 2-D tensors; keys/values are preallocated per layer (:class:`ByteLoop`). The prefix step
    reads the ``T0`` prefix positions; each byte step after it has the same shapes (every row stays, finished ones
    write ``pad``), and nothing is read back to the host inside the loop but one check, after ``check_at`` bytes,
    of whether every row has ended (the loop stops there if so, else runs to ``max_new_tokens``). The loop's
    buffers are kept per shape for the next call (:data:`KEPT_LOOPS`); on a CUDA device its byte step is captured
    once as a CUDA graph and replayed (:data:`CUDA_GRAPHS`; eager if the capture fails).
    Per layer and byte about a dozen calls: the norm, one product for q/k/v, RoPE on q and k together, two cache
    writes, attention, the output projection with its residual in one ``addmm``, the norm, gate/up, SiLU and
    product in place, and ``down`` with its residual in one ``addmm``; the output head adds the barred ids' ``-inf``
    in its ``addmm``. Float32 on a CPU, a step whose largest product has at most :data:`ilt_hf.fused_llama.NUMPY_MAX_MULTIPLY_ADDS`
    multiply-adds runs its products in numpy (the residuals and biases added after each product).
    """
    fused.refresh(lm)
    loop, kept = loop_for(lm, fused, embeds, rules)
    try:
        if kept and loop.graph is None and not loop.graph_failed and _wants_graph(embeds, rules):
            loop.reset()
            loop.capture()
        loop.reset()
        loop.prefix(embeds)
        check = max(first_check(rules, check_at), rules.min_new_tokens + 1)
        for t in range(1, rules.max_new_tokens):
            if t == check and bool(loop.done.all()):
                break
            loop.advance()
        return loop.out.clone() if kept else loop.out  # a kept loop's buffer is the next call's
    finally:
        if kept:
            loop.lock.release()


#: Byte loops kept per decoder for reuse (their buffers and captured graph), one per shape and rule set.
KEPT_LOOPS = 8
#: Whether the fused loop replays its byte step as a CUDA graph on a CUDA device (captured once per kept loop).
CUDA_GRAPHS = True


def _wants_graph(embeds: torch.Tensor, rules: Rules) -> bool:
    return (
        CUDA_GRAPHS
        and embeds.device.type == "cuda"
        and rules.max_new_tokens >= 3  # room for the capture's warm-up steps
        and not torch.cuda.is_current_stream_capturing()
    )


def loop_for(lm: Any, fused: FusedLlamaWeights, embeds: torch.Tensor, rules: Rules) -> tuple[ByteLoop, bool]:
    """A kept loop for this shape and these rules, locked for this call (made and kept when new), and True; or a
    fresh loop and False when the kept one is in use on another thread."""
    N, T0, _ = embeds.shape
    key = (N, T0, rules.max_new_tokens, rules.eos_id, rules.pad_id, tuple(rules.suppress), rules.min_new_tokens)
    # buffers made in inference mode cannot be written outside it (nor the other way round): kept apart
    key += (embeds.device, lm.model.embed_tokens.weight.dtype, torch.is_inference_mode_enabled())
    with _KEEPING:
        loop = fused.loops.get(key)
        if loop is None:
            loop = fused.loops[key] = ByteLoop(lm, fused, embeds, rules)
            while len(fused.loops) > KEPT_LOOPS:
                fused.loops.popitem(last=False)
        fused.loops.move_to_end(key)
        if not loop.lock.acquire(blocking=False):
            return ByteLoop(lm, fused, embeds, rules), False
    return loop, True


_KEEPING = threading.Lock()


def first_check(rules: Rules, check_at: int | None) -> int:
    """After how many written bytes the loop reads, once, whether every row has ended."""
    if check_at is None:
        return max(1, int(rules.max_new_tokens * FIRST_CHECK_SHARE))
    return max(1, int(check_at))
