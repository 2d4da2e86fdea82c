#!/usr/bin/env bash
# The A/B/A/B of 2026-11-30 (figures in benchmarks/README.md, "Generation at the reference protocol"): per round
# the reference (generation only), the project before (a worktree of commit 8a21e85) and after (this checkout),
# both against that round's reference JSON. Run from the repository root:
#   git worktree add /tmp/ilt-before 8a21e85
#   bash benchmarks/results/reference/generation-2026-11-30/ab_rounds.sh TEXT REF_RUN_SH OUT_DIR [/tmp/ilt-before]
set -u
T=$(realpath "$1"); RUN=$2; O=$3; BEFORE=${4:-/tmp/ilt-before}; HERE=$(pwd); mkdir -p "$O"
for r in 1 2; do
  echo "round $r reference $(date -u +%T)"
  "$RUN" "$T" "$O/ref_$r.json" --only head/generate > "$O/ref_$r.log" 2>&1
  echo "round $r before $(date -u +%T)"
  (cd "$BEFORE" && PYTHONPATH="$BEFORE:$BEFORE/ilt_plugins/hf" OMP_WAIT_POLICY=PASSIVE "$HERE/.venv/bin/python" \
    benchmarks/bench_reference.py --text "$T" --reference "$O/ref_$r.json" --only generate-img generate-noimg \
    --out "$O/before_$r.json") 2>&1 | grep generate_
  echo "round $r after $(date -u +%T)"
  OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_reference.py --text "$T" --reference "$O/ref_$r.json" \
    --only generate-img generate-noimg --out "$O/after_$r.json" 2>&1 | grep generate_
done
