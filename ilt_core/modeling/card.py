"""The model card (``README.md``) of a saved ILT model: what it is made of, from where, under which licenses.

Written from the model's :class:`~ilt_core.modeling.config.ILTConfig` alone: the spec as the user gave it (each
component, its source and whether its weights came from there), the licenses of the plugin distributions that
build each component and of the font packages the renderer draws with, the renderer's cache key, the training
data and bits-per-byte when the trainer recorded them, and the parameter counts.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from typing import Any

import yaml

ROLES = ("renderer", "image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder")
SOURCE_KEYS = ("name_or_path", "model_name", "gguf_file", "checkpoint_path")


def distribution_license(name: str) -> str:
    """The license an installed distribution declares (``License-Expression``, else ``License``), or ``?``."""
    try:
        meta = importlib.metadata.metadata(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"
    value = meta.get("License-Expression") or meta.get("License") or ""
    if not value or len(value) > 60:  # some wheels paste the whole license text here
        classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if "License" in c]
        value = classifiers[0] if classifiers else (value.splitlines()[0][:60] if value else "?")
    return value


def source_licenses(spec: dict[str, Any]) -> dict[str, str]:
    """By role: the ``license:`` in the YAML header of ``README.md`` in a pretrained block's local source folder."""
    found: dict[str, str] = {}
    for role in ROLES:
        block = spec.get(role)
        if not isinstance(block, dict) or not block.get("pretrained"):
            continue
        folder = block.get("name_or_path")
        readme = os.path.join(str(folder), "README.md") if folder else ""
        if not readme or not os.path.isfile(readme):
            continue
        try:
            with open(readme, encoding="utf-8") as handle:
                text = handle.read()
            header = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
        except (OSError, UnicodeDecodeError, IndexError, yaml.YAMLError):
            continue
        if isinstance(header, dict) and header.get("license"):
            found[role] = str(header["license"])
    return found


def _plugin_distribution(address: str) -> str:
    plugin = address.split(":", 1)[0]
    for ep in importlib.metadata.entry_points(group="ilt"):
        if ep.name == plugin and ep.dist is not None:
            return ep.dist.name
    return "?"


def _fonts(key: Any) -> list[tuple[str, str, str]]:
    """``(distribution, version, file)`` of every font a renderer key names (freetype: one tuple per font)."""
    found: list[tuple[str, str, str]] = []
    if isinstance(key, list):
        if len(key) == 4 and all(isinstance(v, str) for v in key) and key[2].lower().endswith((".ttf", ".otf")):
            return [(key[0], key[1], key[2])]
        for item in key:
            found += _fonts(item)
    return found


def model_card(config: Any, parameter_counts: dict[str, int]) -> str:
    """The Markdown model card (with a YAML header the hub reads) of a model of ``config``."""
    source = config.source_spec or config.spec or {}
    spec = config.spec or {}
    lines = [
        "---",
        "library_name: ilt",
        "tags: [ilt, image-latent-transformer, text-generation]",
        "---",
        "",
        f"# ILT model `{spec.get('name', 'custom')}`",
        "",
        spec.get("description") or "An Image Latent Transformer: reads text as words, seen as images and as bytes.",
        "",
        "Load it with `ILTModel.from_pretrained(path_or_repo_id)` (or `AutoModel` after `import ilt_core`), then "
        '`model.generate(["a prompt "])`; `ilt eval --model PATH --file FILE` gives bits-per-byte.',
        "",
        "## Components",
        "",
        "| role | component | source (license) | weights | plugin (license) |",
        "|---|---|---|---|---|",
    ]
    for role in ROLES:
        block = source.get(role)
        if not isinstance(block, dict):
            lines.append(f"| {role} | off | | | |")
            continue
        origin = next((str(block[k]) for k in SOURCE_KEYS if block.get(k)), "inline config")
        if role in (config.source_licenses or {}):
            origin += f" ({config.source_licenses[role]})"
        weights = "pretrained from the source, then trained" if block.get("pretrained") else "random init"
        if role == "renderer":
            weights = "no weights"
        dist = _plugin_distribution(block["component"])
        lines.append(
            f"| {role} | `{block['component']}` | {origin} | {weights} | {dist} ({distribution_license(dist)}) |"
        )
    lines += ["", "Backbones keep the licenses of their sources: read each source's own model card.", ""]
    fonts = _fonts(config.renderer_key)
    if fonts:
        lines += ["## Fonts", "", "| package | version | file | license |", "|---|---|---|---|"]
        lines += [f"| {d} | {v} | {f} | {distribution_license(d)} |" for d, v, f in fonts]
        lines.append("")
    if config.renderer_key is not None:
        lines += [
            "## Renderer cache key",
            "",
            "Word images depend on these settings, fonts and library versions; loading with a renderer whose key "
            "differs warns (its pixels drift from training's).",
            "",
            "```json",
            json.dumps(config.renderer_key, ensure_ascii=False),
            "```",
            "",
        ]
    training = config.training or {}
    lines += ["## Training", ""]
    if training:
        for key in sorted(training):
            lines.append(f"- {key}: {training[key]}")
    else:
        lines.append("- not recorded (built with `ilt build` or saved before training)")
    bpb = training.get("eval_bits_per_byte")
    lines += ["", f"Bits-per-byte: {bpb:.4f}" if isinstance(bpb, (int, float)) else "Bits-per-byte: not measured", ""]
    lines += ["## Parameters (embedding tables excluded)", "", "| part | parameters |", "|---|---|"]
    lines += [f"| {part} | {n:,} |" for part, n in parameter_counts.items()]
    lines += [f"| total | {sum(parameter_counts.values()):,} |", ""]
    lines += ["## Spec", "", "The spec as given (config.json holds it resolved: every backbone inline).", ""]
    lines += ["```json", json.dumps(source, indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(lines)


__all__ = ["distribution_license", "model_card", "source_licenses"]
