"""Benchmark mixes: YAML files under ``benchmarks/mixes/`` (or ``--mix-dir``) and those that plugins contribute
(``ilt_bench_mixes`` hook), each an ILT spec or a baseline declaration.

An ILT mix is an ordinary spec (see :mod:`ilt_core.specs.spec`) plus two optional keys::

    base: tiny                 # a preset name or a YAML path (relative to this file) to start from
    image_encoder: false       # then any spec field; a role block that names a `component` replaces
    bytes_decoder:             #   the base block, one without `component` is merged into it
      config: {num_hidden_layers: 2}
    bench: {batch_size: 8, block_units: 64}

A baseline mix declares ``baseline: bytes`` or ``baseline: bpe`` (see :mod:`ilt_bench.baselines`)::

    baseline: bpe
    vocab_size: 4096
    model: {hidden_size: 512, num_hidden_layers: 6}
    bench: {batch_size: 8, block_size: 128}   # block_size in tokens

``bench: {lr: 1e-3}`` fixes a mix's peak learning rate (otherwise ``ilt bench`` sweeps it, or ``--lr`` sets it).
The nano mixes (``nano``, ``nano-no-images``, ``nano-baseline-bytes``, ``nano-baseline-bpe``) are matched in
training FLOPs per byte; ``make bench`` runs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ilt_bench.baselines import parse_baseline_spec
from ilt_core.errors import ILTError
from ilt_core.plugins.registry import get_registry
from ilt_core.specs.spec import parse_spec, resolve_base

#: The order of the report's rows; other mixes in the folder follow alphabetically.
DEFAULT_ORDER = (
    "nano",
    "nano-no-images",
    "nano-baseline-bytes",
    "nano-baseline-bpe",
    "tiny",
    "tiny-no-images",
    "tiny-no-bytes",
    "tiny-timm",
    "tiny-clip",
    "reference-tiny",
    "reference-tiny-no-images",
    "baseline-bytes",
    "baseline-bpe",
)


class BenchSettings(BaseModel):
    """The ``bench:`` block: batch shape of one training step."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(8, ge=1, le=4096, description="rows per training step")
    block_units: int = Field(64, ge=2, le=65536, description="ILT: units per row, start marker included")
    block_size: int = Field(512, ge=2, le=65536, description="baselines: tokens per row")
    reference_protocol: bool = Field(
        False, description="ILT: also time generation by the reference's protocol (batch 4, 32-byte cap)"
    )
    lr: float | None = Field(
        None, gt=0, le=1, description="this mix's peak learning rate (no sweep); None: the sweep or --lr picks it"
    )


@dataclass
class Mix:
    """One row of the benchmark: ``kind`` is ``"ilt"`` or ``"baseline"``; ``spec`` is a plain mapping."""

    name: str
    path: Path
    kind: str
    spec: dict[str, Any]
    bench: BenchSettings

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "kind": self.kind,
            "spec": self.spec,
            "bench": self.bench.model_dump(),
        }


def default_mix_dir() -> Path:
    """``./benchmarks/mixes`` when it exists (a checkout), else the repository's, for an editable install."""
    here = Path.cwd() / "benchmarks" / "mixes"
    return here if here.is_dir() else Path(__file__).resolve().parents[3] / "benchmarks" / "mixes"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ILTError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ILTError(f"{path}: expected a mapping (an ILT spec or `baseline: ...`), got {type(data).__name__}")
    return data


def load_mix(path: str | Path) -> Mix:
    """Read and validate one mix file (the ILT spec is checked now, so a typo fails before any training)."""

    path = Path(path)
    if not path.is_file():
        raise ILTError(f"mix {path}: no such file")
    data = _read_yaml(path)
    raw_bench = data.pop("bench", None) or {}
    try:
        bench = BenchSettings.model_validate(raw_bench)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ILTError(f"{path}: bench.{where}: {err['msg']} (got {err.get('input')!r})") from None
    name = str(data.get("name") or path.stem)
    if "baseline" in data:
        data["name"] = name
        spec = parse_baseline_spec(data, str(path)).model_dump()
        return Mix(name, path, "baseline", spec, bench)
    spec_dict = resolve_base(data, path, (path.resolve(),))
    spec_dict["name"] = name
    spec = parse_spec(spec_dict, str(path)).to_dict()
    return Mix(name, path, "ilt", spec, bench)


def mix_catalogue(mix_dir: str | Path | None = None, extra: Iterable[str | Path] = ()) -> dict[str, Path]:
    """Mix name -> file: every ``*.yaml`` of ``mix_dir``, then the folders and files in ``extra``.

    ``extra`` is what plugins contribute through the ``ilt_bench_mixes`` hook; a name already taken
    (by ``mix_dir`` or an earlier source) keeps its first file.
    """
    folder = Path(mix_dir) if mix_dir is not None else default_mix_dir()
    catalogue: dict[str, Path] = {}
    if folder.is_dir():
        catalogue.update((p.stem, p) for p in sorted(folder.glob("*.yaml")))
    for source in map(Path, extra):
        if source.is_dir():
            files = sorted(source.glob("*.yaml"))
        elif source.is_file():
            files = [source]
        else:
            raise ILTError(f"a plugin's benchmark mixes (ilt_bench_mixes hook): {source}: no such file or folder")
        for path in files:
            catalogue.setdefault(path.stem, path)
    return catalogue


def plugin_mix_paths() -> list[Path]:
    """The folders and files of mixes that installed plugins contribute (``ilt_bench_mixes`` hook)."""
    return get_registry().bench_mix_paths()


def list_mixes(mix_dir: str | Path | None = None, extra: Iterable[str | Path] = ()) -> list[str]:
    """Names of the mixes in ``mix_dir`` and ``extra`` (see :func:`mix_catalogue`) in report order."""
    names = list(mix_catalogue(mix_dir, extra))
    known = [n for n in DEFAULT_ORDER if n in names]
    return known + [n for n in names if n not in known]


def resolve_mixes(
    selection: str | None, mix_dir: str | Path | None = None, extra: Iterable[str | Path] | None = None
) -> list[Mix]:
    """``--mixes``: comma-separated names or YAML paths; every mix when empty.

    Names are looked up in ``mix_dir`` (``--mix-dir``), then in ``extra``: the plugins' mixes
    (:func:`plugin_mix_paths` when None).
    """
    folder = Path(mix_dir) if mix_dir is not None else default_mix_dir()
    extra = plugin_mix_paths() if extra is None else list(extra)
    catalogue = mix_catalogue(folder, extra)
    if selection:
        items = [s.strip() for s in selection.split(",") if s.strip()]
    else:
        if not folder.is_dir() and not catalogue:
            raise ILTError(f"--mix-dir {folder}: no such folder; expected benchmarks/mixes with *.yaml mixes")
        items = list_mixes(folder, extra)
    if not items:
        raise ILTError(f"--mixes: no mixes given and none in {folder}")
    mixes = []
    for item in items:
        candidate = Path(item)
        if item.endswith((".yaml", ".yml")) or candidate.is_file():
            path = candidate
        elif item in catalogue:
            path = catalogue[item]
        else:
            available = ", ".join(list_mixes(folder, extra)) or "none"
            raise ILTError(f"--mixes: {item!r} is not a mix in {folder} or a plugin's mixes; available: {available}")
        mixes.append(load_mix(path))
    names = [m.name for m in mixes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ILTError(f"--mixes: two mixes share the name {duplicates[0]!r}; give each file its own `name:`")
    return mixes
