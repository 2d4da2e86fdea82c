"""How the training step is compiled (``ilt_core.modeling.compiling``): what ``ilt train --torch_compile`` passes
to ``torch.compile``, and what the CPU options change."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import micro_spec

from ilt_core.modeling.compiling import compile_arguments, compile_options
from ilt_core.modeling.model import build_model


def test_a_compiled_step_on_a_cpu_draws_the_eager_steps_dropout():
    """Inductor with :func:`compile_options` on a CPU: dropout's masks come from torch's generator, so a compiled
    step draws the masks the eager step draws from the same seed (inductor's own CPU random numbers differ)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 16)
    x = torch.randn(64, 16)

    def step(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.dropout(layer(x), 0.5, training=True))

    compiled = torch.compile(step, **compile_arguments("cpu"))
    torch.manual_seed(1)
    got = compiled(x)
    torch.manual_seed(1)
    want = step(x)
    assert 0.4 < (want == 0).float().mean() < 0.6  # about half the units dropped
    assert torch.equal(got == 0, want == 0) and torch.allclose(got, want, atol=1e-6)  # the same ones


def test_compile_arguments_are_one_static_graph_with_options_only_on_a_cpu():
    assert compile_arguments("cpu") == {"fullgraph": True, "dynamic": False, "options": {"fallback_random": True}}
    assert compile_arguments("meta") == {"fullgraph": True, "dynamic": False}
    assert compile_options(torch.device("cuda", 0)) is None
    options = compile_options("cpu")
    options["fallback_random"] = False  # a copy: the caller's to change
    assert compile_options("cpu") == {"fallback_random": True}


def test_ilt_train_torch_compile_passes_the_compile_arguments_to_accelerate(tmp_path):
    from transformers import TrainingArguments

    from ilt_core.training.trainer import ILTTrainer  # imports Trainer: only here

    model = build_model(micro_spec("bytes-only"), seed=0)

    def plugin(**kwargs):
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)
        return ILTTrainer(model=model, args=args).accelerator.state.dynamo_plugin

    compiled = plugin(torch_compile=True)
    assert compiled.fullgraph is True and compiled.dynamic is False
    assert compiled.to_kwargs()["options"] == {"fallback_random": True}
    # a mode instead of options (torch.compile takes one or the other)
    assert plugin(torch_compile=True, torch_compile_mode="max-autotune-no-cudagraphs").options is None
