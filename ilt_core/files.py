"""Small file helpers shared by the core and the plugins: a file's SHA-256."""

from __future__ import annotations

import hashlib
import os

#: Bytes read at a time: large files (corpora, fonts, archives) are hashed without being held whole.
CHUNK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of the file at ``path``, read in chunks of :data:`CHUNK_BYTES`."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
