"""The Trainer side of ``ilt train``: :class:`ILTTrainer` and the callbacks it runs with.

Imported only when training starts (transformers' Trainer is slow to import), from
:mod:`ilt_core.training.run`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers import __version__ as transformers_version

from ilt_core.errors import ILTError
from ilt_core.modeling.checkpoint import CARD_NAME, load_state, read_weights
from ilt_core.modeling.compiling import compile_arguments
from ilt_core.modeling.flops import batch_flops
from ilt_core.modeling.parameters import LR_SCALINGS, learning_rate_groups, width_factors
from ilt_core.plugins.registry import FastPath
from ilt_core.training.dataset import RowDataset, RowSampler
from ilt_core.training.resume import TRAINING_ARGS_JSON, check_compatible
from ilt_core.training.stream_dataset import StreamingRows
from ilt_core.training.stream_loader import StreamingLoader, position_path

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ilt_core.modeling.model import ILTModel


# ---------------------------------------------------------------------------------------------
# New layers, freezing, time budget
# ---------------------------------------------------------------------------------------------


def new_parameter_names(model: ILTModel) -> list[str]:
    """Parameters a spec adds around its backbones: the two mappings, and the byte-vocabulary
    embeddings and output heads of the bytes encoder and decoder (resized to the byte tokenizer's
    259 ids, so new even when the backbone is pretrained)."""
    from ilt_core.text.byte_tokenizer import VOCAB_SIZE

    owners: list[tuple[str, nn.Module]] = [("encoder_mapping", model.encoder_mapping)]
    owners.append(("decoder_mapping", model.decoder_mapping))
    for part in ("bytes_encoder", "bytes_decoder"):
        module = getattr(model, part, None)
        if module is None:
            continue
        for name, sub in module.named_modules():
            vocab_table = isinstance(sub, nn.Embedding) and sub.num_embeddings == VOCAB_SIZE
            vocab_head = isinstance(sub, nn.Linear) and sub.out_features == VOCAB_SIZE
            if vocab_table or vocab_head:
                owners.append((f"{part}.{name}", sub))
    wanted = {id(p) for _, m in owners for p in m.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in wanted]


class FreezePretrainedCallback(TrainerCallback):
    """Freeze everything but :func:`new_parameter_names` while ``state.global_step < steps``.

    The optimizer is built before training begins with every parameter, so unfreezing later needs no
    new optimizer; a frozen parameter has no gradient, so AdamW leaves it (and its state) untouched.
    The decision is taken at every step from ``global_step``, so a resumed run freezes correctly.
    """

    def __init__(self, model: ILTModel, steps: int) -> None:
        self.model, self.steps = model, int(steps)
        keep = set(new_parameter_names(model))
        self.frozen_params = [p for n, p in model.named_parameters() if n not in keep and p.requires_grad]
        self.frozen = False

    def _apply(self, state: Any) -> None:
        want = state.global_step < self.steps
        if want != self.frozen:
            for p in self.frozen_params:
                p.requires_grad_(not want)
            self.frozen = want

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._apply(state)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._apply(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for p in self.frozen_params:  # leave the model as it came
            p.requires_grad_(True)
        self.frozen = False


class TimeBudgetCallback(TrainerCallback):
    """Stop (and save) once ``minutes`` of wall-clock time have passed since training began.

    Under several processes the ranks agree (max over ranks) so that none waits for the others.
    """

    def __init__(self, minutes: float) -> None:
        self.seconds = float(minutes) * 60.0
        self.start = time.monotonic()
        self.stopped_at: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        over = torch.tensor([float(time.monotonic() - self.start >= self.seconds)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            over = over.to(args.device)
            torch.distributed.all_reduce(over, op=torch.distributed.ReduceOp.MAX)
        if bool(over.item()):
            control.should_training_stop = True
            control.should_save = True
            self.stopped_at = state.global_step


# ---------------------------------------------------------------------------------------------
# The Trainer
# ---------------------------------------------------------------------------------------------


class ILTTrainer(Trainer):
    """``Trainer`` for :class:`~ilt_core.modeling.model.ILTModel`.

    - loss: the sum of every label byte's cross-entropy over the global number of label bytes in the
      (accumulated, all-process) batch, so gradient accumulation and several processes weigh every
      byte equally;
    - evaluation: ``eval_loss`` (nats per label byte) and ``eval_bits_per_byte``, summed exactly
      over the validation blocks;
    - saving: ``model.save_pretrained`` (an ILT checkpoint whose card and config record the steps, the
      training data named by :attr:`training_data` and the last ``eval_bits_per_byte``), loading: the ILT
      checkpoint reader with a spec check;
    - ``total_flos``: :meth:`floating_point_ops` counts each batch with the model's own FLOP formula
      (:mod:`ilt_core.modeling.flops`, the benchmark harness's), not transformers' ``input_ids`` estimate;
    - the optimizer: with ``lr_scaling="width"`` (``--lr_scaling``, the default) one parameter group per
      component and weight decay (:func:`~ilt_core.modeling.parameters.learning_rate_groups`: each component at
      ``--learning_rate`` x the latent's width / its own, no decay on norms and biases as Trainer decides),
      built by Trainer's own ``create_optimizer`` for any ``--optim`` that takes parameter groups; with
      ``"none"`` Trainer's two groups at one rate;
    - a streamed training set (:class:`~ilt_core.training.stream_dataset.StreamingRows`): its own DataLoader
      (workers make whole batches; not dispatched from rank 0 nor re-sharded by accelerate, each rank
      reads its own shards), its position saved in every checkpoint (``data_position-rank<R>.json``)
      and restored on resume instead of Trainer's skipping of already-seen batches.
    """

    loss_is_scaled_for_ga = None  # decided per step from num_items_in_batch, as for transformers models
    training_data: str = ""  # what the model is trained on, for the model card (set by whoever builds the trainer)
    stream_loader: StreamingLoader | None = None
    stream_note: str = ""  # what resuming the stream did, for the log

    #: transformers ``Trainer``'s private methods this class overrides: a release that renames one would leave the
    #: override never called (checked by :func:`trainer_overrides_path`, warned about when a trainer is made).
    PRIVATE_OVERRIDES = (
        "_load_optimizer_and_scheduler",
        "_get_train_sampler",
        "_save_rng_state",
        "_save",
        "_load_from_checkpoint",
        "_load_best_model",
        "_build_accelerator_args",
    )

    def __init__(self, *args: Any, lr_scaling: str = "width", **kwargs: Any) -> None:
        missing = [name for name in self.PRIVATE_OVERRIDES if not hasattr(Trainer, name)]
        if missing:
            logger.warning(
                "ilt train: transformers %s's Trainer has no %s: ILT's override%s will not run (tested with "
                "transformers 5.x)",
                transformers_version,
                ", ".join(missing),
                "s" if len(missing) > 1 else "",
            )
        if lr_scaling not in LR_SCALINGS:
            raise ILTError(f"--lr_scaling {lr_scaling}: expected one of {', '.join(LR_SCALINGS)}")
        self.lr_scaling = lr_scaling
        super().__init__(*args, **kwargs)
        if isinstance(self.train_dataset, StreamingRows):
            # the stream restarts itself at the saved position: Trainer must not skip (render and drop) batches
            self.args.ignore_data_skip = True

    # ---- the optimizer: a learning rate per component -----------------------------------------
    #: ``--optim`` values whose optimizer makes its own parameter groups (low-rank projections, layer-wise or
    #: fused-backward updates): they cannot take per-component rates, and are refused with ``--lr_scaling width``.
    OWN_GROUP_KEYS = ("params", "model", "optimizer_dict")

    def _build_accelerator_args(self, **kwargs: Any) -> dict[str, Any]:
        """Trainer's accelerator arguments; ``--torch_compile`` compiles the whole step as
        :func:`~ilt_core.modeling.compiling.compile_arguments` gives: one graph of static shapes (the batches have
        fixed shapes, ``--fixed_shapes``), and on a CPU inductor's options unless ``--torch_compile_mode`` names a
        mode (``torch.compile`` takes a mode or options, not both)."""
        args = super()._build_accelerator_args(**kwargs)
        plugin = args.get("dynamo_plugin")
        if plugin is not None and self.args.torch_compile:
            wanted = compile_arguments(self.args.device)
            plugin.fullgraph = wanted["fullgraph"]
            plugin.dynamic = wanted["dynamic"]
            if self.args.torch_compile_mode in (None, "default") and "options" in wanted:
                plugin.options = wanted["options"]
        return args

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer, with :func:`learning_rate_groups` as its parameter groups (``lr_scaling="width"``).

        The groups go through Trainer's own path (``optimizer_cls_and_kwargs`` with ``params``), so the optimizer
        class and its arguments (``--optim``, ``--optim_args``, betas, eps, fused) are exactly Trainer's. An
        optimizer Trainer does not build here (a DeepSpeed config's own ``optimizer`` block) trains at one rate.
        """
        if self.optimizer is not None or self.lr_scaling == "none":
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        saved = self.optimizer_cls_and_kwargs
        cls, kwargs = saved if saved is not None else self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        # a factory (not an Optimizer class: Muon, Dion) builds the optimizer from the model, groups and all
        factory = not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer))
        if factory or any(k in kwargs for k in self.OWN_GROUP_KEYS):
            raise ILTError(
                f"--optim {self.args.optim}: this optimizer makes its own parameter groups, so it cannot train each "
                f"component at its own rate; pass --lr_scaling none to use it (one rate for every component)"
            )
        ilt_model = self.accelerator.unwrap_model(opt_model, keep_torch_compile=False)
        groups = learning_rate_groups(
            ilt_model,
            self.args.learning_rate,
            "width",
            weight_decay=self.args.weight_decay,
            decay_names=self.get_decay_parameter_names(opt_model),
            named_parameters=opt_model.named_parameters(),
        )
        if width_factors(ilt_model) and all(g["name"] == "rest" for g in groups):
            # the wrapper's parameters are not the components' own (FSDP's flattened parameters): one rate, silently
            raise ILTError(
                "--lr_scaling width: none of the optimizer's parameters is a component's own (FSDP with flattened "
                "parameters?); set use_orig_params: true in --fsdp_config, or pass --lr_scaling none"
            )
        self.optimizer_cls_and_kwargs = (cls, {**kwargs, "params": groups})
        try:
            return super().create_optimizer(model)
        finally:
            self.optimizer_cls_and_kwargs = saved

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except ValueError as exc:  # torch: the saved groups do not fit this optimizer's
            if "parameter group" not in str(exc):
                raise
            raise ILTError(
                f"--resume_from_checkpoint {checkpoint}: its optimizer state does not fit this run's parameter "
                f"groups ({str(exc).strip()}); resume with the --lr_scaling (now {self.lr_scaling}) and --optim "
                f"it was trained with (none for a checkpoint saved before --lr_scaling existed)"
            ) from None

    # ---- map-style training data: the order of the rows -----------------------------------
    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """Trainer's random order over a :class:`~ilt_core.training.dataset.RowDataset`, held as one int32
        tensor (:class:`~ilt_core.training.dataset.RowSampler`, seeded ``--data_seed`` else ``--seed``,
        plus the epoch, as accelerate seeds Trainer's sampler): the same rows in the same order on every
        rank and after a resume, without a list of one Python int per row."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, RowDataset) and self.args.train_sampling_strategy == "random":
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return RowSampler(len(dataset), seed)
        return super()._get_train_sampler(train_dataset)

    # ---- streamed training data -----------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        self._resuming_from = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def get_train_dataloader(self) -> Any:
        if not isinstance(self.train_dataset, StreamingRows):
            return super().get_train_dataloader()
        if self.stream_loader is None:
            args = self.args
            self.stream_loader = StreamingLoader(
                self.train_dataset,
                self.data_collator,
                pin_memory=args.dataloader_pin_memory and torch.cuda.is_available(),  # pinning helps a GPU only
                prefetch_factor=args.dataloader_prefetch_factor,
                multiprocessing_context=args.dataloader_multiprocessing_context,
            )
            resume = getattr(self, "_resuming_from", None)
            if resume:
                path = position_path(resume, self.train_dataset.rank)
                if not path.is_file():
                    raise ILTError(
                        f"--resume_from_checkpoint {resume}: no {path.name} in it (saved by a map-style run?); "
                        f"resume it without --streaming, or start from its weights with --model_name_or_path {resume}"
                    )
                state = json.loads(path.read_text(encoding="utf-8"))
                self.stream_note = self.stream_loader.load_state_dict(state, str(path))
                if self.args.process_index == 0:
                    print(f"[ilt train] {self.stream_note}", flush=True)
        return self.stream_loader

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self.stream_loader is not None:  # every rank writes its own position (its own shards)
            path = position_path(output_dir, self.train_dataset.rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.stream_loader.state_dict(), indent=1), encoding="utf-8")

    def floating_point_ops(self, inputs: Any) -> float:
        """Training FLOPs of one batch (forward + backward), summed by Trainer into ``total_flos``."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return batch_flops(model, inputs)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        outputs = model(**inputs)
        loss = outputs.loss
        if num_items_in_batch is not None:
            # sum of nats over this micro-batch / label bytes in the whole accumulated (global) batch
            loss = outputs.unit_losses.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, outputs) if return_outputs else loss

    # ---- evaluation ---------------------------------------------------------------------
    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            out = model(**inputs)
        sums = torch.tensor(
            [float(out.unit_losses.double().sum()), float(out.num_label_tokens), float(inputs["num_bytes"].sum())],
            dtype=torch.float64,
        )
        self._eval_sums = getattr(self, "_eval_sums", torch.zeros(3, dtype=torch.float64)) + sums
        return out.loss.detach(), None, None

    def evaluation_loop(self, dataloader: Any, description: str, *args: Any, **kwargs: Any) -> Any:
        self._eval_sums = torch.zeros(3, dtype=torch.float64)
        output = super().evaluation_loop(dataloader, description, *args, **kwargs)
        sums = self._eval_sums
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sums = sums.to(self.args.device)
            torch.distributed.all_reduce(sums)
            sums = sums.cpu()
        nll, label_bytes, text_bytes = (float(x) for x in sums)
        prefix = kwargs.get("metric_key_prefix", args[2] if len(args) > 2 else "eval")
        if label_bytes:
            output.metrics[f"{prefix}_loss"] = nll / label_bytes
            output.metrics[f"{prefix}_bits_per_byte"] = nll / math.log(2) / max(text_bytes, 1.0)
            output.metrics[f"{prefix}_bytes"] = int(text_bytes)
        return output

    # ---- saving and loading -------------------------------------------------------------
    def training_record(self) -> dict[str, Any]:
        """What the model card and ``config.json`` say about this training: data, steps, FLOPs, bits-per-byte."""
        record: dict[str, Any] = {"steps": int(self.state.global_step), "total_flos": float(self.state.total_flos)}
        if self.training_data:
            record["data"] = self.training_data
        evals = [h for h in self.state.log_history if "eval_bits_per_byte" in h]
        if evals:  # the latest evaluation, with the step it was measured at
            record["eval_bits_per_byte"] = float(evals[-1]["eval_bits_per_byte"])
            record["eval_step"] = int(evals[-1].get("step", self.state.global_step))
        return record

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        # FSDP / DeepSpeed hand a gathered state dict rather than the module's own
        model.save_pretrained(output_dir, state_dict=state_dict, training=self.training_record())
        # the arguments as JSON, not Trainer's pickled training_args.bin: a checkpoint holds no pickle of ours
        (Path(output_dir) / TRAINING_ARGS_JSON).write_text(self.args.to_json_string(), encoding="utf-8")

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Keep the ILT model card ``save_pretrained`` wrote (transformers' would replace it before a push)."""
        if not (Path(self.args.output_dir) / CARD_NAME).is_file():
            self.save_model(self.args.output_dir, _internal_call=True)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        check_compatible(target, resume_from_checkpoint, "--resume_from_checkpoint")
        tensors, _ = read_weights(resume_from_checkpoint)
        device = next(target.parameters()).device
        load_state(target, {k: v.to(device) for k, v in tensors.items()}, str(resume_from_checkpoint))

    def _load_best_model(self) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)


__all__ = ["FreezePretrainedCallback", "ILTTrainer", "TimeBudgetCallback", "new_parameter_names"]


def trainer_overrides_path() -> FastPath:
    """Whether every private ``Trainer`` method :class:`ILTTrainer` overrides exists in the installed transformers."""
    missing = [name for name in ILTTrainer.PRIVATE_OVERRIDES if not hasattr(Trainer, name)]
    name = "core: ILTTrainer's overrides of Trainer (row order, resume, rng state, saving, compilation)"
    if missing:
        return FastPath(name, False, f"transformers {transformers_version}'s Trainer has no {', '.join(missing)}")
    return FastPath(name, True, f"all {len(ILTTrainer.PRIVATE_OVERRIDES)} overridden methods exist in transformers "
                    f"{transformers_version}")  # fmt: skip
