"""Generation: the word-level decoding loop (greedy, sampling, beams) over a KV cache."""

from ilt_core.generation.loop import GenerationResult, generate, stream_generate

__all__ = ["GenerationResult", "generate", "stream_generate"]
