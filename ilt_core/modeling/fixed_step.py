"""The fixed-shape training step of :class:`~ilt_core.modeling.model.ILTModel` (a mixin it inherits).

A batch collated with :class:`~ilt_core.text.collator.FixedShapes` has the same tensor shapes at every step: word
images packed into rows of patches (one image-encoder call), label bytes packed into one stream (one decoder call
without padding to the longest label), and a forward that never reads a value back from the device, so a GPU runs
it as a few large kernels and ``torch.compile(fullgraph=True)`` captures it whole.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ilt_core.modeling.outputs import ILTOutput
from ilt_core.text.byte_tokenizer import PAD_ID
from ilt_core.text.collator import IGNORE_INDEX, FixedShapes
from ilt_core.text.image_packing import ImagePacking, row_length, segment_mask


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (nats, float32) of each target: ``logits (..., V)``, ``targets (...)`` -> ``(...)``,
    0 where the target is -100."""
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return nll.view(targets.shape)


class FixedShapesStep:
    """``ILTModel``'s fixed-shape batches: the shapes for its components, and the latent and loss on them."""

    # set by ILTModel
    spec: Any
    processor: Any
    image_encoder: Any
    bytes_decoder: Any
    latent_transformer: Any
    decoder_mapping: Any
    image_packing: ImagePacking | None
    label_stream: Any
    unit_stream: Any

    def _image_packing(self, patch: int) -> ImagePacking | None:
        """How fixed-shape batches carry word images to this model's image encoder: packed rows of patches when it
        takes them (``protocols.PackedImageEncoder``), else None (images grouped by width, one call per width)."""
        prepare = getattr(self.image_encoder, "prepare_packed", None)
        grid_rows, widths = self.spec.image_height // patch, self.spec.max_image_width // patch
        if prepare is None or not prepare(grid_rows, widths):
            return None
        longest = 1 + grid_rows * widths  # the widest image and its class token
        return ImagePacking(patch_size=patch, row_tokens=row_length(2 * longest))

    def fixed_shapes(self, rows: int, row_units: int, grow_only: bool = False) -> FixedShapes:
        """Shapes for fixed-shape batches of ``rows`` x ``row_units`` positions for this model: word images packed
        for its image encoder and label bytes for its bytes decoder where they take them
        (``processor.collate(..., shapes=model.fixed_shapes(8, 128))``), and the units' bytes packed for its bytes
        encoder where it takes them."""
        return self.processor.fixed_shapes(
            rows, row_units, self.image_packing, self.label_stream, grow_only, self.unit_stream
        )

    def _fixed_loss(self, hidden: torch.Tensor, labels: torch.Tensor, stream: tuple[torch.Tensor, ...] | None) -> Any:
        """The loss of a fixed-shape batch from the latent ``(B, L, D)``, with no host synchronisation.

        ``stream``: the label bytes packed into rows (:class:`ilt_core.text.label_packing.PackedLabels`'s fields in
        order), decoded in one call with no padding to the longest label; without it every position is decoded
        from ``labels`` ``(B, L, K)``.
        """
        if stream is not None:
            return self._stream_loss(hidden, *(t.to(hidden.device) for t in stream))
        B, L, _ = hidden.shape
        label_ids = labels.reshape(B * L, -1)  # (B*L, K): every position, -100 where no label
        logits = self.decode_logits(hidden.reshape(B * L, -1), label_ids)
        token_nll = token_losses(logits, label_ids)
        count = (label_ids != IGNORE_INDEX).sum()
        loss = token_nll.sum() / count.clamp(min=1)
        return ILTOutput(loss, logits, token_nll.sum(-1).view(B, L), hidden, count)

    def _stream_loss(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        prefix: torch.Tensor,
        positions: torch.Tensor,
        segments: torch.Tensor,
        targets: torch.Tensor,
        owner: torch.Tensor,
    ) -> ILTOutput:
        """Loss from the latent ``(B, L, D)`` and the packed label stream (each ``(R, S)``, ``prefix`` ``(B * L,)``);
        logits ``(R, S, V)``."""
        B, L, _ = hidden.shape
        R, S = input_ids.shape
        prefixes = self.decoder_mapping(hidden.reshape(B * L, -1))  # (B*L, Dd)
        # one spare token past the end takes the prefixes of positions without a label; each prefix is copied to its
        # token alone (a select per position backward, not a scatter-add over every token)
        ids = F.pad(input_ids.reshape(1, R * S), (0, 1), value=PAD_ID)  # (1, R*S + 1)
        embeds = self.bytes_decoder.embed(ids)[0]  # (R*S + 1, Dd)
        embeds = embeds.index_copy(0, prefix, prefixes.to(embeds.dtype))[: R * S].view(R, S, -1)
        causal = torch.ones(S, S, dtype=torch.bool, device=segments.device).tril()
        mask = segment_mask(segments) & causal
        logits, _ = self.bytes_decoder(embeds, attention_mask=mask, position_ids=positions)
        token_nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        count = (targets != IGNORE_INDEX).sum()
        loss = token_nll.sum() / count.clamp(min=1)
        # each token's loss to its position's; padding to a spare slot past the end
        per_position = torch.zeros(B * L + 1, device=hidden.device, dtype=token_nll.dtype)
        per_position = per_position.index_add(0, owner.reshape(-1), token_nll)
        return ILTOutput(loss, logits, per_position[: B * L].view(B, L), hidden, count)


__all__ = ["FixedShapesStep", "token_losses"]
