"""What the hf wrappers offer the core beyond their role: activation checkpointing of the wrapped model.

Every ``ilt_hf`` component wraps one transformers ``PreTrainedModel``; switching its checkpointing is the same call
for all of them, written once here (see ``ilt_core.plugins.protocols.ActivationCheckpointing``).
"""

from __future__ import annotations

from typing import Any

from torch import nn


def set_activation_checkpointing(
    model: nn.Module,
    enabled: bool,
    checkpoint_kwargs: dict[str, Any] | None = None,
    every_n_layers: int = 1,
    offload: bool = False,
) -> bool:
    """Switch transformers' activation checkpointing of ``model``; False when its architecture has none."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        return False
    if enabled:
        kwargs = {"use_reentrant": False, **(checkpoint_kwargs or {})}
        model.activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers, offload=offload)
    else:
        model.activation_checkpointing_disable()
    return True
