"""The assembled model, for the full, image-only and bytes-only variants of the tiny preset."""

from __future__ import annotations

import pytest
import torch
from helpers import VARIANTS, micro_spec, saved_bytes, tiny_spec

from ilt_core.errors import ILTError
from ilt_core.modeling.model import build_model
from ilt_core.text.collator import TextUnits

ATOL = 1e-5


def unit_losses(model, texts, packing=False):
    """Per-position summed NLL ``(B, L)`` and the attention mask, for ``texts``."""
    batch = model.processor(texts, packing=packing)
    with torch.no_grad():
        out = model(**batch.model_inputs())
    return out.unit_losses, batch


def losses_of_text(model, texts, which, packing=False):
    """The per-unit losses of ``texts[which]``, however the batch placed it."""
    losses, batch = unit_losses(model, texts, packing)
    if not packing:
        n = int(batch.attention_mask[which].sum())
        return losses[which, :n]
    # packed: find the row and segment that hold text ``which`` (texts are packed in order)
    seen = -1
    for b in range(batch.segment_ids.shape[0]):
        for seg in range(int(batch.segment_ids[b].max()) + 1):
            seen += 1
            if seen == which:
                return losses[b][batch.segment_ids[b] == seg]
    raise AssertionError("text not found in packed batch")


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_look_ahead(tiny_models, variant):
    model = tiny_models[variant]
    a = losses_of_text(model, ["the cat sat on the mat today"], 0)
    b = losses_of_text(model, ["the cat sat on a very different thing"], 0)
    # units "the ", "cat ", "sat ", "on " are shared: positions 0..3 predict exactly those
    assert torch.allclose(a[:4], b[:4], atol=ATOL)
    assert not torch.allclose(a[4], b[4], atol=ATOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_looks_back(tiny_models, variant):
    model = tiny_models[variant]
    a = losses_of_text(model, ["red cat sat on the mat"], 0)
    b = losses_of_text(model, ["blue cat sat on the mat"], 0)
    assert a.shape == b.shape
    # position 0 differs by its label; every later position by what it sees
    assert ((a - b).abs() > 1e-6).all(), (a, b)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("packing", [False, True])
def test_batch_independence(tiny_models, variant, packing):
    model = tiny_models[variant]
    text = "שלום עולם, this is a text"
    alone = losses_of_text(model, [text], 0, packing)
    others = [
        ["a much longer text that goes on and on for quite a few more words than ours", text],
        [text, "short"],
        ["", text, ""],
        ["x y", "", text, "tail words here and there"],
    ]
    for batch in others:
        which = batch.index(text)
        got = losses_of_text(model, batch, which, packing)
        assert got.shape == alone.shape
        assert torch.allclose(got, alone, atol=ATOL), (batch, (got - alone).abs().max())


def _train(model, texts, steps, lr=2e-3, seed=0):
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    batch = model.processor(texts)
    losses = []
    for _ in range(steps):
        loss = model(**batch.model_inputs()).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def _text_loss(model, text):
    losses, _ = unit_losses(model, [text])
    return float(losses.sum())


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_learns_to_prefer_the_training_texts(variant):
    model = build_model(micro_spec(variant), seed=0)  # the tiny architectures, shrunk: the same invariant
    texts = ["the cat sat on the mat", "a dog ran in the park", "שלום לכם חברים", "one two three four"]
    # character-, word- and byte-level near misses of each training text
    near = {
        texts[0]: ["the cat sat on the bat", "the mat sat on the cat"],
        texts[1]: ["a dog ran in the perk", "a dog ran in a park"],
        texts[2]: ["שלום לכם חברות", "חברים לכם שלום"],
        texts[3]: ["one two three fours", "one two three five"],
    }
    losses = _train(model, texts, steps=80, lr=1e-3)
    assert losses[-1] < losses[0] / 3, losses
    for text, misses in near.items():
        for miss in misses:
            assert _text_loss(model, text) < _text_loss(model, miss) - 1.0, (text, miss)


@pytest.mark.slow
def test_same_seed_same_weights_and_losses():
    runs = []
    for _ in range(2):
        model = build_model(tiny_spec("full", modality_dropout=0.2), seed=123)
        losses = _train(model, ["one text", "another text here"], steps=3, seed=7)
        runs.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
    assert runs[0][0] == runs[1][0]
    for k, v in runs[0][1].items():
        assert torch.equal(v, runs[1][1][k]), k


def test_disable_a_modality(tiny_models):
    model = tiny_models["full"]
    text = ["the quick brown fox"]
    base, _ = unit_losses(model, text)
    model.disable("image")
    try:
        no_image, batch = unit_losses(model, text)
        # with images off, the pixels no longer matter
        scrambled = batch.model_inputs()
        scrambled["image_groups"] = [(i, torch.rand_like(p)) for i, p in batch.image_groups]
        with torch.no_grad():
            again = model(**scrambled).unit_losses
        assert torch.equal(again, no_image)
        assert not torch.allclose(no_image, base)
        with pytest.raises(Exception, match="no input modality"):
            model.disable("bytes")
    finally:
        model.enable("image")
    restored, _ = unit_losses(model, text)
    assert torch.equal(restored, base)


def test_modality_dropout_only_in_training():
    model = build_model(tiny_spec("full", modality_dropout=0.9), seed=0)
    batch = model.processor(["several different words to encode here"])
    inputs = batch.model_inputs()
    model.eval()
    with torch.no_grad():
        e1 = model.encode_units(inputs["unit_input_ids"], inputs["unit_attention_mask"], inputs["image_groups"])
        e2 = model.encode_units(inputs["unit_input_ids"], inputs["unit_attention_mask"], inputs["image_groups"])
        assert torch.equal(e1, e2)
        model.train()
        torch.manual_seed(0)
        e3 = model.encode_units(inputs["unit_input_ids"], inputs["unit_attention_mask"], inputs["image_groups"])
    assert not torch.allclose(e1, e3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_is_mean_over_label_bytes(tiny_models, variant):
    model = tiny_models[variant]
    batch = model.processor(["hello world", "שלום"])
    with torch.no_grad():
        out = model(**batch.model_inputs())
    labels = batch.labels
    n_tokens = int((labels != -100).sum())
    assert out.num_label_tokens == n_tokens
    assert torch.allclose(out.loss, out.unit_losses.sum() / n_tokens, atol=1e-5)
    # bytes of "hello world" + "שלום": each unit's bytes, each unit's eos, one end-of-text eos per text
    assert n_tokens == len(b"hello world") + 2 + 1 + len("שלום".encode()) + 1 + 1


def test_collated_units_are_worked_once(tiny_models):
    model = tiny_models["full"]
    batch = model.processor(["the the the cat", "the cat the"])
    assert batch.units.count("the ") == 1
    assert batch.unit_input_ids.shape[0] == len(set(batch.units))
    rendered = sum(len(i) for i, _ in batch.image_groups)
    assert rendered == batch.unit_input_ids.shape[0]


def test_truncated_text_has_no_end_of_text_label(tiny_models):
    model = tiny_models["bytes-only"]
    batch = model.processor.collate([TextUnits(["a ", "b ", "c ", "d"])], max_units=3)
    assert batch.unit_index.shape == (1, 3)
    assert int((batch.labels[0, :, 0] != -100).sum()) == 2  # predicts "a ", "b "; the cut text does not end


def _saved_bytes_and_grads(model, batch):
    """Bytes of the tensors autograd keeps for backward, and the gradients of one forward + backward."""
    model.zero_grad(set_to_none=True)
    with saved_bytes() as kept:
        out = model(**batch.model_inputs())
    out.loss.backward()
    return kept.total, out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_same_gradients_far_less_kept():
    spec = tiny_spec("full", labels="bytes", label_bytes=16)
    for role in ("bytes_encoder",):  # dropout off: the two passes must see identical computations
        spec[role]["config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    plain = build_model(spec, seed=5).train()
    checkpointed = build_model({**spec, "activation_checkpointing": True}, seed=5).train()
    assert checkpointed.activation_checkpointing_enable() == [
        "image_encoder",
        "bytes_encoder",
        "latent_transformer",
        "bytes_decoder",
    ]
    texts = ["שלום עולם, מה שלומך היום? " * 3, "a second text with other words in it"]
    batch = plain.processor(texts)
    kept_plain, loss_plain, grads_plain = _saved_bytes_and_grads(plain, batch)
    kept_ckpt, loss_ckpt, grads_ckpt = _saved_bytes_and_grads(checkpointed, batch)
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=1e-6)
    assert grads_ckpt.keys() == grads_plain.keys() and len(grads_plain) > 50
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert kept_ckpt < 0.5 * kept_plain, (kept_ckpt, kept_plain)
    # off again: the same activations are kept as without it
    checkpointed.activation_checkpointing_disable()
    assert _saved_bytes_and_grads(checkpointed, batch)[0] == kept_plain


CHECKPOINTED = ("image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder")


def _kept_bytes_per_role(model, batch):
    """Bytes autograd keeps for backward during each role's forward, ``{role: bytes}``, and the gradients."""
    model.zero_grad(set_to_none=True)
    kept = dict.fromkeys(CHECKPOINTED, 0)
    running = []
    handles = []
    for role in CHECKPOINTED:
        module = getattr(model, role)
        handles.append(module.register_forward_pre_hook(lambda m, a, r=role: running.append(r)))
        handles.append(module.register_forward_hook(lambda m, a, o: running.pop() and None))  # output kept
    seen = set()

    def pack(t):
        storage = t.untyped_storage()
        if running and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            kept[running[-1]] += storage.nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(**batch.model_inputs())
    finally:
        for handle in handles:
            handle.remove()
    out.loss.backward()
    return kept, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_of_one_role_checkpoints_that_role_alone():
    spec = tiny_spec("full", labels="bytes", label_bytes=16)
    spec["bytes_encoder"]["config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    plain = build_model(spec, seed=5).train()
    checkpointed = build_model({**spec, "activation_checkpointing": ["image_encoder"]}, seed=5).train()
    assert checkpointed.spec.checkpointed_roles == ("image_encoder",)
    batch = plain.processor(["שלום עולם, מה שלומך היום? " * 3, "a second text with other words in it"])
    kept_plain, grads_plain = _kept_bytes_per_role(plain, batch)
    kept_ckpt, grads_ckpt = _kept_bytes_per_role(checkpointed, batch)
    assert all(kept_plain[role] > 0 for role in CHECKPOINTED), kept_plain
    assert kept_ckpt["image_encoder"] < 0.5 * kept_plain["image_encoder"], (kept_ckpt, kept_plain)
    for role in CHECKPOINTED[1:]:  # the other roles keep what the unchecked model keeps
        assert kept_ckpt[role] == kept_plain[role], (role, kept_ckpt, kept_plain)
    assert grads_ckpt.keys() == grads_plain.keys() and len(grads_plain) > 50
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # the call takes roles too (Trainer passes them inside its kwargs): exactly those roles afterwards
    assert checkpointed.activation_checkpointing_enable({"roles": ["latent_transformer"]}) == ["latent_transformer"]
    kept_latent, _ = _kept_bytes_per_role(checkpointed, batch)
    assert kept_latent["image_encoder"] == kept_plain["image_encoder"]
    assert kept_latent["latent_transformer"] < 0.5 * kept_plain["latent_transformer"], (kept_latent, kept_plain)


@pytest.mark.parametrize("value", [["image_encoder", "bytes_decodr"], ["renderer"], "sometimes"])
def test_activation_checkpointing_refuses_an_unknown_role(value):
    from ilt_core.errors import SpecError
    from ilt_core.specs.spec import load_spec

    with pytest.raises(SpecError) as err:
        load_spec({**tiny_spec("full"), "activation_checkpointing": value})
    message = str(err.value)
    assert "activation_checkpointing" in message and repr(value) in message
    assert "image_encoder, bytes_encoder, latent_transformer, bytes_decoder" in message
    model = build_model(tiny_spec("bytes-only"), seed=0)
    with pytest.raises(
        ILTError, match="unknown role 'bytes_decodr'; expected true, false or a list of roles out of: image_encoder"
    ):
        model.activation_checkpointing_enable(roles=["bytes_decodr"])
