"""Generation: the word-level decoding loop (greedy, sampling, beams) over a KV cache, and its options.

- ``loop``: :func:`generate` / :func:`stream_generate`: the latent transformer once per unit, the bytes
  decoder once per byte.
- ``options``: :class:`GenerationOptions`, the validated options.
- ``decoding``: what every strategy shares: hypotheses, unit embeddings, the latent over its cache.
- ``sampling``: greedy and sampling strategies.
- ``beams``: word-level beam search.
"""

from ilt_core.generation.loop import Generation, GenerationResult, GenerationSession, generate, stream_generate
from ilt_core.generation.options import GenerationOptions

__all__ = ["Generation", "GenerationOptions", "GenerationResult", "GenerationSession", "generate", "stream_generate"]
