"""``hf:causal-lm``: a transformers causal LM as latent transformer, bytes decoder or bytes encoder.

- latent_transformer: the base model (no LM head) with its token embeddings replaced by :class:`RemovedEmbedding`
  (no parameters; it reads ``inputs_embeds``). Takes a 2-D padding mask or a boolean 4-D mask for packed sequences;
  listed model types need no mask for packed rows, only position ids that restart per text (under flash attention
  the rows then run as one flattened row of variable-length texts).
- bytes_decoder: ``AutoModelForCausalLM`` whose vocabulary is the byte tokenizer's.
- bytes_encoder: the base model over bytes, pooled at the last real byte (or the mean).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Unpack

import torch
import torch.nn.functional as F
from torch import nn

from ilt_core.errors import ILTError
from ilt_core.plugins.protocols import LatentOutput
from ilt_core.plugins.registry import BuildContext, component
from ilt_hf.backbone import HFWrapper, additive_mask
from ilt_hf.fast_greedy import FusedLlamaWeights, fused_llama_supported, greedy_decode
from ilt_hf.fast_neox import FusedNeoXWeights, fused_neox_supported, neox_cached_step
from ilt_hf.fused_weights import switch_fused
from ilt_hf.loading import Source, SourceArgs, max_positions, set_special_tokens

logger = logging.getLogger(__name__)


def cache_argument(model: nn.Module) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns); use what the model takes."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache of a transformers output, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


class RemovedEmbedding(nn.Module):
    """Stands where a latent transformer's token embeddings were: no parameters, never called.

    The latent transformer reads unit embeddings (``inputs_embeds``), so a vocabulary table would only waste memory.
    """

    num_embeddings = 0

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise ILTError("this latent transformer has no token embeddings: pass inputs_embeds (B, L, D), not input_ids")


# Latent model types whose base model builds its causal mask with transformers' masking utilities from the position
# ids when given no mask and no cache (packed texts kept apart: ``find_packed_sequence_indices``), or passes
# variable-length keyword arguments down to a flash-attention kernel. Read in transformers 5.17 and 5.24 and checked
# by tests/test_packing_mask.py; other types get the dense mask (the same results, more memory).
MASKS_FROM_POSITIONS_MODEL_TYPES = frozenset({"gpt_neox", "llama", "gemma3_text", "gpt2"})
# attention implementations that take the mask built from the position ids
_MASK_BUILDING_ATTENTION = frozenset({"sdpa", "eager"})
# flash-attention kernels: no mask at all, one flattened row with cumulative text lengths (varlen)
_VARLEN_ATTENTION = frozenset({"flash_attention_2", "flash_attention_3"})


def varlen_arguments(position_ids: torch.Tensor) -> dict[str, Any]:
    """Flash-attention varlen keywords for one flattened row: ``position_ids`` ``(B, L)`` -> ``cu_seq_lens_q/k``
    ``(S + 1,)`` int32 (where each of the S texts starts, then ``B * L``) and ``max_length_q/k`` (the longest text).

    A text starts wherever the position does not count up by one from its left neighbour, and at each row's start,
    so rows never merge; each padding slot (position 0) is a text of one.
    """
    flat = position_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1] + 1
    starts[:: position_ids.shape[-1]] = True
    total = torch.tensor([flat.numel()], device=flat.device)
    cu = torch.cat([starts.nonzero().view(-1), total]).to(torch.int32)
    longest = int(cu.diff().max())  # one sync per forward; the kernels take a Python int
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


class HFLatentTransformer(HFWrapper):
    """A transformers base model as ILT's latent transformer (see :class:`ilt_core.plugins.protocols.LatentTransformer`).

    ``forward(inputs_embeds (B, L, D), attention_mask, position_ids (B, L), past_key_values, use_cache)`` ->
    :class:`LatentOutput` with ``hidden_states`` (B, L, D) and the transformers ``Cache`` when ``use_cache``.
    ``attention_mask`` is ``(B, L_past + L)`` with 1 for real units, or a boolean ``(B, 1, L, L_past + L)`` mask
    (True = may attend) for packed sequences; with the 4-D mask pass ``position_ids`` that restart per text.
    Packed rows need no mask where :meth:`masks_from_position_ids` says so: ``attention_mask=None`` and
    ``position_ids`` that restart at 0 at every text.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        self.hidden_size: int = int(cfg.hidden_size)
        self.max_positions: int = max_positions(cfg)
        self._cache_argument = cache_argument(model)
        model.set_input_embeddings(RemovedEmbedding(self.hidden_size))
        # Models with sliding-window layers (gemma3, ...) take a {layer_type: mask} mapping; give them the window
        # on top of the caller's 4-D mask, or a long packed sequence would see past the window.
        layer_types = list(getattr(cfg, "layer_types", None) or [])
        try:
            takes_mapping = "attention_mask, dict)" in inspect.getsource(type(model).forward)
        except (OSError, TypeError):  # no source available (frozen or compiled install)
            takes_mapping = False
        self._sliding_window: int | None = None
        self._sliding_layer: int | None = None
        if takes_mapping and "sliding_attention" in layer_types and getattr(cfg, "sliding_window", None):
            self._sliding_window = int(cfg.sliding_window)
            self._sliding_layer = layer_types.index("sliding_attention")
        elif "sliding_attention" in layer_types and getattr(cfg, "sliding_window", None):
            logger.warning(
                "ilt_hf: %s.forward takes no {layer_type: mask} mapping in this transformers: a packed row's "
                "sliding-window layers see the whole text (written for transformers 5.x)",
                type(model).__name__,
            )
        # eval with gradients off, one new unit over the cache (generation): GPT-NeoX's fused step (ilt_hf.fast_neox)
        self._fused_step = FusedNeoXWeights() if fused_neox_supported(model) else None

    def _mask_4d(self, mask: torch.Tensor, inputs_embeds: torch.Tensor, past_key_values: Any) -> Any:
        batch, length = inputs_embeds.shape[:2]
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        expected = (batch, 1, length, past + length)
        if mask.dtype != torch.bool:
            raise ILTError(
                f"latent transformer: a 4-D attention_mask must be boolean (True = may attend), got {mask.dtype}"
            )
        if mask.shape[0] not in (1, batch) or tuple(mask.shape[1:]) != expected[1:]:
            raise ILTError(
                f"latent transformer: 4-D attention_mask has shape {tuple(mask.shape)}, expected {expected} "
                "(batch, 1, new units, cached + new units)"
            )
        full = additive_mask(mask, inputs_embeds.dtype)
        if self._sliding_window is None:
            return full
        total = mask.shape[-1]
        query_pos = torch.arange(total - length, total, device=mask.device)
        key_pos = torch.arange(total, device=mask.device)
        sliding = mask & ((query_pos[:, None] - key_pos[None, :]) < self._sliding_window)
        if past_key_values is not None:
            # a sliding-window cache layer keeps only its last keys: cut the mask to what that layer will hold
            kv_length, _ = past_key_values.get_mask_sizes(length, self._sliding_layer)
            sliding = sliding[..., total - kv_length :]
        return {"full_attention": full, "sliding_attention": additive_mask(sliding, inputs_embeds.dtype)}

    def masks_from_position_ids(self) -> bool:
        """``protocols.PositionMasking``: True when packed rows need no mask, only ``position_ids``.

        Decided by the model type (:data:`MASKS_FROM_POSITIONS_MODEL_TYPES`) and the attention implementation in
        use now: ``sdpa`` and ``eager`` build the block-causal mask from the position ids (transformers does so
        when given no mask and no cache); ``flash_attention_2/3`` run one flattened row with the texts' lengths
        (:func:`varlen_arguments`). Any other implementation (flex attention, a custom kernel) gets a dense mask.
        """
        cfg = self.model.config
        attention = getattr(cfg, "_attn_implementation", None)
        return cfg.model_type in MASKS_FROM_POSITIONS_MODEL_TYPES and (
            attention in _MASK_BUILDING_ATTENTION or attention in _VARLEN_ATTENTION
        )

    def _runs_varlen(self) -> bool:
        """True when a maskless, cacheless forward runs as one flattened row (flash attention, a listed type)."""
        cfg = self.model.config
        return (
            cfg.model_type in MASKS_FROM_POSITIONS_MODEL_TYPES
            and getattr(cfg, "_attn_implementation", None) in _VARLEN_ATTENTION
        )

    def _varlen_forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Flash-attention rows ``(B, L, D)`` run as one flattened row ``(1, B * L, D)``; returns ``(B, L, D)``.

        transformers' flash path keeps texts apart only in a single row (its varlen kernel reads cumulative text
        lengths), so the rows are laid end to end and the lengths passed once, not re-derived in every layer.
        """
        batch, length, width = inputs_embeds.shape
        out = self.model(
            inputs_embeds=inputs_embeds.reshape(1, batch * length, width),
            attention_mask=None,
            position_ids=position_ids.reshape(1, batch * length),
            use_cache=False,
            return_dict=True,
            **varlen_arguments(position_ids),
        )
        return out.last_hidden_state.view(batch, length, -1)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> LatentOutput:
        """Run the unit embeddings ``(B, L, D)`` through the transformer; see the class docstring."""
        param = next(self.model.parameters())
        inputs_embeds = inputs_embeds.to(dtype=param.dtype)
        if (
            self._fused_step is not None
            and past_key_values is not None
            and use_cache
            and attention_mask is not None
            and position_ids is not None
            and not self.model.training
            and not torch.is_grad_enabled()
            and getattr(self.model.config, "_attn_implementation", None) in ("sdpa", "eager")
        ):
            hidden = neox_cached_step(
                self.model, self._fused_step, inputs_embeds, attention_mask, position_ids, past_key_values
            )
            if hidden is not None:
                return LatentOutput(hidden_states=hidden, past_key_values=past_key_values)
        if (
            attention_mask is None
            and position_ids is not None
            and past_key_values is None
            and not use_cache
            and self._runs_varlen()
        ):
            return LatentOutput(hidden_states=self._varlen_forward(inputs_embeds, position_ids))
        if use_cache and past_key_values is None:
            # create the cache here so a 4-D mask can be sized against it (transformers would do the same)
            from transformers import DynamicCache

            past_key_values = DynamicCache(config=self.model.config)
        mask: Any = attention_mask
        if attention_mask is not None and attention_mask.ndim == 4:
            mask = self._mask_4d(attention_mask, inputs_embeds, past_key_values)
        elif attention_mask is not None and attention_mask.ndim != 2:
            raise ILTError(
                f"latent transformer: attention_mask must be (B, L_past + L) or (B, 1, L, L_past + L), "
                f"got shape {tuple(attention_mask.shape)}"
            )
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=use_cache,
            return_dict=True,
            **{self._cache_argument: past_key_values},
        )
        return LatentOutput(
            hidden_states=out.last_hidden_state, past_key_values=output_cache(out) if use_cache else None
        )

    def _set_fused(self, enabled: bool) -> list[str]:
        """A cached step of one new unit (eval mode, gradients off) through the fused GPT-NeoX step of
        :mod:`ilt_hf.fast_neox`, for a GPT-NeoX the step reproduces; off sends every call through the transformers
        forward (the fused weights kept aside)."""
        on = switch_fused(self, "_fused_step", enabled, fused_neox_supported, FusedNeoXWeights)
        return ["fused GPT-NeoX cached step"] if on else []

    def static_cache(self, rows: int, length: int) -> Any:
        """``protocols.StaticLatentCache``: a transformers ``StaticCache`` of ``length`` columns (filled in place)."""
        from transformers import StaticCache  # transformers is imported when a component is built

        return StaticCache(config=self.model.config, max_cache_len=length)

    def select_cache(self, cache: Any, rows: torch.Tensor) -> Any:
        """``protocols.LatentCache``: keep batch rows ``rows`` ``(N',)`` (they may repeat) of a transformers cache."""
        cache.reorder_cache(rows)  # index_select over the batch of every layer, in place
        return cache

    def crop_cache_left(self, cache: Any, n: int) -> bool:
        """``protocols.LatentCache``: drop the ``n`` oldest positions of every layer, in place.

        Only plain full-attention layers (``DynamicLayer``) hold every past key at a fixed column; a cache with
        sliding-window (or any other) layers is left as it is and False returned.
        """
        from transformers.cache_utils import DynamicLayer  # transformers is imported when a component is built

        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return False
        for layer in layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys[..., n:, :]
                layer.values = layer.values[..., n:, :]
        return True


# generation_config fields that leave greedy decoding as it is (anything else sends greedy() to generate())
_PLAIN_GENERATION_KEYS = {
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "transformers_version",
    "_from_model_config",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "output_logits",
    "return_dict_in_generate",
}


class HFBytesDecoder(HFWrapper):
    """A transformers causal LM over bytes that reads a prefix embedding (see ``protocols.BytesDecoder``).

    ``embed(ids (N, T))`` -> ``(N, T, D)``; ``forward(inputs_embeds (N, T, D), attention_mask (N, T_past + T))``
    -> ``(logits (N, T, V), cache)``; ``generate(inputs_embeds, attention_mask, **generation_kwargs)`` passes
    through to ``transformers.GenerationMixin.generate`` (greedy, sampling, beams, repetition penalty, ...) and
    returns only the new ids ``(N, T_new)``.
    """

    backbone_name = "lm"
    #: ``protocols.BytesDecoder``: takes several texts per row (a boolean block-causal 4-D mask and ``position_ids``)
    takes_packed_rows = True

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self.hidden_size: int = int(lm.config.hidden_size)
        self.vocab_size: int = int(lm.get_output_embeddings().weight.shape[0])
        self.max_positions: int = max_positions(lm.config)
        self._cache_argument = cache_argument(lm)
        self._fused: FusedLlamaWeights | None = FusedLlamaWeights()  # greedy()'s, filled on first use (Llama only)

    def _set_fused(self, enabled: bool) -> list[str]:
        """:meth:`greedy` through the fused Llama step of :mod:`ilt_hf.fused_llama` (for a Llama decoder it
        reproduces); off, the same byte loop runs the model's own forward."""
        if not enabled:
            self._fused = None
        elif self._fused is None:
            self._fused = FusedLlamaWeights()
        return ["fused greedy byte step"] if enabled and fused_llama_supported(self.lm.config) else []

    @property
    def generation_config(self) -> Any:
        """The wrapped model's transformers ``GenerationConfig``: the decoder's byte-level defaults."""
        return self.lm.generation_config

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Byte ids ``(N, T)`` -> the decoder's own input embeddings ``(N, T, hidden_size)``."""
        return self.lm.get_input_embeddings()(input_ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Logits ``(N, T, vocab_size)`` for every position, and the cache when ``use_cache``.

        Packed rows (:attr:`takes_packed_rows`): ``attention_mask`` a boolean ``(N, 1, T, T)`` (True = may attend)
        and ``position_ids`` ``(N, T)`` restarting at each text.

        With no mask and no cache, the causal mask is passed prepared (``(1, 1, T, T)``): transformers would otherwise
        read the position ids back from the device to look for packed sequences.
        """
        param = next(self.lm.parameters())
        extra: dict[str, Any] = {}
        if attention_mask is None and past_key_values is None and not use_cache:
            T = inputs_embeds.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=inputs_embeds.device).tril()
            attention_mask = additive_mask(causal, param.dtype)[None, None]
        elif attention_mask is not None and attention_mask.ndim == 4 and attention_mask.dtype == torch.bool:
            attention_mask = additive_mask(attention_mask, param.dtype)
        if position_ids is not None:
            extra["position_ids"] = position_ids
        out = self.lm(
            inputs_embeds=inputs_embeds.to(dtype=param.dtype),
            attention_mask=attention_mask,
            use_cache=use_cache,
            return_dict=True,
            **{self._cache_argument: past_key_values},
            **extra,
        )
        return out.logits, (output_cache(out) if use_cache else None)

    @torch.no_grad()
    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **generation_kwargs: Any) -> Any:
        """transformers generation from the prefix embeddings ``(N, T0, D)``; returns the new ids ``(N, T_new)``.

        With only ``inputs_embeds`` given, transformers returns just the generated ids (or a ``GenerateOutput``
        holding them when ``return_dict_in_generate=True``).
        """
        param = next(self.lm.parameters())
        return self.lm.generate(
            inputs_embeds=inputs_embeds.to(dtype=param.dtype), attention_mask=attention_mask, **generation_kwargs
        )

    @torch.no_grad()
    def greedy(
        self,
        inputs_embeds: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
        suppress_tokens: list[int] | None = None,
        min_new_tokens: int = 0,
        check_at: int | None = None,
    ) -> torch.Tensor:
        """Greedy ids ``(N, max_new_tokens)`` from the prefix ``(N, T0, D)`` without ``generate``'s overhead.

        The same ids as ``generate(do_sample=False)``; after ``eos`` a row holds ``pad_token_id``. Llama-family
        decoders run a fused step (see :mod:`ilt_hf.fused_llama`), others their own forward in a loop. Every row
        writes until ``max_new_tokens`` (``pad`` after its ``eos``) unless all have ended when the loop reads so, once,
        after ``check_at`` bytes (``protocols.FastGreedy``).
        """
        extra = set(self.lm.generation_config.to_diff_dict()) - _PLAIN_GENERATION_KEYS
        if extra:  # a hub generation_config.json that samples, penalises, ...: generate() honours it
            mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
            kwargs: dict[str, Any] = {"suppress_tokens": suppress_tokens} if suppress_tokens else {}
            if min_new_tokens:
                kwargs["min_new_tokens"] = min_new_tokens
            ids = self.generate(inputs_embeds, mask, max_new_tokens=max_new_tokens, **kwargs)
            return F.pad(ids, (0, max_new_tokens - ids.shape[1]), value=pad_token_id)
        return greedy_decode(
            self.lm,
            inputs_embeds,
            max_new_tokens,
            eos_token_id,
            pad_token_id,
            suppress_tokens,
            min_new_tokens,
            fused=self._fused,
            cache_arg=self._cache_argument,
            check_at=check_at,
        )


class HFCausalBytesEncoder(HFWrapper):
    """A causal transformers model over bytes as a bytes encoder: ``(N, T)`` ids and mask -> ``(N, hidden_size)``.

    ``pooling="last"`` takes the hidden state of the last real byte (the only one that has read the whole unit);
    ``"mean"`` averages the real bytes.
    """

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.hidden_size: int = int(model.config.hidden_size)
        self.vocab_size: int = int(model.get_input_embeddings().weight.shape[0])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        mask = attention_mask.to(hidden.dtype)
        if self.pooling == "mean":
            return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        # index of the last 1 in each row (works for left or right padding)
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (attention_mask.bool() * (positions + 1)).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@component(
    "causal-lm",
    roles=("latent_transformer", "bytes_decoder", "bytes_encoder"),
    requires=("transformers",),
    install="pip install ilt-hf  (or: pip install transformers)",
)
def build_causal_lm(
    role: str, context: BuildContext, *, pooling: str = "last", **source: Unpack[SourceArgs]
) -> nn.Module:
    """A transformers causal LM: latent transformer (no token embeddings), bytes decoder or bytes encoder.

    Any ``AutoModelForCausalLM`` architecture (llama, gpt_neox, gemma3_text, gpt2, ...); see the module
    docstring for what each role gets. ``pooling``: ``last`` (the last real byte) or ``mean``, for a
    bytes encoder.
    """
    from transformers import AutoModel, AutoModelForCausalLM  # heavy: imported when a component is built

    where = f"hf:causal-lm ({role})"
    if pooling not in ("last", "mean"):
        raise ILTError(f"{where}: pooling must be 'last' or 'mean', got {pooling!r}")
    hf = Source(where, **source)
    cfg = hf.make_config()
    if role == "latent_transformer":
        if not hf.pretrained:
            # the token table is removed right after building: don't allocate a hub-sized one first
            cfg.vocab_size = 1
            cfg.pad_token_id = cfg.bos_token_id = cfg.eos_token_id = None
        return HFLatentTransformer(hf.build(AutoModel, cfg))
    if role not in ("bytes_decoder", "bytes_encoder"):
        raise ILTError(f"{where}: hf:causal-lm cannot be a {role}")
    if not hf.pretrained:
        # random weights: build the vocabulary at the byte tokenizer's size directly
        cfg.vocab_size = context.vocab_size
        set_special_tokens(cfg, context)
    model = hf.build(AutoModelForCausalLM if role == "bytes_decoder" else AutoModel, cfg)
    if hf.pretrained:
        model.resize_token_embeddings(context.vocab_size)
        set_special_tokens(model.config, context)
    if role == "bytes_encoder":
        return HFCausalBytesEncoder(model, pooling)
    generation = model.generation_config
    generation.pad_token_id = context.pad_token_id
    generation.bos_token_id = context.bos_token_id
    generation.eos_token_id = context.eos_token_id
    return HFBytesDecoder(model)
