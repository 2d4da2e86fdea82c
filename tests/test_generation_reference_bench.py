"""``benchmarks/bench_generation.py --reference``: the reference setup's generation step, split into its parts.

A smoke run in a subprocess, as a user runs it (timings are never asserted): the parts, the whole step, what they
leave unexplained, and each part's matrix products timed alone must be finite and consistent with each other.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_reference_parts_and_their_product_floors(tmp_path):
    out = tmp_path / "gen.json"
    argv = ["--reference", "noimg", "--parts", "--new-units", "1", "--repeats", "1", "--unit-bytes", "4"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_generation.py"), *argv, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["preset"] == "reference-noimg"
    # the reference protocol's batch and prompt length unless given
    assert {(r["context"], r["batch"]) for r in data["rows"]} == {(16, 4)}
    (part,) = data["parts"]
    for name in ("encode_new_units", "decode_unit_bytes", "latent_cached_step"):
        assert math.isfinite(part[name]) and part[name] > 0
        assert math.isfinite(part[f"{name}_products_ms"]) and part[f"{name}_products_ms"] > 0
    explained = part["encode_new_units"] + part["decode_unit_bytes"] + part["latent_cached_step"]
    assert math.isclose(part["unexplained_overhead"], part["whole_cached_step"] - explained)
