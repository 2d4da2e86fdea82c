"""Checkpoints: one safetensors file that carries its spec; no pickle anywhere.

``model.safetensors`` holds the weights and, in its metadata, the spec (YAML), a SHA-256 of every
tensor byte and the names of tied weights. It is written to a temporary file and moved into place
with ``os.replace``, so an interrupted save leaves the previous checkpoint whole. ``spec.yaml``
beside it is a copy for people to read; loading trusts the weights file only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from ilt_core.errors import CheckpointError, ILTError

if TYPE_CHECKING:
    from ilt_core.modeling.model import ILTModel

WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "spec.yaml"
FORMAT = "ilt-checkpoint-1"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one name per shared storage (tied weights); return the tensors and alias -> kept name."""
    kept: dict[tuple, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in kept:
            aliases[name] = kept[key]
            continue
        kept[key] = name
        tensors[name] = t.detach().cpu().contiguous()
    return tensors, aliases


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(model: ILTModel, directory: str | Path) -> Path:
    """Write the model to ``directory`` (created if needed); returns the weights file's path."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec_text = yaml.safe_dump(model.spec.to_dict(), sort_keys=False, allow_unicode=True)
    tensors, aliases = _unique_tensors(model.state_dict())
    metadata = {
        "format": FORMAT,
        "spec": spec_text,
        "sha256": _digest(tensors),
        "aliases": json.dumps(aliases, sort_keys=True),
        "disabled": json.dumps(sorted(model.disabled)),
    }
    weights = directory / WEIGHTS_NAME
    _atomic_write(weights, lambda p: save_file(tensors, str(p), metadata=metadata))
    _atomic_write(directory / SPEC_NAME, lambda p: p.write_text(spec_text, encoding="utf-8"))
    return weights


def read_checkpoint(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """Read and verify a checkpoint: (spec mapping, full state dict, metadata). Raises CheckpointError."""
    from safetensors import safe_open

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint folder (expected a folder written by save_pretrained)")
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing; a checkpoint folder holds {WEIGHTS_NAME} and {SPEC_NAME}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no items())
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types for a bad header or size
        raise CheckpointError(f"{weights}: not a readable safetensors file, truncated or corrupted ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{weights}: not an ILT checkpoint (metadata format {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    if _digest(tensors) != metadata.get("sha256"):
        raise CheckpointError(f"{weights}: weights do not match their recorded SHA-256: the file is corrupted")
    try:
        spec = yaml.safe_load(metadata["spec"])
        aliases = json.loads(metadata.get("aliases", "{}"))
    except (KeyError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{weights}: unreadable spec or alias metadata ({exc})") from None
    for alias, target in aliases.items():
        if target not in tensors:
            raise CheckpointError(f"{weights}: tied weight {alias!r} points at missing {target!r}")
        tensors[alias] = tensors[target]
    return spec, tensors, metadata


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> ILTModel:
    """Rebuild the model from the checkpoint's spec and load its weights exactly."""
    from ilt_core.modeling.model import ILTModel

    spec, tensors, metadata = read_checkpoint(directory)
    try:
        model = ILTModel(spec)
    except ILTError as exc:
        raise CheckpointError(f"{directory}: its spec cannot be built here: {exc}") from None
    load_state(model, tensors, str(Path(directory) / WEIGHTS_NAME))
    for modality in json.loads(metadata.get("disabled", "[]")):
        model.disable(modality)
    return model.to(map_location).eval()


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that names what does not match instead of a long traceback."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(tensors) & set(expected))
        if tensors[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"wrong shape {len(wrong)} (e.g. {wrong[0]})")
        raise CheckpointError(f"{source}: weights do not fit the model its spec builds: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=True)
