"""``ilt_hf.fast_neox``: the fused GPT-NeoX cached step gives the transformers forward's hidden states and cache.

A 2-layer GPT-NeoX latent with random weights (biases and norms perturbed, so a dropped term shows) reads
left-padded rows, then steps one unit at a time over its cache; the fused path must equal the transformers path
(float rounding aside) in the hidden states and in the cache it leaves, follow in-place weight updates, leave
training and gradients to transformers, and fall back for whatever it does not reproduce.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from helpers import LATENT_CONFIGS
from ilt_hf import causal_lm, fast_neox

from ilt_core import BuildContext, get_registry

CONTEXT = BuildContext()
D = LATENT_CONFIGS["gpt_neox"]["hidden_size"]
TOL = dict(atol=1e-5, rtol=1e-5)


def latent(parallel: bool = True, attn: str = "sdpa", **config):
    torch.manual_seed(0)
    cfg = {**LATENT_CONFIGS["gpt_neox"], "use_parallel_residual": parallel, **config}
    lat = get_registry().build(
        "hf:causal-lm", "latent_transformer", CONTEXT, {"config": cfg, "attn_implementation": attn}
    )
    with torch.no_grad():
        for name, p in lat.model.named_parameters():
            if name.endswith("bias") or "layernorm" in name or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return lat.eval()


def counting(monkeypatch) -> list[int]:
    """Counts the fused steps that ran (returned hidden states, not None)."""
    calls = []
    real = fast_neox.neox_cached_step

    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        if out is not None:
            calls.append(1)
        return out

    monkeypatch.setattr(causal_lm, "neox_cached_step", step)
    return calls


def prefill(lat, lengths: list[int]):
    """Left-padded rows of ``lengths`` units: (embeds, mask, positions) and the cache after them."""
    torch.manual_seed(1)
    N, L = len(lengths), max(lengths)
    embeds = torch.randn(N, L, D)
    mask = torch.zeros(N, L, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, L - n :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = lat(embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    return mask, positions[:, -1] + 1, out.past_key_values


def run_steps(lat, lengths: list[int], steps: int, fused: bool):
    """Hidden states ``(steps, N, D)`` of ``steps`` cached one-unit steps, and the cache's keys/values after."""
    assert ("fused GPT-NeoX cached step" in lat.set_fast_paths(fused)) is fused
    try:
        mask, position, cache = prefill(lat, lengths)
        torch.manual_seed(2)
        hidden = []
        for _ in range(steps):
            new = torch.randn(len(lengths), 1, D)
            mask = torch.cat([mask, mask.new_ones(len(lengths), 1)], dim=1)
            with torch.no_grad():
                out = lat(
                    new, attention_mask=mask, position_ids=position[:, None], past_key_values=cache, use_cache=True
                )
            cache, position = out.past_key_values, position + 1
            hidden.append(out.hidden_states[:, -1])
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return torch.stack(hidden), kv
    finally:
        lat.set_fast_paths(True)


def run_static_steps(lat, lengths: list[int], steps: int, fused: bool, count: bool = True):
    """:func:`run_steps` over a static cache of ``max(lengths) + steps`` columns (a mask over all of them), and the
    host syncs of the steps (``count``: counted; a dispatch mode keeps dynamo from tracing)."""
    from ilt_bench.opcount import DispatchCount

    assert ("fused GPT-NeoX cached step" in lat.set_fast_paths(fused)) is fused
    try:
        torch.manual_seed(1)
        N, L = len(lengths), max(lengths)
        embeds = torch.randn(N, L, D)
        mask = torch.zeros(N, L + steps, dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, L - n : L] = 1
        positions = (mask[:, :L].cumsum(-1) - 1).clamp(min=0)
        cache = lat.static_cache(N, L + steps)
        with torch.no_grad():
            lat(embeds, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        position = positions[:, -1] + 1
        torch.manual_seed(2)
        hidden, syncs = [], 0
        for t in range(steps):
            new = torch.randn(N, 1, D)
            mask[:, L + t] = 1
            counter = DispatchCount() if count else contextlib.nullcontext()
            with torch.no_grad(), counter:
                out = lat(
                    new, attention_mask=mask, position_ids=position[:, None], past_key_values=cache, use_cache=True
                )
            syncs += counter.syncs if count else 0
            position = position + 1
            hidden.append(out.hidden_states[:, -1])
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return torch.stack(hidden), kv, syncs
    finally:
        lat.set_fast_paths(True)


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("lengths", [[5, 5, 5], [6, 2, 4, 1]])
def test_fused_step_over_a_static_cache_equals_transformers_and_the_growing_cache(parallel, lengths, monkeypatch):
    """A static cache: the fused step writes its column in place, reads nothing back, and gives what transformers
    gives over the same cache and what both give over a growing one."""
    lat = latent(parallel)
    calls = counting(monkeypatch)
    expected, expected_kv, _ = run_static_steps(lat, lengths, 4, fused=False)
    growing, _ = run_steps(lat, lengths, 4, fused=False)
    assert calls == []
    got, got_kv, syncs = run_static_steps(lat, lengths, 4, fused=True)
    assert len(calls) == 4 and syncs == 0
    torch.testing.assert_close(got, expected, **TOL)
    torch.testing.assert_close(got, growing, **TOL)
    for (k, v), (ek, ev) in zip(got_kv, expected_kv, strict=True):
        assert k.shape == (len(lengths), 4, max(lengths) + 4, D // 4)
        torch.testing.assert_close(k, ek, **TOL)
        torch.testing.assert_close(v, ev, **TOL)


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("lengths", [[5, 5, 5], [6, 2, 4, 1]])
def test_fused_step_equals_transformers_hidden_states_and_cache(parallel, attn, lengths, monkeypatch):
    lat = latent(parallel, attn)
    calls = counting(monkeypatch)
    expected, expected_kv = run_steps(lat, lengths, 4, fused=False)
    assert calls == []
    got, got_kv = run_steps(lat, lengths, 4, fused=True)
    assert len(calls) == 4  # every step took the fused path
    torch.testing.assert_close(got, expected, **TOL)
    assert not torch.allclose(got[0, 0], got[0, 1])
    for (k, v), (ek, ev) in zip(got_kv, expected_kv, strict=True):
        assert k.shape == ek.shape == (len(lengths), 4, max(lengths) + 4, D // 4)
        torch.testing.assert_close(k, ek, **TOL)
        torch.testing.assert_close(v, ev, **TOL)


def test_fused_step_follows_in_place_weight_updates(monkeypatch):
    lat = latent()
    calls = counting(monkeypatch)
    before, _ = run_steps(lat, [3, 2], 2, fused=True)
    with torch.no_grad():  # as an optimizer step would: in place
        lat.model.layers[1].mlp.dense_4h_to_h.bias.add_(1.0)
        lat.model.layers[0].attention.query_key_value.weight.mul_(2.0)
    after, _ = run_steps(lat, [3, 2], 2, fused=True)
    assert len(calls) == 4
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, run_steps(lat, [3, 2], 2, fused=False)[0], **TOL)


def test_training_gradients_and_other_caches_take_the_transformers_path(monkeypatch):
    lat = latent()
    calls = counting(monkeypatch)
    mask, position, cache = prefill(lat, [3, 3])
    new = torch.randn(2, 1, D)
    mask = torch.cat([mask, mask.new_ones(2, 1)], dim=1)
    args = dict(attention_mask=mask, position_ids=position[:, None], use_cache=True)
    lat(new, past_key_values=copy.deepcopy(cache), **args)  # gradients on
    lat.train()
    with torch.no_grad():
        lat(new, past_key_values=copy.deepcopy(cache), **args)  # training mode
    lat.eval()
    assert calls == []
    with torch.no_grad():
        # a mask that does not match the cache's length: not a step the fused path knows, transformers decides
        assert (
            fast_neox.neox_cached_step(
                lat.model, fast_neox.FusedNeoXWeights(), new, mask[:, 1:], position[:, None], cache
            )
            is None
        )
        two = torch.randn(2, 2, D)  # two new positions: a prefill, not one step
        assert (
            fast_neox.neox_cached_step(lat.model, fast_neox.FusedNeoXWeights(), two, mask, position[:, None], cache)
            is None
        )
        lat(new, past_key_values=cache, **args)
    assert calls == [1]


def test_other_latents_are_not_fused():
    assert fast_neox.fused_neox_supported(latent().model)
    llama = get_registry().build("hf:causal-lm", "latent_transformer", CONTEXT, {"config": LATENT_CONFIGS["llama"]})
    assert "fused GPT-NeoX cached step" not in llama.set_fast_paths(True)
    scaled = latent(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    assert not fast_neox.fused_neox_supported(
        scaled.model
    ) and "fused GPT-NeoX cached step" not in scaled.set_fast_paths(True)


def test_generation_gives_the_same_text_with_the_fused_step_on_and_off(monkeypatch):
    from helpers import PROMPTS, small_model, stops_for

    from ilt_core.generation import generate

    model = small_model("gpt_neox")
    lat = model.latent_transformer
    stop = stops_for(model, PROMPTS)  # rows end at different steps: the cache loses rows in between
    calls = counting(monkeypatch)
    fused = generate(model, PROMPTS, 6, stop=stop)
    assert calls  # the cached steps took the fused path
    assert lat.set_fast_paths(False) == []
    try:
        plain = generate(model, PROMPTS, 6, stop=stop)
    finally:
        lat.set_fast_paths(True)
    assert fused == plain


def test_the_static_step_traces_as_one_graph_with_no_recompile():
    """What the CUDA graph of the static step needs, checked on the CPU: dynamo traces it whole (``fullgraph``: no
    host read, no value made on the host) once, replays it at every step, and gives the eager states."""
    lat = latent()
    eager, _, _ = run_static_steps(lat, [5, 3], 4, fused=True)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(fast_neox._step, backend=backend, fullgraph=True, dynamic=False)
    real = fast_neox._step
    fast_neox._step = compiled
    try:
        traced, _, _ = run_static_steps(lat, [5, 3], 4, fused=True, count=False)
    finally:
        fast_neox._step = real
        torch._dynamo.reset()
    torch.testing.assert_close(traced, eager, **TOL)
    assert len(graphs) == 1
