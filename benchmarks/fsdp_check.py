"""FSDP through Trainer on GPUs: the same loss curve as without it, a checkpoint `ilt eval` loads, an exact resume,
and the per-component learning rates intact. Needs CUDA (accelerate turns FSDP on only for accelerator processes;
on CPUs `ilt train --fsdp` is refused in one line, which the CPU run of this script checks instead).

    python benchmarks/fsdp_check.py                  # one process per visible GPU (at least one)
    DEVICE_CHECK_FSDP=1 bash benchmarks/device_check.sh   # on the lent GPU machine (see device_check.sh)

Three runs of the micro preset, 8 steps at a constant learning rate, checkpoints every 4: A without FSDP, B with
``--fsdp "full_shard auto_wrap"`` (FSDP2, the backbones' layers wrapped, full state dicts saved), C resuming B from
``checkpoint-4``. Prints one line per check and exits 1 if one fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = ["הילד", "המורה", "השכנה", "הרופא", "הנהג", "הסטודנטית"]
VERBS = ["קורא", "כותב", "מחפש", "רואה", "אוהב", "שומע"]
PLACES = ["בבית", "בגן הציבורי", "בספרייה", "בתחנה המרכזית", "ליד הים", "בעבודה"]
FSDP_CONFIG = {
    "version": 2,
    "transformer_layer_cls_to_wrap": ["GPTNeoXLayer", "LlamaDecoderLayer", "BertLayer", "ViTLayer"],
    "state_dict_type": "FULL_STATE_DICT",
}


def sentences(n: int, offset: int = 0) -> list[str]:
    return [
        f"{SUBJECTS[i % 6]} {VERBS[(i // 6) % 6]} {PLACES[(i * 7 + 1) % 6]} היום ({i})."
        for i in range(offset, offset + n)
    ]


def ilt(args: list[str], processes: int = 0) -> subprocess.CompletedProcess:
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*(head if processes else [sys.executable]), "-m", "ilt_core.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)


def losses(folder: Path) -> dict[int, float]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def group_rates(checkpoint: Path) -> list[float]:
    import torch

    state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=False)
    return sorted({round(float(g["lr"]), 12) for g in state["param_groups"]})


def main() -> int:
    import torch

    with tempfile.TemporaryDirectory(prefix="ilt-fsdp-check-") as tmp:
        work = Path(tmp)
        (work / "train.txt").write_text("\n".join(sentences(96)) + "\n", encoding="utf-8")
        (work / "validation.txt").write_text("\n".join(sentences(16, offset=96)) + "\n", encoding="utf-8")
        (work / "fsdp.json").write_text(json.dumps(FSDP_CONFIG), encoding="utf-8")
        common = ["train", "--model_spec", "micro", "--train_file", str(work / "train.txt")]
        common += ["--validation_file", str(work / "validation.txt"), "--block_size", "24"]
        common += ["--per_device_train_batch_size", "4", "--learning_rate", "2e-3", "--lr_scheduler_type", "constant"]
        common += ["--max_steps", "8", "--save_steps", "4", "--logging_steps", "1", "--eval_strategy", "no"]
        common += ["--report_to", "none", "--disable_tqdm", "true", "--seed", "0", "--cache_dir", str(work / "cache")]
        fsdp = ["--fsdp", "full_shard auto_wrap", "--fsdp_config", str(work / "fsdp.json")]
        if not torch.cuda.is_available():
            done = ilt([*common, "--output_dir", str(work / "b"), *fsdp])
            lines = done.stderr.strip().splitlines()
            ok = done.returncode == 2 and lines and "--fsdp: sharded training needs GPUs" in lines[-1]
            print(f"{'PASS' if ok else 'FAIL'} no CUDA: ilt train --fsdp refused in one line (exit {done.returncode})")
            return 0 if ok else 1
        gpus = torch.cuda.device_count()
        print(f"{gpus} GPU(s): {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
        failed = 0

        def check(ok: bool, what: str) -> None:
            nonlocal failed
            failed += not ok
            print(f"{'PASS' if ok else 'FAIL'} {what}", flush=True)

        runs = {"a": [], "b": fsdp}
        for name, extra in runs.items():
            done = ilt([*common, "--output_dir", str(work / name), *extra], processes=gpus)
            check(done.returncode == 0, f"run {name} ({'FSDP' if extra else 'no FSDP'}): exit {done.returncode}")
            if done.returncode:
                print(done.stderr[-4000:])
                return 1
        a, b = losses(work / "a"), losses(work / "b")
        worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in a)
        check(
            sorted(a) == sorted(b) == list(range(1, 9)) and worst < 1e-3, f"loss curves: worst relative gap {worst:.2e}"
        )
        check(group_rates(work / "b" / "checkpoint-4") == group_rates(work / "a" / "checkpoint-4"),
              f"per-component learning rates: {group_rates(work / 'b' / 'checkpoint-4')}")  # fmt: skip
        evals = {}
        for name in runs:
            done = ilt(["eval", "--model", str(work / name / "checkpoint-4"), "--file", str(work / "validation.txt")])
            check(done.returncode == 0, f"ilt eval loads {name}/checkpoint-4: exit {done.returncode}")
            evals[name] = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
        print(f"     eval: {evals}")
        done = ilt(
            [
                *common,
                "--output_dir",
                str(work / "b"),
                *fsdp,
                "--resume_from_checkpoint",
                str(work / "b" / "checkpoint-4"),
            ],
            processes=gpus,
        )
        check(done.returncode == 0, f"resume of b from checkpoint-4: exit {done.returncode}")
        if done.returncode == 0:
            c = losses(work / "b")
            gap = max(abs(c[s] - b[s]) for s in range(5, 9))
            check(gap == 0.0, f"resumed losses of steps 5-8 equal the unbroken run's (largest gap {gap:.2e})")
        else:
            print(done.stderr[-4000:])
        print(f"fsdp_check: {failed} check(s) failed")
        return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
