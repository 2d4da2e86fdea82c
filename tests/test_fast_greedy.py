"""``HFBytesDecoder.greedy``: the generate-free greedy byte loop gives exactly ``generate(do_sample=False)``'s ids.

Llama decoders take the fused step (q/k/v and gate/up in one matrix, a static KV cache, finished rows dropped);
other architectures loop over their own forward. Shrunken configs with random weights; the ``eos`` row of the
output head is scaled so that some rows end early and others run to the byte limit.
"""

from __future__ import annotations

import pytest
import torch
from helpers import LATENT_CONFIGS, PROMPTS, small_model, swapped
from ilt_hf import byte_loop, fast_greedy, fused_llama
from ilt_hf.fast_greedy import fused_llama_supported

from ilt_core import BuildContext, get_registry
from ilt_core.generation import generate

CONTEXT = BuildContext()
EOS, PAD = CONTEXT.eos_token_id, CONTEXT.pad_token_id
D = 32
CONFIGS = {
    "llama": LATENT_CONFIGS["llama"],  # grouped-query attention: 4 heads over 2 key/value heads
    "llama-mha": {
        **LATENT_CONFIGS["llama"],
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    },
    "gpt_neox": LATENT_CONFIGS["gpt_neox"],  # not a Llama: the plain loop over its own forward
}


def decoder(name: str, eos_scale: float = 2.0):
    torch.manual_seed(0)
    dec = get_registry().build("hf:causal-lm", "bytes_decoder", CONTEXT, {"config": CONFIGS[name]}).eval()
    with torch.no_grad():
        dec.lm.get_output_embeddings().weight[EOS] *= eos_scale
    return dec


def reference(dec, prefix: torch.Tensor, limit: int, **kwargs) -> torch.Tensor:
    """transformers' greedy ids, padded to ``limit`` columns with ``PAD`` (generate stops when all rows end)."""
    mask = torch.ones(prefix.shape[:2], dtype=torch.long)
    ids = dec.generate(prefix, mask, max_new_tokens=limit, do_sample=False, **kwargs)
    return torch.nn.functional.pad(ids, (0, limit - ids.shape[1]), value=PAD)


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_equals_generate_with_rows_ending_at_different_steps(name):
    dec = decoder(name)
    assert fused_llama_supported(dec.lm.config) == name.startswith("llama")
    torch.manual_seed(1)
    prefix = torch.randn(8, 1, D)
    expected = reference(dec, prefix, 24)
    ends = [(row == EOS).nonzero()[0].item() if bool((row == EOS).any()) else None for row in expected]
    assert None in ends and any(e is not None and e > 0 for e in ends)  # the batch really mixes lengths
    got = dec.greedy(prefix, 24, EOS, PAD)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_with_suppressed_eos_and_a_longer_prefix(name):
    dec = decoder(name, eos_scale=4.0)
    torch.manual_seed(2)
    prefix = torch.randn(3, 2, D)  # two prefix vectors per row
    expected = reference(dec, prefix, 12, suppress_tokens=[EOS])
    got = dec.greedy(prefix, 12, EOS, PAD, suppress_tokens=[EOS])
    assert not bool((got == EOS).any()) and torch.equal(got, expected)


@pytest.mark.parametrize("name", ["llama", "gpt_neox"])
def test_the_loop_reads_the_device_once_at_most_and_its_ids_do_not_depend_on_when(name, monkeypatch):
    """Every row stays in the batch (finished ones write pad): the only host read inside the loop is the one check
    of whether all rows ended, and the ids are the same wherever that check falls (or when it never does)."""
    from ilt_bench.opcount import DispatchCount

    monkeypatch.setattr(fused_llama, "NUMPY_PRODUCTS", False)  # the path a GPU runs
    dec = decoder(name)
    torch.manual_seed(1)
    prefix = torch.randn(8, 1, D)
    expected = reference(dec, prefix, 24)
    for check_at in (1, 3, 24, 100, None):
        with DispatchCount() as count:
            got = dec.greedy(prefix, 24, EOS, PAD, check_at=check_at)
        assert torch.equal(got, expected), check_at
        assert count.syncs <= 1, (check_at, dict(count.sync_ops))
    with DispatchCount() as count:  # no check inside the limit: no read at all
        dec.greedy(prefix, 24, EOS, PAD, check_at=24)
    assert count.syncs == 0, dict(count.sync_ops)
    all_end = decoder(name, eos_scale=50.0)  # every row ends at once: the check stops the loop there
    first = all_end.greedy(prefix, 1, EOS, PAD)[:, 0]
    ending = prefix[first == EOS]  # rows whose first id is eos
    assert 0 < len(ending)
    with DispatchCount() as early:
        ids = all_end.greedy(ending, 24, EOS, PAD, check_at=2)
    with DispatchCount() as late:
        all_end.greedy(ending, 24, EOS, PAD, check_at=24)
    assert bool((ids[:, 0] == EOS).all()) and early.syncs == 1 and early.ops < late.ops / 4


def test_every_byte_step_runs_the_same_ops_on_the_same_shapes(monkeypatch):
    """The fused step's shapes do not depend on the position, nor on which rows have ended: one CUDA graph."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            shapes = [tuple(t.shape) for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.calls.append((str(func), shapes))
            return out

    monkeypatch.setattr(fused_llama, "NUMPY_PRODUCTS", False)
    steps = []
    step = byte_loop.ByteLoop.step

    def recorded(loop):
        with Shapes() as seen:
            step(loop)
        steps.append(seen.calls)

    monkeypatch.setattr(byte_loop.ByteLoop, "step", recorded)
    dec = decoder("llama")
    torch.manual_seed(1)
    ids = dec.greedy(torch.randn(8, 1, D), 24, EOS, PAD, check_at=24)
    assert bool((ids == EOS).any())  # rows ended along the way
    assert len(steps) == 23 and all(s == steps[0] for s in steps)


def test_fused_weights_follow_parameter_updates():
    dec = decoder("llama")
    prefix = torch.randn(4, 1, D)
    before = dec.greedy(prefix, 10, EOS, PAD)
    with torch.no_grad():  # as an optimizer step would: in place
        for p in dec.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    after = dec.greedy(prefix, 10, EOS, PAD)
    assert not torch.equal(before, after)
    assert torch.equal(after, reference(dec, prefix, 10))


def test_a_sampling_generation_config_is_honoured():
    """A hub generation_config.json that changes decoding sends greedy() through generate()."""
    dec = decoder("llama", eos_scale=1.0)
    dec.lm.generation_config.repetition_penalty = 5.0
    prefix = torch.randn(2, 1, D)
    got = dec.greedy(prefix, 16, EOS, PAD)
    assert torch.equal(got, reference(dec, prefix, 16))
    dec.lm.generation_config.repetition_penalty = 1.0
    plain = dec.greedy(prefix, 16, EOS, PAD)
    assert not torch.equal(plain, got)  # the penalty really changed the ids


def test_zero_new_tokens():
    dec = decoder("llama")
    assert dec.greedy(torch.randn(2, 1, D), 0, EOS, PAD).shape == (2, 0)


@pytest.mark.parametrize("name", ["llama", "gpt_neox"])
def test_min_new_tokens_bars_eos_until_then(name):
    dec = decoder(name, eos_scale=4.0)  # eos wins early in most rows
    torch.manual_seed(3)
    prefix = torch.randn(6, 1, D)
    expected = reference(dec, prefix, 16, min_new_tokens=5, suppress_tokens=[PAD])
    got = dec.greedy(prefix, 16, EOS, PAD, suppress_tokens=[PAD], min_new_tokens=5)
    assert torch.equal(got, expected)
    assert not bool((got[:, :5] == EOS).any()) and bool((got[:, 5:] == EOS).any())


class DecoderWithoutGreedy(torch.nn.Module):
    """A bytes decoder offering only the required protocol (no ``greedy``): the loop decodes through generate."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner
        self.hidden_size, self.vocab_size = inner.hidden_size, inner.vocab_size

    def embed(self, input_ids):
        return self.inner.embed(input_ids)

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.inner.generate(*args, **kwargs)


@pytest.mark.parametrize("options", [{}, {"suppress_tokens": [PAD], "min_new_tokens": 2}])
def test_the_loop_gives_the_same_text_with_or_without_the_fast_greedy_path(options, monkeypatch):
    model = small_model("llama")  # a Llama decoder: the fused step
    calls = []
    greedy = model.bytes_decoder.greedy
    monkeypatch.setattr(model.bytes_decoder, "greedy", lambda *a, **k: calls.append(1) or greedy(*a, **k))
    fast = generate(model, PROMPTS, 4, max_unit_bytes=5, return_scores=True, **options)
    # one call per step (the fast path really ran): 5 steps, as "one" is cut inside a word and completes it first,
    # and its forced bytes make a group of their own in the first step
    assert len(calls) == 6
    with swapped(model, "bytes_decoder", DecoderWithoutGreedy(model.bytes_decoder)):
        slow = generate(model, PROMPTS, 4, max_unit_bytes=5, return_scores=True, **options)
    assert [r.units for r in slow] == [r.units for r in fast]
    assert [r.finish_reason for r in slow] == [r.finish_reason for r in fast]


@pytest.mark.parametrize("name", CONFIGS)
def test_a_small_cpu_batch_runs_on_one_thread_and_gives_the_callers_count_back(name, monkeypatch):
    """Few rows: the loop sets one intra-op thread (same ids as with the caller's threads), then restores them."""
    dec = decoder(name)
    prefix = torch.randn(4, 1, D)
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n) or real(n))
    before = torch.get_num_threads()
    real(2)
    try:
        got = dec.greedy(prefix, 12, EOS, PAD)
        assert torch.get_num_threads() == 2 and seen == [1, 2]
        monkeypatch.setattr(fast_greedy, "ONE_THREAD_ROWS", 3)  # 4 rows: more than that, threads left alone
        seen.clear()
        assert torch.equal(dec.greedy(prefix, 12, EOS, PAD), got) and seen == []
    finally:
        real(before)
    assert torch.equal(got, reference(dec, prefix, 12))


def counting_numpy_products(monkeypatch) -> list[int]:
    """Counts the fused loop's numpy products (``fused_llama.numpy_matmul``) by their rows."""
    rows = []
    real = fused_llama.numpy_matmul

    def product(a, w):
        rows.append(a.shape[0])
        return real(a, w)

    monkeypatch.setattr(fused_llama, "numpy_matmul", product)
    return rows


def test_small_products_go_through_numpy_with_the_same_ids_and_large_ones_through_torch(monkeypatch):
    """Float32 on a CPU, products of few rows run in numpy; the ids equal torch's products' and generate's. Where
    the first step (the prefix's rows) is over the limit and later steps are not, each step picks its own path."""
    dec = decoder("llama", eos_scale=3.0)
    torch.manual_seed(4)
    prefix = torch.randn(3, 2, D)  # first step: 3 x 2 rows; then 3 (fewer as rows end)
    expected = reference(dec, prefix, 14)
    assert bool((expected == EOS).any())
    rows = counting_numpy_products(monkeypatch)
    assert torch.equal(dec.greedy(prefix, 14, EOS, PAD), expected)
    layers = len(dec.lm.model.layers)
    # q/k/v, o, gate, up and down per layer over every prefix position, then the head over each row's last
    assert rows[: 5 * layers + 1] == [6] * (5 * layers) + [3]
    monkeypatch.setattr(fused_llama, "NUMPY_PRODUCTS", False)
    rows.clear()
    assert torch.equal(dec.greedy(prefix, 14, EOS, PAD), expected) and rows == []
    monkeypatch.setattr(fused_llama, "NUMPY_PRODUCTS", True)
    largest = max(w.size for w in dec._fused.numpy_layers[0])
    monkeypatch.setattr(fused_llama, "NUMPY_MAX_MULTIPLY_ADDS", 3 * largest)  # 6 rows over, 3 rows under
    assert torch.equal(dec.greedy(prefix, 14, EOS, PAD), expected)
    assert rows and max(rows) <= 3 and rows[0] == 3  # the first step ran in torch, the later ones in numpy


def test_a_decoder_too_wide_for_numpy_products_keeps_no_numpy_copies(monkeypatch):
    dec = decoder("llama")
    prefix = torch.randn(2, 1, D)
    expected = reference(dec, prefix, 8)
    monkeypatch.setattr(fused_llama, "NUMPY_MAX_MULTIPLY_ADDS", D * D)  # below one row's MLP product
    rows = counting_numpy_products(monkeypatch)
    assert torch.equal(dec.greedy(prefix, 8, EOS, PAD), expected)
    assert dec._fused.numpy_layers == [] and dec._fused.numpy_head is None and rows == []


def test_the_byte_step_traces_as_one_graph_with_no_recompile(monkeypatch):
    """What a CUDA graph capture needs, checked on the CPU: dynamo traces the byte step whole (``fullgraph``: no
    break, so no host read or Python-side value inside) once, and replays it at every byte and call of one shape,
    giving the eager ids."""
    monkeypatch.setattr(fused_llama, "NUMPY_PRODUCTS", False)
    dec = decoder("llama")
    torch.manual_seed(1)
    prefixes = [torch.randn(4, 1, D), torch.randn(4, 1, D)]
    expected = [dec.greedy(p, 10, EOS, PAD, check_at=10) for p in prefixes]
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    eager_step = byte_loop.ByteLoop.step
    compiled = torch.compile(eager_step, backend=backend, fullgraph=True, dynamic=False)
    monkeypatch.setattr(byte_loop.ByteLoop, "step", lambda loop: compiled(loop))
    try:
        got = [dec.greedy(p, 10, EOS, PAD, check_at=10) for p in prefixes]
    finally:
        torch._dynamo.reset()
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    assert len(graphs) == 1  # 18 byte steps, one trace


def test_a_kept_loop_in_use_elsewhere_leaves_this_call_a_fresh_one():
    """Loops are kept per shape for reuse; a call that finds its loop busy (another thread) runs a fresh one."""
    dec = decoder("llama")
    torch.manual_seed(3)
    prefix = torch.randn(3, 1, D)
    expected = reference(dec, prefix, 12)
    assert torch.equal(dec.greedy(prefix, 12, EOS, PAD), expected)
    (loop,) = dec._fused.loops.values()
    other = torch.randn(3, 1, D)
    assert torch.equal(dec.greedy(other, 12, EOS, PAD), reference(dec, other, 12))  # the kept loop, reset
    with loop.lock:  # busy
        assert torch.equal(dec.greedy(prefix, 12, EOS, PAD), expected)
    assert list(dec._fused.loops.values()) == [loop]


def test_kept_loops_serve_calls_in_and_out_of_inference_mode():
    """A loop kept from a call in inference mode (generation) is not written by a call outside it (no_grad)."""
    dec = decoder("llama")
    torch.manual_seed(5)
    prefix = torch.randn(2, 1, D)
    expected = reference(dec, prefix, 8)
    with torch.inference_mode():
        assert torch.equal(dec.greedy(prefix, 8, EOS, PAD), expected)
    with torch.no_grad():
        assert torch.equal(dec.greedy(prefix, 8, EOS, PAD), expected)
    assert len(dec._fused.loops) == 2


def test_a_decoder_with_kept_loops_copies_and_pickles():
    """Kept loops hold a lock (and on CUDA a graph): a copy or pickle of the decoder leaves them, and rebuilds."""
    import copy
    import pickle

    dec = decoder("llama")
    torch.manual_seed(6)
    prefix = torch.randn(2, 1, D)
    ids = dec.greedy(prefix, 8, EOS, PAD)
    assert dec._fused.loops
    for twin in (copy.deepcopy(dec), pickle.loads(pickle.dumps(dec))):
        assert torch.equal(twin.greedy(prefix, 8, EOS, PAD), ids)
