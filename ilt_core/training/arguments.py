"""The ``ilt train`` arguments: model, data and ILT-only groups beside transformers' ``TrainingArguments``."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ilt_core.errors import ILTError, one_line_usage_errors
from ilt_core.text.render_cache import DEFAULT_MAX_BYTES

DEFAULT_BLOCK_SIZE = 256


@dataclass
class ModelArguments:
    """Which model to train: a spec (from scratch) or a checkpoint folder (continue)."""

    model_spec: str | None = field(
        default=None,
        metadata={"help": "a preset name (tiny, small, medium) or a YAML spec: build a new model"},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "an ILT checkpoint folder (save_pretrained or checkpoint-N): continue from its weights"},
    )
    spec_overrides: list[str] = field(
        default_factory=list,
        metadata={
            "aliases": ["--set"],
            "help": "with --model_spec: override spec fields, e.g. --set latent_transformer.config.num_hidden_layers=4 "
            "bytes_decoder.config.hidden_size=128 (values read as YAML, validated like the file)",
        },
    )


@dataclass
class DataTrainingArguments:
    """What to train and evaluate on (run_clm.py's data arguments, with block_size in units)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "a dataset on the hub (datasets.load_dataset), e.g. HuggingFaceFW/fineweb-2"}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "its configuration, e.g. heb_Hebr"})
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "training texts: a file, a glob ('shards/*.parquet') or a folder of shards; .txt (one text per "
            "line), .jsonl/.json, .csv/.tsv or .parquet, optionally .gz/.bz2/.xz"
        },
    )
    validation_file: str | None = field(default=None, metadata={"help": "validation texts, same forms"})
    data_recipe: str | None = field(
        default=None, metadata={"help": "prepare and use an ilt data recipe (ilt data list), e.g. he-news"}
    )
    text_column_name: str | None = field(
        default=None, metadata={"help": "column or field holding the text (json, csv, hub datasets); default 'text'"}
    )
    block_size: int | None = field(
        default=None,
        metadata={
            "help": f"units per sequence, start markers included (default min({DEFAULT_BLOCK_SIZE}, the latent "
            "transformer's context)); longer texts are split into blocks"
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "keep the first N training blocks"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "keep the first N validation blocks"})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "processes that read the files and segment the texts (datasets.map num_proc)"}
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "where the Arrow cache of texts, blocks and rows goes (default: datasets' cache folder)"},
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "segment and block again even when the cache holds the result"}
    )
    skip_bad_records: bool = field(
        default=False,
        metadata={
            "help": "skip (and count, in the log and the metrics) records that do not read: a line that is not "
            "UTF-8 or not JSON, a record without the text column, a corrupt parquet shard or row group"
        },
    )
    validation_split_percentage: int = field(
        default=5, metadata={"help": "without validation data, hold out this %% of the training texts"}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "stream the training texts (files, globs, parquet shards, hub datasets): no preprocessing, "
            "units, blocks and packed rows made on the fly; needs --max_steps; shards shuffled in an order drawn "
            "from --seed; under torchrun each rank reads its own shards. --dataloader_num_workers N renders "
            "batches in N worker processes that split a rank's shards: a single file gets one worker. "
            "Validation: --validation_file, or the first --max_eval_samples texts of the stream (held out)"
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "passed to datasets.load_dataset"})


@dataclass
class ILTArguments:
    """Options ``run_clm.py`` does not have."""

    packing: bool = field(
        default=True,
        metadata={"help": "several texts per sequence (block-diagonal attention, positions per text)"},
    )
    freeze_pretrained_steps: int = field(
        default=0,
        metadata={
            "help": "train only the new layers (the two mappings, the bytes models' byte embeddings and heads) "
            "for the first N optimizer steps, then everything"
        },
    )
    lr_scaling: str = field(
        default="width",
        metadata={
            "choices": ["width", "none"],
            "help": "learning rate per component: width = --learning_rate x the latent transformer's width / the "
            "component's own for the image encoder, bytes encoder and bytes decoder (the latent and the mappings at "
            "--learning_rate; with Adam a narrow component learns less per step at one rate); none = one rate for "
            "every parameter. The schedule and weight decay (none on norms and biases) apply to every group. width "
            "needs an --optim that takes parameter groups (adamw_torch, adamw_torch_fused, adafactor, sgd, ...); "
            "galore_*, apollo_*, lomo and adalomo make their own and are refused: use none with them (a DeepSpeed "
            "config's own optimizer also trains at one rate)",
        },
    )
    fixed_shapes: bool = field(
        default=True,
        metadata={
            "help": "give every batch the same tensor shapes (rows x --block_size, the longest unit's bytes, a "
            "capacity of distinct units that grows but never drops one, word images packed into rows of patches, "
            "label bytes packed into one stream) and run a forward that never waits on the device: what "
            "torch.compile and a GPU need, and less padding everywhere; --no_fixed_shapes collates each batch to its "
            "own sizes (images grouped by width). --torch_compile needs them and compiles the step with "
            "fullgraph=True and static shapes"
        },
    )
    max_train_minutes: float | None = field(
        default=None, metadata={"help": "stop training (and save) after this many minutes of wall-clock time"}
    )
    render_cache_bytes: int = field(
        default=DEFAULT_MAX_BYTES,
        metadata={
            "help": f"bytes of rendered word images kept per process (least recently used dropped first; default "
            f"{DEFAULT_MAX_BYTES} = {DEFAULT_MAX_BYTES >> 20} MiB); 2 or more streaming DataLoader workers also "
            f"share one store of this size, each drawing a word only if no other has"
        },
    )
    fast_paths: bool = field(
        default=True,
        metadata={
            "help": "ILT's faster layers (ILTModel.set_fast_paths): on a CPU in float32 the linear layers' products "
            "through numpy and Llama-style norms and rotary embeddings in fewer passes; fused inference steps for "
            "evaluation. The same results to float rounding; --no_fast_paths runs every layer as its backbone's "
            "library writes it. A setting of the run, not saved with the model"
        },
    )
    cpu_malloc: str = field(
        default="reuse",
        metadata={
            "choices": ["default", "reuse", "return"],
            "help": "where the C library (glibc) puts this process's large CPU tensors, set once at start-up: "
            "reuse (the default) = freed pages are kept and reused (no page faults per step: faster, peak RSS a "
            "little higher); default = the C library's own settings; return = blocks above 1 MiB go back to the "
            "system when freed (RSS follows the live tensors, e.g. with --activation_checkpointing; slower)",
        },
    )


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, ILTArguments)


def _argument_parser() -> Any:
    from transformers import HfArgumentParser, TrainingArguments

    return one_line_usage_errors(HfArgumentParser((*ARGUMENT_CLASSES, TrainingArguments), prog="ilt train"))


def _has_accelerator() -> bool:
    """A GPU (CUDA, ROCm), Apple MPS or Intel XPU that Trainer would use."""
    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool((mps is not None and mps.is_available()) or (xpu is not None and xpu.is_available()))


def is_config_file(argv: list[str] | None) -> bool:
    argv = list(sys.argv[1:] if argv is None else argv)
    return len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml"))


def parse_train_args(
    argv: list[str] | None,
) -> tuple[ModelArguments, DataTrainingArguments, ILTArguments, Any]:
    """Parse ``ilt train`` arguments (or one .json / .yaml file of them) into the four dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _argument_parser()
    # Under torchrun on a machine without an accelerator, Trainer runs DDP over gloo only with use_cpu
    # (otherwise every process trains alone on all the data); set it before TrainingArguments picks devices.
    cpu_ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator()
    try:
        if is_config_file(argv):
            path = Path(argv[0])
            if not path.is_file():
                raise ILTError(f"ilt train {path}: no such arguments file")
            text = path.read_text(encoding="utf-8")
            import yaml

            try:
                values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            except (json.JSONDecodeError, yaml.YAMLError) as exc:
                raise ILTError(
                    f"ilt train {path}: not valid {path.suffix[1:].upper()} ({str(exc).splitlines()[0]})"
                ) from None
            if not isinstance(values, dict):
                raise ILTError(
                    f"ilt train {path}: expected a mapping of argument names to values, got {type(values).__name__}"
                )
            if cpu_ddp:
                values.setdefault("use_cpu", True)
            parsed = parser.parse_dict(values)
        else:
            if cpu_ddp and not any(a.split("=")[0] == "--use_cpu" for a in argv):
                argv += ["--use_cpu", "true"]
            parsed = parser.parse_args_into_dataclasses(args=argv)
    except (ValueError, TypeError, ImportError) as exc:  # TrainingArguments.__post_init__ checks combinations
        raise ILTError(f"ilt train: {str(exc).strip().splitlines()[0]}") from None  # and packages (--deepspeed)
    return parsed  # type: ignore[return-value]
