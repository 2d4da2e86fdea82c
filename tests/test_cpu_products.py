"""Linear layers' products through numpy's OpenBLAS (``ilt_core.modeling.products``, one of the fast paths).

Invariants: the numpy path gives torch's outputs and gradients (inputs, weights, biases) for any input shape and
layout; it steps aside where torch must see the products (FlopCounterMode, autocast, other dtypes); splitting a
product across threads changes nothing; ``ILTModel.set_fast_paths`` switches every plain ``nn.Linear``, and a loaded
model has them on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import micro_spec
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ilt_core import load_spec
from ilt_core.modeling import products
from ilt_core.modeling.model import ILTModel, build_model
from ilt_core.modeling.products import NumpyLinear, numpy_call_allowed, set_cpu_products


def _pair(in_f: int, out_f: int, bias: bool) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    ref = nn.Linear(in_f, out_f, bias=bias)
    fast = nn.Linear(in_f, out_f, bias=bias)
    fast.load_state_dict(ref.state_dict())
    assert set_cpu_products(fast, "numpy") == 1
    return ref, fast


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 24), (3, 5, 24), (2, 3, 4, 24), (300, 24)], ids=["2d", "3d", "4d", "split-rows"])
def test_outputs_and_gradients_equal_torch(shape: tuple[int, ...], bias: bool, monkeypatch) -> None:
    monkeypatch.setattr(products, "SPLIT_MIN_MULTIPLY_ADDS", 0)  # the threaded split runs even on small products
    ref, fast = _pair(24, 40, bias)
    x = torch.randn(*shape)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = ref(xr), fast(xf)
    assert yf.shape == yr.shape
    torch.testing.assert_close(yf, yr, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(yr)
    yr.backward(grad)
    yf.backward(grad)
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-4)
    if bias:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-4)
    assert yf.grad_fn is not None and "NumpyLinear" in type(yf.grad_fn).__name__


def test_non_contiguous_input_and_frozen_weight() -> None:
    ref, fast = _pair(16, 8, True)
    fast.weight.requires_grad_(False)
    x = torch.randn(16, 10).t()  # (10, 16), transposed view
    assert not x.is_contiguous()
    xf = x.detach().requires_grad_()
    y = fast(xf)
    torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert fast.weight.grad is None
    torch.testing.assert_close(xf.grad, ref.weight.sum(0).expand(10, 16), rtol=1e-5, atol=1e-5)


def test_split_product_equals_one_call(monkeypatch) -> None:
    a = torch.randn(1000, 64)
    b = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    monkeypatch.setattr(products, "SPLIT_MIN_MULTIPLY_ADDS", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        split = products.numpy_matmul(a, b)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(split, torch.from_numpy(a.numpy() @ b), rtol=1e-6, atol=1e-6)


def test_a_forked_child_splits_products_on_threads_of_its_own(monkeypatch) -> None:
    """A child forked after a split keeps the parent's pool object but none of its threads: it must make its own."""
    import multiprocessing as mp

    monkeypatch.setattr(products, "SPLIT_MIN_MULTIPLY_ADDS", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = torch.randn(64, 8)
        b = np.ones((8, 4), dtype=np.float32)
        products.numpy_matmul(a, b)  # the parent's pool now exists
        child = mp.get_context("fork").Process(target=products.numpy_matmul, args=(a, b))
        child.start()
        child.join(timeout=60)
        alive = child.is_alive()
        if alive:
            child.kill()
        assert not alive and child.exitcode == 0
    finally:
        torch.set_num_threads(before)


def test_flop_counter_and_autocast_see_torch_products() -> None:
    """FlopCounterMode counts torch's products: the numpy path must step aside, or training FLOPs read 0."""
    ref, fast = _pair(32, 32, True)
    x = torch.randn(64, 32, requires_grad=True)
    counts = []
    for layer in (ref, fast):
        counter = FlopCounterMode(display=False)
        with counter:
            layer(x).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 3 * 2 * 64 * 32 * 32
    assert numpy_call_allowed(x, fast.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not numpy_call_allowed(x, fast.weight)
        assert fast(x).dtype == torch.bfloat16
    assert not numpy_call_allowed(x.double(), fast.weight)
    assert not numpy_call_allowed(x[0], fast.weight)  # 1-D input: torch's path


def test_fast_paths_switch_every_linear_and_a_loaded_model_has_them(tmp_path) -> None:
    model = build_model(micro_spec(), seed=0)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is NumpyLinear for m in linears)
    model.set_fast_paths(False)  # a setting of the object: saved without it, loaded with the default (on)
    model.save_pretrained(tmp_path / "m")
    assert all(
        type(m) is NumpyLinear for m in ILTModel.from_pretrained(tmp_path / "m").modules() if isinstance(m, nn.Linear)
    )

    plain = build_model(micro_spec(), seed=0)
    plain.set_fast_paths(False)
    assert not any(type(m) is NumpyLinear for m in plain.modules())
    assert set_cpu_products(plain, "numpy") == len(linears)
    with pytest.raises(ValueError, match="cpu_products"):
        set_cpu_products(plain, "blas")


def test_model_loss_and_gradients_equal_torch_products() -> None:
    """A whole training forward and backward: the same loss and gradients with either setting."""
    from ilt_core.text.collator import TextUnits

    results = []
    for setting in ("numpy", "torch"):
        model = build_model(micro_spec(), seed=0)
        set_cpu_products(model, setting)
        model.train()
        batch = model.processor.collate([TextUnits(["שלום ", "עולם ", "טוב "]), TextUnits(["hello ", "world "])])
        torch.manual_seed(1)  # the same dropout draws in both
        out = model(**batch.model_inputs())
        out.loss.backward()
        results.append(
            (out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    (loss_n, grads_n), (loss_t, grads_t) = results
    torch.testing.assert_close(loss_n, loss_t, rtol=1e-5, atol=1e-6)
    assert grads_n.keys() == grads_t.keys() and grads_n
    for name in grads_n:
        torch.testing.assert_close(grads_n[name], grads_t[name], rtol=1e-4, atol=1e-5, msg=name)


def test_numpy_mm_is_an_operator_with_torch_s_values_and_gradients() -> None:
    """``ilt::numpy_mm``, the product a compiled graph calls: torch's own checks of a custom operator (schema, fake
    tensor, autograd registration) and the values and gradients of ``op(a) @ op(b)`` for every pair of transpose
    flags, for stored and transposed-view operands."""
    for ta in (False, True):
        for tb in (False, True):
            for view in (False, True):
                a = torch.randn(24, 37) if ta != view else torch.randn(37, 24)
                b = torch.randn(16, 24) if tb != view else torch.randn(24, 16)
                a = (a.t() if view else a).detach().requires_grad_()
                b = (b.t() if view else b).detach().requires_grad_()
                torch.library.opcheck(products.numpy_mm, (a, b, ta, tb))
                want_out = (a.t() if ta else a) @ (b.t() if tb else b)
                out = products.numpy_mm(a, b, ta, tb)
                torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-5)
                grad = torch.randn_like(out)
                got = torch.autograd.grad(out, (a, b), grad)
                want = torch.autograd.grad(want_out, (a, b), grad)
                for g, w in zip(got, want, strict=True):
                    assert g.shape == w.shape
                    torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_a_compiled_step_keeps_the_numpy_products(monkeypatch) -> None:
    """Under ``torch.compile`` the linear layers' products stay in numpy (``ilt::numpy_mm``, opaque to the
    compiler) where the eager step has them: one graph (``fullgraph``), and the loss and every gradient of the eager
    step (the graph with torch's products: ``tests/test_fixed_shapes.py``)."""
    torch._dynamo.reset()
    from ilt_core.text.collator import TextUnits

    no_dropout = [
        "modality_dropout=0.0",
        "bytes_encoder.config.hidden_dropout_prob=0.0",
        "bytes_encoder.config.attention_probs_dropout_prob=0.0",
    ]
    model = build_model(load_spec("micro", no_dropout), seed=0).train()
    texts = ["שלום עולם, זה משפט ראשון של בדיקה.", "The quick brown fox jumps over the lazy dog.", "مرحبا بالعالم"]
    units = [TextUnits(model.processor.segment(t)) for t in texts]
    batch = model.processor.with_pixels("uint8").collate(units, packing=True, shapes=model.fixed_shapes(4, 48))
    inputs = batch.model_inputs()
    calls = []
    real = products.numpy_matmul
    monkeypatch.setattr(products, "numpy_matmul", lambda a, b: calls.append(a.shape) or real(a, b))
    model.zero_grad()
    eager = model(**inputs).loss
    eager.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert calls
    calls.clear()
    model.zero_grad()
    torch._dynamo.reset()
    # fullgraph: a graph break would raise
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    loss = compiled(**inputs).loss
    loss.backward()
    assert calls  # the graph called numpy (with torch.compile's own products it would not)
    torch.testing.assert_close(loss, eager, atol=1e-5, rtol=1e-5)
    for name, grad in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)
    torch._dynamo.reset()
