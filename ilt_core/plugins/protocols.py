"""The five component roles of an ILT model, as typed protocols.

Every backbone or renderer a plugin supplies satisfies one of these. The core only ever talks to
components through these methods and attributes, so any mix of plugins assembles into one model.

Shapes use: N = number of units (words) in a flat batch, B = batch of texts, L = units per text,
T = bytes (tokens) per unit sequence, D = a component's hidden width, V = byte vocabulary size,
H / W = image height / width in pixels.

Optional methods. A role may offer more than its protocol requires; the core looks each one up by name
(``getattr``) and, when a component lacks it, does what the method's protocol below says. They keep backbone
specifics (a transformers cache class, timm's or transformers' checkpointing switch, a hand-fused decoding
step) inside the plugin that wraps the backbone:

- every neural role: ``set_activation_checkpointing`` (:class:`ActivationCheckpointing`) and ``set_fast_paths``
  (:class:`FastPaths`);
- latent transformer: ``select_cache`` and ``crop_cache_left`` (:class:`LatentCache`), and
  ``masks_from_position_ids`` (:class:`PositionMasking`);
- bytes decoder: ``greedy``, the fast greedy path (:class:`FastGreedy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

ROLES: tuple[str, ...] = (
    "renderer",
    "image_encoder",
    "bytes_encoder",
    "latent_transformer",
    "bytes_decoder",
)


@runtime_checkable
class Renderer(Protocol):
    """Draws one unit of text as a grayscale image, black ink on white.

    Constructed with at least ``height`` (pixels) and ``width_multiple`` (the image encoder's
    patch size: the width of every image is rounded up to a multiple of it).
    """

    height: int
    width_multiple: int

    def render(self, unit: str) -> np.ndarray:
        """Return a ``uint8`` array of shape ``(height, W)``, ``W % width_multiple == 0``, W >= 1 patch.

        0 is ink and 255 is paper. Never raises for any ``str``: glyphs no font has become a box.
        """
        ...

    def cache_key(self) -> tuple:
        """A hashable summary of every setting that changes the pixels (fonts, sizes, versions)."""
        ...


@runtime_checkable
class ActivationCheckpointing(Protocol):
    """Optional for image encoders, bytes encoders, latent transformers and bytes decoders.

    ``set_activation_checkpointing(enabled, checkpoint_kwargs=None, every_n_layers=1, offload=False)``: when
    ``enabled``, recompute the component's layers in the backward pass (in training mode) instead of keeping
    their activations; ``enabled=False`` undoes it. ``checkpoint_kwargs`` are ``torch.utils.checkpoint``
    keyword arguments (e.g. ``use_reentrant=False``); ``every_n_layers`` and ``offload`` are hints a backbone
    may ignore. Returns True when the component switched (it supports checkpointing), False otherwise.
    The results (loss, gradients) must not change.

    A component without the method keeps its activations: ``ILTModel.activation_checkpointing_enable`` leaves
    its role out of the roles it returns.
    """

    def set_activation_checkpointing(
        self,
        enabled: bool,
        checkpoint_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> bool: ...


@runtime_checkable
class FastPaths(Protocol):
    """Optional for every neural role: the component's own faster layers, switched by ``ILTModel.set_fast_paths``.

    ``set_fast_paths(enabled) -> list[str]``: switch every faster layer the component has (a hand-fused step, a
    layer in fewer passes over memory) on or off; returns the names of those in use after the call (empty when
    off, or when none applies to this backbone). Each must give the plain path's results to float rounding, be
    active only where a test shows it (and step aside everywhere else: other devices or dtypes, while
    ``torch.compile`` traces), and change no state outside the component. The switch is a setting of the built
    component, never saved with its weights or configuration. A component without the method has no fast paths.
    """

    def set_fast_paths(self, enabled: bool) -> list[str]: ...


@runtime_checkable
class AttentionShape(Protocol):
    """Optional for every neural role: the shape of the transformer inside, for the FLOP count.

    ``attention_shape() -> (layers, width) | None``: the number of attention layers and their width (the
    ``12 x layers x width x S^2`` term of :mod:`ilt_core.modeling.flops`); None for a model without attention
    (a conv net). Without the method, the core reads ``num_hidden_layers`` / ``hidden_size`` from a
    ``config`` attribute of the component or a submodule (transformers' convention), else counts no attention.
    """

    def attention_shape(self) -> tuple[int, int] | None: ...


@runtime_checkable
class ImageEncoder(Protocol):
    """Encodes a batch of word images that share one width into one vector each.

    ``forward(pixel_values)``: ``pixel_values`` is ``(N, 3, H, W)`` float in ``[0, 1]`` (the
    renderer's gray repeated on 3 channels; normalisation is the encoder's own business), and the
    result is ``(N, hidden_size)``. The core groups images by width, so one call never mixes
    widths and a word's vector never depends on its neighbours in the batch.
    """

    hidden_size: int
    patch_size: int

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class BytesEncoder(Protocol):
    """Encodes the byte ids of units into one vector each.

    ``forward(input_ids, attention_mask)``: both ``(N, T)`` long, padding marked by mask 0;
    returns ``(N, hidden_size)``. The vocabulary is the byte tokenizer's (``vocab_size``).

    Optional, for fixed-shape batches: ``takes_packed_bytes`` (True) and ``encode_packed(input_ids, positions,
    segments, owner, units)``, the units' bytes packed into rows (:class:`ilt_core.text.byte_packing.PackedBytes`,
    each ``(R, S)``) -> ``(units, hidden_size)``, the vectors ``forward`` gives on the padded bytes.
    """

    hidden_size: int

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


@dataclass
class LatentOutput:
    """What a latent transformer returns: ``hidden_states`` ``(B, L, D)`` and its KV cache."""

    hidden_states: torch.Tensor
    past_key_values: Any = None


@runtime_checkable
class LatentTransformer(Protocol):
    """A causal transformer over unit embeddings (its own token embeddings removed).

    ``forward(inputs_embeds, attention_mask, position_ids, past_key_values, use_cache)``:
    ``inputs_embeds`` ``(B, L, D)``; ``attention_mask`` either ``(B, L_past + L)`` with 1 for real
    units and 0 for padding, or a boolean ``(B, 1, L, L_past + L)`` mask (True = may attend) for
    packed sequences; ``position_ids`` ``(B, L)`` long. Returns a :class:`LatentOutput` whose
    ``hidden_states`` is ``(B, L, D)``. ``max_positions`` is the longest context it supports.
    With ``use_cache=True`` it returns its KV cache as ``past_key_values`` (creating one when given
    none), an opaque value the next call takes back; the generation loop left-pads rows, so a cached
    step's mask is ``(B, L_past + 1)``. Optional, for generation: :class:`LatentCache`; for packed
    rows without a dense mask: :class:`PositionMasking`.
    """

    hidden_size: int
    max_positions: int

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> LatentOutput: ...


@runtime_checkable
class LatentCache(Protocol):
    """Optional for latent transformers: what the generation loop does to the KV cache between steps.

    The cache is whatever ``forward(..., use_cache=True)`` returned as ``past_key_values`` (the transformer
    creates it when given none); the core never looks inside it. Rows are the batch rows of the cache,
    ``L_past`` its positions (columns, oldest first).

    - ``select_cache(cache, rows)``: ``rows`` a long tensor ``(N',)`` of row indices, in the order wanted; an
      index may repeat (beam search keeps several children of one row) or be left out (a row finished).
      Returns the cache of those rows (it may be the same object, changed in place). Without it, the loop
      recomputes the kept rows' whole contexts into a fresh cache once (the same text, slower).
    - ``crop_cache_left(cache, n) -> bool``: drop the ``n`` oldest positions of every row and layer in place
      (the loop asks only when they are left padding in every remaining row, e.g. after a long prompt
      finished). Returns False, leaving the cache as it was, when the cache cannot (layers that keep only a
      sliding window hold no fixed column per position). Without it, or on False, the columns stay and the
      attention mask keeps them masked (the same text, more memory).

    A latent transformer that returns no cache (``past_key_values=None``) is recomputed from every row's whole
    context at each step.
    """

    def select_cache(self, cache: Any, rows: torch.Tensor) -> Any: ...

    def crop_cache_left(self, cache: Any, n: int) -> bool: ...


@runtime_checkable
class StaticLatentCache(Protocol):
    """Optional for latent transformers: a KV cache allocated once, for steps of constant shapes.

    ``static_cache(rows, length)``: an empty cache that ``forward(..., past_key_values=cache, use_cache=True)``
    fills in place, ``length`` columns for each of ``rows`` rows. The loop then passes an ``attention_mask``
    ``(rows, length)`` at every call (1 for the columns written so far that hold real units, 0 for left padding
    and for the columns still empty), writes the prompts' ``L`` columns with the first call and one column per
    call after it: every step has the same shapes (generation's ``cache_implementation="static"``).
    """

    def static_cache(self, rows: int, length: int) -> Any: ...


@runtime_checkable
class PositionMasking(Protocol):
    """Optional for latent transformers: packed rows without a dense ``(B, 1, L, L)`` mask.

    ``masks_from_position_ids() -> bool``: True when ``forward(inputs_embeds, attention_mask=None, position_ids)``
    with no cache and ``use_cache=False`` lets each position attend only to the earlier positions of its own
    text, a text being a run of ``position_ids`` that count up by one (they restart at 0 at every text of a packed
    row, and each padding slot holds 0, a text of its own). A backbone may do so by building its block-causal mask
    from the position ids, or by running a variable-length attention kernel over them. The answer may change
    with the backbone's settings (its attention implementation), so the core asks at every forward.

    Without the method, or on False, ``ILTModel`` passes packed rows a boolean block-causal ``(B, 1, L, L)``
    mask (True = may attend). Either way the results must be the same: a text's losses do not depend on what
    else its row holds, and no position sees a later one.
    """

    def masks_from_position_ids(self) -> bool: ...


@runtime_checkable
class BytesDecoder(Protocol):
    """A small causal LM over bytes that reads a prefix embedding (no cross-attention).

    ``embed(input_ids)``: ``(N, T)`` long -> ``(N, T, hidden_size)``.
    ``forward(inputs_embeds, attention_mask, past_key_values, use_cache)``: ``(N, T, D)`` embeds
    (the prefix vector first, then the embedded bytes) and ``(N, T_past + T)`` mask -> logits
    ``(N, T, vocab_size)`` and the new cache.
    ``generate(inputs_embeds, attention_mask, **generation_kwargs)``: transformers-style
    generation from the prefix; returns the new ids ``(N, T_new)`` (or a ``GenerateOutput`` when
    ``return_dict_in_generate=True``).

    Optional, for speed: ``greedy`` (:class:`FastGreedy`). Optional attribute: ``generation_config``, the
    ``transformers.GenerationConfig`` holding the decoder's byte-level defaults (what ``generate`` uses when a
    call does not say otherwise); a decoder without it has no defaults to save or read back.
    """

    hidden_size: int
    vocab_size: int

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]: ...

    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any: ...


@runtime_checkable
class FastGreedy(Protocol):
    """Optional for bytes decoders: greedy decoding without ``generate``'s per-step overhead.

    ``greedy(inputs_embeds, max_new_tokens, eos_token_id, pad_token_id, suppress_tokens=None,
    min_new_tokens=0, check_at=None)``: ``inputs_embeds`` ``(N, T0, D)`` prefix embeddings, all real (no padding);
    returns ids ``(N, max_new_tokens)``, the same ids as ``generate(do_sample=False, suppress_tokens=...,
    min_new_tokens=...)`` (float rounding of fused matrices aside), with ``pad_token_id`` after a row's
    ``eos``. ``check_at``: a hint, after how many bytes to read back (once) whether every row has ended; the
    loop keeps every row in the batch and reads nothing else from the device, so the ids never depend on it. The generation loop calls it for plain greedy decoding (no byte-level option other than
    ``suppress_tokens`` / ``min_new_tokens``); a decoder without it decodes through ``generate``.
    """

    def greedy(
        self,
        inputs_embeds: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
        suppress_tokens: list[int] | None = None,
        min_new_tokens: int = 0,
        check_at: int | None = None,
    ) -> torch.Tensor: ...


PROTOCOL_OF_ROLE: dict[str, type] = {
    "renderer": Renderer,
    "image_encoder": ImageEncoder,
    "bytes_encoder": BytesEncoder,
    "latent_transformer": LatentTransformer,
    "bytes_decoder": BytesDecoder,
}
