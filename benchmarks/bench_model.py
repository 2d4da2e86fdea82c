"""Speed and memory of a training step: forward + backward + AdamW step, on real text (he-news).

    .venv/bin/python benchmarks/bench_model.py --out runs/bench_model.json               # tiny variants
    .venv/bin/python benchmarks/bench_model.py --reference --out runs/bench_model.json   # + reference setup
    .venv/bin/python benchmarks/bench_model.py --reference --experiments                 # + A/B speed-ups
    .venv/bin/python benchmarks/bench_model.py --quick                                   # smoke run
    .venv/bin/python benchmarks/bench_model.py --breakdown --threads 2                   # the step by component
    .venv/bin/python benchmarks/bench_model.py --page-faults-ab 2 --threads 2 --no-flops # malloc defaults vs kept pages

Configurations (batch 8 texts x 64 units of he-news, consecutive words of the test split):

- ``tiny-full``, ``tiny-image-only``, ``tiny-bytes-only``: the tiny preset (``labels: unit``).
- ``--reference`` adds ``reference`` and ``reference-no-images``, the setup of the reference
  implementation: bytes encoder BERT 2 x 128, image encoder ViT 12 x 192 patch 16, latent GPT-NeoX
  6 x 512, bytes decoder Llama 2 x 256, labels = the next 32 bytes, modality dropout 0, words 16 px high.
- ``--configs reference reference-checkpointed``: the reference setup without and with activation checkpointing.

Per configuration: median step seconds, units (words) and UTF-8 bytes per second, text -> batch
units/s (cold and warm render cache), FLOPs of one step (``torch.utils.flop_counter``) and the
achieved GFLOP/s beside a matrix-product calibration taken in the same run, and the process's peak
RSS while building and training that configuration (the peak is reset before each).
``--experiments`` times candidate speed-ups interleaved (A B A B) and reports ratios.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)
from ilt_bench.machine import machine_info, package_versions, peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402

common.omp_wait_policy_default()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

#: Absolute goals (not ratios to figures measured elsewhere): peak RSS of the reference setup's training.
GOALS = {"peak_rss_mb": 1500.0}
#: Printed where a comparison with the reference implementation would stand: its figures from another day and
#: another text compare nothing; a comparison must read a measurement of it made in the same run.
NO_REFERENCE = (
    "reference implementation: no reference measurement in this run (figures from another run compare nothing)"
)
TINY_VARIANTS = ("full", "image-only", "bytes-only")


# ---- configurations ----------------------------------------------------------------------------


def tiny_spec(variant: str) -> dict[str, Any]:
    """The tiny preset, one modality off for the one-modality variants, no modality dropout (as tests/conftest.py)."""
    from ilt_core.specs.spec import spec_variant

    return spec_variant("tiny", variant, modality_dropout=0.0)


def reference_spec(images: bool = True, **attn: str) -> dict[str, Any]:
    """The reference implementation's setup (see the module docstring); ``attn``: role -> attn_implementation.

    Words rendered 16 px high, as the reference renders them (one row of 16 px patches).
    """
    spec = tiny_spec("full" if images else "bytes-only")
    spec["bytes_decoder"]["config"]["num_hidden_layers"] = 2
    spec.update(labels="bytes", label_bytes=32, modality_dropout=0.0, image_height=16)
    for role, implementation in attn.items():
        spec[role]["attn_implementation"] = implementation
    return spec


def config_specs(reference: bool, only: list[str] | None) -> dict[str, dict[str, Any]]:
    """The configurations to run: ``only`` when given, else the tiny variants (+ the reference ones)."""
    every = {f"tiny-{v}": tiny_spec(v) for v in TINY_VARIANTS}
    every["reference"] = reference_spec(True)
    every["reference-no-images"] = reference_spec(False)
    # the same setup with activation checkpointing: the memory / time trade (run it with --configs)
    every["reference-checkpointed"] = {**reference_spec(True), "activation_checkpointing": True}
    if only:
        unknown = sorted(set(only) - set(every))
        if unknown:
            raise SystemExit(
                f"bench_model: unknown --configs {', '.join(unknown)}; expected some of {', '.join(every)}"
            )
        return {name: every[name] for name in only}
    return {
        name: spec
        for name, spec in every.items()
        if (reference and name != "reference-checkpointed") or name.startswith("tiny-")
    }


# ---- one configuration -------------------------------------------------------------------------


def make_batches(model: Any, units: list[str], rows: int, length: int, count: int) -> list[Any]:
    """``count`` collated batches of ``rows`` consecutive ``length``-unit pieces (cut: no end label)."""
    from ilt_core.text.collator import TextUnits

    pieces = common.chunk_texts(units, rows * count, length)
    return [
        model.processor.collate(
            [TextUnits(p, complete=False) for p in pieces[b * rows : (b + 1) * rows]], max_units=length + 1
        )
        for b in range(count)
    ]


def text_units_in(batch: Any) -> int:
    """Units of text in a batch (start markers and padding excluded)."""
    return int(batch.attention_mask.sum()) - int(
        (batch.position_ids == 0).logical_and(batch.attention_mask.bool()).sum()
    )


def text_to_batch(model: Any, units: list[str], rows: int, length: int, repeats: int) -> dict[str, float]:
    """Raw text -> collated batch units/s through the model's processor, cold and warm render cache."""
    raw = ["".join(p) for p in common.chunk_texts(units, rows, length)]
    cold, warm = [], []
    for _ in range(repeats):
        if model.processor.cache is not None:
            model.processor.cache.clear()
        cold.append(common.timed(lambda: model.processor(raw, max_units=length + 1))[0])
        warm.append(common.timed(lambda: model.processor(raw, max_units=length + 1))[0])
    n = rows * length
    return {
        "text_to_batch_cold_units_per_s": n / common.median(cold),
        "text_to_batch_warm_units_per_s": n / common.median(warm),
    }


def train_step(model: Any, optimizer: Any, batch: Any, autocast: bool = False) -> float:
    """One forward + backward + optimizer step; returns the loss."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(**batch.model_inputs())
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def step_flops(model: Any, batch: Any) -> int:
    """FLOPs of one forward + backward (matrix products and attention; the optimizer is negligible)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch.model_inputs()).loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def bench_config(name: str, spec: dict[str, Any], units: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Build, warm up, and time ``args.steps`` training steps of one configuration."""
    from ilt_core.modeling.model import build_model

    gc.collect()
    reset_peak_rss()
    rss_before = rss_bytes() / 2**20
    build_s, model = common.timed(lambda: build_model(spec, seed=0))
    model.to(args.device)
    model.train()
    common.log(f"{name}: built in {build_s:.1f} s ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    t2b = text_to_batch(model, units, args.rows, args.length, 1 if args.quick else 3)
    batches = make_batches(model, units, args.rows, args.length, args.batches)
    batches = [b.to(args.device) for b in batches]
    # fused AdamW: what the Trainer uses by default with torch >= 2.8 (and 4x faster than the for-loop one here)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    times, losses, usage = [], [], []
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        before = resource.getrusage(resource.RUSAGE_SELF)
        seconds, loss = common.timed(lambda b=batch, m=model, o=optimizer: train_step(m, o, b))
        after = resource.getrusage(resource.RUSAGE_SELF)
        common.log(f"{name}: step {i + 1}/{args.warmup + args.steps} {seconds:.2f} s loss {loss:.3f}")
        if i >= args.warmup:
            times.append(seconds)
            losses.append(loss)
            usage.append(
                (
                    after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                    after.ru_stime - before.ru_stime,
                    after.ru_minflt - before.ru_minflt,
                )
            )
    flops = step_flops(model, batches[0]) if not args.no_flops else 0
    step_s = common.median(times)
    words = sum(text_units_in(b) for b in batches) / len(batches)
    text_bytes = sum(int(b.num_bytes.sum()) for b in batches) / len(batches)
    result = {
        "spec": {"labels": spec.get("labels", "unit"), "label_bytes": spec.get("label_bytes", 32)},
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch": f"{args.rows}x{args.length}",
        "units_per_batch": words,
        "bytes_per_batch": text_bytes,
        "step_s": step_s,
        "step_s_all": times,
        # CPU seconds of every thread, of them in the kernel, and page faults: a step's medians
        "step_cpu_s": common.median([u[0] for u in usage]),
        "step_kernel_cpu_s": common.median([u[1] for u in usage]),
        "step_page_faults": common.median([u[2] for u in usage]),
        "units_per_s": words / step_s,
        "bytes_per_s": text_bytes / step_s,
        "last_loss": losses[-1],
        "peak_rss_mb": peak_rss_bytes() / 2**20,
        "rss_before_build_mb": rss_before,
        "build_s": build_s,
        **t2b,
    }
    if flops:
        result["gflop_per_step"] = flops / 1e9
        result["achieved_gflop_per_s"] = flops / 1e9 / step_s
    del model, optimizer, batches
    gc.collect()
    return result


def bench_config_isolated(name: str, argv: list[str], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """:func:`bench_config` in a fresh process, so its peak RSS holds only this configuration.

    (In one process the allocator keeps memory freed by an earlier configuration resident.)
    """
    import tempfile

    child_args: list[str] = []
    dropping = False  # inside the values of --configs / --out
    for arg in argv:
        if arg.startswith("-"):
            dropping = arg.split("=")[0] in ("--configs", "--out", "--page-faults-ab")
            if dropping or arg in ("--experiments", "--reference"):
                continue
        elif dropping:
            continue
        child_args.append(arg)
    with tempfile.TemporaryDirectory(prefix="ilt-bench-model-") as tmp:
        out = Path(tmp) / "config.json"
        command = [sys.executable, str(Path(__file__).resolve()), *child_args]
        command += ["--no-isolate", "--configs", name, "--out", str(out), *extra]
        done = subprocess.run(command, stderr=None, stdout=subprocess.DEVNULL, check=False)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"bench_model: configuration {name!r} failed in its process (exit {done.returncode})")
        return json.loads(out.read_text(encoding="utf-8"))["configs"][name]


def matmul_gflops(repeats: int = 5, size: int = 1024) -> float:
    """Calibration: GFLOP/s of a float32 ``size x size`` matrix product with the current threads."""
    a = torch.randn(size, size)
    a @ a
    seconds = [common.timed(lambda: a @ a)[0] for _ in range(repeats)]
    return 2 * size**3 / common.median(seconds) / 1e9


# ---- experiments (A/B speed-ups, interleaved) ---------------------------------------------------


def decode_loss_bucketed(model: Any, latents: torch.Tensor, label_ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """The decoder's summed label NLL with positions sorted by label length and cut to each bucket's length.

    A patched copy of ``ILTModel.decode_logits`` + the loss: the decoder is causal and rows are
    right-padded, so columns after a row's last label byte never change its earlier logits.
    """
    lengths = (label_ids != -100).sum(-1)
    order = torch.argsort(lengths)
    total = latents.new_zeros(())
    for part in torch.tensor_split(order, buckets):
        if part.numel() == 0:
            continue
        k = int(lengths[part].max())
        lab = label_ids[part, :k]
        logits = model.decode_logits(latents[part], lab)
        total = total + F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), lab.reshape(-1), ignore_index=-100, reduction="sum"
        )
    return total


def experiments(units: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Candidate speed-ups, each timed interleaved against its baseline; ratios > 1 mean faster."""
    from ilt_core.modeling.model import build_model
    from ilt_core.text.collator import IGNORE_INDEX, TextUnits

    out: dict[str, Any] = {}
    reps = args.exp_repeats
    model = build_model(reference_spec(True), seed=0)
    model.train()
    batch = make_batches(model, units, args.rows, args.length, 1)[0]
    inputs = batch.model_inputs()

    def fwd_bwd(autocast: bool = False) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**inputs).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    # 1. threads: 1 vs the default
    default_threads = torch.get_num_threads()
    if default_threads > 1:
        t = common.interleaved(
            {"threads_default": fwd_bwd, "threads_1": fwd_bwd},
            reps,
            setup=lambda arm: torch.set_num_threads(1 if arm == "threads_1" else default_threads),
        )
        torch.set_num_threads(default_threads)
        out["threads_1_over_default"] = {
            "default_threads": default_threads,
            "speedup": common.ratio(t, "threads_default", "threads_1"),
            "seconds": t,
        }
        common.log(f"experiment threads: {out['threads_1_over_default']['speedup']:.2f}x")

    # 2. optimizer implementations (the step alone, with gradients present)
    model(**inputs).loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizers = {
        "default": torch.optim.AdamW(params, lr=1e-4),
        "foreach": torch.optim.AdamW(params, lr=1e-4, foreach=True),
        "fused": torch.optim.AdamW(params, lr=1e-4, fused=True),
    }
    saved = [p.detach().clone() for p in params]
    t = common.interleaved({k: o.step for k, o in optimizers.items()}, max(reps, 5))
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
    model.zero_grad(set_to_none=True)
    out["adamw"] = {
        "foreach_speedup": common.ratio(t, "default", "foreach"),
        "fused_speedup": common.ratio(t, "default", "fused"),
        "default_s": common.median(t["default"]),
    }
    common.log(f"experiment adamw: {out['adamw']}")

    # 3. bf16 autocast. Speed on one latent-sized matrix product (forward + backward): without native
    # bf16 instructions (AVX-512 BF16 / AMX) a whole bf16 step can take many times an fp32 one, too
    # long to time here. Accuracy: the loss of a small batch, forward only, in eval mode.
    w = torch.randn(512, 2048, requires_grad=True)
    h = torch.randn(8 * (args.length + 1), 512)

    def matmul(autocast: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = h @ w
        y.float().sum().backward()
        w.grad = None

    t = common.interleaved({"fp32": lambda: matmul(False), "bf16": lambda: matmul(True)}, max(reps, 3))
    small = make_batches(model, units, 2, 8, 1)[0].model_inputs()
    model.eval()
    with torch.no_grad():
        loss32 = float(model(**small).loss)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss16 = float(model(**small).loss)
    model.train()
    out["bf16_autocast"] = {
        "matmul_fwd_bwd_speedup": common.ratio(t, "fp32", "bf16"),
        "loss_fp32": loss32,
        "loss_bf16": loss16,
        "loss_abs_diff": abs(loss16 - loss32) or 1e-12,
        "accuracy_batch": "2x8 units, eval mode",
    }
    common.log(f"experiment bf16: {out['bf16_autocast']}")

    # 4. pixels: 3-channel float copy vs a 1-channel tensor expanded to 3 (collation and image encoder)
    import numpy as np

    from ilt_core.text.render_cache import images_to_batches

    images = model.processor.cache.render_many([""] + batch.units[1:])

    def one_channel() -> list[tuple[torch.Tensor, torch.Tensor]]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        result = []
        for shape in sorted(groups, key=lambda s: s[1]):
            idx = groups[shape]
            pixels = np.empty((len(idx), 1, *shape), dtype=np.float32)
            np.divide(np.stack([images[i] for i in idx]), np.float32(255), out=pixels[:, 0])
            result.append((torch.tensor(idx), torch.from_numpy(pixels).expand(-1, 3, -1, -1)))
        return result

    t = common.interleaved({"three": lambda: images_to_batches(images), "one": one_channel}, max(reps, 5))
    expanded = one_channel()
    same = all(torch.equal(a[1], b[1]) for a, b in zip(images_to_batches(images), expanded, strict=True))

    def encode(groups: list) -> None:
        torch.cat([model.image_encoder(p) for _, p in groups]).sum().backward()
        model.zero_grad(set_to_none=True)

    te = common.interleaved({"three": lambda: encode(batch.image_groups), "one": lambda: encode(expanded)}, reps)
    out["one_channel_pixels"] = {
        "same_values": same,
        "collation_speedup": common.ratio(t, "three", "one"),
        "image_encoder_fwd_bwd_speedup": common.ratio(te, "three", "one"),
    }
    common.log(f"experiment pixels: {out['one_channel_pixels']}")

    # 5. where the time goes: each part's forward + backward alone, and the optimizer
    labels = batch.labels
    selected = labels[..., 0] != IGNORE_INDEX
    label_ids = labels[selected]
    latents = torch.randn(label_ids.shape[0], model.latent_transformer.hidden_size, requires_grad=True)
    x = torch.randn(*batch.unit_index.shape, model.latent_transformer.hidden_size, requires_grad=True)

    def part(fn: Any) -> Any:
        def run() -> None:
            fn().sum().backward()
            model.zero_grad(set_to_none=True)

        return run

    parts = {
        "image_encoder": part(lambda: torch.cat([model.image_encoder(p) for _, p in batch.image_groups])),
        "bytes_encoder": part(lambda: model.bytes_encoder(batch.unit_input_ids, batch.unit_attention_mask)),
        "latent_transformer": part(lambda: model.latent_transformer(x, position_ids=batch.position_ids).hidden_states),
        "bytes_decoder": part(lambda: model.decode_logits(latents, label_ids)),
        "optimizer_step_fused": lambda: (_give_grads(params), optimizers["fused"].step()),
        "collation_warm": lambda: model.processor.collate(
            [TextUnits(p, complete=False) for p in common.chunk_texts(units, args.rows, args.length)],
            max_units=args.length + 1,
        ),
    }
    t = common.interleaved(parts, reps)
    total = sum(common.median(v) for v in t.values())
    out["breakdown_s"] = {k: common.median(v) for k, v in t.items()}
    out["breakdown_share"] = {k: common.median(v) / total for k, v in t.items()}
    out["breakdown_shape"] = {
        "distinct_units": int(batch.unit_input_ids.shape[0]),
        "image_groups": len(batch.image_groups),
        "decoder_positions": int(label_ids.shape[0]),
        "decoder_bytes_per_position": int(label_ids.shape[1]),
    }
    model.zero_grad(set_to_none=True)
    common.log(f"experiment breakdown: {out['breakdown_share']}")

    # 6. SDPA vs eager attention (image encoder and bytes decoder: short sequences)
    eager = build_model(reference_spec(True, image_encoder="eager", bytes_decoder="eager"), seed=0)
    eager.train()

    def enc(m: Any) -> Any:
        return part(lambda: torch.cat([m.image_encoder(p) for _, p in batch.image_groups]))

    def dec(m: Any) -> Any:
        return part(lambda: m.decode_logits(latents, label_ids))

    t = common.interleaved(
        {"sdpa_enc": enc(model), "eager_enc": enc(eager), "sdpa_dec": dec(model), "eager_dec": dec(eager)}, reps
    )
    out["eager_over_sdpa"] = {
        "image_encoder_speedup": common.ratio(t, "sdpa_enc", "eager_enc"),
        "bytes_decoder_speedup": common.ratio(t, "sdpa_dec", "eager_dec"),
    }
    common.log(f"experiment attention: {out['eager_over_sdpa']}")
    del eager

    # 7. decoder over positions sorted into length buckets (labels: unit, the tiny preset)
    tiny = build_model(tiny_spec("full"), seed=0)
    tiny.train()
    tb = make_batches(tiny, units, args.rows, args.length, 1)[0]
    sel = tb.labels[..., 0] != IGNORE_INDEX
    lab = tb.labels[sel]
    lat = torch.randn(lab.shape[0], tiny.latent_transformer.hidden_size, requires_grad=True)

    def plain() -> torch.Tensor:
        logits = tiny.decode_logits(lat, lab)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), lab.reshape(-1), ignore_index=-100, reduction="sum"
        )

    def run(fn: Any) -> Any:
        def go() -> None:
            fn().backward()
            tiny.zero_grad(set_to_none=True)

        return go

    t = common.interleaved({"plain": run(plain), "buckets": run(lambda: decode_loss_bucketed(tiny, lat, lab, 4))}, reps)
    tiny.eval()
    with torch.no_grad():
        diff = abs(float(plain()) - float(decode_loss_bucketed(tiny, lat, lab, 4)))
    lengths = (lab != -100).sum(-1).float()
    out["decoder_length_buckets"] = {
        "labels": "unit",
        "buckets": 4,
        "speedup": common.ratio(t, "plain", "buckets"),
        "loss_sum_abs_diff": diff or 1e-12,
        "label_length_mean": float(lengths.mean()),
        "label_length_max": int(lab.shape[1]),
    }
    common.log(f"experiment buckets: {out['decoder_length_buckets']}")

    # 8. OpenMP wait policy (needs fresh processes: read when the OpenMP runtime loads)
    out["omp_wait_policy"] = omp_policy_experiment(reps)
    common.log(f"experiment omp: {out['omp_wait_policy']}")
    return out


def mask_paths(units: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Packed rows through the tiny preset's latent transformer (forward + backward, its mask built in the step):
    the dense block-causal ``(B, 1, L, L)`` mask against the mask the backbone builds from the position ids.

    ``args.rows`` rows of ``args.length`` positions, each packed with texts of 16 units (fewer in short rows);
    A B A B rounds.
    """
    from ilt_core.modeling.model import build_model
    from ilt_core.text.collator import TextUnits

    model = build_model(tiny_spec("bytes-only"), seed=0)
    model.train()
    latent = model.latent_transformer
    text_units = max(min(16, args.length // 2 - 1), 1)  # at least two texts a row
    texts = common.chunk_texts(units, args.rows * (args.length // (text_units + 1)), text_units)
    batch = model.processor.collate([TextUnits(t) for t in texts], packing=True, max_units=args.length)
    segments, positions = batch.segment_ids, batch.position_ids
    embeds = torch.randn(*segments.shape, latent.hidden_size)
    masks: dict[str, Any] = {}

    def step(arm: str) -> Any:
        def go() -> None:
            if arm == "dense":  # as a latent transformer without the capability
                latent.masks_from_position_ids = lambda: False
            else:
                latent.__dict__.pop("masks_from_position_ids", None)
            mask = model._latent_mask(segments, positions, embeds.device)
            masks[arm] = None if mask is None else tuple(mask.shape)
            latent(embeds, attention_mask=mask, position_ids=positions).hidden_states.square().mean().backward()
            model.zero_grad(set_to_none=True)

        return go

    t = common.interleaved({"dense": step("dense"), "positions": step("positions")}, max(args.exp_repeats, 3))
    latent.__dict__.pop("masks_from_position_ids", None)
    rows, length = segments.shape
    result = {
        "rows": rows,
        "positions_per_row": length,
        "texts": len(texts),
        "dense_mask_shape": masks["dense"],
        "dense_mask_bytes": rows * length * length,  # boolean; the hf plugin adds an additive float copy
        "positions_path_mask": masks["positions"],
        "dense_s": common.median(t["dense"]),
        "positions_s": common.median(t["positions"]),
        "speedup": common.ratio(t, "dense", "positions"),
    }
    common.log(f"mask paths: {result}")
    return result


def breakdown(units: list[str], args: argparse.Namespace, images: bool) -> dict[str, Any]:
    """The reference setup's training step by component: each part's forward + backward alone (the optimizer: its
    step), its GFLOP (``torch.utils.flop_counter``), wall and CPU seconds (medians of interleaved rounds) and the
    GFLOP/s it reaches, beside the whole step's. CPU seconds are the process's (every thread): steadier than wall
    clock on a shared machine.
    """
    import time

    from torch.utils.flop_counter import FlopCounterMode

    from ilt_core.modeling.model import build_model
    from ilt_core.text.collator import IGNORE_INDEX

    model = build_model(reference_spec(images), seed=0)
    model.train()
    batch = make_batches(model, units, args.rows, args.length, 1)[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    selected = batch.labels[..., 0] != IGNORE_INDEX
    label_ids = batch.labels[selected]
    latents = torch.randn(label_ids.shape[0], model.latent_transformer.hidden_size, requires_grad=True)
    x = torch.randn(*batch.unit_index.shape, model.latent_transformer.hidden_size, requires_grad=True)
    logits = torch.randn(*label_ids.shape, model.bytes_decoder.vocab_size, requires_grad=True)

    def backward_of(fn: Any) -> Any:
        def run() -> None:
            fn().float().square().mean().backward()
            model.zero_grad(set_to_none=True)

        return run

    def loss() -> None:
        F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), label_ids.reshape(-1), ignore_index=IGNORE_INDEX
        ).backward()

    parts: dict[str, Any] = {}
    if images:
        parts["image_encoder"] = backward_of(lambda: torch.cat([model.image_encoder(p) for _, p in batch.image_groups]))
    parts["bytes_encoder"] = backward_of(lambda: model.bytes_encoder(batch.unit_input_ids, batch.unit_attention_mask))
    parts["latent_transformer"] = backward_of(
        lambda: model.latent_transformer(x, position_ids=batch.position_ids).hidden_states
    )
    parts["bytes_decoder"] = backward_of(lambda: model.decode_logits(latents, label_ids))
    parts["loss"] = loss
    parts["optimizer_step"] = lambda: (
        _give_grads([p for p in model.parameters() if p.requires_grad]),
        optimizer.step(),
    )
    parts["whole_step"] = lambda: train_step(model, optimizer, batch)
    flops = {}
    for name, fn in parts.items():
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        flops[name] = counter.get_total_flops() / 1e9
    cpu: dict[str, list[float]] = {name: [] for name in parts}

    def cpu_timed(name: str, fn: Any) -> Any:
        def run() -> None:
            start = time.process_time()
            fn()
            cpu[name].append(time.process_time() - start)

        return run

    wall = common.interleaved({n: cpu_timed(n, f) for n, f in parts.items()}, max(args.exp_repeats, 2))
    result = {}
    for name in parts:
        w, c = common.median(wall[name]), common.median(cpu[name][1:])  # the first call is interleaved's warm-up
        result[name] = {"gflop": flops[name], "wall_s": w, "cpu_s": c, "gflop_per_wall_s": flops[name] / w}
    whole = result["whole_step"]
    for r in result.values():
        r["share_of_step_cpu"] = r["cpu_s"] / whole["cpu_s"]
        r["gflop_per_cpu_s"] = r["gflop"] / r["cpu_s"] if r["cpu_s"] > 0 else 0.0
    # the ceiling in the same unit: torch's matrix products alone, per CPU second (steady under shared load)
    latent_width = model.latent_transformer.hidden_size
    decoder_width = model.bytes_decoder.hidden_size
    tokens = label_ids.numel()
    shapes = {
        "1024x1024x1024": (1024, 1024, 1024),
        f"decoder {tokens}x{decoder_width}x{decoder_width}": (tokens, decoder_width, decoder_width),
        f"latent {x.shape[0] * x.shape[1]}x{latent_width}x{4 * latent_width}": (
            x.shape[0] * x.shape[1],
            latent_width,
            4 * latent_width,
        ),
    }
    result["matmul_gflop_per_cpu_s"] = {name: matmul_gflop_per_cpu_s(*shape) for name, shape in shapes.items()}
    common.log(f"breakdown ({'with' if images else 'without'} images): {result}")
    return result


def matmul_gflop_per_cpu_s(m: int, k: int, n: int, repeats: int = 5) -> float:
    """GFLOP per CPU second (every thread's) of a float32 ``(m, k) @ (k, n)`` product: the best of 3 rounds."""
    import time

    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(repeats):
            a @ b
        best = min(best, (time.process_time() - start) / repeats)
    return 2 * m * k * n / best / 1e9


def _give_grads(params: list[torch.Tensor]) -> None:
    """Small gradients on every parameter, so an optimizer step does its full work."""
    for p in params:
        if p.grad is None:
            p.grad = torch.full_like(p, 1e-6)


PROBE = """
import time, torch
a = torch.randn(1584, 192); w = torch.randn(192, 192, requires_grad=True)
for _ in range(5): (a @ w).sum().backward()
t = time.perf_counter()
for _ in range(60): (a @ w).sum().backward()
print(time.perf_counter() - t)
"""


def omp_policy_experiment(repeats: int) -> dict[str, Any]:
    """ViT-sized matrix products (forward + backward, 2 threads) under OMP_WAIT_POLICY unset vs PASSIVE."""
    seconds: dict[str, list[float]] = {"unset": [], "PASSIVE": []}
    for _ in range(max(repeats, 2)):
        for arm in seconds:
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if arm == "PASSIVE":
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
            seconds[arm].append(float(done.stdout.strip().splitlines()[-1]))
    return {"passive_speedup": common.ratio(seconds, "unset", "PASSIVE"), "seconds": seconds}


# ---- report ------------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    head = (
        "config",
        "step s",
        "units/s",
        "bytes/s",
        "GFLOP/step",
        "GFLOP/s",
        "peak RSS MB",
        "t2b cold/s",
        "t2b warm/s",
    )
    rows = [
        (
            name,
            common.fmt(r["step_s"], 2),
            common.fmt(r["units_per_s"], 1),
            common.fmt(r["bytes_per_s"]),
            common.fmt(r.get("gflop_per_step", math.nan), 1),
            common.fmt(r.get("achieved_gflop_per_s", math.nan), 1),
            common.fmt(r["peak_rss_mb"]),
            common.fmt(r["text_to_batch_cold_units_per_s"]),
            common.fmt(r["text_to_batch_warm_units_per_s"]),
        )
        for name, r in results["configs"].items()
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for row in (head, *rows):
        print(
            "  ".join(
                str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(f"matrix-product calibration: {results['calibration_gflop_per_s']:.1f} GFLOP/s (1024^2 float32, same run)")
    if "reference" in results["configs"]:
        print(f"\n{NO_REFERENCE}")
    for setup, parts in results.get("breakdown", {}).items():
        print(f"\nreference setup {setup}, by component (forward + backward alone; matmul calibration above):")
        print("  part                  GFLOP   wall s   CPU s  GFLOP/s (wall)  GFLOP/CPU s  share of step CPU")
        for name, r in parts.items():
            if name == "matmul_gflop_per_cpu_s":
                continue
            print(
                f"  {name:<20} {r['gflop']:6.1f} {r['wall_s']:8.2f} {r['cpu_s']:7.2f} {r['gflop_per_wall_s']:15.1f} "
                f"{r['gflop_per_cpu_s']:12.1f} {r['share_of_step_cpu']:18.0%}"
            )
        ceiling = ", ".join(f"{k} {v:.0f}" for k, v in parts.get("matmul_gflop_per_cpu_s", {}).items())
        print(f"  torch's matrix products alone, GFLOP per CPU second: {ceiling}")
    if "mask_paths" in results:
        m = results["mask_paths"]
        print(
            f"packed rows {m['rows']} x {m['positions_per_row']} ({m['texts']} texts), latent forward + backward: "
            f"dense mask {m['dense_s']:.3f} s, mask from position ids {m['positions_s']:.3f} s "
            f"({m['speedup']:.2f}x); the dense mask holds {m['dense_mask_bytes'] / 2**20:.1f} MiB as booleans"
        )
    print("(wall clock on a machine shared with other work: noisy; ratios within one run are the reliable part)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", action="store_true", help="add the reference implementation's configuration")
    parser.add_argument("--experiments", action="store_true", help="time candidate speed-ups (A/B, interleaved)")
    parser.add_argument("--configs", nargs="+", default=None, help="run only these configurations")
    parser.add_argument("--rows", type=int, default=8, help="texts per batch (default 8)")
    parser.add_argument("--length", type=int, default=64, help="units per text (default 64)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batches", type=int, default=3, help="distinct batches cycled through")
    parser.add_argument("--exp-repeats", type=int, default=2, help="interleaved rounds per experiment")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--no-isolate", action="store_true", help="run every configuration in this process (peak RSS then accumulates)"
    )
    parser.add_argument("--no-flops", action="store_true", help="skip counting FLOPs (one extra step each)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2x8, 1 step, no warm-up")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--mask-paths",
        action="store_true",
        help="packed rows through the latent: dense block-causal mask vs the mask built from position ids (A/B; "
        "alone, without --configs, only this)",
    )
    parser.add_argument(
        "--page-faults-ab",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="the reference configuration's step with the C library's allocation defaults (A, --cpu-malloc default) "
        "and with freed pages reused (B, --cpu-malloc reuse), in fresh processes, A B A B: page faults, CPU and "
        "kernel seconds, peak RSS",
    )
    parser.add_argument(
        "--cpu-malloc",
        choices=("auto", "default", "reuse", "return"),
        default="auto",
        help="`ilt train --cpu_malloc` for this process: auto = return for a checkpointed configuration, else reuse",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="the reference setup's step by component, with and without images: GFLOP, wall and CPU seconds (alone, "
        "without --configs, only this)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.length, args.steps, args.warmup, args.batches, args.exp_repeats = 2, 8, 1, 0, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    from ilt_core.text.segmentation import segment

    units = common.load_text("he", max(args.rows * args.length * args.batches, 64), segment)
    results: dict[str, Any] = {
        "benchmark": "model",
        "machine": machine_info(),
        "versions": package_versions(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "reference_implementation": NO_REFERENCE,
        "calibration_gflop_per_s": matmul_gflops(),
        "configs": {},
    }
    # --mask-paths alone runs only that A/B
    common.as_the_ilt_command()
    from ilt_core.modeling.memory import set_cpu_malloc

    malloc = args.cpu_malloc
    if malloc == "auto":
        checkpointed = any(
            s.get("activation_checkpointing") for s in config_specs(args.reference, args.configs).values()
        )
        malloc = "return" if checkpointed else "reuse"
    set_cpu_malloc(malloc)
    alone = (args.mask_paths or args.breakdown or args.page_faults_ab) and args.configs is None
    specs = {} if alone else config_specs(args.reference, args.configs)
    for name, spec in specs.items():
        if args.no_isolate:
            results["configs"][name] = bench_config(name, spec, units, args)
        else:
            results["configs"][name] = bench_config_isolated(name, argv if argv is not None else sys.argv[1:])
        common.write_json(args.out, results)  # after each configuration: a long run interrupted keeps them
    if "reference" in results["configs"]:
        results["goals"] = {
            "peak_rss_met": bool(results["configs"]["reference"]["peak_rss_mb"] <= GOALS["peak_rss_mb"])
        }
    if args.experiments:
        results["experiments"] = experiments(units, args)
    if args.mask_paths:
        results["mask_paths"] = mask_paths(units, args)
    if args.page_faults_ab:
        argv_now = argv if argv is not None else sys.argv[1:]
        rounds: dict[str, list[dict[str, Any]]] = {"malloc_defaults": [], "keep_freed_memory": []}
        for _ in range(args.page_faults_ab):
            for arm in rounds:
                extra = ("--cpu-malloc", "default" if arm == "malloc_defaults" else "reuse")
                rounds[arm].append(bench_config_isolated("reference", argv_now, extra))
        keys = ("step_page_faults", "step_cpu_s", "step_kernel_cpu_s", "step_s", "peak_rss_mb")
        results["page_faults_ab"] = {
            arm: {k: common.median([r[k] for r in runs]) for k in keys} | {"rounds": runs}
            for arm, runs in rounds.items()
        }
        for arm, r in results["page_faults_ab"].items():
            print(f"{arm}: " + ", ".join(f"{k} {r[k]:,.2f}" for k in keys))
    if args.breakdown:
        results["breakdown"] = {
            "with images": breakdown(units, args, images=True),
            "without images": breakdown(units, args, images=False),
        }
    print_report(results)
    common.write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
