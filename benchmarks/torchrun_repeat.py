"""Start the two-rank ``ilt train`` of the torchrun tests many times and count how each run ended.

    python benchmarks/torchrun_repeat.py --runs 80

A check of reliability, not speed: ``tests/test_training.py::train_two_ranks`` starts a run once more when a rank
aborts with "terminate called without an active exception" (an abort at interpreter shutdown, seen about 1 in 60
runs under load before ``ilt train`` destroyed its process group). This starts the same 2-process gloo training
(micro spec, 6 steps, the tests' corpus and arguments) ``--runs`` times with no rerun and prints one line a run and
the counts of clean runs, such aborts and other failures (the last lines of stderr of each other failure).
Run it with other work on the machine to reproduce the load under which the abort showed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ABORT = "terminate called without an active exception"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="how many 2-rank runs to start, one after another")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "tests")]
    from test_training import base_args, hebrew_sentences, micro_spec  # the tests' own corpus and arguments

    aborts = failures = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="torchrun-repeat-") as tmp:
        root = Path(tmp)
        spec = root / "micro.yaml"
        spec.write_text(yaml.safe_dump(micro_spec(), allow_unicode=True, sort_keys=False), encoding="utf-8")
        (root / "train.txt").write_text("\n".join(hebrew_sentences(36)) + "\n", encoding="utf-8")
        (root / "validation.txt").write_text("\n".join(hebrew_sentences(8, offset=36)) + "\n", encoding="utf-8")
        corpus = {"spec": spec, "train": root / "train.txt", "validation": root / "validation.txt", "root": root}
        for i in range(args.runs):
            extra = ("--max_steps", "6", "--save_strategy", "no", "--eval_strategy", "no")
            argv = base_args(corpus, root / "out", *extra, "--per_device_train_batch_size", "2")
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
            command += ["-m", "ilt_core.cli", "train", *argv]
            start = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0 and ABORT in done.stderr:
                aborts += 1
            elif done.returncode != 0:
                failures += 1
                print(done.stderr[-1500:])
            took = time.perf_counter() - start
            print(f"run {i + 1}: exit {done.returncode}, {took:.1f} s; aborts {aborts}, other failures {failures}")
    print(
        f"runs {args.runs}: clean {args.runs - aborts - failures}, aborts ({ABORT!r}) {aborts}, other failures {failures}"
    )
    return 0 if aborts == failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
