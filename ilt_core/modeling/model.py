"""The assembled Image Latent Transformer: one ``nn.Module`` built from a spec.

Data flow (U distinct units, B rows, L units per row, M positions with labels, K label bytes)::

    unit bytes (U, T) ──bytes_encoder──▶ (U, Db) ┐
    unit images by width ──image_encoder──▶ (U, Di) ┴─concat─▶ encoder_mapping ─▶ (U, D)
    gather by unit_index ─▶ (B, L, D) ──latent_transformer (causal)──▶ (B, L, D)
    latent at labelled positions (M, D) ──decoder_mapping──▶ prefix (M, 1, Dd)
    [prefix, bytes of the label[:-1]] (M, K, Dd) ──bytes_decoder──▶ logits (M, K, V)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ilt_core.errors import ILTError
from ilt_core.plugins.registry import BuildContext, get_registry
from ilt_core.specs.spec import ModelSpec, check_components, load_spec
from ilt_core.text.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE
from ilt_core.text.collator import IGNORE_INDEX
from ilt_core.text.processor import ILTProcessor

MODALITIES = ("image", "bytes")


@dataclass
class ILTOutput:
    """What :meth:`ILTModel.forward` returns.

    ``loss``: mean cross-entropy (nats) over every label byte in the batch, or None without labels.
    ``logits``: ``(M, K, V)`` for the M labelled positions. ``unit_losses``: ``(B, L)`` summed
    negative log-likelihood (nats) of each position's label (0 where none).
    ``hidden_states``: the latent ``(B, L, D)``. ``num_label_tokens``: how many bytes the loss
    averaged over.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    unit_losses: torch.Tensor | None
    hidden_states: torch.Tensor
    num_label_tokens: int = 0

    # Trainer reads outputs["loss"] or outputs[0]
    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return [self.loss, self.logits][key]
        return getattr(self, key)

    def keys(self) -> list[str]:
        return ["loss", "logits", "unit_losses", "hidden_states"]


def _build(registry: Any, spec: ModelSpec, role: str, context: BuildContext) -> Any:
    block = spec.block(role)
    if block is None:
        return None
    try:
        return registry.build(block.component, role, context, block.args, where=f"{role}.component")
    except ILTError:
        raise
    except (TypeError, ValueError, KeyError, OSError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ILTError(f"{role}: {block.component} could not be built from its arguments: {first}") from exc


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, 1, L, L)`` mask: attend only to earlier positions of the same text.

    Padding (segment -1) attends to itself only, so no attention row is empty.
    """
    L = segment_ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    mask = same & causal
    eye = torch.eye(L, dtype=torch.bool, device=segment_ids.device)
    mask = mask | eye
    return mask[:, None]


class ILTModel(nn.Module):
    """Renderer, image and bytes encoders, latent transformer, bytes decoder, two mappings.

    Build with :func:`build_model` or :meth:`from_pretrained`; call with a collated batch:
    ``model(**processor(texts).model_inputs())``.
    """

    def __init__(self, spec: ModelSpec | str | Path | dict, registry: Any | None = None) -> None:
        super().__init__()
        self.spec = spec = load_spec(spec)
        registry = registry or get_registry()
        check_components(spec, registry)
        context = BuildContext(image_height=spec.image_height)

        self.image_encoder = _build(registry, spec, "image_encoder", context)
        width_multiple = int(getattr(self.image_encoder, "patch_size", context.width_multiple) or 16)
        render_context = BuildContext(image_height=spec.image_height, width_multiple=width_multiple)
        renderer_args = dict(spec.renderer.args) if spec.renderer else {}
        renderer_args.setdefault("max_width", spec.max_image_width)
        self.renderer = (
            registry.build(
                spec.renderer.component, "renderer", render_context, renderer_args, where="renderer.component"
            )
            if self.image_encoder is not None
            else None
        )
        self.bytes_encoder = _build(registry, spec, "bytes_encoder", context)
        self.latent_transformer = _build(registry, spec, "latent_transformer", context)
        self.bytes_decoder = _build(registry, spec, "bytes_decoder", context)

        in_width = sum(int(m.hidden_size) for m in (self.image_encoder, self.bytes_encoder) if m is not None)
        d_latent = int(self.latent_transformer.hidden_size)
        self.encoder_mapping = nn.Linear(in_width, d_latent)
        self.decoder_mapping = nn.Linear(d_latent, int(self.bytes_decoder.hidden_size))
        self.max_units = int(getattr(self.latent_transformer, "max_positions", 2048) or 2048)
        self.processor = ILTProcessor(
            self.renderer,
            max_unit_bytes=spec.max_unit_bytes,
            labels=spec.labels,
            label_bytes=spec.label_bytes,
            max_units=self.max_units,
        )
        self.disabled: set[str] = set()
        if spec.activation_checkpointing:
            self.activation_checkpointing_enable()

    # ---- memory ------------------------------------------------------------------------
    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> list[str]:
        """Recompute each component's layers in the backward pass instead of keeping their activations.

        The roles whose backbone supports it (transformers models, timm and open_clip towers) switch it on;
        returns them. transformers' ``Trainer`` calls this for ``--activation_checkpointing`` (or the older
        ``--gradient_checkpointing``); the spec field ``activation_checkpointing: true`` does it at build time.
        Only active in training mode. ``every_n_layers`` and ``offload`` reach transformers backbones only.
        """
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        return self._set_checkpointing(True, kwargs, every_n_layers, offload)

    def activation_checkpointing_disable(self) -> list[str]:
        """Undo :meth:`activation_checkpointing_enable`."""
        return self._set_checkpointing(False, {}, 1, False)

    def _set_checkpointing(self, on: bool, kwargs: dict, every_n_layers: int, offload: bool) -> list[str]:
        roles = []
        for role in ("image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder"):
            component = getattr(self, role)
            if component is None:
                continue
            for module in component.modules():  # the first backbone inside the plugin's wrapper
                if hasattr(module, "activation_checkpointing_enable") and getattr(
                    module, "supports_gradient_checkpointing", False
                ):
                    if on:
                        module.activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers, offload=offload)
                    else:
                        module.activation_checkpointing_disable()
                    roles.append(role)
                    break
                if hasattr(module, "set_grad_checkpointing"):
                    module.set_grad_checkpointing(on)
                    roles.append(role)
                    break
        return roles

    # ---- modality switches -------------------------------------------------------------
    def disable(self, modality: str) -> None:
        """Switch off ``"image"`` or ``"bytes"`` on a built or trained model (its vector becomes 0)."""
        if modality not in MODALITIES:
            raise ILTError(f"disable: expected one of {MODALITIES}, got {modality!r}")
        enabled = {
            m for m, enc in zip(MODALITIES, (self.image_encoder, self.bytes_encoder), strict=True) if enc is not None
        }
        if not (enabled - self.disabled - {modality}):
            raise ILTError(f"disable({modality!r}) would leave no input modality on")
        self.disabled.add(modality)

    def enable(self, modality: str) -> None:
        """Undo :meth:`disable`."""
        self.disabled.discard(modality)

    # ---- the forward pass --------------------------------------------------------------
    def encode_units(
        self,
        unit_input_ids: torch.Tensor,
        unit_attention_mask: torch.Tensor,
        image_groups: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Embeddings ``(U, D)`` of U distinct units from their bytes ``(U, T)`` and images by width."""
        U = unit_input_ids.shape[0]
        parts = []
        device = self.encoder_mapping.weight.device
        drop_image = drop_bytes = None
        both = self.image_encoder is not None and self.bytes_encoder is not None
        if self.training and both and self.spec.modality_dropout > 0:
            r = torch.rand(U, device=device)
            p = self.spec.modality_dropout
            drop_image, drop_bytes = r < p / 2, (r >= p / 2) & (r < p)
        if self.image_encoder is not None:
            width = int(self.image_encoder.hidden_size)
            if "image" in self.disabled or not image_groups:
                vec = torch.zeros(U, width, device=device)
            else:
                vecs = [self.image_encoder(pixels.to(device)) for _, pixels in image_groups]
                order = torch.cat([idx for idx, _ in image_groups]).to(device)
                vec = torch.empty(U, width, device=device, dtype=vecs[0].dtype)
                vec[order] = torch.cat(vecs)
            if drop_image is not None:
                vec = vec.masked_fill(drop_image[:, None], 0.0)
            parts.append(vec)
        if self.bytes_encoder is not None:
            if "bytes" in self.disabled:
                vec = torch.zeros(U, int(self.bytes_encoder.hidden_size), device=device)
            else:
                vec = self.bytes_encoder(unit_input_ids.to(device), unit_attention_mask.to(device))
            if drop_bytes is not None:
                vec = vec.masked_fill(drop_bytes[:, None], 0.0)
            parts.append(vec)
        return self.encoder_mapping(torch.cat(parts, dim=-1))

    def decode_logits(self, latents: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced byte logits ``(M, K, V)`` from latents ``(M, D)`` and labels ``(M, K)``.

        The decoder reads ``[prefix, label[0], ..., label[K-2]]``; it is causal and rows are
        right-padded, so padding never reaches a real position and no mask is needed.
        """
        prefix = self.decoder_mapping(latents)[:, None, :]
        inputs = label_ids[:, :-1].masked_fill(label_ids[:, :-1] < 0, PAD_ID)
        embeds = torch.cat([prefix, self.bytes_decoder.embed(inputs)], dim=1)
        logits, _ = self.bytes_decoder(embeds)
        return logits

    def forward(
        self,
        unit_input_ids: torch.Tensor,
        unit_attention_mask: torch.Tensor,
        unit_index: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_groups: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        num_bytes: torch.Tensor | None = None,
        **_: Any,
    ) -> ILTOutput:
        """Loss and logits for a collated batch (see :mod:`ilt_core.text.collator` for the shapes)."""
        device = self.encoder_mapping.weight.device
        unit_embeds = self.encode_units(unit_input_ids, unit_attention_mask, image_groups)
        inputs_embeds = unit_embeds[unit_index.to(device)]  # (B, L, D)
        if segment_ids is not None and bool((segment_ids > 0).any()):
            mask = block_causal_mask(segment_ids.to(device))
        else:
            mask = None  # rows are right-padded and the latent is causal: padding is never attended
        hidden = self.latent_transformer(
            inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids.to(device) if position_ids is not None else None,
        ).hidden_states
        if labels is None:
            return ILTOutput(None, None, None, hidden)

        labels = labels.to(device)
        selected = labels[..., 0] != IGNORE_INDEX  # (B, L)
        label_ids = labels[selected]  # (M, K)
        logits = self.decode_logits(hidden[selected], label_ids)
        token_nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            label_ids.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(label_ids.shape)
        count = int((label_ids != IGNORE_INDEX).sum())
        loss = token_nll.sum() / max(count, 1)
        unit_losses = torch.zeros(selected.shape, device=device, dtype=token_nll.dtype)
        unit_losses[selected] = token_nll.sum(-1)
        return ILTOutput(loss, logits, unit_losses, hidden, count)

    # ---- summaries and checkpoints -----------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part, embedding tables excluded (as the README table counts them)."""
        from ilt_core.modeling.parameters import count_parameters

        parts = {
            "image_encoder": self.image_encoder,
            "bytes_encoder": self.bytes_encoder,
            "latent_transformer": self.latent_transformer,
            "bytes_decoder": self.bytes_decoder,
            "mappings": nn.ModuleList([self.encoder_mapping, self.decoder_mapping]),
        }
        return {name: count_parameters(m) for name, m in parts.items() if m is not None}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``spec.yaml`` and ``model.safetensors`` to ``directory`` atomically."""
        from ilt_core.modeling.checkpoint import save_checkpoint

        return save_checkpoint(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> ILTModel:
        """Load a folder written by :meth:`save_pretrained`; bit-for-bit the same model."""
        from ilt_core.modeling.checkpoint import load_checkpoint

        return load_checkpoint(directory, map_location=map_location)


def build_model(spec: ModelSpec | str | Path | dict, seed: int | None = None) -> ILTModel:
    """Build a model from a spec, preset name or YAML path, with random weights unless pretrained."""
    if seed is not None:
        torch.manual_seed(seed)
    return ILTModel(spec)


__all__ = ["ILTModel", "ILTOutput", "build_model", "block_causal_mask", "VOCAB_SIZE", "BOS_ID", "EOS_ID"]
