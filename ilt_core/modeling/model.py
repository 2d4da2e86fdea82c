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
import json
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
import yaml
from torch import nn
from transformers import PreTrainedModel

from ilt_core.errors import CheckpointError, ILTError
from ilt_core.generation.loop import generate
from ilt_core.generation.options import GenerationOptions
from ilt_core.modeling import checkpoint as ckpt
from ilt_core.modeling.card import model_card, source_licenses
from ilt_core.modeling.config import (
    ILTConfig,
    renderer_key_differences,
    renderer_key_json,
    resolve_spec,
)
from ilt_core.modeling.parameters import count_parameters
from ilt_core.modeling.products import set_cpu_products
from ilt_core.modeling.random_state import keeps_random_state, random_state_kept
from ilt_core.plugins.registry import BuildContext, get_registry
from ilt_core.specs.spec import ModelSpec, check_components, load_spec
from ilt_core.text.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE
from ilt_core.text.collator import IGNORE_INDEX
from ilt_core.text.processor import ILTProcessor
from ilt_core.text.render_cache import pixels_as_float

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


# word-level defaults of ILTModel.generate (generation_config.json); keyword options of ilt_core.generation.generate
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_new_units": 32,
    "num_beams": 1,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": None,
    "top_p": None,
    "length_penalty": 1.0,
    "unit_candidates": 8,
}
ROLE_ATTRIBUTES = ("renderer", "image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder")
# from_pretrained keywords that AutoModel or the hub pass along and that change nothing here
_IGNORED_LOAD_KWARGS = {"trust_remote_code", "force_download", "proxies", "code_revision", "adapter_kwargs"}


class ILTModel(PreTrainedModel):
    """Renderer, image and bytes encoders, latent transformer, bytes decoder, two mappings.

    Build with :func:`build_model` (or ``ILTModel(spec)`` / ``ILTModel(ILTConfig(...))``) or
    :meth:`from_pretrained`; call with a collated batch: ``model(**processor(texts).model_inputs())``;
    continue texts with :meth:`generate`.
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
        # config.json carries every backbone's resolved configuration: the folder rebuilds without its sources
        if config.source_spec is None:
            config.source_spec = spec.to_dict()
            config.source_licenses = source_licenses(config.source_spec)
        config.spec = resolve_spec(spec.to_dict(), self._components(), _factory_params(registry, spec))
        self.generation_defaults: dict[str, Any] = dict(GENERATION_DEFAULTS)
        self.disabled: set[str] = set()
        for modality in list(config.disabled):
            self.disable(modality)
        if spec.activation_checkpointing:
            self.activation_checkpointing_enable()
        set_cpu_products(self, spec.cpu_products)
        self.post_init()

    def _components(self) -> dict[str, Any]:
        return {role: getattr(self, role) for role in ROLE_ATTRIBUTES}

    def init_weights(self) -> None:
        """Nothing to do: every component is initialised by its own factory (seeded by :func:`build_model`),
        and transformers' initialisation would overwrite a pretrained backbone's weights."""

    # ---- memory ------------------------------------------------------------------------
    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> list[str]:
        """Recompute each component's layers in the backward pass instead of keeping their activations.

        The roles whose component has ``set_activation_checkpointing`` (``protocols.ActivationCheckpointing``;
        the hf, timm and clip plugins' encoders and transformers) switch it on; returns them. transformers'
        ``Trainer`` calls this for ``--activation_checkpointing`` (or the older
        ``--gradient_checkpointing``); the spec field ``activation_checkpointing: true`` does it at build time.
        Only active in training mode. ``every_n_layers`` and ``offload`` are hints a component may ignore.
        For the freed activations to leave the process on glibc, ``ilt train --cpu_malloc return``.
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
            # protocols.ActivationCheckpointing: optional; a component without it keeps its activations
            switch = getattr(component, "set_activation_checkpointing", None)
            if switch is not None and switch(on, kwargs, every_n_layers=every_n_layers, offload=offload):
                roles.append(role)
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
    ) -> torch.Tensor:
        """Embeddings ``(U, D)`` of U distinct units from their bytes ``(U, T)`` and images by width.

        ``image_groups``: ``[(indices (G,), pixels)]``, pixels float ``(G, 3, H, W)`` in ``[0, 1]`` or
        uint8 gray levels ``(G, 1, H, W)`` (the same images give the same embeddings either way).
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
            if "image" in self.disabled or not image_groups:
                vec = torch.zeros(U, width, device=device)
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
        **_: Any,
    ) -> ILTOutput:
        """Loss and logits for a collated batch (see :mod:`ilt_core.text.collator` for the shapes)."""
        device = self.encoder_mapping.weight.device
        unit_embeds = self.encode_units(unit_input_ids, unit_attention_mask, image_groups)
        inputs_embeds = unit_embeds[unit_index.to(device)]  # (B, L, D)
        mask = self._latent_mask(segment_ids, position_ids, device)
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
    def get_input_embeddings(self) -> None:
        """None: the model reads units through its encoders, not through one token table (a bytes model's tables
        are its components' own). accelerate's FSDP2 asks, to tie a model's input and output tables."""
        return None

    def get_output_embeddings(self) -> None:
        """None: the bytes decoder's head is the component's own (see :meth:`get_input_embeddings`)."""
        return None

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part, embedding tables excluded (as the README table counts them)."""
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

    # ---- saving -------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        max_shard_size: int | str = ckpt.DEFAULT_MAX_SHARD_SIZE,
        state_dict: dict[str, torch.Tensor] | None = None,
        is_main_process: bool = True,
        push_to_hub: bool = False,
        training: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Path:
        """Write the model as a self-contained folder (see :mod:`ilt_core.modeling.checkpoint`); returns the
        first weights file.

        ``config.json`` (the resolved spec), safetensors weights sharded above ``max_shard_size``,
        ``generation_config.json``, ``processor_config.json`` and a model card ``README.md``. ``state_dict``:
        weights to write instead of the module's own (Trainer under FSDP gathers them). ``training``: what the
        model was trained on and its bits-per-byte, for the card (kept in ``config.json``). ``push_to_hub``:
        then upload the folder to ``repo_id`` (keyword) or the folder's name.
        """
        directory = Path(save_directory)
        if not is_main_process:
            return directory / ckpt.WEIGHTS_NAME
        for key in ("safe_serialization", "variant", "save_peft_format", "save_original_format"):
            kwargs.pop(key, None)  # transformers' options that have one answer here: safetensors, no variants
        repo_id = kwargs.pop("repo_id", None)
        token = kwargs.pop("token", None)
        if kwargs:
            raise ILTError(f"save_pretrained: unknown argument(s) {', '.join(sorted(kwargs))}")
        directory.mkdir(parents=True, exist_ok=True)
        config = self.config
        config.disabled = sorted(self.disabled)
        config.renderer_key = renderer_key_json(self.renderer)
        if training:
            config.training = {**config.training, **training}
        spec_yaml = yaml.safe_dump(self.spec.to_dict(), sort_keys=False, allow_unicode=True)
        files = ckpt.save_weights(
            state_dict if state_dict is not None else self.state_dict(),
            directory,
            max_shard_size=max_shard_size,
            metadata={"spec": spec_yaml},  # the spec as built, read by training's resume checks
        )
        ckpt.write_json(directory / ckpt.CONFIG_NAME, config.to_dict())
        ckpt.write_json(directory / ckpt.GENERATION_CONFIG_NAME, self._generation_file())
        ckpt.write_json(directory / ckpt.PROCESSOR_NAME, self._processor_settings())
        ckpt.write_text(directory / ckpt.CARD_NAME, model_card(config, self.parameter_counts()))
        if (directory / ckpt.SPEC_NAME).is_file():  # a format-1 file left by an earlier save in this folder
            (directory / ckpt.SPEC_NAME).unlink()
        if push_to_hub:
            self._upload(directory, repo_id or directory.name, token=token)
        return files[0]

    def _generation_file(self) -> dict[str, Any]:
        byte_config = _generation_config_of(self.bytes_decoder)
        return {
            **self.generation_defaults,
            "bytes_decoder": byte_config.to_diff_dict() if byte_config is not None else {},
            "transformers_version": transformers.__version__,
        }

    def _processor_settings(self) -> dict[str, Any]:
        p, spec = self.processor, self.spec
        return {
            "processor_class": type(p).__name__,
            "max_unit_bytes": p.max_unit_bytes,
            "labels": p.labels,
            "label_bytes": p.label_bytes,
            "max_units": p.max_units,
            "image_height": spec.image_height,
            "max_image_width": spec.max_image_width,
            "renderer": spec.renderer.model_dump(mode="json") if spec.renderer else None,
            "renderer_key": self.config.renderer_key,
        }

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload ILT model",
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = ckpt.DEFAULT_MAX_SHARD_SIZE,
        **kwargs: Any,
    ) -> Any:
        """Save to a temporary folder and upload it to the hub repository ``repo_id`` (created if needed);
        ``from_pretrained(repo_id)`` loads it. Our model card is kept (transformers' would replace it)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, max_shard_size=max_shard_size)
            return self._upload(
                Path(tmp), repo_id, token, commit_message, private=private, revision=revision, create_pr=create_pr
            )

    @staticmethod
    def _upload(
        folder: Path,
        repo_id: str,
        token: str | None = None,
        commit_message: str = "Upload ILT model",
        **kwargs: Any,
    ) -> Any:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        private = kwargs.pop("private", None)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, **kwargs)

    # ---- loading ------------------------------------------------------------------------
    @classmethod
    @keeps_random_state  # building the components draws numbers that the loaded weights then replace
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *model_args: Any,
        config: ILTConfig | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        subfolder: str = "",
        map_location: str | torch.device = "cpu",
        device_map: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> ILTModel:
        """Load a folder written by :meth:`save_pretrained`, or a hub repository id, bit-for-bit.

        ``revision``, ``cache_dir``, ``local_files_only`` and ``token`` reach ``huggingface_hub`` for a repository
        id. The components are built from ``config.json`` with empty weights (never from the backbones' own
        sources), then the memory-mapped tensors become the parameters (``load_state_dict(assign=True)``) and
        tied weights are tied again. ``map_location`` / ``device_map`` (one device) and ``dtype`` place the result.
        A folder of the previous format (``spec.yaml``) loads too; see ``ilt convert``.

        Raises:
            CheckpointError: a missing folder, file or shard, another model's ``config.json``, a file whose
                SHA-256 does not match, or weights that do not fit the spec (one line, naming the file).
        """
        if model_args:
            raise ILTError(f"from_pretrained: unexpected positional arguments {model_args!r}")
        for key in list(kwargs):
            if key.startswith("_") or key in _IGNORED_LOAD_KWARGS:
                kwargs.pop(key)
        torch_dtype = kwargs.pop("torch_dtype", None)
        if kwargs:
            raise ILTError(f"from_pretrained: unknown argument(s) {', '.join(sorted(kwargs))}")
        folder = _local_folder(str(pretrained_model_name_or_path), revision, cache_dir, local_files_only, token)
        if subfolder:
            folder = folder / subfolder
        if ckpt.checkpoint_kind(folder) == "old":
            model = cls._from_old_folder(folder)
        else:
            data = ckpt.read_config_dict(folder)
            if config is None:
                config = ILTConfig.from_dict(data)
            tensors, _ = ckpt.read_weights(folder)
            model = cls._build_empty(config, folder / ckpt.CONFIG_NAME)
            ckpt.load_state(model, tensors, str(folder), assign=True)
            model._check_renderer(folder)
            model._read_generation_file(folder)
        _no_meta_left(model, folder)
        device = device_map if device_map is not None else map_location
        if isinstance(device, dict):
            raise ILTError("from_pretrained: device_map must be one device (e.g. 'cuda:0'), not a mapping")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = model.to(device)
        wanted = dtype if dtype is not None else torch_dtype
        if wanted not in (None, "auto"):
            found = getattr(torch, wanted, None) if isinstance(wanted, str) else wanted
            if not isinstance(found, torch.dtype):
                raise ILTError(f"from_pretrained: dtype {wanted!r} is not a torch dtype (float32, bfloat16, float16)")
            model = model.to(found)
        return model.eval()

    @classmethod
    def _build_empty(cls, config: ILTConfig, source: Path) -> ILTModel:
        """The model of ``config`` with parameters on the meta device (buffers real: plugins' constants).

        A component whose factory cannot build on the meta device is built with real (random) weights instead;
        the loaded tensors replace them all the same.
        """
        from accelerate import init_empty_weights

        try:
            with init_empty_weights(include_buffers=False):
                return cls(config)
        except ILTError:
            pass  # a factory that computes on its weights while building (open_clip moves them): build them real
        try:
            return cls(config)
        except ILTError as exc:
            raise CheckpointError(f"{source}: its spec cannot be built here: {exc}") from None

    @classmethod
    def _from_old_folder(cls, folder: Path) -> ILTModel:
        """A format-1 folder (``spec.yaml``, spec in the weights' metadata): built from its spec, then loaded."""
        spec, tensors, metadata = ckpt.read_old_checkpoint(folder)
        needs_source = any(isinstance(b, dict) and b.get("pretrained") for b in spec.values())
        try:
            if needs_source:  # its blocks load their weights from the backbones' sources, as in format 1
                model = cls(spec)
            else:
                model = cls._build_empty(ILTConfig(spec=load_spec(spec).to_dict()), folder)
        except ILTError as exc:
            raise CheckpointError(
                f"{folder}: an ilt-checkpoint-1 folder whose spec cannot be built here ({exc}); where its backbones' "
                f"sources are reachable, run `ilt convert {folder} NEW_FOLDER` once to make it self-contained"
            ) from None
        ckpt.load_state(model, tensors, str(folder / ckpt.WEIGHTS_NAME), assign=True)
        for modality in json.loads(metadata.get("disabled", "[]")):
            model.disable(modality)
        return model

    def _check_renderer(self, folder: Path) -> None:
        """Warn when the installed renderer draws other pixels than the one the checkpoint was saved with."""
        saved = self.config.renderer_key
        diffs = renderer_key_differences(saved, renderer_key_json(self.renderer)) if saved else []
        if diffs:
            more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
            warnings.warn(
                f"{folder}: the installed renderer differs from the one this model was saved with "
                f"({'; '.join(diffs[:3])}{more}, saved vs installed): its word images will drift from training's",
                UserWarning,
                stacklevel=3,
            )

    def _read_generation_file(self, folder: Path) -> None:
        path = folder / ckpt.GENERATION_CONFIG_NAME
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CheckpointError(f"{path}: not readable JSON ({exc})") from None
        self.generation_defaults.update({k: data[k] for k in GENERATION_DEFAULTS if k in data})
        byte_config = _generation_config_of(self.bytes_decoder)
        if byte_config is not None and isinstance(data.get("bytes_decoder"), dict):
            byte_config.update(**{k: v for k, v in data["bytes_decoder"].items() if k != "transformers_version"})


def _generation_config_of(component: Any) -> Any | None:
    """The transformers ``GenerationConfig`` of the first backbone inside ``component`` that has one."""
    if not isinstance(component, nn.Module):
        return None
    for module in component.modules():
        found = getattr(module, "generation_config", None)
        if found is not None and hasattr(found, "to_diff_dict"):
            return found
    return None


def _no_meta_left(model: nn.Module, folder: Path) -> None:
    """Fail when a parameter or buffer is still on the meta device (the files did not fill it)."""
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(
            f"{folder}: {len(left)} tensor(s) not filled by the checkpoint's files (e.g. {left[0]}); the weights "
            "do not fit the model its config builds"
        )


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _local_folder(
    name: str, revision: str | None, cache_dir: str | Path | None, local_files_only: bool, token: str | bool | None
) -> Path:
    """``name`` as a local folder, or the hub repository ``name`` fetched into the cache (its snapshot folder)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _REPO_ID.match(name) or name.startswith("."):
        raise CheckpointError(f"{name}: no such checkpoint folder (expected a folder written by save_pretrained)")
    from huggingface_hub import snapshot_download

    try:
        found = snapshot_download(
            name,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            allow_patterns=["*.json", "*.safetensors", "*.md", "*.yaml"],
        )
    except Exception as exc:  # offline, no such repository, gated: huggingface_hub's many error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"{name}: no such checkpoint folder, and the hub repository {name!r} cannot be fetched "
            f"({type(exc).__name__}: {first})"
        ) from None
    return Path(found)


def convert_checkpoint(old: str | Path, new: str | Path) -> Path:
    """``ilt convert OLD NEW``: load a folder of any format and write it in the current one; returns NEW."""
    model = ILTModel.from_pretrained(old)
    model.save_pretrained(new)
    return Path(new)


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
    "GENERATION_DEFAULTS",
    "VOCAB_SIZE",
    "ILTConfig",
    "ILTModel",
    "ILTOutput",
    "block_causal_mask",
    "build_model",
    "convert_checkpoint",
]
