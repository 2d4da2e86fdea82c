#!/usr/bin/env bash
# The GPU check: train the tiny preset from a streamed parquet corpus (bf16, SDPA, packing, 2 DataLoader workers)
# in each mode of DEVICE_CHECK_MODES (dynamic: --no_fixed_shapes, eager; fixed: --fixed_shapes, eager;
# compiled: --torch_compile, one fullgraph graph of static shapes; small: the small preset with its default spec,
# fixed shapes, eager, DEVICE_CHECK_SMALL_STEPS steps), then generate; prints words/s, model FLOPs
# utilisation against the card's dense bf16 peak, peak GPU memory, the data pipeline's share of step time and
# generation units/s. Within 8 minutes, the install from carried wheels included. Never part of `make test`.
#
# Here, once:   bash benchmarks/device_wheels.sh          (wheels + corpus into the git-ignored .whl/)
# On the GPU:   the device tool's run, with carry [".whl"] and timeout_s 540:
#                 bash benchmarks/device_check.sh 2>&1 | tee $OUT/device_check.log
# Dry run here: DEVICE_CHECK_CPU=1 DEVICE_CHECK_STEPS=2 bash benchmarks/device_check.sh
#
# Then nano against the byte baseline matched with it in FLOPs per byte, one step of each in turn (bytes/s, ratio;
# DEVICE_CHECK_BASELINE=0 skips it, DEVICE_CHECK_BASELINE_STEPS: default 50).
# Environment: DEVICE_CHECK_MODES (default "dynamic fixed compiled small"), DEVICE_CHECK_SMALL_STEPS (default 30), DEVICE_CHECK_PEAK_TFLOPS (the dense bf16
# peak MFU is measured against; default 989, NVIDIA's figure for H100 SXM and H200), DEVICE_CHECK_STEPS (per mode,
# default 100), DEVICE_CHECK_CPU=1 (run on the CPU with this checkout's
# .venv, no install, no bf16), DEVICE_CHECK_SECONDS (the whole check's budget, default 480),
# DEVICE_CHECK_BATCH (rows per step, default 16), DEVICE_CHECK_PROFILE=N (profile N steps after the warm-up with
# torch.profiler and print where their time went; default 0), PYTHON (the interpreter; default python3 on the GPU
# machine), DEVICE_CHECK_FSDP=1 (instead of the check above: benchmarks/fsdp_check.py, FSDP through Trainer against
# the same run without it, eval, resume, per-component learning rates; one process per GPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$SECONDS
budget=${DEVICE_CHECK_SECONDS:-480}
export DEVICE_CHECK_STEPS=${DEVICE_CHECK_STEPS:-100}
export DEVICE_CHECK_MODES=${DEVICE_CHECK_MODES:-dynamic fixed compiled small}
export DEVICE_CHECK_SMALL_STEPS=${DEVICE_CHECK_SMALL_STEPS:-30}
export DEVICE_CHECK_BASELINE=${DEVICE_CHECK_BASELINE:-1}
export DEVICE_CHECK_BASELINE_STEPS=${DEVICE_CHECK_BASELINE_STEPS:-50}
export DEVICE_CHECK_PEAK_TFLOPS=${DEVICE_CHECK_PEAK_TFLOPS:-989}
export DEVICE_CHECK_CPU=${DEVICE_CHECK_CPU:-0}
export DEVICE_CHECK_BATCH=${DEVICE_CHECK_BATCH:-16}
export DEVICE_CHECK_PROFILE=${DEVICE_CHECK_PROFILE:-0}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

if ! ls .whl/corpus/*.parquet >/dev/null 2>&1; then
  echo "device_check: no corpus in .whl/corpus/: run 'bash benchmarks/device_wheels.sh' here and carry .whl" >&2
  exit 2
fi
if [ "$DEVICE_CHECK_CPU" = 1 ]; then
  PYTHON=${PYTHON:-.venv/bin/python}
else
  # The GPU image lacks datasets, pydantic, the FreeType stack and the fonts: install them, then the project
  # (built offline with the carried setuptools), into a folder of their own.
  PYTHON=${PYTHON:-python3}
  site=/tmp/ilt-site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH=$site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$site" . ilt_plugins/hf ilt_plugins/freetype
  echo "device_check: installed in $((SECONDS - start)) s"
fi

if [ "${DEVICE_CHECK_FSDP:-0}" = 1 ]; then
  status=0
  timeout --kill-after=10 "$((budget - (SECONDS - start)))" "$PYTHON" benchmarks/fsdp_check.py || status=$?
  echo "device_check: fsdp_check exit $status after $((SECONDS - start)) s"
  exit "$status"
fi

work=$(mktemp -d /tmp/ilt-device-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
# A file, not stdin: DataLoader workers started with 'spawn' re-import the main module.
cat >"$work/device_check.py" <<'EOF'
"""The Python part of benchmarks/device_check.sh (see there)."""

import glob
import os
import sys
import tempfile
import time
from importlib.metadata import version


def nano_against_byte_baseline(cuda: bool, steps: int) -> None:
    """Issue 23's GPU goal: ILT ``nano`` against the byte baseline matched with it in training FLOPs per byte
    (``benchmarks/mixes/nano.yaml``, ``nano-baseline-bytes.yaml``), each at its bench batch, trained on this device
    from the same corpus texts, bf16 autocast (fp32 on the CPU dry run), fused AdamW, one step of each in turn:
    UTF-8 bytes of text a second and their ratio."""
    import pyarrow.parquet as pq
    import torch
    import yaml
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from ilt_core import build_model, load_spec
    from ilt_core.text.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE
    from ilt_core.text.collator import TextUnits

    if not cuda:  # the dry run: numpy's OpenBLAS on one thread, as the `ilt` command sets it (run_training undid it)
        from ilt_core.modeling.products import set_openblas_threads

        set_openblas_threads(1)
    device = "cuda" if cuda else "cpu"
    texts = [t for path in sorted(glob.glob(".whl/corpus/*.parquet")) for t in pq.read_table(path, columns=["text"]).column("text").to_pylist()][:4000]  # fmt: skip
    ilt = build_model(load_spec("benchmarks/mixes/nano.yaml"), seed=0).to(device).train()
    with open("benchmarks/mixes/nano.yaml", encoding="utf-8") as f:
        bench = yaml.safe_load(f).get("bench") or {}
    rows, units = int(bench.get("batch_size", 8)), int(bench.get("block_units", 64))
    shapes = ilt.fixed_shapes(rows, units)
    need, stream_units = 8 * rows * (units - 1), []  # rows full of text, as `ilt train --packing` fills them
    for t in texts:
        stream_units += ilt.processor.segment(t)
        if len(stream_units) >= need:
            break
    pieces = [TextUnits(stream_units[i : i + units - 1], complete=False) for i in range(0, need, units - 1)]
    ilt_batches = [ilt.processor.collate(pieces[i : i + rows], max_units=units, shapes=shapes) for i in range(0, 8 * rows, rows)]  # fmt: skip
    with open("benchmarks/mixes/nano-baseline-bytes.yaml", encoding="utf-8") as f:
        mix = yaml.safe_load(f)
    body = {"hidden_act": "gelu", "use_parallel_residual": True, "layer_norm_eps": 1e-5, **mix["model"]}
    cfg = GPTNeoXConfig(vocab_size=VOCAB_SIZE, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                        tie_word_embeddings=False, max_position_embeddings=2048, **body)  # fmt: skip
    base = GPTNeoXForCausalLM(cfg).to(device).train()
    b_rows, block = int(mix["bench"]["batch_size"]), int(mix["bench"]["block_size"])
    stream = [b for t in texts for b in [BOS_ID, *t.encode("utf-8"), EOS_ID]]
    base_batches = [torch.tensor(stream[i * b_rows * block : (i + 1) * b_rows * block]).view(b_rows, block) for i in range(8)]  # fmt: skip
    base_bytes = [int((b < 256).sum()) for b in base_batches]
    ilt_bytes = [int(b.num_bytes.sum()) for b in ilt_batches]
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True) for name, m in (("ilt", ilt), ("base", base))}
    dtype = torch.bfloat16 if cuda else torch.float32

    def step(name: str, i: int) -> None:
        with torch.autocast(device, dtype=dtype, enabled=cuda):
            if name == "ilt":
                loss = ilt(**ilt_batches[i % 8].to(device).model_inputs()).loss
            else:
                ids = base_batches[i % 8].to(device)
                loss = base(input_ids=ids, labels=ids).loss
        loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)

    seconds = {"ilt": 0.0, "base": 0.0}
    done_bytes = {"ilt": 0, "base": 0}
    for i in range(steps + 3):
        for name in ("ilt", "base"):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(name, i)
            if cuda:
                torch.cuda.synchronize()
            if i >= 3:  # warm-up steps not measured
                seconds[name] += time.perf_counter() - t0
                done_bytes[name] += (ilt_bytes if name == "ilt" else base_bytes)[i % 8]
    rate = {name: done_bytes[name] / seconds[name] for name in seconds}
    print(
        f"nano against the byte baseline (matched FLOPs per byte), {steps} steps each, {dtype}: ILT "
        f"{rate['ilt']:,.0f} bytes/s, byte baseline {rate['base']:,.0f} bytes/s: {rate['ilt'] / rate['base']:.2f}x "
        "(issue 23's goal on a GPU: >= 1.0x)"
    )


def main() -> int:
    import pyarrow.parquet as pq
    import torch
    from transformers import TrainerCallback

    from ilt_core import segment
    from ilt_core.training.run import run_training

    steps = int(os.environ["DEVICE_CHECK_STEPS"])
    on_cpu = os.environ["DEVICE_CHECK_CPU"] == "1"
    if not on_cpu and not torch.cuda.is_available():
        print("device_check: torch sees no CUDA device (DEVICE_CHECK_CPU=1 runs the dry run on the CPU)")
        return 2
    cuda = not on_cpu
    names = ("torch", "transformers", "datasets", "pyarrow", "pydantic", "freetype-py", "uharfbuzz")
    print("versions:", ", ".join(f"{n} {version(n)}" for n in names), f"python {sys.version.split()[0]}")
    if cuda:
        print("device:", torch.cuda.get_device_name(0))
    profile_steps = int(os.environ["DEVICE_CHECK_PROFILE"])

    class Measure(TrainerCallback):
        """Step times (synchronised at each step's end) and the waits for the next batch between steps."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.waits: list[float] = []
            self.words: list[int] = []
            self.seen = 0
            self.groups: list[int] = []
            self.path = "?"
            self.profiler = None

        def count(self, module, args, kwargs) -> None:  # forward pre-hook
            # the image encoder runs once per width group (fixed batches: once, packed): launches grow with them
            self.groups.append(len(kwargs.get("image_groups") or ()) or int("image_patches" in kwargs))

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_pre_hook(self.count, with_kwargs=True)
            latent = model.latent_transformer
            attention = latent.model.config._attn_implementation
            by_positions = getattr(latent, "masks_from_position_ids", lambda: False)()
            self.path = f"{attention}, {'mask from position ids' if by_positions else 'dense block-causal mask'}"
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kwargs):
            if self.ends:
                self.waits.append(time.perf_counter() - self.ends[-1])
            if profile_steps and state.global_step == warmup:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if cuda:
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            if self.profiler is not None and state.global_step == warmup + profile_steps:
                self.profiler.__exit__(None, None, None)
                table = self.profiler.key_averages()
                print(f"profile of steps {warmup + 1}..{warmup + profile_steps} (times are totals over them):")
                if cuda:
                    print(table.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
                print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
                self.profiler = None

    peak_flops = float(os.environ["DEVICE_CHECK_PEAK_TFLOPS"]) * 1e12
    model = None
    for mode in os.environ["DEVICE_CHECK_MODES"].split():
        measure = Measure()
        extra = {
            "dynamic": ["--no_fixed_shapes"],
            "fixed": ["--fixed_shapes"],
            "compiled": ["--torch_compile"],
            "small": ["--fixed_shapes"],  # the small preset with its default spec (issue 23: >= 25% MFU in bf16)
        }[mode]
        preset = "small" if mode == "small" else "tiny"
        mode_steps = min(steps, int(os.environ["DEVICE_CHECK_SMALL_STEPS"])) if mode == "small" else steps
        warmup = min(10, mode_steps // 2)  # worker start-up, a cold render cache, kernel selection: not measured
        with tempfile.TemporaryDirectory(prefix="ilt-device-check-") as out:
            argv = [
                "--model_spec", preset,
                "--set", "latent_transformer.attn_implementation=sdpa",
                "--train_file", ".whl/corpus/*.parquet",
                "--streaming",
                "--do_train",
                "--output_dir", out,
                "--max_steps", str(mode_steps),
                "--per_device_train_batch_size", os.environ["DEVICE_CHECK_BATCH"],
                "--packing",
                "--dataloader_num_workers", "2",
                "--learning_rate", "5e-4",
                "--save_strategy", "no",
                "--eval_strategy", "no",
                "--logging_steps", "50",
                "--report_to", "none",
                "--disable_tqdm", "true",
                "--seed", "0",
            ] + extra + (["--use_cpu"] if on_cpu else ["--bf16"])  # fmt: skip
            t0 = time.perf_counter()
            result = run_training(argv, callbacks=[measure])
            train_seconds = time.perf_counter() - t0
            if preset == "tiny":
                model = result.trainer.model  # what the checks below generate with
            total_flos = float(result.trainer.state.total_flos)

        first, last = warmup, len(measure.ends) - 1
        seconds = measure.ends[last] - measure.ends[first - 1] if first > 0 else measure.ends[last] - t0
        waits = sum(measure.waits[first - 1 : last]) if first > 0 else sum(measure.waits[:last])
        measured = last - first + 1
        # words and FLOPs a step: the run's means (counted on the host by the collators, not read off the device)
        words_per_step = result.train_metrics.get("train_units", 0) / max(len(measure.ends), 1)
        flops_per_step = total_flos / max(len(measure.ends), 1)
        print(f"[{mode}] train: {len(measure.ends)} steps in {train_seconds:.1f} s (build, workers, compile included)")
        print(f"[{mode}] latent attention: {measure.path}")
        print(f"[{mode}] steps {first + 1}..{last + 1} ({measured} measured, {warmup} warm-up not):")
        print(
            f"[{mode}]   words/s: {words_per_step * measured / seconds:,.0f}  ({words_per_step:,.0f} words per step, "
            f"{seconds / measured:.3f} s/step)"
        )
        print(
            f"[{mode}]   model FLOPs utilisation: {flops_per_step * measured / seconds / peak_flops:.2%} of "
            f"{peak_flops / 1e12:,.0f} TFLOP/s dense bf16 ({flops_per_step / 1e12:.3f} TFLOP a step, counted)"
        )
        if measure.groups:
            g = measure.groups
            print(f"[{mode}]   image encoder calls a forward: mean {sum(g) / len(g):.1f}, min {min(g)}, max {max(g)}")
        print(f"[{mode}]   data pipeline share of step time: {waits / seconds:.1%} (waiting for the next batch)")
        if cuda:
            peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            print(f"[{mode}]   peak GPU memory: {peak / 2**30:.2f} GiB allocated, {reserved / 2**30:.2f} GiB reserved")

    if os.environ["DEVICE_CHECK_BASELINE"] == "1":
        nano_against_byte_baseline(cuda, int(os.environ["DEVICE_CHECK_BASELINE_STEPS"]))
    if model is None:
        print("device_check: no tiny mode in DEVICE_CHECK_MODES: the generation checks need one")
        return 0

    from ilt_hf import byte_loop, fast_neox

    texts = pq.read_table(sorted(glob.glob(".whl/corpus/*.parquet"))[0], columns=["text"]).column("text")
    # the first 8 words of texts of 24 words or more; every unit at least one byte, so no text ends early
    # (a trained model may end a headline at once: then a timing would count no units)
    long_texts = [units for units in map(segment, texts.to_pylist()) if len(units) >= 24]
    prompts = ["".join(units[:8]) for units in long_texts[:8]]
    fixed_work = {"byte_min_new_tokens": 1}
    model.eval()
    for batch in (prompts[:1], prompts, prompts * 8):
        written = {}
        # a growing latent cache, then one of constant shapes (its steps CUDA graphs), then that without graphs
        for cache in ("dynamic", "static", "static-eager"):
            graphs = cache != "static-eager"
            byte_loop.CUDA_GRAPHS = fast_neox.STEP_GRAPHS = graphs
            options = {**fixed_work, "cache_implementation": cache.split("-")[0]}
            model.generate(batch, max_new_units=4, **options)  # warm-up: kernels, caches
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outputs = model.generate(batch, max_new_units=32, return_scores=True, **options)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            units = sum(len(o.units) for o in outputs)
            written[cache] = [o.text for o in outputs]
            print(
                f"generate batch {len(batch)} {cache} cache: {units / seconds:,.1f} units/s "
                f"({units} units in {seconds:.2f} s, fp32)"
            )
        byte_loop.CUDA_GRAPHS = fast_neox.STEP_GRAPHS = True
        same = written["static"] == written["dynamic"] == written["static-eager"]
        print(f"generate batch {len(batch)}: the same texts with all three: {same}")
    print(f"sample: {prompts[0]!r} -> {outputs[0].text[:80]!r}")

    # the fused greedy byte loop (its step a CUDA graph on CUDA) against transformers' generate, on this device
    import copy

    import torch.nn.functional as F

    from ilt_core.text.byte_tokenizer import EOS_ID, PAD_ID

    for dtype in (torch.float32, torch.bfloat16) if cuda else (torch.float32,):
        decoder = copy.deepcopy(model.bytes_decoder).to(dtype)
        torch.manual_seed(0)
        prefix = torch.randn(8, 1, decoder.hidden_size, device=model.device, dtype=dtype)
        fused = decoder.greedy(prefix, 24, EOS_ID, PAD_ID, check_at=24)
        mask = torch.ones(8, 1, dtype=torch.long, device=model.device)
        plain = decoder.generate(prefix, mask, max_new_tokens=24, do_sample=False)
        plain = F.pad(plain, (0, 24 - plain.shape[1]), value=PAD_ID)
        graphs = any(loop.graph is not None for loop in getattr(decoder._fused, "loops", {}).values())
        same = (fused == plain).all(1).float().mean().item()
        print(f"fused greedy vs generate, {dtype}: rows equal {same:.0%}, CUDA graph {graphs}")
        for use_graphs in (True, False):  # the byte step replayed as a graph, then launched op by op
            byte_loop.CUDA_GRAPHS = use_graphs
            timed = copy.deepcopy(decoder)  # no kept loop, no graph yet
            ids = timed.greedy(prefix, 24, EOS_ID, PAD_ID, check_at=24)  # warm-up (and the capture)
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                timed.greedy(prefix, 24, EOS_ID, PAD_ID, check_at=24)
            if cuda:
                torch.cuda.synchronize()
            per_byte = (time.perf_counter() - t0) / 10 / 24
            print(
                f"  byte step at batch 8, {dtype}, graphs {use_graphs}: {per_byte * 1e6:.0f} us "
                f"(ids equal to the fused loop's: {bool(torch.equal(ids, fused))})"
            )
        byte_loop.CUDA_GRAPHS = True

    # training batches carry word images as uint8, made floats on the device: the loss must not change
    processor = model.processor
    with torch.no_grad():
        as_float = model(**processor(prompts).to(model.device).model_inputs()).loss
        as_uint8 = model(**processor.with_pixels("uint8")(prompts).to(model.device).model_inputs()).loss
    same = bool(torch.equal(as_float, as_uint8))
    print(f"uint8 vs float word images on the device: loss {as_uint8.item():.7f} vs {as_float.item():.7f}, equal: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
EOF

left=$((budget - (SECONDS - start)))
status=0
timeout --kill-after=10 "$left" "$PYTHON" "$work/device_check.py" || status=$?
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  echo "device_check: over its budget of ${budget} s (stopped after $((SECONDS - start)) s)" >&2
fi
echo "device_check: exit $status after $((SECONDS - start)) s"
exit "$status"
