"""What the hf wrappers offer the core beyond their role: activation checkpointing of the wrapped model.

Every ``ilt_hf`` component wraps one transformers ``PreTrainedModel``; switching its checkpointing is the same call
for all of them, written once here (see ``ilt_core.plugins.protocols.ActivationCheckpointing``).
"""

from __future__ import annotations

from typing import Any

from torch import nn


class HFWrapper(nn.Module):
    """A module wrapping one transformers model, held in the attribute named by ``backbone_name``."""

    backbone_name = "model"

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
