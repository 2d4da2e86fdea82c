"""The ``ilt`` command line.

    ilt plugins                       what is installed, what is missing and how to get it
    ilt presets                       preset names and parameter counts
    ilt build SPEC_OR_PRESET [--save DIR]
    ilt segment TEXT                  the units the model sees, as a JSON list
    ilt render TEXT -o out.png [--renderer freetype:default]
    ilt eval --model DIR --file FILE  bits-per-byte of a text file
    ilt generate --model DIR --prompt TEXT [--stream] ...
    ilt data list | ilt data prepare NAME
    ilt train --model_spec tiny --train_file ... (run_clm.py-style arguments)
    ilt bench [--mixes ...]           compare component mixes and baselines

A mistake in the input prints one line (``ilt: error: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ilt_core.cli.generate import NO_FAST_PATHS_HELP, add_generate_parser
from ilt_core.errors import ILTError, one_line_parser_class, run_user_command
from ilt_core.evaluation import bits_per_byte
from ilt_core.modeling.model import ILTModel, build_model
from ilt_core.modeling.parameters import component_parameter_counts
from ilt_core.modeling.products import set_openblas_threads
from ilt_core.plugins.registry import BuildContext, get_registry
from ilt_core.specs.spec import list_presets, load_spec
from ilt_core.text.lines import read_text_lines
from ilt_core.text.segmentation import segment
from ilt_core.training.run import add_train_parser


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}m" if n >= 1e5 else f"{n / 1e6:.2f}m"


def cmd_plugins(args: argparse.Namespace) -> int:
    """``ilt plugins [NAME] [--verbose]``: every plugin and component; imports each available factory.

    Exit status 1 when a plugin failed to load or a factory does not import (the line says why).
    """
    registry = get_registry()
    if not registry.plugins:
        print("no ILT plugins installed: pip install ilt-hf ilt-freetype (or `make install` in the repository)")
        return 0
    wanted = args.name
    if wanted and wanted not in registry.plugins and wanted not in [c.address for c in registry.components()]:
        known = ", ".join([*sorted(registry.plugins), *(c.address for c in registry.components())])
        raise ILTError(f"ilt plugins {wanted}: no such plugin or component; known: {known}")
    verbose = args.verbose or bool(wanted)
    broken = 0
    for name, info in sorted(registry.plugins.items()):
        chosen = [c for c in info.components if not wanted or wanted in (name, c.address)]
        if wanted and not chosen and wanted != name:
            continue
        print(f"{name}  ({info.distribution} {info.version})")
        if info.error:
            broken += 1
            print(f"  ! failed to load: {info.error}")
        for c in chosen:
            problem = "" if c.missing else c.check()
            broken += bool(problem)
            if c.missing:
                status = f"unavailable: missing {', '.join(c.missing)}; fix: {c.install}"
            else:
                status = f"BROKEN: {problem}" if problem else "ok"
            print(f"  {c.address:<24} {'/'.join(c.roles):<48} {status}")
            if verbose:
                print(f"      {c.description}")
                if not c.missing and not problem:
                    print(*(f"      - {line}" for line in c.arguments()), sep="\n")
                    if wanted:
                        print(*(f"      {line}".rstrip() for line in c.documentation().splitlines()[1:]), sep="\n")
    if verbose and not wanted:
        _print_fast_paths(registry)
    return 1 if broken else 0


def _print_fast_paths(registry: Any) -> None:
    """Which fast paths are on with the installed packages, and why the others are not."""
    import importlib.metadata

    from ilt_core.modeling.products import fast_path as products_path
    from ilt_core.training.rows import pread_rows_path
    from ilt_core.training.trainer import trainer_overrides_path

    versions = []
    for dist in ("torch", "transformers", "datasets", "accelerate", "numpy"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} not installed")
    print(f"fast paths with {', '.join(versions)}:")
    for path in [products_path(), pread_rows_path(), trainer_overrides_path(), *registry.fast_paths()]:
        print(f"  {'on ' if path.active else 'OFF'}  {path.name}: {path.detail}")


def cmd_presets(args: argparse.Namespace) -> int:
    roles = ("bytes_encoder", "image_encoder", "latent_transformer", "bytes_decoder")
    print(f"{'preset':<10}" + "".join(f"{r:>20}" for r in roles) + f"{'total':>12}")
    for name in list_presets():
        counts = component_parameter_counts(load_spec(name))
        cells = "".join(f"{_millions(counts[r]) if r in counts else '-':>20}" for r in roles)
        print(f"{name:<10}{cells}{_millions(sum(counts.values())):>12}")
    print("(parameters without embedding tables, counted on the meta device)")
    return 0


def _print_summary(model) -> None:
    spec = model.spec
    print(f"model {spec.name}: {spec.description}".rstrip(": "))
    for role in ("renderer", "image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder"):
        block = spec.block(role)
        print(f"  {role:<20} {block.component if block else 'off'}")
    counts = model.parameter_counts()
    for part, n in counts.items():
        print(f"  params {part:<20} {_millions(n):>10}")
    print(f"  params {'total':<20} {_millions(sum(counts.values())):>10}  (embedding tables excluded)")


def cmd_build(args: argparse.Namespace) -> int:
    model = build_model(load_spec(args.spec, args.set), seed=args.seed)
    _print_summary(model)
    if args.save:
        path = model.save_pretrained(args.save)
        print(f"saved {path}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    print(json.dumps(segment(args.text, args.max_unit_bytes), ensure_ascii=False))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    renderer = get_registry().build(
        args.renderer,
        "renderer",
        BuildContext(image_height=args.height, width_multiple=args.patch),
        {},
        where="--renderer",
    )
    images = [renderer.render(u) for u in segment(args.text)] or [renderer.render("")]
    gap = np.full((args.height, 4), 160, dtype=np.uint8)  # a gray bar between units
    rows, row, width = [], [], 0
    for img in images:
        if row and width + img.shape[1] > args.max_width:
            rows.append(np.concatenate(row, axis=1))
            row, width = [], 0
        row += [img, gap]
        width += img.shape[1] + gap.shape[1]
    rows.append(np.concatenate(row, axis=1))
    full = max(r.shape[1] for r in rows)
    canvas = np.concatenate([np.pad(r, ((0, 4), (0, full - r.shape[1])), constant_values=255) for r in rows], axis=0)
    Image.fromarray(canvas).save(args.output)
    print(f"wrote {args.output}: {len(images)} units, {canvas.shape[1]}x{canvas.shape[0]} px")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    path = Path(args.file)
    read = read_text_lines(path, "--file", replace=args.replace_invalid, limit=args.max_lines)
    if read.replaced:
        lines = ", ".join(map(str, read.replaced_lines[:5])) + (" ..." if len(read.replaced_lines) > 5 else "")
        print(
            f"ilt eval: {path}: {read.replaced} invalid byte(s) or NUL(s) read as U+FFFD (lines {lines})",
            file=sys.stderr,
        )
    texts = read.texts
    if not texts:
        raise ILTError(f"--file {path}: no text in it (every line is blank)")
    model = ILTModel.from_pretrained(args.model)
    model.set_fast_paths(not args.no_fast_paths)
    result = bits_per_byte(model, texts, batch_size=args.batch_size)
    print(json.dumps({"file": str(path), **result.__dict__}, indent=2))
    return 0


def convert_checkpoint(old: str | Path, new: str | Path) -> Path:
    """``ilt convert OLD NEW``: load a folder of any format and write it in the current one; returns NEW."""
    model = ILTModel.from_pretrained(old)
    model.save_pretrained(new)
    return Path(new)


def cmd_convert(args: argparse.Namespace) -> int:
    print(f"wrote {convert_checkpoint(args.old, args.new)} (config.json, weights, model card)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = one_line_parser_class()(prog="ilt", description="Image Latent Transformer: language models over words.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list installed plugins and their components; check every factory imports")
    p.add_argument("name", nargs="?", help="one plugin or component (plugin:name): show its factories' arguments")
    p.add_argument("--verbose", "-v", action="store_true", help="show every factory's arguments")
    p.set_defaults(func=cmd_plugins)
    sub.add_parser("presets", help="list presets and their parameter counts").set_defaults(func=cmd_presets)

    p = sub.add_parser("build", help="build a model offline from a preset or YAML spec")
    p.add_argument("spec", help="preset name (tiny, small, medium) or path to a YAML spec")
    p.add_argument("--save", help="write the model as a checkpoint folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="PATH=VALUE",
        help="override spec fields, e.g. --set latent_transformer.config.num_hidden_layers=4 (values are YAML)",
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("segment", help="print the units of TEXT as a JSON list")
    p.add_argument("text")
    p.add_argument("--max-unit-bytes", type=int, default=32)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("render", help="render the units of TEXT into one PNG")
    p.add_argument("text")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--renderer", default="freetype:default", help="freetype:default or cairo:default")
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--patch", type=int, default=16, help="image widths are rounded up to a multiple of this")
    p.add_argument("--max-width", type=int, default=1024, help="wrap rows at this width")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("eval", help="bits-per-byte of a text file (one text per line)")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--file", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-lines", type=int, default=0)
    p.add_argument(
        "--replace-invalid",
        action="store_true",
        help="read invalid UTF-8 and NUL characters as U+FFFD and print how many (default: one-line error naming the line)",
    )
    p.add_argument("--no-fast-paths", action="store_true", help=NO_FAST_PATHS_HELP)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("convert", help="rewrite a checkpoint folder of an older format in the current one")
    p.add_argument("old", help="checkpoint folder (e.g. spec.yaml + model.safetensors)")
    p.add_argument("new", help="folder to write (config.json, weights, model card)")
    p.set_defaults(func=cmd_convert)

    add_generate_parser(sub)
    add_train_parser(sub)
    # tools (data recipes, the benchmark harness, ...) add their commands through the plugin hook
    get_registry().add_cli_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``ilt`` command. Without ``argv`` this process is the command (the console script, ``python -m
    ilt_core.cli``), and it sets numpy's OpenBLAS to one thread first (the linear layers' products split over
    torch's threads themselves: :func:`ilt_core.modeling.products.set_openblas_threads`); with ``argv`` (a call from
    Python) it changes no process-wide setting."""
    if argv is None:
        set_openblas_threads(1)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "render" and args.renderer in ("freetype", "cairo"):
        args.renderer += ":default"
    return run_user_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
