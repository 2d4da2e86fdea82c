"""A bytes encoder: learned byte embeddings averaged over the unit's real bytes.

``example:mean-bytes`` is the component; ``example:needs-missing`` names a dependency that no one
has, to show how ``ilt plugins`` reports it (listed, marked unavailable, with its install command).
"""

import torch
from torch import nn

from ilt_core.plugins.registry import BuildContext, component


class MeanBytesEncoder(nn.Module):
    """``forward(input_ids (N, T), attention_mask (N, T)) -> (N, hidden_size)``."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.embed = nn.Embedding(vocab_size, hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask[..., None].to(self.embed.weight.dtype)
        mean = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.proj(mean)


@component("mean-bytes", roles=("bytes_encoder",), requires=("torch",), install="pip install ilt-example")
def build(role: str, context: BuildContext, hidden_size: int = 64) -> MeanBytesEncoder:
    """Mean of learned byte embeddings, then a linear layer.

    ``hidden_size``: the width of the embeddings and of the unit vector.
    """
    return MeanBytesEncoder(context.vocab_size, hidden_size)


@component(
    "needs-missing",
    roles=("bytes_encoder",),
    requires=("ilt_example_missing_dependency",),
    install="pip install ilt-example-missing-dependency",
)
def build_needs_missing(role: str, context: BuildContext, hidden_size: int = 64) -> MeanBytesEncoder:
    """Stays listed, marked unavailable: its dependency is missing on purpose."""
    return MeanBytesEncoder(context.vocab_size, hidden_size)
