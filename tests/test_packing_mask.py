"""Packed rows with and without a dense mask: the same losses, no look-ahead, on every mask path.

Paths: ``dense`` (the latent transformer lacks ``masks_from_position_ids``, so ``ILTModel`` builds a block-causal
``(B, 1, L, L)`` mask), ``positions`` (the backbone gets ``attention_mask=None`` and builds its mask from the
position ids) and ``varlen`` (flash attention: one flattened row and the texts' cumulative lengths). Flash kernels
do not run on a CPU, so the varlen path runs a stand-in kernel that reads only what a varlen kernel reads.
Micro specs without images: the mask lives in the latent transformer alone.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import micro_spec
from ilt_hf.causal_lm import HFLatentTransformer, varlen_arguments

from ilt_core.modeling.model import build_model

ATOL = 1e-5
TEXTS = [
    "the cat sat on the mat today",
    "שלום עולם, this is a text",
    "x y",
    "tail words here and there and more",
    "one more short one",
]
# ``TEXTS[0]`` with its third unit changed: the same number of units, so the same layout
CHANGED = ["the cat ran on the mat today", *TEXTS[1:]]
ROW_UNITS = 16  # several packed rows, each holding more than one text

_LATENT = {"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256, "max_position_embeddings": 256}
LATENT_CONFIGS = {
    "gpt_neox": None,  # the tiny preset's own latent transformer (pythia)
    "llama": {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2, **_LATENT},
    # a window shorter than the texts, so the sliding layer really cuts attention
    "gemma3_text": {
        "model_type": "gemma3_text",
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "sliding_window": 3,
        "layer_types": ["sliding_attention", "full_attention"],
        **_LATENT,
    },
    "gpt2": {"model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 4, "n_positions": 256},
}
_MODELS: dict[str, torch.nn.Module] = {}


def model_of(model_type: str):
    """A micro bytes-only model whose latent transformer is ``model_type`` (built once per test session)."""
    if model_type not in _MODELS:
        overrides = {}
        if LATENT_CONFIGS[model_type] is not None:
            overrides["latent_transformer"] = {"component": "hf:causal-lm", "config": LATENT_CONFIGS[model_type]}
        _MODELS[model_type] = build_model(micro_spec("bytes-only", **overrides), seed=0).eval()
    return _MODELS[model_type]


class Spy:
    """Records the ``attention_mask`` and the ``inputs_embeds`` shape each call of the backbone receives."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        self.masks: list = []
        self.shapes: list[tuple[int, ...]] = []
        self.handle = backbone.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.masks.append(kwargs.get("attention_mask"))
        self.shapes.append(tuple(kwargs["inputs_embeds"].shape))


def varlen_stand_in(calls: list):
    """A CPU stand-in for transformers' ``flash_attention_forward``: causal attention inside each text of one row.

    Like a varlen kernel it sees no mask, only ``cu_seq_lens_q`` / ``cu_seq_lens_k`` and the sliding window; it
    records ``(batch, length, cu_seq_lens_q)`` of each call.
    """

    def attend(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None, **kw):
        # query (B, H, T, hd), key / value (B, Hkv, T, hd); transformers wants (B, T, H, hd) back
        assert attention_mask is None, "a varlen kernel takes no mask"
        cu = kw.get("cu_seq_lens_q")
        calls.append((query.shape[0], query.shape[2], cu))
        assert query.shape[0] == 1 and cu is not None and torch.equal(cu, kw["cu_seq_lens_k"])
        assert int(kw["max_length_q"]) == int(cu.diff().max())
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        out = torch.empty_like(query)
        for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
            n = end - start
            i = torch.arange(n)
            allowed = i[:, None] >= i[None, :]
            if sliding_window is not None:
                allowed &= (i[:, None] - i[None, :]) < sliding_window
            out[:, :, start:end] = F.scaled_dot_product_attention(
                query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], attn_mask=allowed, scale=scaling
            )
        return out.transpose(1, 2).contiguous(), None

    return attend


def use_path(monkeypatch, model, path: str, attn: str) -> list:
    """Put ``model``'s latent transformer on ``path`` with attention ``attn``; returns the varlen kernel's calls."""
    config = model.latent_transformer.model.config
    calls: list = []
    if path == "varlen":
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", varlen_stand_in(calls))
        attn = "flash_attention_2"
    monkeypatch.setattr(config, "_attn_implementation", attn)
    if path == "dense":  # a latent transformer without the optional method
        monkeypatch.delattr(HFLatentTransformer, "masks_from_position_ids")
    else:
        assert model.latent_transformer.masks_from_position_ids()
    return calls


def run(model, texts: list[str], packing: bool):
    """The collated batch and the model's output for ``texts``; the spy's record of the backbone's inputs."""
    batch = model.processor(texts, packing=packing, max_units=ROW_UNITS if packing else None)
    spy = Spy(model.latent_transformer.model)
    try:
        with torch.no_grad():
            out = model(**batch.model_inputs())
    finally:
        spy.handle.remove()
    return batch, out, spy


def per_text(batch, values: torch.Tensor) -> list[torch.Tensor]:
    """``values`` ``(B, L, ...)`` cut into one tensor per text, in the order of the texts (packing keeps it)."""
    pieces = []
    for b in range(batch.segment_ids.shape[0]):
        for seg in range(int(batch.segment_ids[b].max()) + 1):
            pieces.append(values[b][batch.segment_ids[b] == seg])
    return pieces


CASES = [
    *[(m, attn, path) for m in LATENT_CONFIGS for attn in ("sdpa", "eager") for path in ("dense", "positions")],
    *[(m, "flash_attention_2", "varlen") for m in LATENT_CONFIGS],
]


@pytest.mark.parametrize(("model_type", "attn", "path"), CASES)
def test_packed_rows_score_each_text_as_alone(monkeypatch, model_type, attn, path):
    model = model_of(model_type)
    calls = use_path(monkeypatch, model, path, attn)
    loose, loose_out, _ = run(model, TEXTS, packing=False)
    calls.clear()  # keep the packed forward's kernel calls only
    packed, packed_out, spy = run(model, TEXTS, packing=True)
    rows = packed.segment_ids.shape[0]
    assert 1 < rows < len(TEXTS)  # several rows, and some row holds several texts

    alone, together = per_text(loose, loose_out.unit_losses), per_text(packed, packed_out.unit_losses)
    assert len(together) == len(TEXTS)
    for text, a, b in zip(TEXTS, alone, together, strict=True):
        assert a.shape == b.shape and a.abs().sum() > 0
        torch.testing.assert_close(b, a, atol=ATOL, rtol=0, msg=lambda m, t=text: f"{t!r}: {m}")
    torch.testing.assert_close(packed_out.loss, loose_out.loss, atol=ATOL, rtol=0)

    # the path taken is the one expected
    (mask,) = spy.masks
    length = packed.segment_ids.shape[1]
    if path == "dense":  # one mask, or one per layer type (gemma's sliding window)
        masks = list(mask.values()) if isinstance(mask, dict) else [mask]
        assert masks and all(tuple(m.shape) == (rows, 1, length, length) for m in masks)
    else:
        assert mask is None
    if path == "varlen":
        assert spy.shapes == [(1, rows * length, model.latent_transformer.hidden_size)]
        expected = varlen_arguments(packed.position_ids)["cu_seq_lens_q"]
        assert calls and all(b == 1 and n == rows * length and torch.equal(cu, expected) for b, n, cu in calls)
    else:
        assert spy.shapes == [(rows, length, model.latent_transformer.hidden_size)] and not calls


@pytest.mark.parametrize(("model_type", "attn", "path"), CASES)
def test_a_later_unit_never_changes_an_earlier_position(monkeypatch, model_type, attn, path):
    """Changing one unit of a packed text changes that text's latents from that unit on, and nothing else."""
    model = model_of(model_type)
    use_path(monkeypatch, model, path, attn)
    before, out_before, _ = run(model, TEXTS, packing=True)
    after, out_after, _ = run(model, CHANGED, packing=True)
    assert torch.equal(before.segment_ids, after.segment_ids) and torch.equal(before.position_ids, after.position_ids)
    words = [[[b.units[i] for i in r] for r in b.unit_index.tolist()] for b in (before, after)]
    changed = [(r, p) for r, row in enumerate(words[0]) for p, w in enumerate(row) if w != words[1][r][p]]
    assert len(changed) == 1
    row, pos = changed[0]
    seg = before.segment_ids[row]
    reaches = torch.zeros_like(before.segment_ids, dtype=torch.bool)  # positions that may see the change
    reaches[row] = (seg == seg[pos]) & (torch.arange(seg.shape[0]) >= pos)
    assert bool((before.segment_ids[row] > seg[pos]).any())  # a later text shares the row

    real = before.segment_ids >= 0
    h0, h1 = out_before.hidden_states, out_after.hidden_states
    torch.testing.assert_close(h1[real & ~reaches], h0[real & ~reaches], atol=ATOL, rtol=0)
    assert not torch.allclose(h1[row, pos], h0[row, pos], atol=1e-3)  # the changed unit is seen where it stands
    assert not torch.allclose(h1[row, pos + 1], h0[row, pos + 1], atol=1e-3)  # and by the next unit of its text


def test_dense_mask_kept_where_the_backbone_needs_one(monkeypatch):
    """Other attention implementations and model types are not listed: they keep the dense mask."""
    latent = model_of("gpt_neox").latent_transformer
    config = latent.model.config
    for attn, expected in [("sdpa", True), ("eager", True), ("flash_attention_3", True), ("flex_attention", False)]:
        monkeypatch.setattr(config, "_attn_implementation", attn)
        assert latent.masks_from_position_ids() is expected, attn
    monkeypatch.setattr(config, "_attn_implementation", "sdpa")
    monkeypatch.setattr(config, "model_type", "some_new_type")
    assert latent.masks_from_position_ids() is False


def test_varlen_rows_never_merge():
    """Texts start wherever a position does not count up by one, and at every row's start; padding is a text of
    one. A row that starts mid-count (not at 0) still starts a text of its own."""
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0], [3, 4, 5, 6, 0, 0]])
    got = varlen_arguments(position_ids)
    assert got["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 11, 12]
    assert got["cu_seq_lens_q"].dtype == torch.int32 and got["max_length_q"] == 4 == got["max_length_k"]
