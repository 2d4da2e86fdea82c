"""``ilt train``: language-model training in the manner of transformers' ``run_clm.py``, on ``Trainer``.

    ilt train --model_spec tiny --train_file train.txt --validation_file dev.txt \\
        --output_dir runs/tiny --max_steps 1000 --per_device_train_batch_size 8 --block_size 128
    ilt train --model_spec small --dataset_name HuggingFaceFW/fineweb-2 --dataset_config_name heb_Hebr \\
        --streaming --max_steps 100000 --dataloader_num_workers 4 --output_dir runs/small-he ...
    ilt train --model_name_or_path runs/tiny --data_recipe he-news ...       # continue from a checkpoint
    torchrun --nproc_per_node 2 -m ilt_core.cli.main train ...                    # DistributedDataParallel

The arguments are three groups parsed by ``HfArgumentParser`` (``ilt train --help`` lists them all):
:class:`ModelArguments`, :class:`DataTrainingArguments` (with the ILT-only options of
:class:`ILTArguments`) and transformers' own ``TrainingArguments`` (every flag of it works: logging,
evaluation, saving, ``--resume_from_checkpoint``, ``--fsdp``, ``--deepspeed``, ...). As in run_clm.py
a single ``.json`` or ``.yaml`` file of arguments may stand for the command line.

Where ``ilt train`` differs from run_clm.py:

- **Model.** ``--model_spec PRESET_OR_YAML`` builds a model from an ILT spec (random weights unless
  the spec loads pretrained backbones); ``--model_name_or_path DIR`` continues from an ILT checkpoint
  folder (a ``save_pretrained`` folder or a Trainer ``checkpoint-N`` folder). There is no tokenizer:
  ``--tokenizer_name``, ``--use_fast_tokenizer``, ``--config_overrides``, ``--model_type`` and
  ``--torch_dtype`` do not exist (use the spec's ``dtype`` per block instead).
- **Units, not tokens.** ``--block_size`` counts *units* (words with their trailing whitespace) per
  sequence, start markers included (default ``min(256, model.max_units)``; larger than the latent
  transformer's context is an error). Texts are never concatenated across their ends: each text is
  its own sequence (a long one split into blocks of ``block_size - 1`` units, only the last of which
  ends with an end-of-text label), and ``--packing`` (on by default) puts several texts in one row
  with a block-diagonal attention mask and positions restarting at each text. ``--no_packing`` gives
  one text (block) per row.
- **Samples.** ``--max_train_samples`` / ``--max_eval_samples`` count blocks (texts, or pieces of
  long texts), taken before packing.
- **Files.** ``--train_file`` / ``--validation_file`` take a file, a glob (``'shards/*.parquet'``) or
  a folder of shards, of one format: ``.txt`` (one text per line; blank lines skipped;
  ``--keep_linebreaks`` does not exist), ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` /
  ``.parquet`` (``--text_column_name``, default ``text``), compressed ``.gz`` / ``.bz2`` / ``.xz``.
  They are read into Arrow files under ``--cache_dir`` (default: ``datasets``' cache), segmented and
  blocked by a cached ``datasets.map`` (``--preprocessing_num_workers`` processes,
  ``--overwrite_cache`` to redo it), and packed from the blocks' lengths: a second run with the
  same data and settings maps nothing (:mod:`ilt_core.training.data`). A bad record (a line that is
  not UTF-8 or not JSON, a record without the text column, a corrupt parquet shard, whose footer is
  checked before anything else) stops the run with one line naming the file and line, or with
  ``--skip_bad_records`` is skipped and counted (``train_bad_records`` in the metrics).
  ``--data_recipe NAME`` prepares one of :mod:`ilt_data.recipes` (train / validation splits).
  Without validation data, the first ``--validation_split_percentage`` % of the training texts is
  held out (run_clm's rule).
- **Streaming.** ``--streaming`` reads the sources as they train, with no preprocessing
  (:mod:`ilt_core.training.streaming`): shards in an order drawn from ``--seed``, each rank its own
  shards, batches made in ``--dataloader_num_workers`` processes (one shard per worker at most),
  ``--max_steps`` required; ``--resume_from_checkpoint`` continues with the texts after the checkpoint.
- **Memory.** Texts, blocks and rows live in memory-mapped Arrow files; the collator renders per
  batch through a render cache capped at ``--render_cache_bytes`` (default 256 MiB per process; streaming
  workers share one more store of that size).
- **Metrics.** ``eval_loss`` is the mean cross-entropy (nats) per label byte (each unit's bytes plus
  its closing ``eos`` and each text's end-of-text ``eos``), weighted by bytes across batches;
  ``eval_bits_per_byte`` is the figure :func:`ilt_core.evaluation.bits_per_byte` and ``ilt eval``
  report. No ``perplexity`` (a per-byte perplexity would be misleading beside token perplexities).
- **Defaults.** Without ``--do_train`` / ``--do_eval``, ``ilt train`` trains, and evaluates when it
  has validation data. ``remove_unused_columns`` is always off (the collator makes the model's inputs).
- **Checkpoints.** Every ``checkpoint-N`` folder (and the final ``--output_dir``) is an ILT
  checkpoint (``model.safetensors`` with its spec; no pickle) that ``ilt eval --model DIR``,
  ``ilt generate --model DIR`` and ``ILTModel.from_pretrained`` load, plus Trainer's optimizer,
  scheduler, RNG and ``trainer_state.json`` for ``--resume_from_checkpoint DIR``
  (``--resume_from_checkpoint last`` takes the newest complete one in ``--output_dir``). The
  training arguments are written as ``training_args.json`` (not Trainer's pickled ``.bin``).
- **ILT-only options.** ``--freeze_pretrained_steps N`` trains only the layers a spec adds around
  its backbones (the two mappings and the bytes models' byte embeddings and output heads) for the
  first N optimizer steps, then everything. ``--max_train_minutes M`` stops training (and saves)
  after M minutes of wall-clock time. ``--lr_scaling width`` (the default) trains the image encoder, bytes
  encoder and bytes decoder at ``--learning_rate`` x the latent transformer's width / their own (one optimizer
  parameter group per component; ``none``: one rate for all, Trainer's groups).
- **Several processes.** ``torchrun --nproc_per_node N -m ilt_core.cli.main train ...`` trains with
  DistributedDataParallel through Trainer (gloo on CPUs, NCCL on GPUs); at the end every rank
  hashes its weights and ``replicas.json`` in ``--output_dir`` records whether they agree. FSDP
  and DeepSpeed go through Trainer's own flags (``--fsdp "full_shard auto_wrap"`` with
  ``--fsdp_config`` naming the backbone layer classes to wrap, e.g. ``GPTNeoXLayer``, and
  ``state_dict_type: FULL_STATE_DICT``; ``--deepspeed ds_config.json``) on GPUs only: accelerate
  enables them only for accelerator processes, so on CPUs they are refused (they would silently
  run DDP). ``benchmarks/fsdp_check.py`` checks FSDP on GPUs; DeepSpeed is not tested.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ilt_core.errors import ILTError
from ilt_core.modeling.memory import set_cpu_malloc
from ilt_core.modeling.model import ILTModel, build_model
from ilt_core.modeling.products import set_openblas_threads
from ilt_core.plugins.registry import get_registry
from ilt_core.specs.spec import load_spec
from ilt_core.training import data as td
from ilt_core.training.arguments import (
    DEFAULT_BLOCK_SIZE,
    DataTrainingArguments,
    ILTArguments,
    ModelArguments,
    is_config_file,
    parse_train_args,
)
from ilt_core.training.data import make_collator
from ilt_core.training.resume import check_compatible, last_complete_checkpoint, resolve_resume
from ilt_core.training.streaming import plan_stream, prepare_stream

REPLICAS_NAME = "replicas.json"


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class Sources:
    """Where the train / validation texts come from, checked (files exist, globs match, parquet
    footers read) before a model is built; ``hold_out`` is the percentage of the training texts
    that becomes the validation set when there is no other (0: none); ``train_needed`` is False when
    the training texts are read only for that (``--do_eval`` alone)."""

    train: td.TextSource | None
    validation: td.TextSource | None
    hold_out: int = 0
    train_needed: bool = True
    summary: list[str] = field(default_factory=list)


@dataclass
class PreparedData:
    """The datasets (:class:`~ilt_core.training.data.RowDataset`), what preparing them found, and
    figures for the run's metrics (``train_bad_records``, ``train_preprocessing_seconds``, ...)."""

    train: td.RowDataset | None
    validation: td.RowDataset | None
    summary: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


def resolve_sources(data: DataTrainingArguments, need_train: bool, need_eval: bool) -> Sources:
    """Check the arguments and find the one source of texts they name (see :mod:`ilt_core.training.data`)."""
    sources = [s for s in ("dataset_name", "train_file", "data_recipe") if getattr(data, s)]
    if len(sources) > 1:
        raise ILTError(f"--{sources[0]} and --{sources[1]}: pass one source of training texts")
    if not sources and not data.validation_file:
        raise ILTError("no training data: pass --train_file FILE, --data_recipe NAME or --dataset_name NAME")
    if data.validation_split_percentage < 0 or data.validation_split_percentage >= 100:
        raise ILTError(f"--validation_split_percentage {data.validation_split_percentage}: expected 0..99")
    for flag in ("max_train_samples", "max_eval_samples"):
        value = getattr(data, flag)
        if value is not None and value < 1:
            raise ILTError(f"--{flag} {value}: expected a positive number of blocks")

    train: td.TextSource | None = None
    validation: td.TextSource | None = None
    if data.dataset_name:
        train, validation = td.read_hub_dataset(
            data.dataset_name,
            data.dataset_config_name,
            data.text_column_name,
            validation_split_percentage=data.validation_split_percentage,
            streaming=data.streaming,
            max_train_samples=data.max_train_samples,
            max_eval_samples=data.max_eval_samples,
            trust_remote_code=data.trust_remote_code,
            cache_dir=data.cache_dir,
        )
    else:
        train_path: str | None = data.train_file
        validation_path: str | None = data.validation_file
        if data.data_recipe:
            files = get_registry().data_recipe(data.data_recipe).prepare(progress=True)
            train_path = str(files["train"])
            validation_path = validation_path or str(files["validation"])
        held_out = need_eval and not validation_path and data.validation_split_percentage > 0
        if train_path and (need_train or held_out):
            train = td.resolve_source(train_path, "--train_file", data.text_column_name, data.skip_bad_records)
        if validation_path and need_eval:
            validation = td.resolve_source(
                validation_path, "--validation_file", data.text_column_name, data.skip_bad_records
            )
    hold = data.validation_split_percentage if need_eval and validation is None and train is not None else 0
    if need_train and train is None:
        raise ILTError("no training texts: --train_file / --data_recipe / --dataset_name gave none")
    if need_eval and validation is None and not hold:
        raise ILTError("--do_eval: no validation texts (pass --validation_file or --validation_split_percentage > 0)")
    return Sources(train, validation, hold, train_needed=need_train)


def _text_note(name: str, stats: td.TextStats) -> str:
    note = f"{name}: {stats.source}: {stats.texts} texts ({stats.blank} blank skipped"
    if stats.bad_records or stats.bad_files:
        note += f"; skipped {stats.bad_records} bad records and {stats.bad_files} bad files, first: {stats.first_bad}"
    read = f"{stats.cached_files} files from the cache" if stats.cached_files else f"read in {stats.seconds:.1f} s"
    return f"{note}; {read})"


def build_datasets(
    sources: Sources, max_unit_bytes: int, block_size: int, data: DataTrainingArguments, ilt: ILTArguments
) -> PreparedData:
    """Read, segment, block and pack the texts into row datasets (see :mod:`ilt_core.training.data`);
    every step is cached on disk, so a second run with the same data and settings maps nothing."""
    notes = list(sources.summary)
    metrics: dict[str, float] = {}

    def texts_of(source: td.TextSource, name: str) -> Any:
        texts, stats = td.load_texts(
            source,
            data.cache_dir,
            skip_bad_records=data.skip_bad_records,
            num_workers=data.preprocessing_num_workers,
        )
        notes.append(_text_note(name, stats))
        metrics[f"{name}_bad_records"] = stats.bad_records
        metrics[f"{name}_bad_files"] = stats.bad_files
        metrics[f"{name}_reading_seconds"] = round(stats.seconds, 3)
        return texts

    train_texts = texts_of(sources.train, "train") if sources.train is not None else None
    eval_texts = texts_of(sources.validation, "eval") if sources.validation is not None else None
    if sources.hold_out and train_texts is not None:
        train_texts, eval_texts = td.hold_out(train_texts, sources.hold_out)
        if len(eval_texts):
            notes.append(f"validation: the first {sources.hold_out}% of the training texts held out")
        else:  # a single text: nothing to hold out, no evaluation
            eval_texts = None
            notes.append("validation: one training text, none held out; no evaluation")

    def build(texts: Any, limit: int | None, name: str) -> td.RowDataset:
        start = time.perf_counter()
        blocks, cached = td.make_blocks(
            texts,
            max_unit_bytes,
            block_size,
            num_workers=data.preprocessing_num_workers,
            overwrite_cache=data.overwrite_cache,
            limit=limit,
            desc=f"{name}: units and blocks",
        )
        dataset = td.pack_blocks(blocks, block_size, ilt.packing)
        seconds = time.perf_counter() - start
        stats = dataset.stats
        split = f", {stats.split_texts} long texts split into blocks" if stats.split_texts else ""
        how = "from the cache" if cached else f"in {seconds:.1f} s, {stats.units / max(seconds, 1e-9):,.0f} units/s"
        notes.append(
            f"{name}: {stats.texts} texts, {stats.units} units -> {stats.blocks} blocks of <= {block_size - 1} units"
            f"{split} -> {len(dataset)} {'packed rows' if ilt.packing else 'rows'} of <= {block_size} positions "
            f"({how})"
        )
        metrics[f"{name}_units"] = stats.units
        metrics[f"{name}_preprocessing_seconds"] = round(seconds, 3)
        metrics[f"{name}_preprocessing_cached"] = int(cached)
        return dataset

    needed = sources.train is not None and sources.train_needed
    train = build(train_texts, data.max_train_samples, "train") if needed else None
    validation = build(eval_texts, data.max_eval_samples, "eval") if eval_texts is not None else None
    return PreparedData(train, validation, notes, metrics)


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
    # rank 0 reads and maps into the Arrow cache first; the other ranks then load it
    with training_args.main_process_first(desc="preparing the training data"):
        if data.streaming:  # nothing prepared ahead: the stream makes rows as training asks
            prepared = prepare_stream(
                sources, model.processor, block_size, data, ilt, training_args, training_args.do_train
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

    collator = make_collator(model.processor, block_size, ilt.packing)
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
