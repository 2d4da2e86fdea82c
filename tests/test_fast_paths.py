"""Fast paths that lean on other packages' internals say whether they are on (``ilt plugins --verbose``): every one
is on at the versions this project pins, and one that a release would switch off reports it, and why."""

from __future__ import annotations

import logging

import pytest
import torch
from ilt_hf import fast_norm
from ilt_hf.fast_paths import fast_paths as hf_fast_paths
from transformers import Trainer
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from ilt_core.cli.main import main
from ilt_core.modeling import products
from ilt_core.plugins.registry import get_registry
from ilt_core.training.rows import pread_rows_path
from ilt_core.training.trainer import trainer_overrides_path


def every_path() -> list:
    return [products.fast_path(), pread_rows_path(), trainer_overrides_path(), *get_registry().fast_paths()]


def test_every_fast_path_is_on_at_the_pinned_versions() -> None:
    paths = every_path()
    assert len(paths) >= 11 and len({p.name for p in paths}) == len(paths)
    off = [f"{p.name}: {p.detail}" for p in paths if not p.active]
    assert off == []


def test_plugins_verbose_lists_them_with_the_versions(capsys) -> None:
    assert main(["plugins", "--verbose"]) == 0
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("fast paths with"))
    assert "torch " in head and "transformers " in head and "datasets " in head
    for path in every_path():
        assert f"  on   {path.name}: " in out


@pytest.fixture
def fresh_norm_checks():
    """fast_norm's cached checks forgotten before and after (the test changes what they read)."""
    caches = (fast_norm.llama_norm_maths_match, fast_norm.rms_norm_is_llamas, fast_norm._llama_forward_source)
    for c in caches:
        c.cache_clear()
    yield
    for c in caches:
        c.cache_clear()


def test_a_release_that_changes_llamas_norm_turns_the_swap_off_and_says_so(monkeypatch, caplog, fresh_norm_checks):
    def centred(self, hidden_states):  # another function: a mean subtracted first (LayerNorm-like)
        x = hidden_states - hidden_states.mean(-1, keepdim=True)
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

    monkeypatch.setattr(LlamaRMSNorm, "forward", centred)
    with caplog.at_level(logging.WARNING, logger="ilt_hf.fast_norm"):
        norm = next(p for p in hf_fast_paths() if "RMSNorm" in p.name)
        assert not norm.active and "another function" in norm.detail
        assert fast_norm.swap_rms_norms(torch.nn.Sequential(LlamaRMSNorm(8))) == 0  # transformers' own runs
    assert "LlamaRMSNorm computes another function" in caplog.text


def test_a_trainer_without_a_method_ilt_overrides_is_reported(monkeypatch) -> None:
    monkeypatch.delattr(Trainer, "_save_rng_state")
    path = trainer_overrides_path()
    assert not path.active and "_save_rng_state" in path.detail


def test_without_torchs_dispatch_mode_count_the_numpy_products_step_aside(monkeypatch) -> None:
    monkeypatch.setattr(products, "_dispatch_stack_len", None)
    path = products.fast_path()
    assert not path.active and "_len_torch_dispatch_stack" in path.detail
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    assert not products.numpy_call_allowed(x, w)
