"""The assembled model, its configuration, its checkpoints, and its parameter and FLOP counts.

- ``model``: :class:`ILTModel` (components built from a spec, the forward pass, ``generate``) and
  :func:`~ilt_core.modeling.model.build_model`.
- ``pretrained``: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` (a mixin of ``ILTModel``).
- ``fixed_step``: the fixed-shape training step (packed images and labels, no host sync; a mixin of ``ILTModel``).
- ``outputs``: :class:`ILTOutput`, what the forward returns; ``masks``: the latent's block-causal mask.
- ``random_state``: keeping the caller's random state around building and loading.
- ``checkpoint``: the checkpoint files: safetensors weights with their SHA-256, JSON files, format 1.
- ``config``: :class:`ILTConfig` (``config.json``), the resolved spec and the renderer key.
- ``card``: the model card of a saved model.
- ``parameters``, ``flops``: parameter counts and model FLOPs per byte.
- ``memory``: where the C library puts a training step's large tensors.
- ``products``: the linear layers' matrix products through numpy's BLAS on a CPU.

Importing this package registers ``model_type: ilt`` with transformers' ``AutoConfig`` and ``AutoModel``, so
``AutoModel.from_pretrained(folder_or_repo_id)`` loads an ILT model.
"""

from transformers import AutoConfig, AutoModel

from ilt_core.modeling.config import ILTConfig
from ilt_core.modeling.model import ILTModel

AutoConfig.register("ilt", ILTConfig, exist_ok=True)
AutoModel.register(ILTConfig, ILTModel, exist_ok=True)

__all__ = ["ILTConfig", "ILTModel"]
