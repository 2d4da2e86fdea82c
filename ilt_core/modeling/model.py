"""The assembled Image Latent Transformer: a transformers ``PreTrainedModel`` built from a spec.

Data flow (U distinct units, B rows, L units per row, M positions with labels, K label bytes)::

    unit bytes (U, T) ──bytes_encoder──▶ (U, Db) ┐
    unit images by width ──image_encoder──▶ (U, Di) ┴─concat─▶ encoder_mapping ─▶ (U, D)
    gather by unit_index ─▶ (B, L, D) ──latent_transformer (causal)──▶ (B, L, D)
    latent at labelled positions (M, D) ──decoder_mapping──▶ prefix (M, 1, Dd)
    [prefix, bytes of the label[:-1]] (M, K, Dd) ──bytes_decoder──▶ logits (M, K, V)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ilt_core.errors import ILTError
from ilt_core.generation.loop import generate
from ilt_core.generation.options import GenerationOptions
from ilt_core.modeling.card import source_licenses
from ilt_core.modeling.config import ILTConfig, resolve_spec
from ilt_core.modeling.fixed_step import FixedShapesStep, token_losses
from ilt_core.modeling.masks import block_causal_mask
from ilt_core.modeling.outputs import ILTOutput
from ilt_core.modeling.parameters import count_parameters
from ilt_core.modeling.pretrained import GENERATION_DEFAULTS, PretrainedIO
from ilt_core.modeling.products import set_cpu_products
from ilt_core.modeling.random_state import random_state_kept
from ilt_core.plugins.registry import BuildContext, get_registry
from ilt_core.specs.spec import CHECKPOINTING_ROLES, ModelSpec, check_components, checkpointing_roles, load_spec
from ilt_core.text.byte_packing import BytePacking
from ilt_core.text.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE
from ilt_core.text.collator import IGNORE_INDEX
from ilt_core.text.image_packing import row_length
from ilt_core.text.label_packing import LabelPacking
from ilt_core.text.processor import ILTProcessor
from ilt_core.text.render_cache import pixels_as_float

MODALITIES = ("image", "bytes")


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


def _factory_params(registry: Any, spec: ModelSpec) -> dict[str, tuple[str, ...]]:
    """The argument names each role's factory takes (a tensor attribute of the same name is written out)."""
    out: dict[str, tuple[str, ...]] = {}
    for role in ROLE_ATTRIBUTES:
        block = spec.block(role)
        if block is None:
            continue
        try:
            out[role] = tuple(inspect.signature(registry.get(block.component, role).load_factory()).parameters)
        except (ILTError, ImportError, AttributeError, ValueError, TypeError):
            out[role] = ()
    return out


ROLE_ATTRIBUTES = ("renderer", "image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder")


class ILTModel(PretrainedIO, FixedShapesStep, PreTrainedModel):
    """Renderer, image and bytes encoders, latent transformer, bytes decoder, two mappings.

    Build with :func:`build_model` (or ``ILTModel(spec)`` / ``ILTModel(ILTConfig(...))``) or
    :meth:`from_pretrained`; call with a collated batch: ``model(**processor(texts).model_inputs())``;
    continue texts with :meth:`generate`. Saving, loading and hub upload (``save_pretrained``,
    ``from_pretrained``, ``push_to_hub``) come from :class:`~ilt_core.modeling.pretrained.PretrainedIO`.
    """

    config_class = ILTConfig
    base_model_prefix = "ilt"
    main_input_name = "unit_input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: ILTConfig | ModelSpec | str | Path | dict, registry: Any | None = None) -> None:
        if isinstance(config, ILTConfig):
            if config.spec is None:
                raise ILTError("ILTConfig has no spec: build a model from a spec (preset name, YAML path or mapping)")
            spec = load_spec(config.spec)
        else:
            spec = load_spec(config)
            config = ILTConfig(spec=spec.to_dict())
        super().__init__(config)
        self.spec = spec
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
        self.image_packing = self._image_packing(width_multiple)
        self.label_stream: LabelPacking | None = None
        self.bytes_encoder = _build(registry, spec, "bytes_encoder", context)
        # the units' bytes packed into rows as long as the longest unit (to a multiple of 8), where the bytes
        # encoder takes them (protocols.BytesEncoder, optional)
        self.unit_stream: BytePacking | None = None
        if getattr(self.bytes_encoder, "takes_packed_bytes", False):
            self.unit_stream = BytePacking(row_tokens=row_length(spec.max_unit_bytes))
        self.latent_transformer = _build(registry, spec, "latent_transformer", context)
        self.bytes_decoder = _build(registry, spec, "bytes_decoder", context)

        in_width = sum(int(m.hidden_size) for m in (self.image_encoder, self.bytes_encoder) if m is not None)
        d_latent = int(self.latent_transformer.hidden_size)
        self.encoder_mapping = nn.Linear(in_width, d_latent)
        self.decoder_mapping = nn.Linear(d_latent, int(self.bytes_decoder.hidden_size))
        self.max_units = int(getattr(self.latent_transformer, "max_positions", 2048) or 2048)
        if getattr(self.bytes_decoder, "takes_packed_rows", False):  # protocols.BytesDecoder, optional
            label_len = spec.max_unit_bytes + 1 if spec.labels == "unit" else spec.label_bytes
            # rows as long as the longest label (to a multiple of 8): the block-causal mask makes every score
            # outside a label wasted work, and a row of S tokens computes S of them per token
            self.label_stream = LabelPacking(row_tokens=row_length(label_len))
        self.processor = ILTProcessor(
            self.renderer,
            max_unit_bytes=spec.max_unit_bytes,
            labels=spec.labels,
            label_bytes=spec.label_bytes,
            max_units=self.max_units,
        )
        # config.json carries every backbone's resolved configuration: the folder rebuilds without its sources
        if config.source_spec is None:
            config.source_spec = spec.to_dict()
            config.source_licenses = source_licenses(config.source_spec)
        config.spec = resolve_spec(spec.to_dict(), self._components(), _factory_params(registry, spec))
        self.generation_defaults: dict[str, Any] = dict(GENERATION_DEFAULTS)
        self.disabled: set[str] = set()
        for modality in list(config.disabled):
            self.disable(modality)
        if spec.checkpointed_roles:
            self.activation_checkpointing_enable(roles=spec.checkpointed_roles)
        self.fast_paths: list[str] = self.set_fast_paths(True)
        self.post_init()

    def _components(self) -> dict[str, Any]:
        return {role: getattr(self, role) for role in ROLE_ATTRIBUTES}

    def init_weights(self) -> None:
        """Nothing to do: every component is initialised by its own factory (seeded by :func:`build_model`),
        and transformers' initialisation would overwrite a pretrained backbone's weights."""

    # ---- memory ------------------------------------------------------------------------
    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
        roles: Iterable[str] | None = None,
    ) -> list[str]:
        """Recompute the layers of ``roles`` (None: every role) in the backward pass instead of keeping them.

        Exactly the named roles are checkpointed afterwards: the others are switched off. ``roles`` may also come
        as ``activation_checkpointing_kwargs["roles"]`` (``--activation_checkpointing_kwargs
        '{"roles": ["image_encoder"]}'`` reaches here through transformers' ``Trainer``, which calls this for
        ``--activation_checkpointing`` or the older ``--gradient_checkpointing``); the spec field
        ``activation_checkpointing`` (true or a list of roles) does it at build time. A role that is off (no
        component) is skipped. The roles whose component has ``set_activation_checkpointing``
        (``protocols.ActivationCheckpointing``; the hf, timm and clip plugins' encoders and transformers) switch
        it on; returns them. Only active in training mode. ``every_n_layers`` and ``offload`` are hints a
        component may ignore. For the freed activations to leave the process on glibc,
        ``ilt train --cpu_malloc return``.
        """
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        named = kwargs.pop("roles", None)
        try:
            wanted = set(checkpointing_roles(named if roles is None else roles))
        except ValueError as exc:
            raise ILTError(f"activation_checkpointing_enable: roles: {exc}") from None
        self._set_checkpointing(False, {}, 1, False, set(CHECKPOINTING_ROLES) - wanted)
        return self._set_checkpointing(True, kwargs, every_n_layers, offload, wanted)

    def activation_checkpointing_disable(self) -> list[str]:
        """Undo :meth:`activation_checkpointing_enable` for every role."""
        return self._set_checkpointing(False, {}, 1, False, set(CHECKPOINTING_ROLES))

    def _set_checkpointing(
        self, on: bool, kwargs: dict, every_n_layers: int, offload: bool, roles: set[str]
    ) -> list[str]:
        switched = []
        for role in CHECKPOINTING_ROLES:
            component = getattr(self, role)
            if component is None or role not in roles:
                continue
            # protocols.ActivationCheckpointing: optional; a component without it keeps its activations
            switch = getattr(component, "set_activation_checkpointing", None)
            if switch is not None and switch(on, kwargs, every_n_layers=every_n_layers, offload=offload):
                switched.append(role)
        return switched

    # ---- fast paths --------------------------------------------------------------------
    def set_fast_paths(self, enabled: bool = True) -> list[str]:
        """Switch ILT's faster layers on (the default for a built or loaded model) or off; returns those in use.

        The linear layers' products through numpy's OpenBLAS (:mod:`ilt_core.modeling.products`) and every
        component's own (``protocols.FastPaths``: the hf plugin's layers in fewer passes and fused inference
        steps). Each gives the plain path's results to float rounding where it is active (CPU float32 for the
        training layers) and steps aside everywhere else, so off changes speed, never a result. A setting of this
        object: never saved with the model (``config.json`` does not hold it); ``ilt train --no_fast_paths`` and
        ``ilt generate --no-fast-paths`` switch it off for a run.
        """
        set_cpu_products(self, "numpy" if enabled else "torch")
        paths = ["core: linear layers' products in numpy"] if enabled else []
        for role in ("image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder"):
            switch = getattr(getattr(self, role), "set_fast_paths", None)  # protocols.FastPaths: optional
            if switch is not None:
                paths += [f"{role}: {name}" for name in switch(enabled)]
        self.fast_paths = paths
        return paths

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
        self.config.disabled = sorted(self.disabled)

    def enable(self, modality: str) -> None:
        """Undo :meth:`disable`."""
        self.disabled.discard(modality)
        self.config.disabled = sorted(self.disabled)

    # ---- the forward pass --------------------------------------------------------------
    def encode_units(
        self,
        unit_input_ids: torch.Tensor,
        unit_attention_mask: torch.Tensor,
        image_groups: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        packed_images: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        packed_bytes: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Embeddings ``(U, D)`` of U distinct units from their bytes ``(U, T)`` and images by width.

        ``image_groups``: ``[(indices (G,), pixels)]``, pixels float ``(G, 3, H, W)`` in ``[0, 1]`` or
        uint8 gray levels ``(G, 1, H, W)`` (the same images give the same embeddings either way).
        ``packed_images``: instead, ``(patches, positions, segments, cls)`` of
        :class:`ilt_core.text.image_packing.PackedImages` (``cls`` ``(U,)``): one call of the image encoder.
        ``packed_bytes``: ``(input_ids, positions, segments, owner)`` of
        :class:`ilt_core.text.byte_packing.PackedBytes`, each ``(R, S)``: the bytes encoder reads them instead of
        the padded ``(U, T)`` bytes.
        """
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
            if "image" in self.disabled or (not image_groups and packed_images is None):
                vec = torch.zeros(U, width, device=device)
            elif packed_images is not None:
                vec = self.image_encoder.encode_packed(*(t.to(device) for t in packed_images))
            else:
                # uint8 gray levels (how training batches carry them) become floats here, on the device
                vecs = [self.image_encoder(pixels_as_float(pixels, device)) for _, pixels in image_groups]
                order = torch.cat([idx for idx, _ in image_groups]).to(device)
                vec = torch.empty(U, width, device=device, dtype=vecs[0].dtype)
                vec[order] = torch.cat(vecs)
            if drop_image is not None:
                vec = vec.masked_fill(drop_image[:, None], 0.0)
            parts.append(vec)
        if self.bytes_encoder is not None:
            if "bytes" in self.disabled:
                vec = torch.zeros(U, int(self.bytes_encoder.hidden_size), device=device)
            elif packed_bytes is not None:
                vec = self.bytes_encoder.encode_packed(*(t.to(device) for t in packed_bytes), units=U)
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

    def _latent_mask(
        self, segment_ids: torch.Tensor | None, position_ids: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor | None:
        """The latent transformer's mask for collated rows: None, or a block-causal ``(B, 1, L, L)`` boolean mask.

        None when no row is packed (rows are right-padded and the latent is causal: padding is never attended),
        or when the latent transformer keeps the texts of a row apart from the ``position_ids`` ``(B, L)`` itself
        (``protocols.PositionMasking``): then no dense mask is built, and no device sync asks whether rows are
        packed. Otherwise a dense mask from ``segment_ids`` ``(B, L)``.
        """
        if segment_ids is None:
            return None
        from_positions = getattr(self.latent_transformer, "masks_from_position_ids", None)
        if position_ids is not None and from_positions is not None and from_positions():
            return None
        if not bool((segment_ids > 0).any()):
            return None
        return block_causal_mask(segment_ids.to(device))

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
        image_patches: torch.Tensor | None = None,
        image_positions: torch.Tensor | None = None,
        image_segments: torch.Tensor | None = None,
        image_cls: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_prefix: torch.Tensor | None = None,
        decoder_positions: torch.Tensor | None = None,
        decoder_segments: torch.Tensor | None = None,
        decoder_targets: torch.Tensor | None = None,
        decoder_owner: torch.Tensor | None = None,
        unit_stream_ids: torch.Tensor | None = None,
        unit_stream_positions: torch.Tensor | None = None,
        unit_stream_segments: torch.Tensor | None = None,
        unit_stream_owner: torch.Tensor | None = None,
        fixed: bool = False,
        **_: Any,
    ) -> ILTOutput:
        """Loss and logits for a collated batch (see :mod:`ilt_core.text.collator` for the shapes).

        ``fixed``: the batch has fixed shapes (``FixedShapes``): then no step reads a device value back (the latent
        gets a block-causal mask, every position is decoded, the loss divides by a count kept on the device), so the
        forward compiles whole; ``logits`` are then ``(B * L, K, V)`` and ``num_label_tokens`` a tensor.
        """
        device = self.encoder_mapping.weight.device
        packed = (image_patches, image_positions, image_segments, image_cls) if image_patches is not None else None
        packed_bytes = (
            (unit_stream_ids, unit_stream_positions, unit_stream_segments, unit_stream_owner)
            if unit_stream_ids is not None
            else None
        )
        unit_embeds = self.encode_units(unit_input_ids, unit_attention_mask, image_groups, packed, packed_bytes)
        inputs_embeds = unit_embeds[unit_index.to(device)]  # (B, L, D)
        stream = (
            (decoder_input_ids, decoder_prefix, decoder_positions, decoder_segments, decoder_targets, decoder_owner)
            if decoder_targets is not None
            else None
        )
        if fixed:  # a dense mask built on the device: no value read back
            mask = block_causal_mask(segment_ids.to(device)) if segment_ids is not None else None
        else:
            mask = self._latent_mask(segment_ids, position_ids, device)
        hidden = self.latent_transformer(
            inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids.to(device) if position_ids is not None else None,
        ).hidden_states
        if labels is None:
            return ILTOutput(None, None, None, hidden)
        if fixed:
            return self._fixed_loss(hidden, labels.to(device), stream)

        labels = labels.to(device)
        selected = labels[..., 0] != IGNORE_INDEX  # (B, L)
        label_ids = labels[selected]  # (M, K)
        logits = self.decode_logits(hidden[selected], label_ids)
        token_nll = token_losses(logits, label_ids)
        count = int((label_ids != IGNORE_INDEX).sum())
        loss = token_nll.sum() / max(count, 1)
        unit_losses = torch.zeros(selected.shape, device=device, dtype=token_nll.dtype)
        unit_losses[selected] = token_nll.sum(-1)
        return ILTOutput(loss, logits, unit_losses, hidden, count)

    # ---- summaries and checkpoints -----------------------------------------------------
    def get_input_embeddings(self) -> None:
        """None: the model reads units through its encoders, not through one token table (a bytes model's tables
        are its components' own). accelerate's FSDP2 asks, to tie a model's input and output tables."""
        return None

    def get_output_embeddings(self) -> None:
        """None: the bytes decoder's head is the component's own (see :meth:`get_input_embeddings`)."""
        return None

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part, embedding tables excluded (as `ilt presets` counts them)."""
        parts = {
            "image_encoder": self.image_encoder,
            "bytes_encoder": self.bytes_encoder,
            "latent_transformer": self.latent_transformer,
            "bytes_decoder": self.bytes_decoder,
            "mappings": nn.ModuleList([self.encoder_mapping, self.decoder_mapping]),
        }
        return {name: count_parameters(m) for name, m in parts.items() if m is not None}

    # ---- text in, text out -------------------------------------------------------------
    def generate(self, texts: str | list[str], options: GenerationOptions | None = None, **kwargs: Any) -> Any:
        """Continue each text: :func:`ilt_core.generation.generate` with this model's generation defaults.

        ``options``: a :class:`GenerationOptions` used as given; without it, :attr:`generation_defaults`
        (``generation_config.json`` of a saved model). ``kwargs`` override either: that function's keywords
        (``max_new_units``, ``num_beams``, ``do_sample``, ``top_p``, ``seed``, ``stop``, ``byte_*`` options of
        the bytes decoder, ...). Returns one string per text.
        """
        base = options if options is not None else GenerationOptions.from_kwargs(**self.generation_defaults)
        return generate(self, texts, options=base, **kwargs)


def build_model(spec: ModelSpec | str | Path | dict, seed: int | None = None) -> ILTModel:
    """Build a model from a spec, preset name or YAML path, with random weights unless pretrained.

    With ``seed`` the weights are drawn from that seed and the caller's random state is left as it was; without,
    they are drawn from torch's random state (as ``nn.Linear(...)`` draws them).
    """
    if seed is None:
        return ILTModel(spec)
    with random_state_kept():
        torch.manual_seed(seed)
        return ILTModel(spec)


__all__ = [
    "BOS_ID",
    "EOS_ID",
    "VOCAB_SIZE",
    "ILTConfig",
    "ILTModel",
    "ILTOutput",
    "block_causal_mask",
    "build_model",
]
