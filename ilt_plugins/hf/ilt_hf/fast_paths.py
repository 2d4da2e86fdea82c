"""The ``hf`` plugin's fast paths, checked against the installed transformers and torch (``ilt plugins --verbose``).

Each one relies on transformers' code as it was when it was written (transformers 5.x): a class's forward read by
its source, a function re-run with one name changed, a model's layers fused by their attribute names. Each is
checked here the way the plugin takes it (on a tiny model of the architecture), so that a release that switches one
off says so instead of running the slower path silently.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from ilt_core.plugins.registry import FastPath


def _checked(name: str, check: Callable[[], tuple[bool, str]]) -> FastPath:
    try:
        active, detail = check()
    except Exception as exc:  # an import or attribute a release removed: the path is off, and this says why
        active, detail = False, f"{type(exc).__name__}: {exc}"
    return FastPath(f"hf: {name}", active, detail)


def _norm() -> tuple[bool, str]:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from ilt_hf.fast_norm import llama_norm_maths_match, rms_norm_is_llamas

    if not llama_norm_maths_match():
        return False, "transformers' LlamaRMSNorm computes another function than RMSNormFunction"
    if not rms_norm_is_llamas(LlamaRMSNorm):
        return False, "LlamaRMSNorm.forward's source cannot be read"
    return True, "LlamaRMSNorm's forward read and its maths checked: swapped in Llama-style norms"


def _rope() -> tuple[bool, str]:
    from transformers.models.llama.modeling_llama import LlamaAttention

    from ilt_hf.fast_rope import _rebound_forward

    if _rebound_forward(LlamaAttention) is None:
        return False, "LlamaAttention.forward no longer calls an apply_rotary_pos_emb that RotaryFunction reproduces"
    return True, "LlamaAttention.forward re-run with apply_rotary_pos_emb -> RotaryFunction (checked numerically)"


def _greedy() -> tuple[bool, str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from ilt_hf.fused_llama import FusedLlamaWeights, fused_llama_supported

    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=8)
    lm = LlamaForCausalLM(cfg)
    if not fused_llama_supported(lm.config):
        return False, "a default LlamaConfig is not one the fused step reproduces"
    FusedLlamaWeights().build(lm)  # reads the layers' q/k/v, gate/up and norm attributes
    return True, "a Llama decoder's layers fused (q/k/v, gate/up), static KV cache"


def _vit() -> tuple[bool, str]:
    from transformers import ViTConfig, ViTModel

    from ilt_hf.fast_vit import FusedViTWeights, fused_vit_supported

    cfg = ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8
    )
    model = ViTModel(cfg, add_pooling_layer=False)
    if not fused_vit_supported(model):
        return False, "ViTModel's layers are not the pre-norm q/k/v/o + fc1/fc2 layout the fused step reads"
    FusedViTWeights().build(model)
    return True, "ViTModel's layers fused (eval mode)"


def _bert() -> tuple[bool, str]:
    from transformers import AutoModel, BertConfig

    from ilt_hf.fast_bert import FusedBertWeights, fused_bert_supported

    cfg = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=8)
    model = AutoModel.from_config(cfg, add_pooling_layer=False, attn_implementation="sdpa")
    if not fused_bert_supported(model):
        return False, "BertModel's layers are not the layout the fused step reads"
    FusedBertWeights().build(model)
    return True, "BertModel's layers fused (eval mode)"


def _neox() -> tuple[bool, str]:
    from transformers import AutoModel, GPTNeoXConfig

    from ilt_hf.fast_neox import FusedNeoXWeights, fused_neox_supported

    cfg = GPTNeoXConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=8)
    model = AutoModel.from_config(cfg, attn_implementation="sdpa")
    if not fused_neox_supported(model):
        return False, "GPTNeoXModel's layers are not the layout the fused cached step reads"
    FusedNeoXWeights().build(model)
    return True, "GPT-NeoX latent's cached step fused (generation)"


def _sliding_window() -> tuple[bool, str]:
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextModel

    if "attention_mask, dict)" not in inspect.getsource(Gemma3TextModel.forward):
        return False, "Gemma3TextModel.forward no longer takes a {layer_type: mask} mapping: see causal_lm.py"
    return True, "Gemma3TextModel takes a mask per layer type: packed rows keep the sliding window"


def _version_counter() -> tuple[bool, str]:
    if not hasattr(torch.Tensor, "_version"):
        return False, f"torch {torch.__version__} tensors have no _version: fused weights cannot see a change"
    return True, "fused weights rebuilt when a parameter's _version changes (training in between)"


CHECKS: dict[str, Callable[[], tuple[bool, str]]] = {
    "Llama RMSNorm in one autograd function (fast_norm.py)": _norm,
    "Llama rotary embedding in one autograd function (fast_rope.py)": _rope,
    "fused greedy byte decoding, Llama decoders (fused_llama.py, byte_loop.py)": _greedy,
    "fused ViT image encoder (fast_vit.py)": _vit,
    "fused BERT bytes encoder (fast_bert.py)": _bert,
    "fused GPT-NeoX cached step (fast_neox.py)": _neox,
    "Gemma 3 sliding window on packed rows (causal_lm.py)": _sliding_window,
    "parameter version counters (fused_weights.py)": _version_counter,
}


def fast_paths() -> list[FastPath]:
    """Each of :data:`CHECKS`, on or off with the installed packages, and why."""
    import transformers

    paths = [_checked(name, check) for name, check in CHECKS.items()]
    return [FastPath(p.name, p.active, f"{p.detail} (transformers {transformers.__version__})") for p in paths]
