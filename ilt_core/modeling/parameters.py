"""Parameter counts of components, without their vocabulary tables.

The rule of ``count_parameters(module, exclude_embeddings=True)``:

- The *vocabulary* is ``vocab_size`` when given, else ``module.vocab_size``, else ``module.config.vocab_size``.
- When the vocabulary is known, excluded are the weights of every ``nn.Embedding`` with ``num_embeddings ==
  vocab_size`` (token embedding tables) and of every ``nn.Linear`` with ``out_features == vocab_size`` (output
  heads, tied or not; their bias too). Position, token-type and relative-position embeddings are architecture,
  not vocabulary, and are counted.
- When no vocabulary is known, every ``nn.Embedding`` is excluded, and so is every ``nn.Linear`` that shares its
  weight with one of them (a tied head).

Shared (tied) parameters are counted once. This matches how ILT uses backbones: the token tables of a hub model
are replaced by the byte tokenizer's (a few hundred rows) or removed, so what a preset "costs" is the rest.

The model's components also decide how they train: :func:`learning_rate_groups` gives the optimizer one
parameter group per component (and weight decay), each at the peak rate times :func:`width_factors` (used by
``ilt train`` and ``ilt bench`` alike).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any

import torch
from torch import nn

from ilt_core.plugins.protocols import ROLES
from ilt_core.plugins.registry import BuildContext, get_registry
from ilt_core.specs.spec import ModelSpec, load_spec


def _vocab_size(module: nn.Module, vocab_size: int | None) -> int | None:
    if vocab_size is not None:
        return vocab_size
    value = getattr(module, "vocab_size", None)
    if isinstance(value, int):
        return value
    value = getattr(getattr(module, "config", None), "vocab_size", None)
    return value if isinstance(value, int) else None


def count_parameters(module: nn.Module, exclude_embeddings: bool = True, vocab_size: int | None = None) -> int:
    """Number of (unique) parameters of ``module``; with ``exclude_embeddings``, without vocabulary tables.

    See the module docstring for exactly what is excluded. Works on the meta device (only shapes are read).
    """
    params = {id(p): p for p in module.parameters()}
    if exclude_embeddings:
        vocab = _vocab_size(module, vocab_size)
        excluded: set[int] = set()
        embedding_weights: set[int] = set()
        for sub in module.modules():
            if isinstance(sub, nn.Embedding) and (vocab is None or sub.num_embeddings == vocab):
                excluded.add(id(sub.weight))
                embedding_weights.add(id(sub.weight))
        for sub in module.modules():
            if not isinstance(sub, nn.Linear):
                continue
            is_head = sub.out_features == vocab if vocab is not None else id(sub.weight) in embedding_weights
            if is_head:
                excluded.update(id(p) for p in sub.parameters(recurse=False))
        params = {key: p for key, p in params.items() if key not in excluded}
    return sum(p.numel() for p in params.values())


def component_parameter_counts(spec: str | dict | ModelSpec, exclude_embeddings: bool = True) -> dict[str, int]:
    """Parameters of each enabled component of ``spec`` (preset name, YAML path, mapping or spec), by role.

    Every component is built through the registry on the meta device, so even the medium preset costs no memory
    and no time to initialise. The renderer (no parameters) is left out. Weights are never loaded for counting:
    a block with ``pretrained: true`` is counted from its architecture (config) alone.
    """
    model_spec = load_spec(spec)
    registry = get_registry()
    context = BuildContext(image_height=model_spec.image_height)
    counts: dict[str, int] = {}
    for role in ROLES:
        block = model_spec.block(role)
        if block is None or role == "renderer":
            continue
        args: dict[str, Any] = block.args
        if args.get("pretrained"):
            args["pretrained"] = False
        with torch.device("meta"):
            component = registry.build(block.component, role, context, args, where=f"{model_spec.name}: {role}")
        # the byte vocabulary is the only vocabulary of an ILT model
        counts[role] = count_parameters(component, exclude_embeddings, vocab_size=context.vocab_size)
    return counts


# ---- learning rates per component --------------------------------------------------------------------------

#: ``--lr_scaling`` (``ilt train``) / ``--lr-scaling`` (``ilt bench``) values.
LR_SCALINGS = ("width", "none")
#: Components whose rate the width rule scales; the latent transformer, the two mappings and anything else of
#: the model keep the peak rate (the ``"rest"`` group).
SCALED_COMPONENTS = ("image_encoder", "bytes_encoder", "bytes_decoder")
REST = "rest"
# transformers' Trainer.get_decay_parameter_names: no weight decay for these names (lower-cased) ...
_NO_DECAY_PATTERNS = tuple(
    re.compile(p) for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
)


def width_factors(model: Any) -> dict[str, float]:
    """Learning-rate factor per ILT component: the latent transformer's width over the component's.

    With Adam, a narrower transformer learns less per step at the same rate (its updates move each output by
    about rate x width); one rate for every component left the narrow bytes decoder behind the rest (and a byte
    baseline as wide as the latent far ahead of it): ``benchmarks/bench_learning.py`` measures it. Only the
    components of :data:`SCALED_COMPONENTS` that the model has (and that report a ``hidden_size``) get a factor.
    """
    width = int(model.latent_transformer.hidden_size)
    factors = {}
    for part in SCALED_COMPONENTS:
        component = getattr(model, part, None)
        if component is not None and int(getattr(component, "hidden_size", 0) or 0) > 0:
            factors[part] = width / int(component.hidden_size)
    return factors


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get weight decay, by transformers' ``Trainer`` rule (so that ``ilt bench``
    decays what ``ilt train`` does without importing Trainer): every parameter except those inside an
    ``nn.LayerNorm`` and those whose lower-cased name holds ``bias``, ``layernorm``, ``rmsnorm``, a ``norm``
    path component or ``_norm``. ``tests/test_lr_groups.py`` checks it against Trainer's own."""
    in_layer_norm = {
        id(p) for sub in model.modules() if isinstance(sub, nn.LayerNorm) and sub is not model for p in sub.parameters()
    }
    return {
        name
        for name, p in model.named_parameters()
        if id(p) not in in_layer_norm and not any(pat.search(name.lower()) for pat in _NO_DECAY_PATTERNS)
    }


def learning_rate_groups(
    model: nn.Module,
    lr: float,
    scaling: str = "width",
    weight_decay: float = 0.0,
    decay_names: Collection[str] | None = None,
    named_parameters: Iterable[tuple[str, nn.Parameter]] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups of an ILT model: one per component and weight decay.

    Each group is ``{"params", "name", "factor", "lr": lr * factor, "weight_decay"}``: ``name`` is the
    component (:data:`SCALED_COMPONENTS`) or ``"rest"``; ``factor`` is :func:`width_factors`' with
    ``scaling="width"``, 1.0 with ``"none"`` (then two groups, as ``Trainer`` makes); the parameters named in
    ``decay_names`` (default :func:`decay_parameter_names`) get ``weight_decay``, the others 0. Only
    trainable parameters (``requires_grad``) are placed, each in exactly one group; a component's parameters
    are found by identity, so ``named_parameters`` may come from a wrapper of ``model`` (DDP, FSDP with
    original parameters). The peak-rate groups come first: ``Trainer`` logs the first group's rate.
    A scheduler that multiplies each group's rate (``LambdaLR``, every ``--lr_scheduler_type``) keeps the
    factors; a loop that sets rates itself multiplies by ``group["factor"]``.
    """
    if scaling not in LR_SCALINGS:
        raise ValueError(f"lr scaling {scaling!r}: expected one of {', '.join(LR_SCALINGS)}")
    factors = width_factors(model) if scaling == "width" else {}
    owner = {id(p): part for part in factors for p in getattr(model, part).parameters()}
    decay = decay_parameter_names(model) if decay_names is None else set(decay_names)
    pairs = model.named_parameters() if named_parameters is None else named_parameters
    grouped: dict[tuple[str, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, p in pairs:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        grouped.setdefault((owner.get(id(p), REST), name in decay), []).append(p)
    order = [REST, *factors]
    groups = []
    for (part, decayed), params in sorted(grouped.items(), key=lambda kv: (order.index(kv[0][0]), not kv[0][1])):
        factor = float(factors.get(part, 1.0))
        groups.append(
            {
                "params": params,
                "name": part,
                "factor": factor,
                "lr": lr * factor,
                "weight_decay": weight_decay if decayed else 0.0,
            }
        )
    return groups
