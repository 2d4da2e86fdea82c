"""YAML component specs, validated with pydantic.

A spec has one block per role, each naming its ``component`` (``plugin:name``) with the
component's own arguments beside it, torchtune style, plus model-level settings::

    renderer: {component: freetype:default, font_size: 20}
    image_encoder: false            # turns the image modality off
    bytes_encoder: {component: hf:masked-lm, config: {...}}
    latent_transformer: {component: hf:causal-lm, config: {...}}
    bytes_decoder: {component: hf:causal-lm, config: {...}}
    max_unit_bytes: 32

Every mistake becomes one :class:`SpecError` line naming the file, the field path, the value and
what was expected.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ilt_core.errors import ILTError, SpecError
from ilt_core.plugins.protocols import ROLES

PRESET_DIR = Path(__file__).parent / "presets"

logger = logging.getLogger(__name__)

#: The roles whose layers ``activation_checkpointing`` may recompute in the backward pass (the neural ones).
CHECKPOINTING_ROLES: tuple[str, ...] = tuple(r for r in ROLES if r != "renderer")


def checkpointing_roles(value: Any) -> tuple[str, ...]:
    """The roles an ``activation_checkpointing`` value names: true (or None) every neural role, false none, one role
    name or a list of them (checked; a ``ValueError`` names the bad one and the roles allowed)."""
    if value is True or value is None:
        return CHECKPOINTING_ROLES
    if value is False:
        return ()
    allowed = ", ".join(CHECKPOINTING_ROLES)
    if isinstance(value, str) and value in CHECKPOINTING_ROLES:  # one role: `--set activation_checkpointing=ROLE`
        value = [value]
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError(f"expected true, false or a list of roles out of: {allowed}")
    unknown = [r for r in value if r not in CHECKPOINTING_ROLES]
    if unknown:
        raise ValueError(f"unknown role {unknown[0]!r}; expected true, false or a list of roles out of: {allowed}")
    return tuple(r for r in CHECKPOINTING_ROLES if r in value)


class ComponentSpec(BaseModel):
    """One role's block: ``component`` plus the component's own keyword arguments."""

    model_config = ConfigDict(extra="allow")

    component: str = Field(pattern=r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$")

    @property
    def args(self) -> dict[str, Any]:
        """The keyword arguments for the component's factory (everything but ``component``)."""
        return dict(self.model_extra or {})


class ModelSpec(BaseModel):
    """A whole ILT model: five role blocks and the model-level settings."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    description: str = ""
    renderer: ComponentSpec | Literal[False] | None = None
    image_encoder: ComponentSpec | Literal[False]
    bytes_encoder: ComponentSpec | Literal[False]
    latent_transformer: ComponentSpec
    bytes_decoder: ComponentSpec

    max_unit_bytes: int = Field(32, ge=4, le=1024, description="longest unit in UTF-8 bytes; longer words are split")
    image_height: int = Field(32, ge=8, le=512, description="height of rendered word images in pixels")
    max_image_width: int = Field(512, ge=16, le=8192, description="widest word image in pixels (cropped beyond)")
    modality_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="chance to drop one modality of a unit in training"
    )
    labels: Literal["unit", "bytes"] = Field(
        "unit", description="'unit': the next unit's bytes; 'bytes': the next label_bytes bytes of text"
    )
    label_bytes: int = Field(32, ge=1, le=4096, description="how many bytes each latent predicts when labels: bytes")
    activation_checkpointing: bool | list[str] = Field(
        False,
        description="recompute components' layers in the backward pass: far less memory, one more forward pass's "
        "time; true: every role, false or []: none, or a list of roles, e.g. [image_encoder]",
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_run_settings(cls, data: Any) -> Any:
        """Settings older specs held that are now a setting of a built model, not of the model (``config.json``)."""
        if isinstance(data, dict) and "cpu_products" in data:
            data = {k: v for k, v in data.items() if k != "cpu_products"}
            logger.warning(
                "spec field cpu_products is ignored: it is no longer a model property; the products through numpy "
                "are one of the fast paths, on by default (ILTModel.set_fast_paths(False), ilt train --no_fast_paths)"
            )
        return data

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _check_checkpointing(cls, value: Any) -> Any:
        return value if isinstance(value, bool) else list(checkpointing_roles(value))

    @property
    def checkpointed_roles(self) -> tuple[str, ...]:
        """The roles ``activation_checkpointing`` names (every neural role for true, none for false)."""
        return checkpointing_roles(self.activation_checkpointing)

    @model_validator(mode="after")
    def _check_modalities(self) -> ModelSpec:
        if self.image_encoder is False and self.bytes_encoder is False:
            raise ValueError("image_encoder and bytes_encoder are both false: at least one modality must stay on")
        if self.image_encoder is not False and not self.renderer:
            raise ValueError(
                "image_encoder is set but renderer is missing: add a renderer block (e.g. component: freetype:default)"
            )
        return self

    def block(self, role: str) -> ComponentSpec | None:
        """The role's block, or None when that role is switched off."""
        value = getattr(self, role)
        return value or None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [
            str(p) for p in err["loc"] if not (isinstance(p, str) and p in ("ComponentSpec", "bool", "literal[False]"))
        ]
        # union branches repeat the same field: keep the first clear message per field
        field_path = ".".join(loc) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = f"unknown field; expected one of: {', '.join(ModelSpec.model_fields)}"
        elif err["type"] == "missing":
            message = "required field is missing"
        value = err.get("input")
        shown = "" if err["type"] in ("missing",) or isinstance(value, dict) else f" (got {value!r})"
        line = f"{field_path}: {message}{shown}"
        if line not in lines:
            lines.append(line)
    # for a union that failed every branch, the component-block message is the helpful one
    lines = _prefer_block_errors(lines)
    return f"{source}: " + "; ".join(lines)


def _prefer_block_errors(lines: list[str]) -> list[str]:
    kept = []
    for line in lines:
        head = line.split(":", 1)[0]
        if "Input should be False" in line and any(
            o.startswith(head + ".") or (o.startswith(head + ":") and o != line) for o in lines
        ):
            continue
        kept.append(line)
    return kept


#: Fields of a component block (at any depth: ``config``, ``vision_cfg``) that count sizes, layers, heads or
#: positions: a value there must be a positive integer (or a list of them), None where the backbone derives it.
SIZE_FIELDS = frozenset(
    """hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads head_dim
    n_embd n_layer n_head n_inner n_positions max_position_embeddings d_model d_ff d_kv num_layers num_heads
    encoder_layers decoder_layers encoder_attention_heads decoder_attention_heads encoder_ffn_dim decoder_ffn_dim
    embed_dim depth depths layers width heads head_width patch_size image_size hidden_dim ffn_dim""".split()
)


def _check_sizes(value: Any, path: str, source: str) -> None:
    """One :class:`SpecError` line for the first size, layer or head count below 1 in a block (see SIZE_FIELDS)."""
    if isinstance(value, dict):
        for key, child in value.items():
            here = f"{path}.{key}"
            if key in SIZE_FIELDS and child is not None:
                items = child if isinstance(child, list) else [child]
                if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
                    expected = "a list of positive integers" if isinstance(child, list) else "a positive integer"
                    raise SpecError(f"{source}: {here}: expected {expected}, got {child!r}")
            else:
                _check_sizes(child, here, source)


def parse_spec(data: Any, source: str = "<spec>") -> ModelSpec:
    """Validate an already-loaded YAML mapping; errors name ``source`` and the field path.

    A benchmark mix (``benchmarks/mixes/*.yaml``) is a spec too: its ``bench`` block is set aside; a baseline mix
    (``baseline: bytes``) is not an ILT model and is refused. A size, layer or head count below 1 in a role's block
    (``latent_transformer.config.num_hidden_layers``) is refused with the field named.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with the blocks {', '.join(ROLES)}, got {type(data).__name__}")
    if "baseline" in data:
        raise SpecError(
            f"{source}: baseline: {data['baseline']!r} makes this a benchmark baseline, not an ILT spec "
            "(`ilt bench --mixes` trains it)"
        )
    data = {k: v for k, v in data.items() if k != "bench"}  # a benchmark mix's own settings
    for role in ROLES:
        value = data.get(role)
        if value is True:
            raise SpecError(f"{source}: {role}: expected a block with 'component: plugin:name' or false, got true")
        if isinstance(value, str):
            raise SpecError(
                f"{source}: {role}: expected a block like '{{component: {value}}}', got the string {value!r}"
            )
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_validation_error(source, exc)) from None
    for role in ROLES:
        block = spec.block(role)
        if block is not None:
            _check_sizes(block.args, role, source)
    return spec


def list_presets() -> list[str]:
    """Names of the presets that ship with the core (``tiny``, ``small``, ``medium``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def merge_spec(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: a role block naming a ``component`` replaces the base's block (its
    arguments belong to that component); any other mapping merges key by key, recursively."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        old = out.get(key)
        if key in ROLES and isinstance(value, dict) and "component" in value:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(old, dict):
            out[key] = _deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_spec_file(path: Path, source: str | None = None) -> Any:
    """The YAML in ``path``; a syntax or encoding error is one :class:`SpecError` line."""
    source = source or str(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}: YAML syntax error{where}: {problem}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _spec_path(spec: str | Path) -> Path:
    path = Path(spec)
    if not path.suffix and str(spec) in list_presets():
        return PRESET_DIR / f"{spec}.yaml"
    if not path.exists():
        raise SpecError(f"{spec}: no such spec file, and not a preset name (presets: {', '.join(list_presets())})")
    return path


def resolve_base(data: dict[str, Any], path: Path | None, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """``data`` with its ``base:`` (a preset name, or a YAML path relative to ``path``'s folder) merged under it.

    A base may have a base of its own; a file that includes itself is an error.
    """
    if "base" not in data:
        return data
    data = dict(data)
    base = data.pop("base")
    source = str(path) if path else "<spec>"
    if not isinstance(base, str):
        raise SpecError(f"{source}: base: expected a preset name or a YAML path, got {base!r}")
    if base in list_presets():
        target = PRESET_DIR / f"{base}.yaml"
    else:
        target = ((path.parent if path else Path.cwd()) / base).resolve()
        if not target.is_file():
            raise SpecError(f"{source}: base: {base!r} is neither a preset ({', '.join(list_presets())}) nor a file")
    if target.resolve() in seen:
        raise SpecError(f"{source}: base: {base!r} includes itself")
    parent = read_spec_file(target)
    if not isinstance(parent, dict):
        raise SpecError(f"{target}: expected a mapping (a spec), got {type(parent).__name__}")
    parent.pop("bench", None)  # a benchmark mix's own settings are not part of the spec it lends
    parent = resolve_base(parent, target, (*seen, target.resolve()))
    return merge_spec(parent, data)


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str = "--set") -> dict:
    """``data`` with command-line overrides ``dotted.path=VALUE`` applied (VALUE is read as YAML).

    ``latent_transformer.config.num_hidden_layers=4`` sets one field; ``image_encoder=false`` turns a
    block off. A path through a block that is off, or a malformed override, is one :class:`SpecError` line.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(
                f"{source} {item!r}: expected dotted.path=VALUE, e.g. latent_transformer.config.num_hidden_layers=4"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise SpecError(f"{source} {item!r}: the value {raw!r} is not valid YAML") from None
        parts = key.strip().split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                at = ".".join(parts[: i + 1])
                raise SpecError(f"{source} {item!r}: {at} is {child!r}, not a block; set {at}=... first")
            node = child
        node[parts[-1]] = value
    return out


def load_spec(spec: str | Path | dict | ModelSpec, overrides: list[str] | tuple[str, ...] = ()) -> ModelSpec:
    """A spec from a preset name, a YAML file path, a mapping, or a spec (returned as is).

    A file or mapping may start from another spec with ``base: NAME_OR_PATH`` (its blocks merged under
    this one's); ``overrides`` are ``dotted.path=VALUE`` strings (``--set``), validated like the file.
    """
    if isinstance(spec, ModelSpec):
        if not overrides:
            return spec
        spec = spec.to_dict()
    if isinstance(spec, dict):
        data, source, path = spec, "<spec>", None
    else:
        path = _spec_path(spec)
        source = str(spec)
        data = read_spec_file(path, source)
    if isinstance(data, dict):
        data = resolve_base(data, path, (path.resolve(),) if path else ())
        if overrides:
            data = apply_overrides(data, overrides)
            source = f"{source} with --set {' '.join(overrides)}"
    return parse_spec(data, source)


#: One-modality variants of a spec: the variant's name -> the encoder block it switches off.
VARIANTS = {"full": None, "image-only": "bytes_encoder", "bytes-only": "image_encoder"}


def spec_variant(spec: str | Path | dict | ModelSpec, variant: str = "full", **overrides: Any) -> dict[str, Any]:
    """A spec (preset name, file, mapping) as a plain mapping with one modality off and fields overridden.

    ``variant``: ``"full"``, ``"image-only"`` (no bytes encoder) or ``"bytes-only"`` (no image encoder).
    """
    if variant not in VARIANTS:
        raise SpecError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    data = load_spec(spec).to_dict()
    if VARIANTS[variant]:
        data[VARIANTS[variant]] = False
    data.update(overrides)
    return data


def check_components(spec: ModelSpec, registry: Any, source: str = "<spec>") -> None:
    """Check that every block names a component that exists for its role; raise one clear line."""
    for role in ROLES:
        block = spec.block(role)
        if block is None:
            continue
        try:
            registry.get(block.component, role, where=f"{source}: {role}.component")
        except ILTError as exc:
            raise SpecError(str(exc)) from None
