"""Greedy byte decoding without ``transformers.generate``: a short loop over a preallocated KV cache.

A bytes decoder writes a few dozen bytes per unit, and at these sizes (a 2-4 layer decoder, 256 wide) every step is
bound by per-call overhead rather than arithmetic: ``generate`` spends more time preparing inputs, masks and its
cache than in the matrices. Two paths, both giving the same ids as ``generate(do_sample=False)``:

- Llama-family decoders (``model_type`` llama, no biases, plain RoPE, SiLU MLP; e.g. tiny-lm) run a hand-written
  step with q/k/v and gate/up fused into one matrix each, a static KV cache and ``F.rms_norm``: about half the
  calls of the transformers layer. Finished rows leave the batch.
  On a CPU in float32 its products with few rows go through numpy (OpenBLAS's single-threaded small-matrix
  kernels, faster than MKL's for so few rows on some CPUs; :data:`NUMPY_MAX_MULTIPLY_ADDS`); larger ones, and any
  other device or dtype, through torch.
- Any other causal LM runs its own forward in a loop with a ``DynamicCache`` (the ``generate`` overhead goes, the
  model's own stays).

``benchmarks/bench_generation.py`` measures the effect; ``tests/test_fast_greedy.py`` checks equality with
``generate`` for batches, suppressed tokens and early ``eos``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ilt_core.modeling.products import numpy_matmul
from ilt_hf.cuda_graphs import capture
from ilt_hf.fused_weights import FusedWeights

__all__ = ["greedy_decode", "fused_llama_supported", "FusedLlamaWeights"]

logger = logging.getLogger(__name__)


def fused_llama_supported(config: Any) -> bool:
    """True when the config is a plain Llama the fused step reproduces exactly."""
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    return (
        getattr(config, "model_type", None) == "llama"
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
        and getattr(config, "hidden_act", None) == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
        and rope_type == "default"
    )


#: Products of at most this many multiply-adds (rows x inner x columns) with float32 CPU operands go through numpy
#: (OpenBLAS) instead of torch (MKL), when :data:`NUMPY_PRODUCTS` is on. A byte step's products have a few rows
#: (4 x 256 by 256 x 768 at the reference setup), and on some CPUs MKL's kernels for so few rows are slower than
#: OpenBLAS's small-matrix kernels (``benchmarks/bench_generation.py --decoder`` compares them); OpenBLAS takes that
#: single-threaded small-matrix path up to 100^3 multiply-adds and starts its own threads above it.
NUMPY_MAX_MULTIPLY_ADDS = 1_000_000
#: Whether the fused Llama loop sends its small CPU products to numpy (see :data:`NUMPY_MAX_MULTIPLY_ADDS`).
NUMPY_PRODUCTS = True


class FusedLlamaWeights(FusedWeights):
    """Per layer: input norm, q/k/v in one matrix, o (transposed), post-attention norm, gate/up in one matrix,
    down (transposed): the transposed ones are the second operand of an ``addmm`` that adds the residual.

    For float32 CPU weights also ``numpy_layers`` (per layer q/k/v, o, gate, up, down as C-ordered ``(in, out)``
    numpy arrays) and ``numpy_head`` ``(D, V)``: copies (the decoder's size again) for the numpy products, made only
    for a decoder whose one-row products fit :data:`NUMPY_MAX_MULTIPLY_ADDS` (a larger one never uses them).
    """

    def build(self, lm: Any) -> None:
        # byte loops kept for reuse hold these weights (a captured graph, their addresses): dropped with them
        self.loops: OrderedDict[tuple, _ByteLoop] = OrderedDict()
        self.numpy_layers: list[tuple[np.ndarray, ...]] = []
        self.numpy_head: np.ndarray | None = None
        head = lm.get_output_embeddings().weight
        cfg = lm.config
        width = int(cfg.hidden_size)
        one_row = width * max(int(cfg.intermediate_size), 3 * width)  # about the largest product of one row
        if head.device.type == "cpu" and head.dtype == torch.float32 and one_row <= NUMPY_MAX_MULTIPLY_ADDS:

            def as_numpy(w: torch.Tensor) -> np.ndarray:
                return w.detach().t().contiguous().numpy()  # (in, out), C-ordered: OpenBLAS's fast layout

            for layer in lm.model.layers:
                a, m = layer.self_attn, layer.mlp
                qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
                self.numpy_layers.append(
                    (as_numpy(qkv), as_numpy(a.o_proj.weight), as_numpy(m.gate_proj.weight))
                    + (as_numpy(m.up_proj.weight), as_numpy(m.down_proj.weight))
                )
            self.numpy_head = as_numpy(head)
        layers = []
        for layer in lm.model.layers:
            a, m = layer.self_attn, layer.mlp
            qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()
            gate_up = torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach()
            layers.append(
                (
                    layer.input_layernorm.weight.detach(),
                    qkv,
                    a.o_proj.weight.detach().t(),  # (H * hd, D): x + att @ this in one addmm
                    layer.post_attention_layernorm.weight.detach(),
                    gate_up,
                    m.down_proj.weight.detach().t(),  # (I, D)
                )
            )
        self.layers = layers


@dataclass(frozen=True)
class _Rules:
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


@dataclass(frozen=True)
class _Dims:
    """The sizes a byte step reads: width, heads, key/value heads, head size, q and k widths, MLP width, norm eps."""

    D: int
    H: int
    Hkv: int
    hd: int
    Q: int
    K: int
    inter: int
    eps: float
    gqa: bool


def _rope(qk: torch.Tensor, c: torch.Tensor, s: torch.Tensor, d: _Dims) -> torch.Tensor:
    """RoPE on q and k side by side ``(..., Q + K)``: a multiply, the halves swapped, one ``addcmul``."""
    swapped = qk.unflatten(-1, (d.H + d.Hkv, 2, d.hd // 2)).flip(-2).flatten(-3)  # per head [x2, x1]
    return torch.addcmul(qk * c, swapped, s)


def _attend(
    y: torch.Tensor,
    i: int,
    n: int,
    L: int,
    start: int,
    c: torch.Tensor,
    s: torch.Tensor,
    keys: list,
    values: list,
    d: _Dims,
) -> torch.Tensor:
    """The prefix: RoPE on q and k of ``y`` ``(n * L, Q + 2K)``, its keys/values into columns ``start .. start + L``
    of layer ``i``'s cache, causal attention over the columns filled so far: ``(n * L, Q)``."""
    Q, K, hd, end = d.Q, d.K, d.hd, start + L
    y = y.view(n, L, -1)
    qk = _rope(y[..., : Q + K], c, s, d)  # (n, L, Q + K)
    keys[i][:, :, start:end] = qk[..., Q:].view(n, L, d.Hkv, hd).transpose(1, 2)
    values[i][:, :, start:end] = y[..., Q + K : Q + K + K].view(n, L, d.Hkv, hd).transpose(1, 2)
    q = qk[..., :Q].view(n, L, d.H, hd).transpose(1, 2)
    att = F.scaled_dot_product_attention(
        q, keys[i][:, :, :end], values[i][:, :, :end], is_causal=L > 1, enable_gqa=d.gqa
    )
    return att.transpose(1, 2).reshape(n * L, Q)


def _attend_static(
    y: torch.Tensor,
    i: int,
    pos: torch.Tensor,
    c: torch.Tensor,
    s: torch.Tensor,
    visible: torch.Tensor,
    keys: list,
    values: list,
    d: _Dims,
) -> torch.Tensor:
    """One byte per row, shapes independent of the position: ``y`` ``(N, Q + 2K)``; its key/value written at column
    ``pos`` ``(1,)`` (a device tensor) of layer ``i``'s whole cache, attention over every column with ``visible``
    ``(1, 1, 1, total)`` (columns up to ``pos``): ``(N, Q)``."""
    Q, K, hd, N = d.Q, d.K, d.hd, y.shape[0]
    qk = _rope(y[:, : Q + K], c, s, d)  # (N, Q + K)
    keys[i].index_copy_(2, pos, qk[:, Q:].view(N, d.Hkv, 1, hd))
    values[i].index_copy_(2, pos, y[:, Q + K : Q + K + K].view(N, d.Hkv, 1, hd))
    q = qk[:, :Q].view(N, d.H, 1, hd)
    att = F.scaled_dot_product_attention(q, keys[i], values[i], attn_mask=visible, enable_gqa=d.gqa)
    return att.view(N, Q)


def _torch_layers(x: torch.Tensor, fused: Any, attend: Any, d: _Dims) -> torch.Tensor:
    """Every layer for tokens ``x`` ``(rows, D)`` with torch's products; ``attend(y, layer)`` -> ``(rows, Q)``."""
    D, eps, inter = d.D, d.eps, d.inter
    for i, (w_in, w_qkv, w_o_t, w_post, w_gu, w_down_t) in enumerate(fused.layers):
        y = F.linear(F.rms_norm(x, (D,), w_in, eps), w_qkv)  # q, k, v
        x = torch.addmm(x, attend(y, i), w_o_t)
        gu = F.linear(F.rms_norm(x, (D,), w_post, eps), w_gu)
        gate = F.silu(gu[:, :inter], inplace=True).mul_(gu[:, inter:])
        x = torch.addmm(x, gate, w_down_t)
    return x


def _numpy_layers(x: torch.Tensor, fused: Any, numpy_layers: list, attend: Any, d: _Dims) -> torch.Tensor:
    """:func:`_torch_layers` with the products in numpy (:data:`NUMPY_MAX_MULTIPLY_ADDS`); gate and up apart."""
    D, eps = d.D, d.eps
    for i, ((w_in, _, _, w_post, _, _), (w_qkv, w_o, w_gate, w_up, w_down)) in enumerate(
        zip(fused.layers, numpy_layers, strict=True)
    ):
        y = numpy_matmul(F.rms_norm(x, (D,), w_in, eps), w_qkv)
        x = numpy_matmul(attend(y, i), w_o).add_(x)
        h = F.rms_norm(x, (D,), w_post, eps)
        gate = F.silu(numpy_matmul(h, w_gate), inplace=True).mul_(numpy_matmul(h, w_up))
        x = numpy_matmul(gate, w_down).add_(x)
    return x


class _ByteLoop:
    """The fused Llama decoder's state for one greedy call, and its two steps.

    Buffers (``N`` rows, ``total = T0 + max_new_tokens`` columns): keys/values ``(N, Hkv, total, hd)`` per layer
    (zeros: a column not yet written is masked, and must hold no NaN for the masked product), ``out``
    ``(N, max_new_tokens)`` ids, ``token`` ``(N,)`` the last id of each row, ``done`` ``(N,)`` rows that wrote
    ``eos``, ``pos`` ``(1,)`` the column of the next byte. :meth:`prefix` reads the ``T0`` prefix positions;
    :meth:`step` writes one byte for every row, finished ones included (they write ``pad``), in place and with the
    same shapes at every position: no value is read back to the host, so a run of steps is one CUDA graph.
    """

    def __init__(self, lm: Any, fused: FusedLlamaWeights, embeds: torch.Tensor, rules: _Rules) -> None:
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
        self.dims = _Dims(D, H, Hkv, hd, H * hd, Hkv * hd, inter, float(cfg.rms_norm_eps), H != Hkv)
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
        numpy_layers = self.fused.numpy_layers if NUMPY_PRODUCTS and self.cpu else []  # decided at every call
        # multiply-adds of one row's largest product
        if numpy_layers and rows * max(w.size for w in numpy_layers[0]) <= NUMPY_MAX_MULTIPLY_ADDS:
            return _numpy_layers(x, self.fused, numpy_layers, attend, self.dims)
        return _torch_layers(x, self.fused, attend, self.dims)

    def _next(self, last: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The greedy id ``(N,)`` after hidden states ``(N, D)``; the output head adds ``bias`` in its product."""
        d, numpy_head = self.dims, self.fused.numpy_head
        normed = F.rms_norm(last, (d.D,), self.norm_w, d.eps)
        if numpy_head is not None and NUMPY_PRODUCTS and self.N * numpy_head.size <= NUMPY_MAX_MULTIPLY_ADDS:
            logits = numpy_matmul(normed, numpy_head).add_(bias)
        else:
            logits = torch.addmm(bias, normed, self.head_t)
        return logits.argmax(-1)

    def prefix(self, embeds: torch.Tensor) -> None:
        """Read the prefix ``(N, T0, D)`` into columns ``0 .. T0``; write the first id."""
        N, T0, D = self.N, self.T0, self.dims.D
        c, s = self.cos[:T0], self.sin[:T0]

        def attend(y: torch.Tensor, i: int) -> torch.Tensor:
            return _attend(y, i, N, T0, 0, c, s, self.keys, self.values, self.dims)

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
            return _attend_static(y, i, pos, c, s, visible, self.keys, self.values, self.dims)

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
def _fused_llama_greedy(
    lm: Any, fused: FusedLlamaWeights, embeds: torch.Tensor, rules: _Rules, check_at: int | None
) -> torch.Tensor:
    """The fused Llama loop: ids ``(N, max_new_tokens)``.

    Tokens are rows of 2-D tensors; keys/values are preallocated per layer (:class:`_ByteLoop`). The prefix step
    reads the ``T0`` prefix positions; each byte step after it has the same shapes (every row stays, finished ones
    write ``pad``), and nothing is read back to the host inside the loop but one check, after ``check_at`` bytes,
    of whether every row has ended (the loop stops there if so, else runs to ``max_new_tokens``). The loop's
    buffers are kept per shape for the next call (:data:`KEPT_LOOPS`); on a CUDA device its byte step is captured
    once as a CUDA graph and replayed (:data:`CUDA_GRAPHS`; eager if the capture fails).
    Per layer and byte about a dozen calls: the norm, one product for q/k/v, RoPE on q and k together, two cache
    writes, attention, the output projection with its residual in one ``addmm``, the norm, gate/up, SiLU and
    product in place, and ``down`` with its residual in one ``addmm``; the output head adds the barred ids' ``-inf``
    in its ``addmm``. Float32 on a CPU, a step whose largest product has at most :data:`NUMPY_MAX_MULTIPLY_ADDS`
    multiply-adds runs its products in numpy (the residuals and biases added after each product).
    """
    fused.refresh(lm)
    loop, kept = _loop_for(lm, fused, embeds, rules)
    try:
        if kept and loop.graph is None and not loop.graph_failed and _wants_graph(embeds, rules):
            loop.reset()
            loop.capture()
        loop.reset()
        loop.prefix(embeds)
        check = max(_first_check(rules, check_at), rules.min_new_tokens + 1)
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


def _wants_graph(embeds: torch.Tensor, rules: _Rules) -> bool:
    return (
        CUDA_GRAPHS
        and embeds.device.type == "cuda"
        and rules.max_new_tokens >= 3  # room for the capture's warm-up steps
        and not torch.cuda.is_current_stream_capturing()
    )


def _loop_for(lm: Any, fused: FusedLlamaWeights, embeds: torch.Tensor, rules: _Rules) -> tuple[_ByteLoop, bool]:
    """A kept loop for this shape and these rules, locked for this call (made and kept when new), and True; or a
    fresh loop and False when the kept one is in use on another thread."""
    N, T0, _ = embeds.shape
    key = (N, T0, rules.max_new_tokens, rules.eos_id, rules.pad_id, tuple(rules.suppress), rules.min_new_tokens)
    # buffers made in inference mode cannot be written outside it (nor the other way round): kept apart
    key += (embeds.device, lm.model.embed_tokens.weight.dtype, torch.is_inference_mode_enabled())
    with _KEEPING:
        loop = fused.loops.get(key)
        if loop is None:
            loop = fused.loops[key] = _ByteLoop(lm, fused, embeds, rules)
            while len(fused.loops) > KEPT_LOOPS:
                fused.loops.popitem(last=False)
        fused.loops.move_to_end(key)
        if not loop.lock.acquire(blocking=False):
            return _ByteLoop(lm, fused, embeds, rules), False
    return loop, True


_KEEPING = threading.Lock()


def _first_check(rules: _Rules, check_at: int | None) -> int:
    """After how many written bytes the loop reads, once, whether every row has ended."""
    if check_at is None:
        return max(1, int(rules.max_new_tokens * FIRST_CHECK_SHARE))
    return max(1, int(check_at))


@torch.no_grad()
def _loop_greedy(lm: Any, embeds: torch.Tensor, rules: _Rules, cache_arg: str, check_at: int | None) -> torch.Tensor:
    """Any causal LM's own forward in a loop over a ``DynamicCache``; finished rows write ``pad``, and whether every
    row has ended is read once, after ``check_at`` bytes (as :func:`_fused_llama_greedy`)."""
    from transformers import DynamicCache

    N, max_new_tokens = embeds.shape[0], rules.max_new_tokens
    out = torch.full((N, max_new_tokens), rules.pad_id, dtype=torch.long, device=embeds.device)
    cache = DynamicCache(config=lm.config)
    done = torch.zeros(N, dtype=torch.bool, device=embeds.device)
    result = lm(inputs_embeds=embeds, use_cache=True, return_dict=True, **{cache_arg: cache})
    check = max(_first_check(rules, check_at), rules.min_new_tokens + 1)
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
    otherwise it runs to ``max_new_tokens`` (default: :data:`FIRST_CHECK_SHARE` of it). The ids do not depend on it.
    """
    if max_new_tokens <= 0:
        return torch.empty(embeds.shape[0], 0, dtype=torch.long, device=embeds.device)
    rules = _Rules(max_new_tokens, eos_id, pad_id, list(suppress_tokens or []), int(min_new_tokens or 0))
    with _few_rows_one_thread(embeds):
        if fused is not None and fused_llama_supported(lm.config):
            return _fused_llama_greedy(lm, fused, embeds, rules, check_at)
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
