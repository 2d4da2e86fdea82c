"""What the training step's speed-ups must keep: the same results, with less work.

The bytes encoder runs a large batch of units in groups of similar length (``ilt_hf.encoder.length_groups``): each
unit's vector and its gradients are those of the whole padded batch in one call, and the model sees fewer byte
positions.
"""

from __future__ import annotations

import torch
from helpers import micro_spec

from ilt_core.modeling.model import build_model
from ilt_core.text.byte_tokenizer import PAD_ID


def units_batch(rows: int = 96, width: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded byte ids ``(rows, width)`` and their mask, lengths spread over 1..width."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    lengths[0] = width
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    ids = torch.randint(0, 256, (rows, width), generator=g).masked_fill(mask == 0, PAD_ID)
    return ids, mask


def positions_seen(encoder: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The encoder's vectors ``(N, D)`` and how many byte positions its backbone's embeddings read."""
    seen = []
    handle = encoder.model.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.append(a[0].numel()))
    try:
        return encoder(ids, mask), sum(seen)
    finally:
        handle.remove()


def test_bytes_encoder_length_groups_same_vectors_and_gradients_less_work():
    model = build_model(micro_spec("bytes-only"), seed=0)
    encoder = model.bytes_encoder.eval()  # dropout off: the grouped and single calls are comparable
    ids, mask = units_batch()
    grouped, seen = positions_seen(encoder, ids, mask)
    grouped.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    encoder.zero_grad(set_to_none=True)
    whole = encoder._encode(ids, mask)  # the whole padded batch, one call
    whole.square().sum().backward()
    torch.testing.assert_close(grouped, whole, rtol=1e-5, atol=1e-5)
    for name, p in encoder.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert seen <= 0.8 * ids.numel(), (seen, ids.numel())


def test_bytes_encoder_keeps_one_call_for_left_padding_and_small_batches():
    model = build_model(micro_spec("bytes-only"), seed=0)
    encoder = model.bytes_encoder.eval()
    ids, mask = units_batch()
    left_ids, left_mask = ids.flip(1), mask.flip(1)  # left-padded: cutting columns would cut real bytes
    with torch.no_grad():
        out, seen = positions_seen(encoder, left_ids, left_mask)
        assert seen == left_ids.numel()
        torch.testing.assert_close(out, encoder._encode(left_ids, left_mask))
        _, seen = positions_seen(encoder, ids[:8], mask[:8])
        assert seen == ids[:8].numel()
