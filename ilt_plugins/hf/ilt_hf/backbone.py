"""What the hf wrappers offer the core beyond their role: activation checkpointing and fast paths.

Every ``ilt_hf`` component wraps one transformers ``PreTrainedModel``; switching its checkpointing, and its layers in
fewer passes over memory (``fast_norm.py``, ``fast_rope.py``), is the same call for all of them, written once here
(see ``ilt_core.plugins.protocols.ActivationCheckpointing`` and ``FastPaths``); a wrapper with a fused inference
step adds it in :meth:`HFWrapper._set_fused`. And the one boolean-to-additive mask conversion they share
(:func:`additive_mask`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ilt_hf import fast_norm, fast_rope
from ilt_hf.class_swap import unswap_classes
from ilt_hf.fused_weights import FusedWeights


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask (True = may attend) -> additive float mask (0 / dtype min).

    A float mask works for both SDPA and eager attention, and a row with no allowed key (a padding query) gets
    uniform weights instead of SDPA's NaNs, which would leak into later layers through 0 * NaN.
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class HFWrapper(nn.Module):
    """A module wrapping one transformers model, held in the attribute named by ``backbone_name``."""

    backbone_name = "model"

    def train(self, mode: bool = True) -> HFWrapper:
        """``nn.Module.train``; a change of mode also invalidates the wrapper's fused inference weights (held in its
        attributes, :class:`~ilt_hf.fused_weights.FusedWeights`): a fused optimizer step moved the parameters
        without bumping their version counters, so only the change of mode tells that they may have moved."""
        if mode != self.training:
            for value in vars(self).values():
                if isinstance(value, FusedWeights):
                    value.invalidate()
        return super().train(mode)

    def set_activation_checkpointing(
        self,
        enabled: bool,
        checkpoint_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> bool:
        """``protocols.ActivationCheckpointing``: transformers' checkpointing of the wrapped model.

        False, changing nothing, when the model's architecture has no checkpointing.
        """
        model = getattr(self, self.backbone_name)
        if not getattr(model, "supports_gradient_checkpointing", False):
            return False
        if enabled:
            kwargs = {"use_reentrant": False, **(checkpoint_kwargs or {})}
            model.activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers, offload=offload)
        else:
            model.activation_checkpointing_disable()
        return True

    def set_fast_paths(self, enabled: bool) -> list[str]:
        """``protocols.FastPaths``: the wrapped model's Llama-style RMSNorm and rotary layers in fewer passes
        (CPU float32 training) and the wrapper's fused inference step, on or off; returns those in use."""
        model = getattr(self, self.backbone_name)
        paths = []
        for module, swap, name in (
            (fast_norm, fast_norm.swap_rms_norms, "RMSNorm in fewer passes"),
            (fast_rope, fast_rope.swap_rotary_attention, "rotary embeddings in fewer passes"),
        ):
            if not enabled:
                unswap_classes(model, module.__name__)
            elif swap(model) or any(type(m).__module__ == module.__name__ for m in model.modules()):
                paths.append(name)
        return paths + self._set_fused(enabled)

    def _set_fused(self, enabled: bool) -> list[str]:
        """The wrapper's fused inference step on or off; returns its name when in use (none here)."""
        return []
