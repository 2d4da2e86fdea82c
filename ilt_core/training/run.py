"""``ilt train``: language-model training in the manner of transformers' ``run_clm.py``, on ``Trainer``.

    ilt train --model_spec tiny --train_file train.txt --validation_file dev.txt \\
        --output_dir runs/tiny --max_steps 1000 --per_device_train_batch_size 8 --block_size 128
    ilt train --model_spec small --dataset_name HuggingFaceFW/fineweb-2 --dataset_config_name heb_Hebr \\
        --streaming --max_steps 100000 --dataloader_num_workers 4 --output_dir runs/small-he ...
    ilt train --model_name_or_path runs/tiny --data_recipe he-news ...       # continue from a checkpoint
    torchrun --nproc_per_node 2 -m ilt_core.cli.main train ...                    # DistributedDataParallel

The arguments are three groups parsed by ``HfArgumentParser`` (``ilt train --help`` lists them all):
:class:`ModelArguments`, :class:`DataTrainingArguments` (with the ILT-only options of
:class:`ILTArguments`) and transformers' own ``TrainingArguments``. As in run_clm.py a single ``.json`` or
``.yaml`` file of arguments may stand for the command line. ``docs/training.md`` says where ``ilt train``
differs from run_clm.py (units instead of tokens, texts never concatenated, packing, the data cache, streaming,
checkpoints, the ILT-only options, several processes).

:func:`run_training` checks the arguments and the data sources before it builds a model, prepares the data
(:mod:`ilt_core.training.prepare`, or :mod:`ilt_core.training.streaming` with ``--streaming``), builds or
loads the model, runs :class:`~ilt_core.training.trainer.ILTTrainer`, and at the end has every rank hash its
weights (``replicas.json`` in ``--output_dir`` records whether they agree).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ilt_core.errors import ILTError
from ilt_core.modeling.memory import set_cpu_malloc
from ilt_core.modeling.model import ILTModel, build_model
from ilt_core.modeling.products import set_openblas_threads
from ilt_core.specs.spec import load_spec
from ilt_core.text.row_collator import make_collator
from ilt_core.training.arguments import (
    DEFAULT_BLOCK_SIZE,
    DataTrainingArguments,
    ILTArguments,
    ModelArguments,
    is_config_file,
    parse_train_args,
)
from ilt_core.training.prepare import build_datasets, resolve_sources
from ilt_core.training.resume import check_compatible, last_complete_checkpoint, resolve_resume
from ilt_core.training.shards import plan_stream
from ilt_core.training.streaming import prepare_stream

REPLICAS_NAME = "replicas.json"


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, shape, dtype, bytes), for comparing replicas."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_replicas(model: torch.nn.Module, collator: Any, training_args: Any, say: Any) -> dict | None:
    """Under several processes: gather every rank's weights digest and a fingerprint of the training
    data it saw (ranks see different batches, yet must end with equal weights); rank 0 writes
    ``replicas.json``."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    mine = (weights_digest(model), collator.data_fingerprint, int(collator.stats["units"]))
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    digests = [g[0] for g in gathered]
    report = {
        "world_size": len(gathered),
        "trainer_world_size": training_args.world_size,
        "parallel_mode": str(training_args.parallel_mode.value),
        "digests": digests,
        "data_digests": [g[1] for g in gathered],
        "units_seen": [g[2] for g in gathered],
        "in_sync": len(set(digests)) == 1,
    }
    if training_args.process_index == 0:
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(training_args.output_dir) / REPLICAS_NAME).write_text(json.dumps(report, indent=2), encoding="utf-8")
    say(f"replicas: {len(digests)} processes, weights {'identical' if report['in_sync'] else 'DIFFER'}")
    return report


def _build_model(margs: ModelArguments, seed: int) -> ILTModel:
    if margs.model_spec:
        return build_model(load_spec(margs.model_spec, margs.spec_overrides), seed=seed)
    path = Path(margs.model_name_or_path)
    if not path.is_dir():
        raise ILTError(
            f"--model_name_or_path {path}: no such folder (expected an ILT checkpoint folder; for a new model "
            f"use --model_spec PRESET_OR_YAML)"
        )
    return ILTModel.from_pretrained(path)


@dataclass
class TrainResult:
    """What :func:`run_training` returns (metrics as Trainer reports them)."""

    output_dir: str
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    log_history: list[dict] = field(default_factory=list)
    replicas: dict | None = None
    trainer: Any = None
    data_metrics: dict[str, float] = field(default_factory=dict)


def run_training(argv: list[str] | None = None, callbacks: list[Any] | None = None) -> TrainResult:
    """``ilt train`` with the given arguments; every input check runs before the first step.

    The process-wide settings of a training run are made here, before anything else, and undone on return:
    ``--cpu_malloc``, and numpy's OpenBLAS on one thread (the linear layers' products split over torch's threads
    themselves: :func:`ilt_core.modeling.products.set_openblas_threads`).
    """
    parsed = parse_train_args(argv)
    undo_malloc = set_cpu_malloc(parsed[2].cpu_malloc)
    openblas_before = set_openblas_threads(1)
    try:
        return _run_training(parsed, argv, callbacks)
    finally:
        undo_malloc()
        if openblas_before is not None:
            set_openblas_threads(openblas_before)


def _run_training(parsed: tuple[Any, ...], argv: list[str] | None, callbacks: list[Any] | None) -> TrainResult:
    import transformers
    from transformers import set_seed

    margs, data, ilt, training_args = parsed

    def say(message: str) -> None:
        if training_args.process_index == 0:
            print(f"[ilt train] {message}", flush=True)

    training_args.remove_unused_columns = False  # the collator builds exactly the model's inputs
    # run_clm.py does only what --do_train / --do_eval ask; `ilt train` trains unless only --do_eval is given,
    # and then also evaluates when it has validation data.
    flags = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
    eval_optional = False
    if "--do_train" not in flags and "--do_eval" not in flags and not is_config_file(argv):
        eval_optional = not training_args.do_eval
        training_args.do_train = training_args.do_eval = True
    if not training_args.do_train and not training_args.do_eval:
        raise ILTError("--do_train false and --do_eval false: nothing to do")
    if ilt.freeze_pretrained_steps < 0:
        raise ILTError(f"--freeze_pretrained_steps {ilt.freeze_pretrained_steps}: expected 0 or more steps")
    if ilt.max_train_minutes is not None and ilt.max_train_minutes <= 0:
        raise ILTError(f"--max_train_minutes {ilt.max_train_minutes}: expected a positive number of minutes")
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    if bool(margs.model_spec) == bool(margs.model_name_or_path):
        raise ILTError(
            "pass exactly one of --model_spec PRESET_OR_YAML (a new model) or --model_name_or_path DIR "
            "(continue from a checkpoint folder)"
        )
    engine = "--fsdp" if training_args.fsdp else "--deepspeed" if training_args.deepspeed else None
    if engine and (training_args.use_cpu or not torch.cuda.is_available()):
        # accelerate's AcceleratorState turns FSDP or DeepSpeed on only for accelerator processes: on CPUs the
        # run would silently train with DistributedDataParallel instead
        raise ILTError(
            f"{engine}: sharded training needs GPUs (accelerate enables it only for accelerator processes; on CPUs "
            "it would silently run DistributedDataParallel): drop it, torchrun on CPUs trains with DDP"
        )
    for flag in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, flag) < 1:
            raise ILTError(f"--{flag} {getattr(training_args, flag)}: expected 1 or more")
    if data.block_size is not None and data.block_size < 2:
        raise ILTError(f"--block_size {data.block_size}: expected at least 2 (a start marker and one unit)")

    # the sources first: a missing file, a glob matching nothing or a corrupt parquet footer fails before a
    # model is built
    has_eval_source = bool(
        data.validation_file or data.data_recipe or data.dataset_name or data.validation_split_percentage > 0
    )
    if data.streaming:  # a stream has no percentage to hold out: --validation_file or --max_eval_samples texts
        has_eval_source = bool(data.validation_file or data.data_recipe or data.max_eval_samples)
    need_eval = training_args.do_eval and (has_eval_source or not eval_optional)
    if training_args.disable_tqdm:
        import datasets  # heavy; imported by the data steps anyway

        datasets.disable_progress_bars()
    with training_args.main_process_first(desc="checking the data sources"):  # one process downloads / prepares
        if data.streaming:
            sources = plan_stream(data, training_args.do_train, need_eval, training_args.max_steps)
        else:
            sources = resolve_sources(data, training_args.do_train, need_eval)

    set_seed(training_args.seed)
    model = _build_model(margs, training_args.seed)
    model.set_fast_paths(ilt.fast_paths)
    model.train()

    block_size = data.block_size if data.block_size is not None else min(DEFAULT_BLOCK_SIZE, model.max_units)
    if block_size > model.max_units:
        raise ILTError(
            f"--block_size {block_size}: larger than the latent transformer's context ({model.max_units} units); "
            f"pass --block_size {model.max_units} or less"
        )

    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    if resume is not None:
        check_compatible(model, resume, "--resume_from_checkpoint")
        training_args.resume_from_checkpoint = str(resume)

    if model.processor.cache is not None:  # capped in bytes, not entries: memory flat in the vocabulary
        model.processor.cache.maxsize = None
        model.processor.cache.max_bytes = ilt.render_cache_bytes
    if training_args.torch_compile:
        ilt.fixed_shapes = True  # a whole-step graph needs them
    shapes = (
        model.fixed_shapes(
            rows=max(training_args.per_device_train_batch_size, training_args.per_device_eval_batch_size),
            row_units=block_size,
            grow_only=bool(training_args.torch_compile),  # a compiled step meets fewer shapes
        )
        if ilt.fixed_shapes
        else None
    )
    # rank 0 reads and maps into the Arrow cache first; the other ranks then load it
    with training_args.main_process_first(desc="preparing the training data"):
        if data.streaming:  # nothing prepared ahead: the stream makes rows as training asks
            prepared = prepare_stream(
                sources, model.processor, block_size, data, ilt, training_args, training_args.do_train, shapes
            )
        else:
            prepared = build_datasets(sources, model.spec.max_unit_bytes, block_size, data, ilt)
    for line in prepared.summary:
        say(line)
    if prepared.validation is None:
        training_args.do_eval = False

    if (
        ilt.freeze_pretrained_steps
        and training_args.world_size > 1
        and training_args.ddp_find_unused_parameters is None
    ):
        # frozen parameters get no gradient during warm-up: DDP must not wait for them
        training_args.ddp_find_unused_parameters = True

    # transformers' Trainer takes seconds to import: only when a run starts
    from ilt_core.training.trainer import (
        FreezePretrainedCallback,
        ILTTrainer,
        TimeBudgetCallback,
        new_parameter_names,
    )

    collator = make_collator(model.processor, block_size, ilt.packing, shapes)
    all_callbacks = list(callbacks or [])
    if ilt.freeze_pretrained_steps:
        freeze = FreezePretrainedCallback(model, ilt.freeze_pretrained_steps)
        all_callbacks.append(freeze)
        say(
            f"freeze: steps 0..{ilt.freeze_pretrained_steps - 1} train {len(new_parameter_names(model))} new "
            f"parameter tensors only, then all"
        )
    budget = TimeBudgetCallback(ilt.max_train_minutes) if ilt.max_train_minutes else None
    if budget is not None:
        all_callbacks.append(budget)

    trainer = ILTTrainer(
        model=model,
        args=training_args,
        train_dataset=prepared.train,
        eval_dataset=prepared.validation if training_args.do_eval else None,
        data_collator=collator,
        callbacks=all_callbacks,
        lr_scaling=ilt.lr_scaling,
    )
    result = TrainResult(output_dir=training_args.output_dir, trainer=trainer)
    rows = training_args.per_device_train_batch_size
    say(
        f"model {model.spec.name}: block_size {block_size} units, packing {'on' if ilt.packing else 'off'}, "
        f"{rows} rows per device batch x {training_args.world_size} process(es) x "
        f"{training_args.gradient_accumulation_steps} accumulation"
    )

    if training_args.do_train:
        try:
            train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        except KeyboardInterrupt:
            last = last_complete_checkpoint(training_args.output_dir)
            hint = (
                f"last complete checkpoint: {last} (loadable; resume with --resume_from_checkpoint {last})"
                if last
                else "no checkpoint was saved yet"
            )
            say(f"interrupted; {hint}")
            raise
        trainer.save_model()
        metrics = dict(train_output.metrics)
        if data.streaming:  # what the stream gave (gathered from every DataLoader worker)
            loader = trainer.stream_loader
            metrics["train_samples"] = int(collator.stats["texts"])
            metrics["train_units"] = int(collator.stats["units"])
            metrics["train_bad_records"] = loader.bad_records if loader is not None else 0
        else:
            metrics["train_samples"] = len(prepared.train)
        metrics.update({k: v for k, v in prepared.metrics.items() if k.startswith("train_")})
        if budget is not None and budget.stopped_at is not None:
            say(f"time budget of {ilt.max_train_minutes} min reached at step {budget.stopped_at}")
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        result.train_metrics = metrics
        say(f"saved {training_args.output_dir}")

    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(prepared.validation)
        metrics.update({k: v for k, v in prepared.metrics.items() if k.startswith("eval_")})
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        result.eval_metrics = metrics

    result.data_metrics = dict(prepared.metrics)
    result.replicas = _check_replicas(model, collator, training_args, say)
    result.log_history = list(trainer.state.log_history)
    return result


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    """Handler of ``ilt train``: everything after ``train`` goes to ``HfArgumentParser``.

    Under torchrun the process group is destroyed before the process exits: left to the interpreter's
    finalization, gloo's worker threads may still hold work with Python references, and a rank then
    aborted now and then after training had finished ("terminate called without an active
    exception", exit -6; pytorch/pytorch#179291 describes the mechanism).
    """
    try:
        run_training(list(args.train_args))
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ilt train``. Its arguments are parsed by ``HfArgumentParser`` in the handler (so that
    transformers loads only when training), hence the pass-through parser here."""
    p = subparsers.add_parser(
        "train",
        help="train a model with transformers' Trainer (run_clm.py-style arguments; `ilt train --help` lists them)",
        description="Train an ILT model; `ilt train --help` lists every argument.",
        add_help=False,
        prefix_chars="\0",  # no options of its own: every flag passes through to HfArgumentParser
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_train)
    return p


__all__ = [
    "DataTrainingArguments",
    "ILTArguments",
    "ModelArguments",
    "TrainResult",
    "add_train_parser",
    "check_compatible",
    "last_complete_checkpoint",
    "parse_train_args",
    "run_training",
    "weights_digest",
]
