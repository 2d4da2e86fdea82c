"""Checkpoint files: safetensors weights (sharded when large) with a SHA-256 per file; no pickle anywhere.

A folder written by ``ILTModel.save_pretrained`` (format ``ilt-checkpoint-2``)::

    config.json                      ILTConfig: model_type "ilt", the resolved spec, disabled modalities, renderer key
    model.safetensors                the weights, or model-0000i-of-0000n.safetensors + model.safetensors.index.json
    generation_config.json           word-level generation defaults, the bytes decoder's options under "bytes_decoder"
    processor_config.json            the processor's settings (unit bytes, labels, image height, renderer)
    README.md                        the model card

Each weights file's metadata holds ``format: pt``, ``ilt_format``, a SHA-256 over its tensors (names, shapes,
dtypes and bytes) and, in a single-file save, the names of tied weights (``aliases``; in the index otherwise).
Every file is written to a temporary name and moved into place with ``os.replace``, so an interrupted save
leaves the previous checkpoint whole; files get the mode any file the user writes gets (``0o666 & ~umask``).

Folders of the previous format (``ilt-checkpoint-1``: ``spec.yaml`` + ``model.safetensors`` whose metadata holds
the spec) are still read; ``ilt convert OLD NEW`` rewrites one in the current format.

This module reads and writes files only; building a model from them is ``ILTModel.from_pretrained``'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import yaml
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open

from ilt_core.errors import CheckpointError
from ilt_core.modeling.config import FORMAT

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
GENERATION_CONFIG_NAME = "generation_config.json"
PROCESSOR_NAME = "processor_config.json"
CARD_NAME = "README.md"
SPEC_NAME = "spec.yaml"  # format 1 only: a copy of the spec for people
OLD_FORMAT = "ilt-checkpoint-1"
DEFAULT_MAX_SHARD_SIZE = "5GB"
SHARD_PATTERN = "model{suffix}.safetensors"


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, shape, dtype and bytes, in name order (the check of format 1 and 2)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # a view, no copy: memory stays at the file's size
    return h.hexdigest()


def unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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


def file_mode() -> int:
    """The mode a new file gets here: ``0o666`` less the process's umask (what ``open(path, "w")`` gives)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` then move ``tmp`` onto ``path``; the file gets :func:`file_mode` (not a temp file's 0600)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def save_weights(
    state: dict[str, torch.Tensor],
    directory: str | Path,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    metadata: dict[str, str] | None = None,
) -> list[Path]:
    """Write ``state`` as safetensors, sharded above ``max_shard_size`` (``"5GB"``, ``"200MB"`` or bytes).

    ``metadata`` (strings) goes into every file beside the format, the file's SHA-256 and (one file) the tied
    weights. Shards of an earlier save that this one does not use are removed afterwards. Returns the files.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, aliases = unique_tensors(state)
    split = split_torch_state_dict_into_shards(tensors, filename_pattern=SHARD_PATTERN, max_shard_size=max_shard_size)
    written = []
    for filename, names in split.filename_to_tensors.items():
        shard = {n: tensors[n] for n in names}
        meta = {**(metadata or {}), "format": "pt", "ilt_format": FORMAT, "sha256": digest(shard)}
        if not split.is_sharded:
            meta["aliases"] = json.dumps(aliases, sort_keys=True)
        path = directory / filename
        atomic_write(path, lambda p, shard=shard, meta=meta: safetensors.torch.save_file(shard, str(p), metadata=meta))
        written.append(path)
    index = directory / WEIGHTS_INDEX_NAME
    if split.is_sharded:
        data = {
            "metadata": {**split.metadata, "ilt_format": FORMAT, "aliases": aliases},
            "weight_map": split.tensor_to_filename,
        }
        write_json(index, data)
        written.append(index)
    keep = {p.name for p in written}
    for old in [*directory.glob("model-*-of-*.safetensors"), directory / WEIGHTS_NAME, index]:
        if old.name not in keep and old.is_file():
            old.unlink()
    return written


def _open_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (memory-mapped, copy-on-write) and metadata of one safetensors file, its SHA-256 checked."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no items())
    except Exception as exc:  # safetensors raises its own error types for a bad header or size
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupted ({exc})") from None
    if "sha256" not in metadata:
        raise CheckpointError(f"{path}: not an ILT checkpoint file (no sha256 in its metadata)")
    if digest(tensors) != metadata["sha256"]:
        raise CheckpointError(f"{path}: weights do not match their recorded SHA-256: the file is corrupted")
    return tensors, metadata


def read_weights(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every weight of a folder (one file or shards by the index), checked, with tied names restored.

    Returns ``(state dict, metadata of the first file)``. Raises :class:`CheckpointError` naming the file.
    """
    directory = Path(directory)
    index = directory / WEIGHTS_INDEX_NAME
    single = directory / WEIGHTS_NAME
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map: dict[str, str] = data["weight_map"]
            aliases = dict(data.get("metadata", {}).get("aliases", {}))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a readable weights index ({type(exc).__name__}: {exc})") from None
        tensors: dict[str, torch.Tensor] = {}
        metadata: dict[str, str] = {}
        for filename in sorted(set(weight_map.values())):
            path = directory / filename
            if Path(filename).name != filename or not path.is_file():
                raise CheckpointError(
                    f"{path}: missing; {index.name} lists it as one of {len(set(weight_map.values()))} weight "
                    "shards (copy every model-*-of-*.safetensors file of the checkpoint)"
                )
            part, meta = _open_file(path)
            metadata = metadata or meta
            listed = {k for k, v in weight_map.items() if v == filename}
            if set(part) != listed:
                raise CheckpointError(f"{path}: holds other tensors than {index.name} lists for it")
            tensors.update(part)
    elif single.is_file():
        tensors, metadata = _open_file(single)
        try:
            aliases = json.loads(metadata.get("aliases", "{}"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{single}: unreadable alias metadata ({exc})") from None
    else:
        raise CheckpointError(
            f"{directory}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in it (expected a folder written by "
            "save_pretrained)"
        )
    for alias, target in aliases.items():
        if target not in tensors:
            raise CheckpointError(f"{directory}: tied weight {alias!r} points at missing {target!r}")
        tensors[alias] = tensors[target]
    return tensors, metadata


def checkpoint_kind(directory: str | Path) -> str:
    """``"current"`` (config.json), ``"old"`` (format 1: spec in the weights' metadata); CheckpointError else."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint folder (expected a folder written by save_pretrained)")
    if (directory / CONFIG_NAME).is_file():
        return "current"
    if (directory / WEIGHTS_NAME).is_file():
        return "old"
    raise CheckpointError(
        f"{directory}: no {CONFIG_NAME} in it (expected a folder written by save_pretrained, with {CONFIG_NAME} "
        f"and {WEIGHTS_NAME})"
    )


def read_config_dict(directory: str | Path) -> dict[str, Any]:
    """``config.json`` as a mapping, checked to be an ILT model's (``model_type: ilt``) with a spec."""
    path = Path(directory) / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("model_type") != "ilt":
        found = data.get("model_type") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{path}: model_type {found!r}, expected 'ilt': this folder holds another kind of model, not an ILT "
            "checkpoint"
        )
    if not isinstance(data.get("spec"), dict):
        raise CheckpointError(f"{path}: no spec mapping in it (expected the field 'spec' written by save_pretrained)")
    return data


def read_old_checkpoint(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """A format-1 folder: (spec mapping, full state dict, metadata). Raises CheckpointError."""
    weights = Path(directory) / WEIGHTS_NAME
    tensors, metadata = read_weights(directory)
    if metadata.get("format") != OLD_FORMAT:
        raise CheckpointError(
            f"{weights}: not an ILT checkpoint (metadata format {metadata.get('format')!r}, expected {OLD_FORMAT!r} "
            f"without {CONFIG_NAME}, or a {CONFIG_NAME} beside it)"
        )
    try:
        spec = yaml.safe_load(metadata["spec"])
    except (KeyError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{weights}: unreadable spec metadata ({exc})") from None
    return spec, tensors, metadata


def checkpoint_spec(directory: str | Path) -> dict:
    """The spec a checkpoint folder of either format was written with (config.json, or old metadata)."""
    if checkpoint_kind(directory) == "current":
        return read_config_dict(directory)["spec"]
    return read_old_checkpoint(directory)[0]


def check_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise a :class:`CheckpointError` naming what does not match ``model``'s state dict (names, shapes)."""
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


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """``load_state_dict`` that names what does not match instead of a long traceback.

    ``assign=True`` makes the tensors the model's own (memory-mapped ones stay mapped) and then ties again
    every name that shares one tensor in ``tensors`` (``load_state_dict`` would give each its own Parameter).
    """
    check_state(model, tensors, source)
    model.load_state_dict(tensors, strict=True, assign=assign)
    if assign:
        retie(model, tensors)


def retie(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Make every parameter name that maps to one shared tensor in ``tensors`` one Parameter again."""
    owner: dict[int, str] = {}
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, t in tensors.items():
        if name not in params:
            continue
        first = owner.setdefault(id(t), name)
        if first != name:
            module_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module_name), attr, model.get_parameter(first))


__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "GENERATION_CONFIG_NAME",
    "PROCESSOR_NAME",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "checkpoint_kind",
    "checkpoint_spec",
    "load_state",
    "read_config_dict",
    "read_old_checkpoint",
    "read_weights",
    "save_weights",
]
