"""Text files of one text per line, read strictly: bad bytes are named by file and line, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ilt_core.errors import ILTError

BOM = b"\xef\xbb\xbf"
REPLACEMENT = "\ufffd"


@dataclass
class TextLines:
    """The non-blank lines of a file and what reading it found.

    ``replaced``: invalid UTF-8 sequences and NUL characters read as U+FFFD (only with ``replace=True``);
    ``replaced_lines``: 1-based numbers of the lines that held them; ``bom``: the file started with a
    UTF-8 byte-order mark, which is dropped (it is an encoding marker, not text).
    """

    texts: list[str] = field(default_factory=list)
    blank: int = 0
    replaced: int = 0
    replaced_lines: list[int] = field(default_factory=list)
    bom: bool = False


def read_text_lines(path: str | Path, flag: str = "--file", *, replace: bool = False, limit: int = 0) -> TextLines:
    """Read ``path`` as UTF-8, one text per ``\\n``-ended line (a ``\\r`` before it is dropped); blank lines skipped.

    A line that is not valid UTF-8 or holds a NUL character is an :class:`ILTError` naming ``flag``, the
    file, the line and the byte column, unless ``replace`` reads such bytes as U+FFFD and counts them.
    ``limit`` > 0 stops after that many texts.
    """
    path = Path(path)
    if not path.is_file():
        raise ILTError(f"{flag} {path}: no such file")
    data = path.read_bytes()
    out = TextLines(bom=data.startswith(BOM))
    if out.bom:
        data = data[len(BOM) :]
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()  # the newline that ends the last line opens no new one
    for number, raw in enumerate(parts, start=1):
        raw = raw.removesuffix(b"\r")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if not replace:
                raise ILTError(
                    f"{flag} {path}: line {number}, byte {exc.start + 1}: not valid UTF-8 ({exc.reason}, byte "
                    f"0x{raw[exc.start]:02x}); re-encode the file as UTF-8 or pass --replace-invalid"
                ) from None
            line = raw.decode("utf-8", errors="replace")
        if "\0" in line and not replace:
            column = raw.index(b"\0") + 1
            raise ILTError(
                f"{flag} {path}: line {number}, byte {column}: a NUL character (a binary file?); "
                f"expected UTF-8 text, one text per line (or pass --replace-invalid)"
            )
        line = line.replace("\0", REPLACEMENT)
        # what replacing added: U+FFFD the file did not already hold as text
        bad = line.count(REPLACEMENT) - raw.count(REPLACEMENT.encode("utf-8"))
        if bad:
            out.replaced += bad
            out.replaced_lines.append(number)
        if not line.strip():
            out.blank += 1
            continue
        out.texts.append(line)
        if limit and len(out.texts) >= limit:
            break
    return out
