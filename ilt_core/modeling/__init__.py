"""The assembled model, its configuration, loss, parameter and FLOP counts, and its checkpoints.

Importing this package registers ``model_type: ilt`` with transformers' ``AutoConfig`` and ``AutoModel``, so
``AutoModel.from_pretrained(folder_or_repo_id)`` loads an ILT model.
"""

from transformers import AutoConfig, AutoModel

from ilt_core.modeling.config import ILTConfig
from ilt_core.modeling.model import ILTModel

AutoConfig.register("ilt", ILTConfig, exist_ok=True)
AutoModel.register(ILTConfig, ILTModel, exist_ok=True)

__all__ = ["ILTConfig", "ILTModel"]
