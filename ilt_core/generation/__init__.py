"""Generation: the word-level decoding loop (greedy, sampling, beams) over a KV cache, and its options."""

from ilt_core.generation.loop import Generation, GenerationResult, GenerationSession, generate, stream_generate
from ilt_core.generation.options import GenerationOptions

__all__ = ["Generation", "GenerationOptions", "GenerationResult", "GenerationSession", "generate", "stream_generate"]
