"""A bytes encoder: learned byte embeddings averaged over the unit's real bytes."""

import torch
from torch import nn


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


def build(role, context, hidden_size: int = 64):
    return MeanBytesEncoder(context.vocab_size, hidden_size)
