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
"""

from __future__ import annotations

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
