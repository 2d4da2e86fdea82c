"""Training checkpoints: the spec a folder was written with, compatibility, and resumable folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from safetensors import safe_open

from ilt_core.errors import CheckpointError, ILTError
from ilt_core.modeling.checkpoint import WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from ilt_core.specs.spec import load_spec

if TYPE_CHECKING:
    from ilt_core.modeling.model import ILTModel

TRAINING_ARGS_JSON = "training_args.json"


def _weights_file(directory: str | Path) -> Path | None:
    """``model.safetensors``, or the first shard its index names when the weights are sharded; None if neither."""
    d = Path(directory)
    if (d / WEIGHTS_NAME).is_file():
        return d / WEIGHTS_NAME
    index = d / WEIGHTS_INDEX_NAME
    if not index.is_file():
        return None
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
    return d / shards[0] if shards and (d / shards[0]).is_file() else None


def checkpoint_spec(directory: str | Path) -> dict:
    """The spec a checkpoint folder was written with (read from a weights file's metadata only: every shard has it)."""
    weights = _weights_file(directory)
    if weights is None:
        raise CheckpointError(
            f"{directory}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in it (expected an ILT checkpoint folder)"
        )
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
        return yaml.safe_load(metadata["spec"])
    except Exception as exc:  # a bad header, no spec: one line
        raise CheckpointError(f"{weights}: not a readable ILT checkpoint ({exc})") from None


def spec_differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two spec mappings differ (``name`` and ``description`` ignored), as ``path: a vs b``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            if not path and key in ("name", "description"):
                continue
            out += spec_differences(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if a == b else [f"{path or '<spec>'}: {a!r} vs {b!r}"]


def check_compatible(model: ILTModel, directory: str | Path, flag: str) -> None:
    """Raise :class:`CheckpointError` unless ``directory`` was written by a model of ``model``'s spec."""
    theirs = load_spec(checkpoint_spec(directory)).to_dict()
    diffs = spec_differences(model.spec.to_dict(), theirs)
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise CheckpointError(
            f"{flag} {directory}: written by a model of another spec ({diffs[0]}{more}, this run vs the "
            f"checkpoint); pass the same --model_spec, or --model_name_or_path {directory} to build from it"
        )


def is_complete_checkpoint(directory: str | Path) -> bool:
    """A Trainer checkpoint folder that resuming can use: weights, trainer state and optimizer state."""
    d = Path(directory)
    has_weights = _weights_file(d) is not None
    return has_weights and all((d / name).is_file() for name in ("trainer_state.json", "optimizer.pt"))


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` in ``output_dir`` whose save finished (an interrupted one is skipped)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("checkpoint-") and d.name[11:].isdigit() and is_complete_checkpoint(d):
            found.append((int(d.name[11:]), d))
    return max(found)[1] if found else None


def resolve_resume(value: str | None, output_dir: str) -> Path | None:
    if value is None or value == "" or value.lower() in ("false", "no", "none"):
        return None
    if value.lower() in ("last", "true", "yes", "latest"):
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise ILTError(
                f"--resume_from_checkpoint {value}: no complete checkpoint-N folder in --output_dir {output_dir}"
            )
        return found
    path = Path(value)
    if not path.is_dir():
        raise ILTError(f"--resume_from_checkpoint {value}: no such folder")
    if not is_complete_checkpoint(path):
        raise ILTError(
            f"--resume_from_checkpoint {value}: not a complete Trainer checkpoint (expected model.safetensors, "
            f"trainer_state.json and optimizer.pt; an interrupted save?); to start from its weights only, pass "
            f"--model_name_or_path {value}"
        )
    return path
