"""The fast paths, one switch (``ILTModel.set_fast_paths``): ILT's faster layers on or off, never a result.

Invariants: a built or loaded model has them on; off puts every swapped layer back to its library's own class and
every fused step aside; on and off give the same loss, gradients and generated text; the switch is a setting of the
object, never in ``config.json``; an older spec's ``cpu_products`` and ``length_groups`` load, ignored with a warning.
"""

from __future__ import annotations

import json
import logging

import torch
from helpers import micro_spec

from ilt_core.generation import generate
from ilt_core.modeling.model import ILTModel, build_model
from ilt_core.modeling.products import NumpyLinear
from ilt_core.text.collator import TextUnits

TEXTS = [["שלום ", "עולם ", "טוב ", "מאוד "], ["hello ", "world "], ["مرحبا ", "بالعالم "]]


def swapped_layers(model: torch.nn.Module) -> list[str]:
    """The classes of ``model``'s layers that a fast path put in place of the library's own."""
    return sorted(
        {type(m).__name__ for m in model.modules() if type(m) is NumpyLinear or type(m).__name__.startswith("Fast")}
    )


def test_a_built_model_has_them_on_and_off_puts_every_layer_back():
    model = build_model(micro_spec(), seed=0)
    on = model.fast_paths
    assert "core: linear layers' products in numpy" in on
    assert "bytes_decoder: RMSNorm in fewer passes" in on and "bytes_decoder: rotary embeddings in fewer passes" in on
    assert "bytes_encoder: length groups" in on and "bytes_decoder: fused greedy byte step" in on
    assert {"NumpyLinear", "FastLlamaRMSNorm", "FastLlamaAttention"} <= set(swapped_layers(model))
    assert model.set_fast_paths(False) == [] and model.fast_paths == []
    assert swapped_layers(model) == []
    assert model.bytes_encoder.group_lengths is False and model.bytes_decoder._fused is None
    assert model.set_fast_paths(True) == on


def test_on_and_off_give_the_same_loss_gradients_and_text():
    results = []
    for enabled in (True, False):
        model = build_model(micro_spec(), seed=0)
        model.set_fast_paths(enabled)
        model.train()
        batch = model.processor.collate([TextUnits(t) for t in TEXTS])
        torch.manual_seed(1)  # the same dropout draws
        out = model(**batch.model_inputs())
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        text = generate(model, ["שלום עולם", "hello"], max_new_units=3)
        results.append((out.loss.detach(), grads, text))
    (loss_on, grads_on, text_on), (loss_off, grads_off, text_off) = results
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-5, atol=1e-6)
    assert grads_on.keys() == grads_off.keys() and grads_on
    for name in grads_on:
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=1e-4, atol=1e-5, msg=name)
    assert text_on == text_off


def test_never_saved_with_the_model(tmp_path):
    model = build_model(micro_spec(), seed=0)
    model.set_fast_paths(False)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text(encoding="utf-8"))
    assert "fast_paths" not in json.dumps(config) and "cpu_products" not in config["spec"]
    loaded = ILTModel.from_pretrained(tmp_path / "m")
    assert "core: linear layers' products in numpy" in loaded.fast_paths  # the default, not the saved object's


def test_an_older_spec_loads_with_its_run_settings_ignored(caplog):
    spec = micro_spec()
    spec["cpu_products"] = "torch"
    spec["bytes_encoder"]["length_groups"] = False
    with caplog.at_level(logging.WARNING):
        model = build_model(spec, seed=0)
    assert "cpu_products is ignored" in caplog.text and "length_groups is ignored" in caplog.text
    assert "core: linear layers' products in numpy" in model.fast_paths and model.bytes_encoder.group_lengths


def test_the_commands_switch_them_off():
    from ilt_core.cli.main import build_parser
    from ilt_core.training.arguments import _argument_parser

    ilt_args = _argument_parser().parse_args_into_dataclasses(
        ["--model_spec", "micro", "--train_file", "t.txt", "--output_dir", "o", "--no_fast_paths"]
    )[2]
    assert ilt_args.fast_paths is False
    parser = build_parser()
    assert parser.parse_args(["generate", "--model", "m", "--prompt", "x", "--no-fast-paths"]).no_fast_paths
    assert parser.parse_args(["eval", "--model", "m", "--file", "f", "--no-fast-paths"]).no_fast_paths
    assert not parser.parse_args(["eval", "--model", "m", "--file", "f"]).no_fast_paths


def test_the_fused_inference_steps_follow_a_fused_optimizer_step():
    # torch's fused AdamW (Trainer's default optim, adamw_torch_fused) moves the parameters in place without bumping
    # their version counters: the fused weights must still be rebuilt before the next inference
    model = build_model(micro_spec(), seed=0)
    batch = model.processor.collate([TextUnits(t) for t in TEXTS])
    prompts = ["שלום עולם", "hello"]
    model.eval()
    with torch.no_grad():
        before = model(**batch.model_inputs()).loss  # builds the fused weights
    generate(model, prompts, max_new_units=3)  # and the byte loop's
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    model(**batch.model_inputs()).loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        fast = model(**batch.model_inputs()).loss
    fast_text = generate(model, prompts, max_new_units=3)
    model.set_fast_paths(False)
    with torch.no_grad():
        reference = model(**batch.model_inputs()).loss
    assert not torch.allclose(before, reference, rtol=1e-3, atol=0)  # the step moved the model
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
    assert fast_text == generate(model, prompts, max_new_units=3)
