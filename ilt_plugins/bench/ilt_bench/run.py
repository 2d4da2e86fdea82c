"""One benchmark mix, one seed, in its own process: build, train for the budget, measure, write one JSON file.

    python -m ilt_bench.run JOB.json        (``ilt bench`` starts one of these per mix and seed)

``JOB.json`` holds ``{"mix": Mix.to_dict(), "settings": {...}, "result": "path/to/result.json"}``. A
fresh process per run keeps peak-memory figures apart (``ru_maxrss`` is per process); it starts as ``ilt train``
does (numpy's OpenBLAS on one thread, ``--cpu_malloc``'s default: ``ilt_bench.common.as_the_ilt_command``), so a
mix runs as under ``ilt train``; the result records what it set (``process_settings``).

The training loop is in plain sight (:func:`train`): the seed sets the initialisation and the data order
(one seeded permutation of the training lines, re-drawn each epoch: every mix reads the same texts in the
same order), fused AdamW (betas 0.9/0.95, weight decay 0.1 except on norms and biases, as ``ilt train``;
gradient clipping 1.0) and the same schedule for every mix: linear warm-up over the first 10 steps, then cosine decay
to 10% of the peak learning rate as the budget is used up. An ILT model's encoders and decoder train at the
peak rate times the latent's width over their own (``settings["lr_scaling"] = "width"``; ``"none"``: one
rate for every component): the parameter groups are ``ilt train``'s,
:func:`ilt_core.modeling.parameters.learning_rate_groups`. The budget is training bytes, training FLOPs
(counted per batch by :func:`ilt_core.modeling.flops.count_ilt_batch`, the count ``ilt train`` reports as
``total_flos``) or seconds, any of them; the
share used is the largest of ``bytes / budget bytes``, ``FLOPs / budget FLOPs`` and ``seconds / budget
seconds``. Validation points are taken at fixed shares of the budget (``curve_points``),
so the seeds' curves line up; the clock stops while they are evaluated. Wall-clock figures are reported,
never budgeted unless asked. Throughput, step time and the data share leave out the first step (one-time
costs) when at least three steps ran.

``settings["measure"] = False`` (the learning-rate sweep) skips the speed measurements and scores the
held-out texts of ``settings["eval_offset"]`` on, so the rate is not chosen on the reported texts.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ilt_bench.common import as_the_ilt_command
from ilt_bench.machine import peak_rss_bytes
from ilt_core.errors import ILTError
from ilt_core.modeling.products import openblas_threads
from ilt_core.text.lines import read_text_lines
from ilt_core.text.segmentation import utf8_len

WARMUP_STEPS = 10
MIN_LR_SHARE = 0.1
WEIGHT_DECAY = 0.1


# ---- small helpers -----------------------------------------------------------------------------


def read_lines(path: str | Path, limit: int | None = None) -> list[str]:
    """Non-blank lines of a UTF-8 text file (one text per line), at most ``limit`` (read strictly, BOM dropped)."""
    return read_text_lines(path, "text file", limit=limit or 0).texts


def text_stream(lines: Sequence[str], seed: int) -> Iterator[str]:
    """The shared data order: epoch e is ``lines`` shuffled by ``random.Random(seed + e)``."""
    epoch = 0
    while True:
        order = list(range(len(lines)))
        random.Random(seed + epoch).shuffle(order)
        for i in order:
            yield lines[i]
        epoch += 1


def lr_at(step: int, share: float, peak: float) -> float:
    """The schedule: linear warm-up over WARMUP_STEPS steps, cosine to MIN_LR_SHARE x peak at share 1."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(share, 0.0), 1.0)))
    return peak * warm * (MIN_LR_SHARE + (1.0 - MIN_LR_SHARE) * cosine)


def adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.AdamW:
    """AdamW as ``ilt train`` builds it (Trainer's default ``--optim adamw_torch_fused``: one fused kernel over
    every tensor, on a CPU too), betas 0.9/0.95; each group carries its own weight decay."""
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)


class Clock:
    """Wall-clock timer that waits for the accelerator before reading the time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def generation_prompts(texts: Sequence[str], segment: Any, prompt_units: int, count: int) -> list[str]:
    """``count`` prompts of ``prompt_units`` units from the held-out texts (the longest ones first if short)."""
    units = [segment(t) for t in texts]
    long_enough = [u for u in units if len(u) >= prompt_units] or sorted(units, key=len, reverse=True)[:count]
    if not long_enough:
        raise ILTError("bench: the held-out texts are empty; generation needs prompts")
    return ["".join(long_enough[i % len(long_enough)][:prompt_units]) for i in range(count)]


def take_blocks(pending: list[Any], texts: Iterator[str], segment: Any, batch_size: int, block_units: int) -> list[Any]:
    """The next texts of the stream, as :class:`~ilt_core.text.collator.TextUnits` blocks, that fill ``batch_size`` rows.

    Rows are packed greedily in order (as ``collate(..., packing=True)`` packs them), each holding at most
    ``block_units`` positions (a start marker per text block); a text longer than a row is cut into blocks
    of ``block_units - 1`` units. ``pending`` carries the blocks of a text that did not fit to the next call.
    """
    from ilt_core.evaluation import text_blocks

    chosen: list[Any] = []
    rows = used = 0
    while True:
        if not pending:
            pending.extend(text_blocks(segment(next(texts)), block_units - 1))
        n = len(pending[0].units) + 1
        if rows and used + n <= block_units:
            used += n
        elif rows < batch_size:
            rows, used = rows + 1, n
        else:
            return chosen
        chosen.append(pending.pop(0))


# ---- the runners: one interface for ILT mixes and baselines -----------------------------------------


class ILTRunner:
    """An :class:`~ilt_core.modeling.model.ILTModel` fed by packed rows of ``block_units`` units."""

    def __init__(self, mix: dict[str, Any], settings: dict[str, Any], device: torch.device) -> None:
        from ilt_core.modeling.flops import ilt_counter
        from ilt_core.modeling.model import build_model

        self.device = device
        self.model = build_model(mix["spec"], seed=settings["seed"]).to(device)
        self.processor = self.model.processor
        self.batch_size = int(mix["bench"]["batch_size"])
        self.block_units = min(int(mix["bench"]["block_units"]), self.model.max_units)
        self._pending: list[Any] = []
        # the batches ilt train makes by default: the same shapes at every step (ilt train --fixed_shapes)
        self.shapes = self.model.fixed_shapes(self.batch_size, self.block_units)
        self.flops = ilt_counter(self.model)  # one part per component and mapping: ilt train's count

    def parameters(self) -> Any:
        return self.model.parameters()

    def param_groups(self, scaling: str, lr: float) -> list[dict[str, Any]]:
        """AdamW groups, one per component and weight decay, each with its learning-rate ``factor``: ``ilt train``'s
        (:func:`~ilt_core.modeling.parameters.learning_rate_groups`)."""
        from ilt_core.modeling.parameters import learning_rate_groups

        return learning_rate_groups(self.model, lr, scaling, weight_decay=WEIGHT_DECAY)

    def parameter_counts(self) -> dict[str, int]:
        return self.model.parameter_counts()

    def segment(self, text: str) -> list[str]:
        return self.processor.segment(text)

    def train(self) -> None:
        self.model.train()

    def next_batch(self, texts: Iterator[str]) -> tuple[Any, int, int]:
        """The next training batch from the shared stream, with its units and UTF-8 bytes of text."""
        blocks = take_blocks(self._pending, texts, self.processor.segment, self.batch_size, self.block_units)
        batch = self.processor.collate(blocks, packing=True, shapes=self.shapes)
        units = sum(len(b.units) for b in blocks)
        nbytes = sum(utf8_len(u) for b in blocks for u in b.units)
        return batch, units, nbytes

    def loss(self, batch: Any) -> torch.Tensor:
        return self.model(**batch.to(self.device).model_inputs()).loss

    def count_flops(self, batch: Any, nbytes: int) -> None:
        """Add the batch's tokens and sequence lengths per part (:func:`ilt_core.modeling.flops.count_ilt_batch`)."""
        from ilt_core.modeling.flops import count_ilt_batch

        count_ilt_batch(self.flops, self.model, batch, nbytes)

    def bits_per_byte(self, texts: Sequence[str]) -> Any:
        from ilt_core.evaluation import bits_per_byte

        return bits_per_byte(self.model, texts, batch_size=8)

    def generate(self, prompts: Sequence[str], new_units: int, byte_cap: int | None = None) -> tuple[int, int]:
        """Greedy generation with the KV cache; returns how many units, and UTF-8 bytes, were generated.

        End of text is suppressed (the decoder must write at least one byte, and never pad / bos), so every
        row writes exactly ``new_units`` units, as the baselines' end-of-text token is suppressed. With
        ``byte_cap`` every unit is decoded to exactly that many bytes (the reference's protocol).
        """
        from ilt_core.generation.loop import generate
        from ilt_core.text.byte_tokenizer import BOS_ID, PAD_ID

        options: dict[str, Any] = {"byte_suppress_tokens": [PAD_ID, BOS_ID], "byte_min_new_tokens": 1}
        if byte_cap:
            options.update(max_unit_bytes=byte_cap, byte_min_new_tokens=byte_cap)
        texts = generate(self.model, list(prompts), max_new_units=new_units, use_cache=True, **options)
        return sum(new_units for t in texts if t), sum(utf8_len(t) for t in texts)

    def text_to_batch(self, texts: Sequence[str], render_limit: int) -> dict[str, float | None]:
        """Units/s of text -> batch with an empty render cache (cold), again (warm), and rendering alone."""
        from ilt_core.text.collator import TextUnits
        from ilt_core.text.processor import ILTProcessor

        p = self.processor
        fresh = ILTProcessor(
            self.model.renderer,
            max_unit_bytes=p.max_unit_bytes,
            labels=p.labels,
            label_bytes=p.label_bytes,
            max_units=p.max_units,
        )

        def one_pass() -> tuple[float, int]:
            start, units = time.perf_counter(), 0
            for i in range(0, len(texts), self.batch_size):
                segmented = [TextUnits(fresh.segment(t)) for t in texts[i : i + self.batch_size]]
                units += sum(len(s.units) for s in segmented)
                fresh.collate(segmented, packing=True, max_units=self.block_units)
            return time.perf_counter() - start, units

        cold_s, units = one_pass()
        warm_s, _ = one_pass()
        render = None
        if self.model.renderer is not None:
            words = [u for t in texts for u in fresh.segment(t)][:render_limit]
            start = time.perf_counter()
            for u in words:
                self.model.renderer.render(u)  # no cache: the renderer's own speed
            render = len(words) / max(time.perf_counter() - start, 1e-9)
        return {
            "units": units,
            "cold_units_per_second": units / max(cold_s, 1e-9),
            "warm_units_per_second": units / max(warm_s, 1e-9),
            "render_units_per_second": render,
        }


class BaselineRunner:
    """A :class:`~ilt_bench.baselines.BaselineLM` fed by rows of ``block_size`` tokens from the shared stream."""

    def __init__(
        self,
        mix: dict[str, Any],
        settings: dict[str, Any],
        device: torch.device,
        train_texts: Sequence[str],
        eval_texts: Sequence[str],
    ) -> None:
        from ilt_bench.baselines import BaselineSpec, TokenStream, build_baseline
        from ilt_core.modeling.flops import FlopCounter
        from ilt_core.text.segmentation import segment

        self.device = device
        self.spec = BaselineSpec.model_validate(mix["spec"])
        self.batch_size = int(mix["bench"]["batch_size"])
        self.block_size = int(mix["bench"]["block_size"])
        tokenizer_path = settings.get("tokenizer_dir")
        if tokenizer_path and self.spec.baseline == "bpe":
            tokenizer_path = Path(tokenizer_path) / f"bpe-{self.spec.vocab_size}-{settings['train_sha256'][:12]}.json"
        torch.manual_seed(settings["seed"])
        self.lm = build_baseline(self.spec, self.block_size, train_texts, tokenizer_path)
        self.lm.model.to(device)
        self._segment = lambda text: segment(text, self.spec.max_unit_bytes)
        self._stream: TokenStream | None = None
        self._stream_cls = TokenStream
        self.flops = FlopCounter()
        counts = self.parameter_counts()
        self._part = self.flops.part("transformer", self.lm.model, params=counts["transformer"])
        # generation writes new_units x this many tokens: as much text as new_units units of held-out text
        self._tokens_per_unit = self.tokens_per_unit(eval_texts)

    def parameters(self) -> Any:
        return self.lm.model.parameters()

    def param_groups(self, scaling: str, lr: float) -> list[dict[str, Any]]:
        """One rate: a baseline is one transformer of one width (two groups: with and without weight decay)."""
        from ilt_core.modeling.parameters import learning_rate_groups

        groups = learning_rate_groups(self.lm.model, lr, "none", weight_decay=WEIGHT_DECAY)
        return [{**g, "name": "transformer"} for g in groups]

    def parameter_counts(self) -> dict[str, int]:
        return self.lm.parameter_counts()

    def segment(self, text: str) -> list[str]:
        return self._segment(text)

    def train(self) -> None:
        self.lm.model.train()

    def next_batch(self, texts: Iterator[str]) -> tuple[Any, int, int]:
        if self._stream is None:
            self._stream = self._stream_cls(texts, self.lm.codec, self.block_size, self.spec.max_unit_bytes)
        batch = self._stream.next_batch(self.batch_size)
        return batch, batch.num_units, batch.num_bytes

    def loss(self, batch: Any) -> torch.Tensor:
        return self.lm.training_loss(batch, self.device)

    def count_flops(self, batch: Any, nbytes: int) -> None:
        rows, width = batch.input_ids.shape
        self._part.add([width] * rows)
        self.flops.num_bytes += nbytes

    def bits_per_byte(self, texts: Sequence[str]) -> Any:
        return self.lm.bits_per_byte(texts, batch_size=8)

    def tokens_per_unit(self, texts: Sequence[str]) -> float:
        tokens = sum(len(self.lm.codec.encode(t)) for t in texts)
        units = sum(len(self._segment(t)) for t in texts)
        return tokens / max(units, 1)

    def generate(self, prompts: Sequence[str], new_units: int, byte_cap: int | None = None) -> tuple[int, int]:
        """Greedy HF generation of ``new_units`` x tokens-per-unit tokens; returns the units (words) and UTF-8
        bytes it wrote."""
        new_tokens = max(1, math.ceil(new_units * self._tokens_per_unit))
        continuations = self.lm.generate(prompts, new_tokens)
        return sum(len(self._segment(c)) for c in continuations), sum(utf8_len(c) for c in continuations)

    def text_to_batch(self, texts: Sequence[str], render_limit: int) -> dict[str, float | None]:
        """Units/s of text -> token rows (cold: first pass, warm: second pass; no renderer)."""

        def one_pass() -> tuple[float, int]:
            start = time.perf_counter()
            stream = self._stream_cls(iter(texts), self.lm.codec, self.block_size, self.spec.max_unit_bytes)
            units = 0
            for t in texts:
                stream._append_text(t)  # tokenize and lay out, as the training stream does
            units = sum(stream._units)
            return time.perf_counter() - start, units

        cold_s, units = one_pass()
        warm_s, _ = one_pass()
        return {
            "units": units,
            "cold_units_per_second": units / max(cold_s, 1e-9),
            "warm_units_per_second": units / max(warm_s, 1e-9),
            "render_units_per_second": None,
        }


# ---- the measurements ----------------------------------------------------------------------------------


def say(settings: dict[str, Any], message: str) -> None:
    print(f"[{settings['label']}] {message}", flush=True)


def total_flops(counter: Any) -> float:
    """Training FLOPs a :class:`~ilt_core.modeling.flops.FlopCounter` has counted so far (every part)."""
    return float(sum(part.flops() for part in counter.parts.values()))


def budget_share(settings: dict[str, Any], seconds: float, nbytes: int, flops: float) -> float:
    """How much of the budget is used: the largest share among the budgets given (bytes, FLOPs, seconds)."""
    parts = []
    for key, used in (("budget_seconds", seconds), ("budget_bytes", nbytes), ("budget_flops", flops)):
        limit = float(settings.get(key) or 0)
        if limit > 0:
            parts.append(used / limit)
    if not parts:
        raise ILTError("bench: no budget: give --budget-bytes, --budget-flops or --budget-seconds")
    return max(parts)


def train(runner: Any, settings: dict[str, Any], train_lines: Sequence[str], curve_texts: Sequence[str]) -> dict:
    """The training loop; returns throughput, data share, FLOPs, the validation curve and the last loss."""
    device = runner.device
    clock = Clock(device)
    points = max(1, int(settings.get("curve_points") or 8))
    texts = text_stream(train_lines, settings["seed"])
    torch.manual_seed(settings["seed"])
    groups = runner.param_groups(settings.get("lr_scaling", "width"), settings["lr"])
    optimizer = adamw(groups, settings["lr"])

    def share(seconds: float, nbytes: int) -> float:
        return budget_share(settings, seconds, nbytes, total_flops(runner.flops))

    def curve_point(seconds: float, step: int, nbytes: int) -> dict:
        result = runner.bits_per_byte(curve_texts)
        runner.train()
        return {
            "train_seconds": seconds,
            "step": step,
            "train_bytes": nbytes,
            "train_flops": total_flops(runner.flops),
            "bits_per_byte": result.bits_per_byte,
        }

    curve = [curve_point(0.0, 0, 0)]
    runner.train()
    train_s = data_s = 0.0
    steps = units = nbytes = 0
    loss_value = float("nan")
    first: dict[str, float] = {}
    next_point, next_report = 1, 0.1
    while share(train_s, nbytes) < 1.0:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(steps, share(train_s, nbytes), settings["lr"]) * group["factor"]
        t0 = clock()
        batch, batch_units, batch_bytes = runner.next_batch(texts)
        t1 = clock()
        loss = runner.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in runner.parameters() if p.grad is not None], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = clock()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise ILTError(f"bench: the training loss became {loss_value} at step {steps}; lower --lr")
        runner.count_flops(batch, batch_bytes)
        steps, units, nbytes = steps + 1, units + batch_units, nbytes + batch_bytes
        data_s += t1 - t0
        train_s += t2 - t0
        if steps == 1:  # the first step pays one-time costs (allocator, kernels, a cold render cache)
            first = {"seconds": t2 - t0, "units": units, "bytes": nbytes, "data_seconds": data_s}
        done = share(train_s, nbytes)
        if done >= next_report or done >= 1.0:
            say(
                settings,
                f"train {min(done, 1.0):4.0%} | step {steps} | loss {loss_value:.3f} | "
                f"{units / train_s:.0f} units/s | {nbytes / train_s:.0f} bytes/s | {(t2 - t0):.2f} s/step",
            )
            next_report = math.floor(done * 10 + 1) / 10
        if done >= next_point / points and done < 1.0:
            curve.append(curve_point(train_s, steps, nbytes))
            next_point = math.floor(done * points) + 1
    curve.append(curve_point(train_s, steps, nbytes))
    # steady-state figures leave the first step out when there are enough others to measure
    if steps >= 3:
        s_units, s_bytes, s_time = units - first["units"], nbytes - first["bytes"], train_s - first["seconds"]
        s_data, s_steps = data_s - first["data_seconds"], steps - 1
    else:
        s_units, s_bytes, s_time, s_data, s_steps = units, nbytes, train_s, data_s, steps
    return {
        "steps": steps,
        "train_seconds": train_s,
        "train_units": units,
        "train_bytes": nbytes,
        "train_flops": total_flops(runner.flops),
        "first_step_seconds": first["seconds"],
        "steady_steps": s_steps,
        "units_per_second": s_units / s_time,
        "bytes_per_second": s_bytes / s_time,
        "step_seconds": s_time / s_steps,
        "data_seconds": s_data,
        "data_share": s_data / s_time,
        "final_loss": loss_value,
        "lr_factors": {g["name"]: g["factor"] for g in groups},
        "curve": curve,
    }


def measure_generation(
    runner: Any, settings: dict[str, Any], eval_texts: Sequence[str], reference: bool = False
) -> dict:
    """Units/s of greedy cached generation at batch 1 and 8 (after one short warm-up call per batch size).

    With ``reference`` (an ILT mix whose ``bench:`` block asks for it) also the reference's protocol.
    """
    clock = Clock(runner.device)
    new_units = int(settings["gen_new_units"])
    out = {}
    for batch in settings["gen_batches"]:
        prompts = generation_prompts(eval_texts, runner.segment, int(settings["gen_prompt_units"]), batch)
        runner.generate(prompts, 1)  # warm-up: kernels, caches
        start = clock()
        generated, nbytes = runner.generate(prompts, new_units)
        seconds = clock() - start
        out[f"batch_{batch}"] = {
            "batch_size": batch,
            "max_new_units": new_units,
            "units": generated,
            "bytes": nbytes,
            "seconds": seconds,
            "units_per_second": generated / max(seconds, 1e-9),
            # mixes write units of different lengths: bytes/s compares them on the same footing
            "bytes_per_second": nbytes / max(seconds, 1e-9),
        }
        say(settings, f"generate batch {batch}: {generated} units in {seconds:.2f} s")
    protocol = settings.get("reference_generation")
    if reference and protocol:
        # the reference's protocol: every word decoded to its byte cap, time per step (one unit for every row)
        prompts = generation_prompts(eval_texts, runner.segment, protocol["prompt_units"], protocol["batch_size"])
        runner.generate(prompts, 1, byte_cap=protocol["byte_cap"])
        start = clock()
        generated, _ = runner.generate(prompts, protocol["new_units"], byte_cap=protocol["byte_cap"])
        seconds = clock() - start
        out["reference_protocol"] = {
            **protocol,
            "units": generated,
            "steps": protocol["new_units"],
            "seconds": seconds,
            "units_per_second": generated / max(seconds, 1e-9),
            "bytes_per_unit": protocol["byte_cap"],
        }
        say(settings, f"generate (reference protocol): {1000 * seconds / protocol['new_units']:.0f} ms a step")
    return out


def loglikelihood_requests(texts: Sequence[str], segment: Any, count: int) -> list[tuple[str, str]]:
    """``count`` lm_eval-style ``(context, continuation)`` pairs from held-out texts: each text cut in the middle
    of its units, the space moved into the continuation (``"... is" + " Paris ..."``), cycling when short."""
    pairs = []
    for text in texts:
        units = segment(text)
        if len(units) >= 2:
            context = "".join(units[: len(units) // 2])
            stripped = context.rstrip()
            pairs.append((stripped, context[len(stripped) :] + "".join(units[len(units) // 2 :])))
    if not pairs:
        raise ILTError("bench: no held-out text has two units or more; the loglikelihood test needs them")
    return [pairs[i % len(pairs)] for i in range(count)]


def measure_loglikelihood(runner: Any, eval_texts: Sequence[str], batch_size: int = 16, count: int = 64) -> dict:
    """lm_eval ``loglikelihood`` requests per second at ``batch_size`` (after one warm-up batch), through the
    mix's lm_eval model (:func:`ilt_bench.lm_eval_models.lm_eval_model`)."""
    from lm_eval.api.instance import Instance

    from ilt_bench.lm_eval_models import lm_eval_model

    lm = lm_eval_model(runner, batch_size)
    pairs = loglikelihood_requests(eval_texts, runner.segment, count)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    lm.loglikelihood(requests[:batch_size], disable_tqdm=True)
    clock = Clock(runner.device)
    start = clock()
    lm.loglikelihood(requests, disable_tqdm=True)
    seconds = clock() - start
    return {
        "batch_size": batch_size,
        "requests": len(requests),
        "seconds": seconds,
        "requests_per_second": len(requests) / max(seconds, 1e-9),
    }


def evaluate_tasks(runner: Any, settings: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lm_eval's tasks (``settings["tasks"]``) on the trained mix: ``{task: {metric: value}}`` (lm_eval's filter
    suffix dropped, standard errors left out: the report's spread is over seeds)."""
    import ilt_lm_eval
    import lm_eval

    from ilt_bench.lm_eval_models import lm_eval_model

    tasks = list(settings["tasks"])
    metadata = {"data_dir": settings["task_data_dir"]} if settings.get("task_data_dir") else {}
    manager = ilt_lm_eval.task_manager(metadata=metadata, include_defaults=False)
    if not set(tasks) <= set(manager.all_tasks):  # lm_eval's own tasks: index them too (seconds)
        manager = ilt_lm_eval.task_manager(metadata=metadata)
    seed = int(settings["seed"])
    out = lm_eval.simple_evaluate(
        model=lm_eval_model(runner, int(settings.get("task_batch_size") or 16)),
        tasks=tasks,
        task_manager=manager,
        limit=settings.get("task_limit") or None,
        bootstrap_iters=0,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    figures: dict[str, dict[str, float]] = {}
    for task, metrics in out["results"].items():
        figures[task] = {
            key.split(",")[0]: float(value)
            for key, value in metrics.items()
            if "," in key and "_stderr" not in key and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
    return figures


def run_mix(job: dict[str, Any]) -> dict[str, Any]:
    """Everything for one mix; see the module docstring."""
    mix, settings = job["mix"], job["settings"]
    torch.set_num_threads(int(settings["threads"]))
    device = torch.device(settings["device"])
    train_lines = read_lines(settings["train_file"])
    measure = settings.get("measure", True)
    offset = int(settings.get("eval_offset") or 0)
    eval_lines = int(settings.get("eval_lines") or 0)
    eval_texts = read_lines(settings["eval_file"], offset + eval_lines if eval_lines else None)[offset:]
    if not eval_texts:
        raise ILTError(f"bench: no held-out texts from line {offset} of {settings['eval_file']} on")
    curve_texts = eval_texts[: int(settings["curve_lines"])]
    started = time.perf_counter()

    say(settings, f"building {mix['name']} ({mix['kind']}), seed {settings['seed']}, lr {settings['lr']:g}")
    if mix["kind"] == "ilt":
        runner: Any = ILTRunner(mix, settings, device)
    else:
        runner = BaselineRunner(mix, settings, device, train_lines, eval_texts)
    counts = runner.parameter_counts()
    # text -> batch first, while the render cache is still empty (the "cold" figure)
    t2b = (
        runner.text_to_batch(eval_texts[: int(settings["t2b_lines"])], int(settings["render_units"])) if measure else {}
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    trained = train(runner, settings, train_lines, curve_texts)
    peak_train = peak_rss_bytes()
    say(settings, f"held-out bits-per-byte on {len(eval_texts)} texts")
    start = time.perf_counter()
    bpb = runner.bits_per_byte(eval_texts)
    eval_s = time.perf_counter() - start
    reference = mix["kind"] == "ilt" and bool(mix["bench"].get("reference_protocol"))
    generation = measure_generation(runner, settings, eval_texts, reference) if measure else {}
    loglikelihood = measure_loglikelihood(runner, eval_texts) if measure else {}
    if loglikelihood:
        say(settings, f"lm_eval loglikelihood: {loglikelihood['requests_per_second']:.1f} requests/s at batch 16")
    tasks: dict[str, dict[str, float]] = {}
    if measure and settings.get("tasks"):
        start = time.perf_counter()
        tasks = evaluate_tasks(runner, settings)
        say(settings, f"lm_eval tasks in {time.perf_counter() - start:.0f} s: {json.dumps(tasks)}")

    peak_flops = float(settings["peak_flops"])
    flops_per_byte = runner.flops.flops_per_byte()
    achieved = flops_per_byte * trained["bytes_per_second"]
    result = {
        "name": mix["name"],
        "kind": mix["kind"],
        "description": mix["spec"].get("description", ""),
        "status": "ok",
        "seed": settings["seed"],
        "lr": settings["lr"],
        "spec": mix["spec"],
        "bench": mix["bench"],
        **{k: v for k, v in trained.items() if k != "curve"},
        "bits_per_byte": bpb.bits_per_byte,
        "eval": {**bpb.__dict__, "seconds": eval_s},
        "flops_per_byte": flops_per_byte,
        "flops_parts": runner.flops.summary(),
        "achieved_flops_per_second": achieved,
        "mfu": achieved / peak_flops,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_train_bytes": peak_train,
        "openblas_threads": openblas_threads(),
        "parameters": counts,
        "parameters_total": sum(counts.values()),
        "generation": generation,
        "loglikelihood": loglikelihood,
        "tasks": tasks,
        "text_to_batch": t2b,
        "curve": trained["curve"],
        "wall_seconds": time.perf_counter() - started,
    }
    if device.type == "cuda":
        result["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(device))
    say(settings, f"done: {bpb.bits_per_byte:.3f} bits/byte, {trained['units_per_second']:.0f} units/s")
    return result


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_mix`, with a failure turned into a result that says what went wrong (the harness goes on)."""
    try:
        return run_mix(job)
    except Exception as exc:  # the parent reports the mix as failed and goes on with the others
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {
            "name": job["mix"]["name"],
            "kind": job["mix"]["kind"],
            "status": "error",
            "seed": job["settings"].get("seed"),
            "error": f"{type(exc).__name__}: {first}",
            "spec": job["mix"]["spec"],
            "bench": job["mix"]["bench"],
        }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m ilt_bench.run JOB.json", file=sys.stderr)
        return 2
    # this process is a run of ``ilt train``: its process-wide settings, not numpy's and glibc's defaults
    applied = as_the_ilt_command(train=True)
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    out = Path(job["result"])
    result = {**run_job(job), "process_settings": applied}
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
