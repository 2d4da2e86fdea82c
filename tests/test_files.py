"""``ilt_core.files.sha256_file``: the one file-hash helper (data recipes, fonts, the benchmark harness)."""

from __future__ import annotations

import hashlib

from ilt_core.files import CHUNK_BYTES, sha256_file


def test_sha256_file_hashes_every_chunk(tmp_path):
    data = bytes(range(256)) * (CHUNK_BYTES // 256) + b"tail after the first chunk"
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert len(data) > CHUNK_BYTES  # the file spans two chunks: the second must count too
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == sha256_file(path)
    path.write_bytes(data[:-1] + b"!")
    assert sha256_file(path) != hashlib.sha256(data).hexdigest()
