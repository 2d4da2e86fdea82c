"""``ILTConfig``: the transformers configuration of an ILT model (``config.json``, ``model_type: ilt``).

It carries the model's spec with every backbone's *resolved* configuration written inline, so a saved folder
rebuilds without the backbones' original sources (hub repositories, local folders, GGUF files):

- every ``pretrained`` argument becomes ``false`` (the weights come from the folder's safetensors files);
- a component whose backbone has a transformers configuration gets that configuration as ``config`` (the
  byte-vocabulary sizes and special tokens already applied), and loses ``name_or_path`` / ``gguf_file``;
- ``gguf_file`` and ``checkpoint_path`` go (either would read the original weights again);
- a factory argument the component keeps as a tensor attribute of the same name (``image_mean`` / ``image_std``
  that a pretrained folder's ``preprocessor_config.json`` gave) is written out as the values in use.

A component may instead provide ``resolved_args() -> dict`` and say itself what rebuilds it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import field
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

FORMAT = "ilt-checkpoint-2"
# arguments that point at where a backbone's weights came from; a resolved block needs none of them
SOURCE_ARGS = ("name_or_path", "gguf_file", "checkpoint_path")


class ILTConfig(PretrainedConfig):
    """The configuration of an :class:`~ilt_core.modeling.model.ILTModel`.

    ``spec``: the model spec as a mapping (see :mod:`ilt_core.specs.spec`), resolved as the module docstring
    says. ``disabled``: modalities switched off on the model. ``renderer_key``: the renderer's ``cache_key()``
    as JSON (fonts and library versions: other values draw other pixels). ``source_spec``: the spec as the user
    gave it (``pretrained: true`` blocks and all), for the model card. ``training``: what the model was trained
    on and its bits-per-byte, when known. ``source_licenses``: by role, the license a pretrained backbone's local
    source folder declares in its model card (read once, when the model is built from that source).
    """

    model_type = "ilt"

    spec: dict[str, Any] | None = None
    disabled: list[str] = field(default_factory=list)
    renderer_key: list[Any] | None = None
    source_spec: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    source_licenses: dict[str, str] = field(default_factory=dict)
    ilt_format: str = FORMAT


def _transformers_config(component: nn.Module) -> Any | None:
    """The transformers configuration of the first backbone inside ``component`` (a plugin's wrapper), or None."""
    for module in component.modules():
        cfg = getattr(module, "config", None)
        if isinstance(cfg, PretrainedConfig):
            return cfg
    return None


def _config_mapping(cfg: PretrainedConfig) -> dict[str, Any]:
    """A transformers configuration as the fields that rebuild it (``model_type`` first, defaults left out)."""
    fields = cfg.to_diff_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "name_or_path"):
        fields.pop(key, None)
    return {"model_type": cfg.model_type, **{k: v for k, v in fields.items() if k != "model_type"}}


def resolve_block_args(args: dict[str, Any], component: Any, factory_params: tuple[str, ...] = ()) -> dict[str, Any]:
    """The arguments that rebuild ``component`` exactly (architecture, constants) without its weights' source.

    ``factory_params``: the argument names the component's factory takes; any of them that the component keeps
    as a tensor attribute (normalisation constants) is written out as the values in use.
    """
    resolver = getattr(component, "resolved_args", None)
    if callable(resolver):
        return dict(resolver())
    out = copy.deepcopy(args)
    if out.get("pretrained"):
        out["pretrained"] = False
    for key in ("gguf_file", "checkpoint_path"):  # either would make the factory read the original weights again
        out.pop(key, None)
    if isinstance(component, nn.Module):
        cfg = _transformers_config(component)
        if cfg is not None:
            out["config"] = _config_mapping(cfg)
            out.pop("name_or_path", None)
        for key in dict.fromkeys([*args, *factory_params]):
            value = getattr(component, key, None)
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                out[key] = [float(v) for v in value.detach().flatten().tolist()]
    return out


def resolve_spec(
    spec: dict[str, Any], components: dict[str, Any], factory_params: dict[str, tuple[str, ...]] | None = None
) -> dict[str, Any]:
    """``spec`` (a mapping) with each role block replaced by :func:`resolve_block_args` of its built component."""
    out = copy.deepcopy(spec)
    for role, component in components.items():
        block = out.get(role)
        if not isinstance(block, dict) or component is None:
            continue
        args = {k: v for k, v in block.items() if k != "component"}
        params = (factory_params or {}).get(role, ())
        out[role] = {"component": block["component"], **resolve_block_args(args, component, params)}
    return out


def renderer_key_json(renderer: Any) -> list[Any] | None:
    """The renderer's ``cache_key()`` as JSON values (tuples become lists), or None without a renderer."""
    if renderer is None or not hasattr(renderer, "cache_key"):
        return None
    return json.loads(json.dumps(list(renderer.cache_key()), default=str))


def renderer_key_differences(saved: list[Any] | None, installed: list[Any] | None) -> list[str]:
    """Where two renderer keys differ, as ``position: saved vs installed`` (nested lists flattened)."""
    if saved is None or installed is None:
        return []

    def flat(value: Any, path: str = "") -> dict[str, Any]:
        if isinstance(value, list):
            found: dict[str, Any] = {}
            for i, item in enumerate(value):
                found.update(flat(item, f"{path}[{i}]"))
            return found
        return {path: value}

    a, b = flat(saved), flat(installed)
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


__all__ = ["FORMAT", "ILTConfig", "renderer_key_differences", "renderer_key_json", "resolve_spec"]
