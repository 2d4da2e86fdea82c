"""timm models as ILT image encoders: ``(N, 3, H, W)`` word images in ``[0, 1]`` -> ``(N, D)``.

Why these choices:

- Word images are short and wide (``H`` = the renderer height, 32 px by default; ``W`` any multiple of
  the patch size up to ``max_width``). A ViT is built with ``img_size=(H, max_width)`` and
  ``dynamic_img_size=True``, so timm resamples its learned position table to each call's patch grid
  (bicubic); pretrained 224x224 tables are resampled to ``(H, max_width)`` at load time. Conv nets
  take any size as they are and pool globally.
- Images narrower or shorter than a patch multiple are padded on the right/bottom with paper
  (white, 1.0) before normalisation, so a word's pixels never mix with padding of another meaning.
- Normalisation uses the model's ``pretrained_cfg`` mean/std, so pretrained weights see what they
  were trained on; the buffers are not persistent, so checkpoints hold weights only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from ilt_core import BuildContext, ILTError
from ilt_core.plugins.images import normalized_pixels
from ilt_core.plugins.registry import component

DEFAULT_MODEL = "vit_tiny_patch16_224"


class TimmImageEncoder(nn.Module):
    """A timm model (classifier removed) that encodes one-width batches of word images.

    ``forward(pixel_values)``: ``(N, 3, H, W)`` float in ``[0, 1]`` -> ``(N, hidden_size)``, where
    ``hidden_size`` is ``model.num_features``. ``patch_size`` is the ViT patch width, or for conv
    nets the width multiple the renderer should use (any works).
    """

    def __init__(self, model: nn.Module, patch_size: int, patch_height: int) -> None:
        super().__init__()
        self.model = model
        self.hidden_size: int = int(model.num_features)
        self.patch_size: int = int(patch_size)
        self._patch_height = int(patch_height)
        config = resolve_model_data_config(model)
        mean = torch.tensor(config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(config["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, hidden_size)``."""
        where = "image_encoder (timm)"
        x = normalized_pixels(pixel_values, self.mean, self.std, self._patch_height, self.patch_size, where)
        return self.model(x)

    def attention_shape(self) -> tuple[int, int] | None:
        """``protocols.AttentionShape``: (blocks, embed_dim) of a timm ViT; None for a conv net."""
        blocks, embed_dim = getattr(self.model, "blocks", None), getattr(self.model, "embed_dim", None)
        if isinstance(blocks, nn.Sequential) and isinstance(embed_dim, int):
            return len(blocks), embed_dim
        return None

    def set_activation_checkpointing(
        self,
        enabled: bool,
        checkpoint_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> bool:
        """``protocols.ActivationCheckpointing``: timm's own switch (its blocks checkpoint in training mode).

        timm decides how to checkpoint (``checkpoint_kwargs``, ``every_n_layers`` and ``offload`` are not used);
        False for a model without the switch, or one that refuses it.
        """
        switch = getattr(self.model, "set_grad_checkpointing", None)
        if switch is None:
            return False
        try:
            switch(enabled)
        except (AssertionError, NotImplementedError):  # timm's way of saying "not supported by this model"
            return False
        return True


def _patch_embed_size(model: nn.Module) -> tuple[int, int] | None:
    """(height, width) of a patch-embedding model's patches, or None for conv nets."""
    patch_embed = getattr(model, "patch_embed", None)
    size = getattr(patch_embed, "patch_size", None)
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _create(model_name: str, pretrained: bool, checkpoint_path: str | None, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model`` with word-image sizes for ViTs; falls back to plain kwargs for conv nets."""
    if not model_name.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(model_name):
        close = timm.list_models(f"{model_name.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else "; list them with timm.list_models('*vit*')"
        raise ILTError(f"image_encoder.model_name: {model_name!r} is not a timm model{hint}")
    base: dict[str, Any] = {"num_classes": 0}
    if checkpoint_path is not None:
        if not Path(checkpoint_path).is_file():
            raise ILTError(
                f"image_encoder.checkpoint_path: {str(checkpoint_path)!r} is not a file; expected a weights file"
            )
        # Load through timm's pretrained path (not create_model's checkpoint_path) so its filter
        # drops the classifier head and resamples the position table to our image size.
        pretrained = True
        base["pretrained_cfg_overlay"] = {"file": str(checkpoint_path)}
    vit_extra = {key: kwargs.pop(key) for key in ("img_size", "dynamic_img_size") if key in kwargs}
    try:
        try:
            return timm.create_model(model_name, pretrained=pretrained, **base, **vit_extra, **kwargs)
        except TypeError as exc:
            # Conv nets reject img_size / dynamic_img_size: build them without the ViT-only arguments.
            if not vit_extra or not any(key in str(exc) for key in vit_extra):
                raise
            return timm.create_model(model_name, pretrained=pretrained, **base, **kwargs)
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise ILTError(f"image_encoder: timm could not build {model_name!r} with {kwargs}: {exc}") from exc
        source = f"checkpoint_path {checkpoint_path!r}" if checkpoint_path else "the model hub"
        raise ILTError(
            f"image_encoder.pretrained: could not load weights for {model_name!r} from {source} ({exc}); "
            "use pretrained: false for random weights, or checkpoint_path: <a local weights file>"
        ) from exc
    except (TypeError, ValueError, AssertionError) as exc:
        raise ILTError(f"image_encoder: timm could not build {model_name!r} with {kwargs}: {exc}") from exc


@component("model", roles=("image_encoder",), requires=("timm",), install="pip install timm")
def build_timm_image_encoder(
    role: str,
    context: BuildContext,
    model_name: str = DEFAULT_MODEL,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    max_width: int = 512,
    require_vit: bool = False,
    **model_kwargs: Any,
) -> TimmImageEncoder:
    """Any timm model (default vit_tiny_patch16_224, random weights) pooled to one vector per word image.

    ``timm.create_model(model_name, pretrained, num_classes=0, **model_kwargs)``; ViTs get
    ``dynamic_img_size``, conv nets take any size.
    ``pretrained``: load timm's weights from the hub (off by default: random weights, offline).
    ``checkpoint_path``: a local weights file (``.safetensors``/``.pth``) to load instead.
    ``max_width``: widest word image in pixels; a ViT's position table is laid out for
    ``(context.image_height, max_width)`` and resampled to each narrower width.
    ``require_vit``: refuse a model without a patch embedding (what ``timm:vit`` sets).
    ``model_kwargs``: passed to timm (e.g. ``depth: 2`` for a small test ViT, ``img_size``).
    """
    if role != "image_encoder":
        raise ILTError(f"timm components are image encoders; cannot build one as role {role!r}")
    if max_width < 1:
        raise ILTError(f"image_encoder.max_width: expected a positive number of pixels, got {max_width!r}")
    kwargs = dict(model_kwargs)
    kwargs.setdefault("img_size", (context.image_height, max_width))
    kwargs.setdefault("dynamic_img_size", True)
    model = _create(model_name, bool(pretrained), checkpoint_path, kwargs)
    patch = _patch_embed_size(model)
    if patch is None:
        if require_vit:
            raise ILTError(
                f"image_encoder.model_name: {model_name!r} has no patch embedding, so it is not a ViT; "
                "use component timm:model for conv nets"
            )
        # A conv net takes any size: use the width multiple the renderer was asked for.
        return TimmImageEncoder(model, patch_size=context.width_multiple, patch_height=1)
    return TimmImageEncoder(model, patch_size=patch[1], patch_height=patch[0])


@component("vit", roles=("image_encoder",), requires=("timm",), install="pip install timm")
def build_timm_vit_encoder(role: str, context: BuildContext, **args: Any) -> TimmImageEncoder:
    """A timm ViT with dynamic image size (default vit_tiny_patch16_224, random weights).

    As ``timm:model`` (the same arguments), but the model must have a patch embedding.
    """
    return build_timm_image_encoder(role=role, context=context, require_vit=True, **args)
