"""``hf:vision``: a transformers vision tower (ViT, SwinV2, CLIP vision) as the word-image encoder.

The vector of an image is the model's ``pooler_output`` when it has one (SwinV2: mean of the last stage after its
layer norm; CLIP: the post-layer-normed CLS token), else the CLS token of ``last_hidden_state`` (ViT, built
without its pooler, as ``ViTForImageClassification`` reads it).

Word images are short and wide (``H = context.image_height``, e.g. 32). ViT and CLIP interpolate their position
embeddings to the image's patch grid (``interpolate_pos_encoding=True``). SwinV2 keeps the window sizes of its
config and pads each stage's feature map up to a whole number of windows itself (zero padding inside
``Swinv2Layer.maybe_pad``; the padded tokens depend only on the image size, never on other images), so any height
and width that are multiples of its total stride work; ``patch_size`` reports that stride
(``patch_size * 2 ** (stages - 1)``, 32 for swinv2-tiny) so every patch merge is exact.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, Unpack

import torch
from torch import nn

from ilt_core.errors import ILTError
from ilt_core.plugins.registry import BuildContext, component
from ilt_hf.backbone import HFWrapper
from ilt_hf.fast_vit import FusedViTWeights, fused_vit_forward, fused_vit_supported, packed_vit_layer
from ilt_hf.fused_weights import switch_fused
from ilt_hf.loading import Source, SourceArgs, accepts_kwarg


def _three(where: str, name: str, value: Any) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * 3
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return [float(v) for v in value]
    raise ILTError(f"{where}: {name} must be a number or a list of 3 numbers (one per RGB channel), got {value!r}")


def _processor_stats(name_or_path: str | None) -> tuple[Any, Any]:
    """``image_mean`` / ``image_std`` from a local folder's ``preprocessor_config.json``, if there is one."""
    if not name_or_path or not os.path.isdir(name_or_path):
        return None, None
    path = os.path.join(name_or_path, "preprocessor_config.json")
    if not os.path.exists(path):
        return None, None
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    return data.get("image_mean"), data.get("image_std")


class HFVisionEncoder(HFWrapper):
    """Image encoder: ``forward(pixel_values (N, 3, H, W) in [0, 1])`` -> ``(N, hidden_size)``.

    Pixels are normalised with the model's ``image_mean`` / ``image_std`` first. ``H`` and ``W`` must be multiples
    of ``patch_size``. A ViT in eval mode with gradients off runs the fused step of :mod:`ilt_hf.fast_vit`.
    """

    def __init__(self, model: nn.Module, image_mean: list[float], image_std: list[float]) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        self.hidden_size: int = int(cfg.hidden_size)
        patch = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]
        depths = getattr(cfg, "depths", None)
        # hierarchical models (Swin) halve the grid at each stage: the stride of the last stage is the unit
        self.patch_size: int = int(patch * 2 ** (len(depths) - 1)) if depths else int(patch)
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(type(model).forward).parameters
        # eval with gradients off (generation, evaluation): ViT takes the fused step of ilt_hf.fast_vit
        self._fused = FusedViTWeights() if fused_vit_supported(model) else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ILTError(f"hf:vision: pixel_values must be (N, 3, H, W), got shape {tuple(pixel_values.shape)}")
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ILTError(
                f"hf:vision: image size {height}x{width} is not a multiple of patch_size {self.patch_size}; "
                "the renderer's width_multiple and height must be multiples of it"
            )
        param = next(self.model.parameters())
        pixels = ((pixel_values - self.image_mean) / self.image_std).to(dtype=param.dtype)
        if self._fused is not None and not self.training and not torch.is_grad_enabled():
            return fused_vit_forward(self.model, self._fused, pixels, self._interpolate)
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        out = self.model(pixel_values=pixels, return_dict=True, **kwargs)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    def _set_fused(self, enabled: bool) -> list[str]:
        """Inference (eval mode, gradients off) through the fused ViT step of :mod:`ilt_hf.fast_vit`, and packed
        images' layers with q/k/v in one product, for a ViT they reproduce; off sends every call through the
        transformers layers (the fused weights kept aside)."""
        on = switch_fused(self, "_fused", enabled, fused_vit_supported, FusedViTWeights)
        return ["fused ViT inference step", "packed ViT layers with q/k/v in one product"] if on else []

    def supports_packed(self) -> bool:
        """Whether :meth:`encode_packed` can run this model (a plain ViT: class token, one grid of patches)."""
        m = self.model
        return getattr(m.config, "model_type", None) == "vit" and _vit_layers(m) is not None

    def encode_packed(
        self,
        patches: torch.Tensor,
        positions: torch.Tensor,
        segments: torch.Tensor,
        cls_index: torch.Tensor,
    ) -> torch.Tensor:
        """``protocols.PackedImageEncoder``: vectors ``(N, hidden_size)`` of word images packed into rows.

        ``patches`` ``uint8 (R, S, p * p)`` gray levels, ``positions`` / ``segments`` ``long (R, S)`` and
        ``cls_index`` ``long (N,)`` as :class:`ilt_core.text.image_packing.PackedImages`  lays them out, after
        :meth:`prepare_packed`. The same
        vectors as :meth:`forward` on each width apart (to float rounding): the patch projection is the model's
        convolution applied to the normalised gray patch, the grid position embeddings are the model's bicubic
        interpolation (a fixed linear map of them, for every width at once), and attention stays inside each image.
        One call of every layer, one shape, no host synchronisation.
        """
        from ilt_core.text.image_packing import segment_mask

        m = self.model
        emb = m.embeddings
        conv = emb.patch_embeddings.projection
        weight = conv.weight  # (D, 3, p, p)
        p = weight.shape[-1]
        R, S, _ = patches.shape
        dtype = weight.dtype
        gray = (patches.float() / 255).to(dtype)  # (R, S, p*p) in [0, 1]: the renderer's gray levels as floats
        # the conv of (gray - mean_c) / std_c summed over channels, as one product on the gray patch
        scale = (1.0 / self.image_std.view(3)).to(dtype)
        shift = (self.image_mean.view(3) / self.image_std.view(3)).to(dtype)
        w = weight.reshape(weight.shape[0], 3, p * p)
        w_eff = torch.einsum("dck,c->dk", w, scale)
        b_eff = conv.bias - torch.einsum("dck,c->d", w, shift) if conv.bias is not None else None
        tokens = torch.nn.functional.linear(gray, w_eff, b_eff)  # (R, S, D)
        is_patch = (positions > 0)[..., None]
        tokens = torch.where(is_patch, tokens, emb.cls_token.to(dtype).view(1, 1, -1))
        pos = emb.position_embeddings[0]  # (1 + G*G, D): class token, then the square grid
        table = torch.cat([pos[:1], self.packed_positions.to(pos.dtype) @ pos[1:]])  # every width's grid
        hidden = emb.dropout(tokens + table[positions])
        mask = segment_mask(segments)
        # with the fast paths on, a ViT's q/k/v in one product (ilt_hf.fast_vit.packed_vit_layer)
        fused = self._fused is not None and getattr(m.config, "_attn_implementation", None) == "sdpa"
        for layer in _vit_layers(m):
            hidden = packed_vit_layer(layer, hidden, mask) if fused else layer(hidden, mask)
        hidden = m.layernorm(hidden)
        cls = hidden.reshape(R * S, -1)[cls_index]
        pooler = getattr(m, "pooler", None)
        return pooler(cls[:, None, :]) if pooler is not None else cls

    def prepare_packed(self, grid_rows: int, max_width_patches: int) -> bool:
        """Make ready for :meth:`encode_packed` on images ``grid_rows`` patches high, up to ``max_width_patches``
        wide; returns whether this model can take packed images (else the model calls :meth:`forward` per width).

        Keeps the resize of the position grid to every width as a buffer (moved and cast with the module).
        """
        if not self.supports_packed():
            return False
        pos = self.model.embeddings.position_embeddings
        matrix = _interpolation_matrix(pos.shape[1] - 1, grid_rows, max_width_patches, "cpu")
        self.register_buffer(
            "packed_positions", matrix.to(pos.dtype if not pos.is_meta else torch.float32), persistent=False
        )
        return True

    @property
    def fused_weights(self) -> FusedViTWeights | None:
        """The fused step's weights (rebuilt when a parameter changes), or None when the step is off."""
        return self._fused


def _vit_layers(model: nn.Module) -> Any:
    """The list of encoder layers of a transformers ViT (``layers`` in 5.x, ``encoder.layer`` before)."""
    layers = getattr(model, "layers", None)
    if layers is None:
        layers = getattr(getattr(model, "encoder", None), "layer", None)
    return layers


def _interpolation_matrix(num_positions: int, grid_rows: int, max_width: int, device: Any) -> torch.Tensor:
    """``(sum_w grid_rows * w, num_positions)``: ViT's bicubic resize of its square grid of position embeddings to
    ``grid_rows x w`` for every ``w`` in ``1 .. max_width``, as one matrix (the resize is linear in its input)."""
    side = int(round(num_positions**0.5))
    basis = torch.eye(num_positions, dtype=torch.float64, device=device).view(num_positions, 1, side, side)
    parts = []
    for w in range(1, max_width + 1):
        out = torch.nn.functional.interpolate(basis, size=(grid_rows, w), mode="bicubic", align_corners=False)
        parts.append(out.view(num_positions, grid_rows * w).T)
    return torch.cat(parts).float()


@component(
    "vision",
    roles=("image_encoder",),
    requires=("transformers",),
    install="pip install ilt-hf  (or: pip install transformers)",
)
def build_vision(
    role: str,
    context: BuildContext,
    *,
    image_mean: float | list[float] | None = None,
    image_std: float | list[float] | None = None,
    **source: Unpack[SourceArgs],
) -> HFVisionEncoder:
    """A transformers vision tower (ViT, SwinV2, CLIP vision) encoding each word image to one vector.

    ``AutoModel``; CLIP via ``model_type: clip_vision_model``. ``image_mean`` / ``image_std`` (one
    value or three) default to a local checkpoint's ``preprocessor_config.json`` when pretrained,
    else 0.5 / 0.5.
    """
    from transformers import AutoModel  # heavy: imported when a component is built

    where = f"hf:vision ({role})"
    hf = Source(where, **source)
    cfg = hf.make_config()
    if getattr(cfg, "model_type", None) == "clip":
        cfg = cfg.vision_config  # a whole CLIP config: keep only its vision tower
    if not hasattr(cfg, "patch_size"):
        raise ILTError(f"{where}: model_type {cfg.model_type!r} has no patch_size; use a patch-based vision model")
    found_mean, found_std = _processor_stats(hf.name_or_path) if hf.pretrained else (None, None)
    mean = _three(where, "image_mean", image_mean if image_mean is not None else (found_mean or 0.5))
    std = _three(where, "image_std", image_std if image_std is not None else (found_std or 0.5))
    # ViT's pooler is a dense + tanh over CLS that classification checkpoints never trained: drop it and read CLS.
    # Hierarchical models (Swin: depths) keep theirs, a parameter-free average over the last stage.
    hierarchical = getattr(cfg, "depths", None) is not None
    extra = (
        {} if hierarchical or not accepts_kwarg(AutoModel, cfg, "add_pooling_layer") else {"add_pooling_layer": False}
    )
    return HFVisionEncoder(hf.build(AutoModel, cfg, model_kwargs=extra), mean, std)
