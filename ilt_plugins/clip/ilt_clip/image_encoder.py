"""open_clip vision towers as ILT image encoders: ``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, D)``.

Variable word widths: open_clip's ViT learns one position vector per cell of a fixed patch grid
(its ``image_size`` / ``patch_size``). We keep the tower's own modules and weights and, on each call,
resample that table (bicubic, antialiased, as open_clip does when it loads a checkpoint at another
size) to the call's ``(H / patch, W / patch)`` grid; the class token's vector is kept as is. We do
not resize or pad the word to the tower's square input: that would squash long words and waste
compute on blank paper. The result for a word depends only on its own pixels and its width, never
on the rest of the batch.

The table is laid out for ``(context.image_height, max_width)`` by default (word-shaped); pretrained
weights trained at 224x224 are resampled to it by open_clip's loader. Images whose height or width
is not a multiple of the patch size are padded with paper (white) on the bottom/right.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from ilt_core import BuildContext, ILTError
from ilt_core.plugins.images import normalized_pixels
from ilt_core.plugins.registry import component

DEFAULT_MODEL = "ViT-B-32"

# A throwaway text tower: create_model always builds one, and we keep only `.visual`. Used only
# when no checkpoint is loaded (a checkpoint must match the full model).
_TINY_TEXT_CFG: dict[str, Any] = {"context_length": 2, "vocab_size": 2, "width": 8, "heads": 1, "layers": 1}


def resample_position_table(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """``(1 + gh * gw, C)`` class + grid position vectors -> ``(1 + new_h * new_w, C)``."""
    if tuple(old_grid) == tuple(new_grid):
        return table
    class_pos, grid_pos = table[:1], table[1:]
    channels = table.shape[-1]
    grid_pos = grid_pos.reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], channels)
    return torch.cat([class_pos, grid_pos], dim=0)


class ClipVisualEncoder(nn.Module):
    """An open_clip ``VisionTransformer`` that accepts word images of any width.

    ``forward(pixel_values)``: ``(N, 3, H, W)`` float in ``[0, 1]``, one width per call ->
    ``(N, hidden_size)``; ``hidden_size`` is the tower's output (projection) dim and
    ``patch_size`` its patch width.
    """

    def __init__(self, visual: VisionTransformer, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.visual = visual
        patch_h, patch_w = visual.patch_size
        self._patch_height = int(patch_h)
        self.patch_size: int = int(patch_w)
        self.hidden_size: int = int(visual.output_dim)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(N, 3, H, W)`` -> tokens ``(N, 1 + gh * gw, width)`` (class token first)."""
        visual = self.visual
        x = visual.conv1(x)  # (N, width, gh, gw)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (N, gh * gw, width)
        class_token = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([class_token, x], dim=1)
        table = resample_position_table(visual.positional_embedding, tuple(visual.grid_size), grid)
        x = x + table.to(x.dtype)
        x = visual.patch_dropout(x)
        return visual.ln_pre(x)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, hidden_size)``."""
        where = "image_encoder (clip)"
        x = normalized_pixels(pixel_values, self.mean, self.std, self._patch_height, self.patch_size, where)
        x = self._embed(x)
        x = self.visual.transformer(x)
        pooled, _ = self.visual._pool(x)  # the tower's own pooling (class token, mean, or attention pool)
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        return pooled

    def attention_shape(self) -> tuple[int, int] | None:
        """``protocols.AttentionShape``: (residual blocks, width) of the open_clip vision transformer."""
        tower = self.visual.transformer
        return len(tower.resblocks), int(tower.width)

    def set_activation_checkpointing(
        self,
        enabled: bool,
        checkpoint_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> bool:
        """``protocols.ActivationCheckpointing``: open_clip's switch for the tower's transformer blocks.

        open_clip decides how to checkpoint (``checkpoint_kwargs``, ``every_n_layers`` and ``offload`` are not used).
        """
        self.visual.set_grad_checkpointing(enabled)
        return True


class _DropRandomInitWarning(logging.Filter):
    """Drops open_clip's "initialized randomly" warning: random weights are what we asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_random_init(active: bool) -> Iterator[None]:
    root = logging.getLogger()  # open_clip logs through the root logger
    log_filter = _DropRandomInitWarning()
    if active:
        root.addFilter(log_filter)
    try:
        yield
    finally:
        root.removeFilter(log_filter)


def _base_config(model_name: str) -> dict[str, Any]:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) for ``model_name``."""
    try:
        config = open_clip.get_model_config(model_name)
    except Exception as exc:  # a missing local-dir or an unreachable hub: say which
        raise ILTError(f"image_encoder.model_name: cannot read the open_clip config of {model_name!r} ({exc})") from exc
    if config is None:
        vits = [name for name in open_clip.list_models() if name.startswith("ViT-")]
        raise ILTError(
            f"image_encoder.model_name: {model_name!r} is not an open_clip model; choose one of: {', '.join(vits)}"
        )
    return copy.deepcopy(config)


@component("visual", roles=("image_encoder",), requires=("open_clip",), install="pip install open-clip-torch")
def build_clip_visual_encoder(
    role: str,
    context: BuildContext,
    model_name: str = DEFAULT_MODEL,
    pretrained: str | bool | None = None,
    vision_cfg: dict[str, Any] | None = None,
    embed_dim: int | None = None,
    max_width: int = 512,
) -> ClipVisualEncoder:
    """An open_clip ViT vision tower (default ViT-B-32, random weights) for word images of any width.

    ``open_clip.create_model(model_name, pretrained)``'s ``.visual``, its position table resampled to
    each word image's patch grid.

    ``pretrained``: ``None``/``false`` for random weights (offline, the default); an open_clip tag
    (``"laion2b_s34b_b79k"``) or a checkpoint file path; ``true`` for a ``local-dir:``/``hf-hub:``
    ``model_name``'s own weights.
    ``vision_cfg``: overrides merged into the model config's ``vision_cfg`` (e.g. ``{layers: 2,
    width: 64, head_width: 32, patch_size: 16}`` for a small test tower); ``embed_dim``: the
    tower's output dim (the CLIP embedding dim by default).
    ``max_width``: widest word in pixels; with ``image_height`` it sets the tower's
    ``image_size`` (its position grid) unless ``vision_cfg`` gives ``image_size``.
    """
    if role != "image_encoder":
        raise ILTError(f"clip components are image encoders; cannot build one as role {role!r}")
    if max_width < 1:
        raise ILTError(f"image_encoder.max_width: expected a positive number of pixels, got {max_width!r}")
    has_schema = model_name.startswith(("hf-hub:", "local-dir:"))
    if pretrained is True and not has_schema:
        raise ILTError(
            f"image_encoder.pretrained: true needs a 'local-dir:' or 'hf-hub:' model_name; for {model_name!r} give a "
            f"tag (one of: {', '.join(open_clip.list_pretrained_tags_by_model(model_name)) or 'none'}) or a file path"
        )
    load_weights = bool(pretrained)

    config = _base_config(model_name)
    merged_vision = {**config["vision_cfg"], **(vision_cfg or {})}
    if merged_vision.get("timm_model_name") or isinstance(merged_vision.get("layers"), (list, tuple)):
        raise ILTError(
            f"image_encoder.model_name: {model_name!r} has a timm or ResNet vision tower; clip:visual supports "
            "open_clip ViT towers only (use timm:model for other image models)"
        )
    if "image_size" not in (vision_cfg or {}):
        merged_vision["image_size"] = [context.image_height, max_width]

    overrides: dict[str, Any] = {"vision_cfg": merged_vision}
    if embed_dim is not None:
        overrides["embed_dim"] = int(embed_dim)
    if not load_weights:
        overrides["text_cfg"] = dict(_TINY_TEXT_CFG)
    try:
        with _quiet_random_init(not load_weights):
            model = open_clip.create_model(
                model_name,
                pretrained=pretrained if isinstance(pretrained, str) and not has_schema else None,
                load_weights=load_weights,
                pretrained_text=False,
                **overrides,
            )
    except (OSError, RuntimeError) as exc:
        if not load_weights:
            raise ILTError(
                f"image_encoder.vision_cfg: open_clip could not build {model_name!r} with {overrides}: {exc}"
            ) from exc
        raise ILTError(
            f"image_encoder.pretrained: could not load {model_name!r} weights {pretrained!r} ({exc}); "
            "use pretrained: null for random weights, or a local checkpoint file path"
        ) from exc
    except (TypeError, ValueError, AssertionError) as exc:
        raise ILTError(
            f"image_encoder.vision_cfg: open_clip could not build {model_name!r} with {overrides}: {exc}"
        ) from exc
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        raise ILTError(
            f"image_encoder.model_name: {model_name!r} built a {type(visual).__name__}, not an open_clip ViT tower"
        )
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return ClipVisualEncoder(visual, mean, std)
