"""Turning a spec block into a transformers config and model: inline config, hub name or local folder.

Shared by every ``hf:*`` component. The rules:

- ``pretrained: false`` (the default) builds random weights from ``config`` (an inline transformers config with its
  ``model_type``), or from the ``config.json`` at ``name_or_path`` when ``config`` is absent.
- ``pretrained: true`` loads config and weights from ``name_or_path`` (hub name or local folder, optionally a
  ``gguf_file`` inside it); an inline ``config`` is then only documentation and is not applied.

Every mistake becomes an :class:`ILTError` that names the component, the argument and the value.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, TypedDict

import torch

from ilt_core.errors import ILTError


class SourceArgs(TypedDict, total=False):
    """The arguments every ``hf:*`` component takes: where its config and weights come from.

    ``config``: an inline transformers config with its ``model_type`` (random weights);
    ``name_or_path``: a hub name or a local folder; ``pretrained`` (default false): load the weights
    from ``name_or_path``; ``gguf_file``: a GGUF file inside it; ``attn_implementation`` (default
    ``"sdpa"``, ``"eager"`` where a model has none); ``dtype``: ``float32`` (default), ``bfloat16``, ...
    """

    config: dict[str, Any] | None
    name_or_path: str | None
    pretrained: bool
    gguf_file: str | None
    attn_implementation: str | None
    dtype: str | None


@dataclass(frozen=True)
class Source:
    """A factory's :class:`SourceArgs` with their defaults, and ``where`` (``"hf:encoder (bytes_encoder)"``)
    for error messages: the prologue every hf factory shares."""

    where: str
    config: dict[str, Any] | None = None
    name_or_path: str | None = None
    pretrained: bool = False
    gguf_file: str | None = None
    attn_implementation: str | None = "sdpa"
    dtype: str | None = None

    def make_config(self) -> Any:
        """The transformers config of this block (see the module docstring for the rules)."""
        return make_config(self.where, self.config, self.name_or_path, self.pretrained, self.gguf_file)

    def build(self, auto_cls: Any, cfg: Any, model_kwargs: dict[str, Any] | None = None) -> Any:
        """``auto_cls`` built from ``cfg`` or loaded from ``name_or_path`` (:func:`build_model`)."""
        return build_model(
            auto_cls,
            cfg,
            where=self.where,
            name_or_path=self.name_or_path,
            pretrained=self.pretrained,
            gguf_file=self.gguf_file,
            attn_implementation=self.attn_implementation,
            dtype=self.dtype,
            model_kwargs=model_kwargs,
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _brief(exc: BaseException, limit: int = 400) -> str:
    """The whole message on one line (validators put the useful part after the first line), cut to ``limit``."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def load_error(where: str, name_or_path: str, exc: BaseException) -> ILTError:
    """The error for a ``name_or_path`` that cannot be read (offline, typo, missing folder)."""
    if os.path.isdir(name_or_path):
        why = f"the folder exists but does not hold a loadable model ({_first_line(exc)})"
    else:
        why = (
            "it is not a local folder, and the model hub is unreachable (offline) or has no such model "
            f"({_first_line(exc)})"
        )
    return ILTError(
        f"{where}: name_or_path {name_or_path!r} cannot be loaded: {why}. Give a local folder that holds "
        "config.json (and the weights, for pretrained: true), or set pretrained: false with an inline config"
    )


def _check_heads(where: str, user_config: dict[str, Any], model_type: str) -> None:
    """Attention heads must split the width evenly unless the config sets ``head_dim`` itself.

    Checked on the user's fields (defaults filled from the config class) before transformers sees them, so the
    error can name both fields and their values.
    """
    if "head_dim" in user_config:
        return
    from transformers import CONFIG_MAPPING

    try:
        defaults = CONFIG_MAPPING[model_type]()
    except Exception:  # an unknown type is reported by the caller; a class without defaults is not checked
        defaults = None
    pairs = (("hidden_size", "num_attention_heads"), ("n_embd", "n_head"), ("d_model", "num_attention_heads"))
    for width_key, heads_key in pairs:
        if width_key not in user_config and heads_key not in user_config:
            continue
        width = user_config.get(width_key, getattr(defaults, width_key, None))
        heads = user_config.get(heads_key, getattr(defaults, heads_key, None))
        if isinstance(width, int) and isinstance(heads, int) and heads > 0:
            if width % heads:
                raise ILTError(
                    f"{where}: config.{width_key} ({width}) is not divisible by config.{heads_key} ({heads}); "
                    f"choose a {width_key} that is a multiple of {heads} (e.g. {width - width % heads or heads}), "
                    "or set config.head_dim explicitly"
                )
            return


def make_config(
    where: str,
    config: dict[str, Any] | None,
    name_or_path: str | None,
    pretrained: bool,
    gguf_file: str | None = None,
) -> Any:
    """A transformers ``PretrainedConfig`` for the block (see the module docstring for the rules)."""
    from transformers import AutoConfig

    if pretrained or config is None:
        if not name_or_path:
            need = "pretrained: true needs" if pretrained else "without an inline config, give"
            raise ILTError(f"{where}: {need} name_or_path (a hub model name or a local folder)")
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            return AutoConfig.from_pretrained(name_or_path, **extra)
        except Exception as exc:  # OSError, HFValidationError, ValueError: all mean "cannot read it"
            raise load_error(where, name_or_path, exc) from None
    if not isinstance(config, dict):
        raise ILTError(f"{where}: config must be a mapping of transformers config fields, got {type(config).__name__}")
    if "model_type" not in config:
        raise ILTError(
            f"{where}: config needs a model_type (e.g. llama, gpt2, bert, vit), got keys: {', '.join(config)}"
        )
    fields = dict(config)
    model_type = fields.pop("model_type")
    _check_heads(where, config, model_type)
    try:
        cfg = AutoConfig.for_model(model_type, **fields)
    except ValueError as exc:
        raise ILTError(f"{where}: config.model_type {model_type!r} is not usable: {_first_line(exc)}") from None
    except Exception as exc:
        raise ILTError(f"{where}: config for model_type {model_type!r} is invalid: {_brief(exc)}") from None
    return cfg


def torch_dtype(where: str, dtype: str | None) -> torch.dtype | None:
    """``"float32"`` / ``"bfloat16"`` / ... -> the torch dtype (None keeps the default)."""
    if dtype is None:
        return None
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ILTError(f"{where}: dtype {dtype!r} is not a torch dtype; use float32, bfloat16 or float16")
    return value


def accepts_kwarg(auto_cls: Any, cfg: Any, name: str) -> bool:
    """Whether the class ``auto_cls`` would build for ``cfg`` takes ``name`` in its constructor."""
    try:
        model_cls = auto_cls._model_mapping[type(cfg)]
    except (KeyError, AttributeError):
        return False
    return name in inspect.signature(model_cls.__init__).parameters


def build_model(
    auto_cls: Any,
    cfg: Any,
    *,
    where: str,
    name_or_path: str | None,
    pretrained: bool,
    gguf_file: str | None,
    attn_implementation: str | None,
    dtype: str | None,
    model_kwargs: dict[str, Any] | None = None,
) -> Any:
    """Build ``auto_cls`` from ``cfg`` (random weights) or load it from ``name_or_path``.

    ``attn_implementation="sdpa"`` falls back to ``"eager"`` for architectures without an SDPA path (DeBERTa, ...).
    """
    kwargs = dict(model_kwargs or {})
    torch_type = torch_dtype(where, dtype)

    def attempt(impl: str | None) -> Any:
        kw = dict(kwargs)
        if impl:
            kw["attn_implementation"] = impl
        if pretrained:
            if gguf_file:
                kw["gguf_file"] = gguf_file
            return auto_cls.from_pretrained(name_or_path, config=cfg, dtype=torch_type or torch.float32, **kw)
        if torch_type is not None:
            kw["dtype"] = torch_type
        return auto_cls.from_config(cfg, **kw)

    try:
        try:
            return attempt(attn_implementation)
        except ValueError as exc:
            # only the "this model has no SDPA kernel" case falls back; anything else is the user's to fix
            if attn_implementation == "sdpa" and "scaled_dot_product_attention" in str(exc):
                return attempt("eager")
            raise
    except ILTError:
        raise
    except OSError as exc:
        raise load_error(where, str(name_or_path), exc) from None
    except Exception as exc:
        model_type = getattr(cfg, "model_type", "?")
        source = f"from {name_or_path!r}" if pretrained else f"from its config (model_type {model_type!r})"
        raise ILTError(f"{where}: cannot build the model {source}: {_brief(exc)}") from None


def set_special_tokens(cfg: Any, context: Any) -> None:
    """Point every special-token id of ``cfg`` at the byte tokenizer's (ids beyond the vocab would not embed)."""
    cfg.pad_token_id = context.pad_token_id
    cfg.bos_token_id = context.bos_token_id
    cfg.eos_token_id = context.eos_token_id
    # encoders name their start/end tokens cls/sep (ModernBERT checks them against the vocabulary)
    for key, value in (("cls_token_id", context.bos_token_id), ("sep_token_id", context.eos_token_id)):
        if hasattr(cfg, key):
            setattr(cfg, key, value)


def max_positions(cfg: Any) -> int:
    """The longest sequence a config supports (``max_position_embeddings``, ``n_positions``, ...)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2**31 - 1  # no stated limit (e.g. pure relative attention)
