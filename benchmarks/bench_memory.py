"""Peak memory of one training step per component: what each keeps for backward, its transient peaks, the total.

    python benchmarks/bench_memory.py --text ../shared/data/he_news_train.txt                     # small, 2 x 64, fp32
    python benchmarks/bench_memory.py --text T --checkpointing image_encoder                      # one role checkpointed
    python benchmarks/bench_memory.py --text T --checkpointing all --dtype bf16
    python benchmarks/bench_memory.py --text T --dtype bf16 --scale-to 16x256 --gpu-gb 80         # + the arithmetic
    python benchmarks/bench_memory.py --quick                                                     # smoke run (micro)

How it measures: one training step (forward under ``--dtype`` autocast, backward, fused AdamW step) of a preset
(``--preset``, default ``small``, random weights, training mode) on ``--rows`` x ``--units`` units of a text file
(``--text``; without it the he-news benchmark text), collated with the fixed shapes ``ilt train`` uses by default
(``model.fixed_shapes(rows, units + 1)``), runs inside torch's ``torch.distributed._tools.mem_tracker.MemTracker``.
That is a ``TorchDispatchMode``: it sees every tensor storage an aten op creates and, through weak-reference
finalizers, when it dies, and it snapshots the live bytes (by kind: parameters, gradients, activations, backward
temporaries, optimizer states) at each module's forward and backward hooks. The project's numpy matrix products
(``ilt_core/modeling/products.py``) step aside while a dispatch mode is active, so the tracker sees torch's own ops:
the same tensors in count and size. The model and optimizer are registered with ``track_external`` first; the step
is the first one, so the optimizer's states are created inside it (what a later step would hold from the start is
added for the steady-state peak: the peak of forward + backward plus the optimizer states).

Per component (the four roles, the two mappings, and the whole model as ``model``), in bytes (MiB in the table):

- ``param``: its parameters;
- ``kept``: activations kept after its forward, the live bytes after it minus before it, its output included
  (summed over its calls: the image encoder runs once per image width group);
- ``fw_peak`` / ``bw_peak``: its transient peak in forward / backward above the live bytes when it started (the
  largest over its calls);
- the model's ``kept``, ``fw_peak`` and ``bw_peak``, the step's overall peak and its parts; and the image encoder's
  ``kept`` and ``bw_peak`` per word of text in the batch and per image it encoded.

``--checkpointing none|all|ROLE[,ROLE]`` sets the spec's ``activation_checkpointing``. ``--set`` takes spec
overrides as ``ilt build --set`` does.

``--scale-to RxU --gpu-gb G``: the memory a step of R x U units would need, as arithmetic. The step is measured a
second time with half the rows; each component's ``kept`` and ``bw_peak`` are then fitted as ``fixed + per x n``,
where ``n`` is what that component's work grows with, read off the two measured batches and a collated (not run)
batch of the target size from the same text: images (the distinct units' word images) for the image encoder,
distinct units for the bytes encoder and the encoder mapping, positions (rows x (units + 1)) for the latent
transformer and the decoder mapping, label tokens for the bytes decoder. The fit assumes activation bytes are linear
in ``n`` (attention kept as ``B x H x S x S`` matrices, as CPU eager attention keeps them, would grow with the row
length squared; fused attention kernels on a GPU keep no such matrix); the fixed part holds what does not grow with
the batch (under bf16 autocast, the weights' bf16 copies). The sum: 16 bytes per parameter (fp32 weights and
gradients, AdamW's two fp32 states: the master weights under bf16 autocast are the fp32 parameters), plus every
component's ``kept`` at the target, plus the largest single ``bw_peak`` at the target (the backward pass runs one
component at a time), against ``--gpu-gb`` (GB = 10^9 bytes). It ignores the CUDA allocator's fragmentation and the
CUDA context.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (ilt_bench imports it); see ilt_bench.common

import torch  # noqa: E402
from ilt_bench import common  # noqa: E402
from ilt_bench.machine import machine_info, package_versions, peak_rss_bytes  # noqa: E402
from ilt_bench.setups import make_batches, text_units_in  # noqa: E402

COMPONENTS = ("image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder", "encoder_mapping",
              "decoder_mapping")  # fmt: skip
MIB = 2**20


# ---- one tracked step --------------------------------------------------------------------------------------------


def batch_sizes(batch: Any) -> dict[str, int]:
    """What each component's work grows with in a collated batch: images, distinct units, positions, label tokens."""
    images = sum(int(idx.numel()) for idx, _ in batch.image_groups)
    if not images and batch.image_cls is not None:
        images = int(batch.image_cls.numel())  # packed: one class token per image
    distinct = int(batch.unit_input_ids.shape[0])
    positions = int(batch.attention_mask.numel())
    labels = int(batch.decoder_input_ids.numel()) if batch.decoder_input_ids is not None else int(batch.labels.numel())
    return {"images": images, "distinct_units": distinct, "positions": positions, "label_tokens": labels,
            "text_units": text_units_in(batch)}  # fmt: skip


GROWS_WITH = {"image_encoder": "images", "bytes_encoder": "distinct_units", "encoder_mapping": "distinct_units",
              "latent_transformer": "positions", "decoder_mapping": "positions", "bytes_decoder": "label_tokens"}  # fmt: skip


class Called(torch.nn.Module):
    """Runs ``fn`` through ``Module.__call__``, so that the tracker's module hooks see a method other than forward
    (``encode_packed``: an encoder that takes packed images or bytes is not called through its forward)."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def tracked_step(model: Any, batch: Any, dtype: str) -> dict[str, Any]:
    """One forward + backward + AdamW step inside a fresh ``MemTracker``; the figures per component, in bytes."""
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _ModState

    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    device = next(model.parameters()).device
    # each encoder that takes packed inputs, and its encode_packed run through a module the tracker sees
    packed = {
        encoder: Called(encoder.encode_packed)
        for encoder in (model.image_encoder, model.bytes_encoder)
        if encoder is not None and hasattr(encoder, "encode_packed")
    }
    for encoder, called in packed.items():
        object.__setattr__(encoder, "encode_packed", called)  # an instance attribute, not a submodule
    with tracker:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = model(**batch.model_inputs())
        out.loss.backward()
        grad_bytes = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
        optimizer.step()
    for encoder in packed:
        object.__delattr__(encoder, "encode_packed")
    opt_bytes = sum(v.nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))

    def total(snapshot: dict) -> int:
        return int(snapshot.get(device, {}).get(_TOTAL_KEY, 0))

    def stats(module: torch.nn.Module) -> dict[str, Any]:
        called = [m for m in (module, packed.get(module)) if m in tracker.memory_tracking]
        snaps = tracker.memory_tracking[called[0]].snapshots if called else {}
        pre, post = snaps.get(_ModState.PRE_FW, []), snaps.get(_ModState.POST_FW, [])
        peak_fw, pre_bw, peak_bw = (snaps.get(s, []) for s in (_ModState.PEAK_FW, _ModState.PRE_BW, _ModState.PEAK_BW))
        return {
            "param": int(sum(p.nbytes for p in module.parameters())),
            "calls": len(pre),
            "kept": sum(total(b) - total(a) for a, b in zip(pre, post, strict=True)),
            "fw_peak": max((total(p) - total(a) for a, p in zip(pre, peak_fw, strict=True)), default=0),
            "bw_peak": max((total(p) - total(a) for a, p in zip(pre_bw, peak_bw, strict=True)), default=0),
            "fw_peak_total": max((total(p) for p in peak_fw), default=0),
            "bw_peak_total": max((total(p) for p in peak_bw), default=0),
        }

    figures = {role: stats(getattr(model, role)) for role in COMPONENTS if getattr(model, role, None) is not None}
    figures["model"] = stats(model)
    peak = tracker.get_tracker_snapshot("peak").get(device, {})
    fb_peak = max(figures["model"]["fw_peak_total"], figures["model"]["bw_peak_total"])
    result = {
        "components": figures,
        "step_peak": int(peak.get(_TOTAL_KEY, 0)),
        "step_peak_parts": {getattr(k, "value", str(k)): int(v) for k, v in peak.items() if k != _TOTAL_KEY},
        "forward_backward_peak": fb_peak,
        "gradients": int(grad_bytes),
        "optimizer_states": int(opt_bytes),
        "steady_peak": max(fb_peak + int(opt_bytes), int(peak.get(_TOTAL_KEY, 0))),
        "loss": float(out.loss.detach()),
        "sizes": batch_sizes(batch),
    }
    model.zero_grad(set_to_none=True)
    gc.collect()
    return result


# ---- the arithmetic --------------------------------------------------------------------------------------------


def scale(big: dict[str, Any], small: dict[str, Any], target: dict[str, int], params: int, gpu_gb: float) -> dict:
    """Each component's ``kept`` and ``bw_peak`` at ``target`` sizes, fitted ``fixed + per x n`` through two runs."""
    rows = {}
    for role, key in GROWS_WITH.items():
        if role not in big["components"]:
            continue
        n1, n2, n = small["sizes"][key], big["sizes"][key], target[key]
        row = {"grows_with": key, "measured_n": [n1, n2], "target_n": n}
        for what in ("kept", "bw_peak"):
            y1, y2 = small["components"][role][what], big["components"][role][what]
            per = (y2 - y1) / (n2 - n1) if n2 != n1 else y2 / max(n2, 1)
            fixed = y2 - per * n2
            row[f"{what}_per"], row[f"{what}_fixed"], row[what] = per, fixed, max(fixed + per * n, 0.0)
        rows[role] = row
    states = 16 * params
    kept = sum(r["kept"] for r in rows.values())
    transient = max(r["bw_peak"] for r in rows.values())
    need = states + kept + transient
    return {"components": rows, "parameters": params, "weights_grads_adamw": states, "kept": kept,
            "largest_bw_peak": transient, "total": need, "gpu_bytes": gpu_gb * 1e9, "fits": need <= gpu_gb * 1e9}  # fmt: skip


# ---- printing --------------------------------------------------------------------------------------------------


def show(label: str, r: dict[str, Any]) -> None:
    words = r["sizes"]["text_units"]
    print(f"\n{label}: {r['sizes']}, loss {r['loss']:.3f}")
    print(f"{'component':<20} {'calls':>5} {'param MiB':>10} {'kept MiB':>10} {'fw peak MiB':>12} {'bw peak MiB':>12}")
    for role, c in r["components"].items():
        print(f"{role:<20} {c['calls']:>5} {c['param'] / MIB:>10.1f} {c['kept'] / MIB:>10.1f} "
              f"{c['fw_peak'] / MIB:>12.1f} {c['bw_peak'] / MIB:>12.1f}")  # fmt: skip
    parts = ", ".join(f"{k} {v / MIB:.0f}" for k, v in r["step_peak_parts"].items() if v)
    print(f"step peak {r['step_peak'] / MIB:.0f} MiB ({parts}); forward+backward peak "
          f"{r['forward_backward_peak'] / MIB:.0f} MiB; gradients {r['gradients'] / MIB:.0f} MiB; AdamW states "
          f"{r['optimizer_states'] / MIB:.0f} MiB; steady-state peak {r['steady_peak'] / MIB:.0f} MiB")  # fmt: skip
    image = r["components"].get("image_encoder")
    if image:
        images = r["sizes"]["images"]
        print(f"image encoder per word ({words} words): kept {image['kept'] / words / MIB:.2f} MiB, kept + bw peak "
              f"{(image['kept'] + image['bw_peak']) / words / MIB:.2f} MiB; per image ({images}): kept "
              f"{image['kept'] / max(images, 1) / MIB:.2f} MiB")  # fmt: skip


def show_scale(target: str, s: dict[str, Any]) -> None:
    print(f"\nat {target} (fit: fixed + per x n through the two measured batches; GB = 10^9 bytes):")
    print(f"{'component':<20} {'grows with':<15} {'n measured':>12} {'n target':>9} {'kept/n KiB':>11} "
          f"{'kept fixed MiB':>15} {'kept GB':>8} {'bw peak GB':>11}")  # fmt: skip
    for role, c in s["components"].items():
        n = "/".join(str(x) for x in c["measured_n"])
        print(f"{role:<20} {c['grows_with']:<15} {n:>12} {c['target_n']:>9} {c['kept_per'] / 1024:>11.1f} "
              f"{c['kept_fixed'] / MIB:>15.1f} {c['kept'] / 1e9:>8.2f} {c['bw_peak'] / 1e9:>11.2f}")  # fmt: skip
    print(f"{s['parameters'] / 1e6:.1f}M parameters x 16 bytes (fp32 weights, gradients, AdamW m and v) = "
          f"{s['weights_grads_adamw'] / 1e9:.2f} GB; + kept {s['kept'] / 1e9:.2f} GB; + largest backward peak "
          f"{s['largest_bw_peak'] / 1e9:.2f} GB = {s['total'] / 1e9:.2f} GB against {s['gpu_bytes'] / 1e9:.0f} GB: "
          f"{'fits' if s['fits'] else 'does not fit'}")  # fmt: skip


# ---- main --------------------------------------------------------------------------------------------------------


def checkpointing_value(text: str) -> bool | list[str]:
    """``none`` -> False, ``all`` -> True, ``ROLE[,ROLE]`` -> the roles (the spec validates the names)."""
    if text in ("none", "all"):
        return text == "all"
    return [r.strip() for r in text.split(",") if r.strip()]


def parse_target(text: str) -> tuple[int, int]:
    try:
        rows, units = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"bench_memory: --scale-to expects ROWSxUNITS, e.g. 16x256; got {text!r}") from None
    return rows, units


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--preset", default="small", help="preset name or spec path (default small)")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="spec overrides, as ilt build")
    p.add_argument("--text", type=Path, help="text file the batch is cut from (default: the he-news benchmark text)")
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--units", type=int, default=64, help="units (words) per row")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: the forward under bf16 autocast")
    p.add_argument("--checkpointing", default="none", help="none, all, or roles: image_encoder,bytes_encoder,...")
    p.add_argument("--scale-to", metavar="RxU", help="also print the arithmetic for ROWS x UNITS, e.g. 16x256")
    p.add_argument("--gpu-gb", type=float, default=80.0, help="GPU memory the --scale-to sum is held against")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: micro preset, 2 x 8 units")
    p.add_argument("--out", type=Path, help="write the figures as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.units = ("micro" if args.preset == "small" else args.preset), 8

    from ilt_core.modeling.memory import set_cpu_malloc
    from ilt_core.modeling.model import build_model
    from ilt_core.specs.spec import load_spec
    from ilt_core.text.segmentation import segment

    torch.set_num_threads(args.threads)
    common.as_the_ilt_command()
    set_cpu_malloc("return")  # freed blocks leave the process: its RSS follows the live tensors
    target = parse_target(args.scale_to) if args.scale_to else None
    spec = load_spec(args.preset, args.set).to_dict()
    spec["activation_checkpointing"] = checkpointing_value(args.checkpointing)
    model = build_model(spec, seed=0).train()
    params = sum(p.numel() for p in model.parameters())
    need = args.rows * args.units * 2 + (target[0] * target[1] * 2 if target else 0)
    if args.text:
        units = segment(args.text.read_text(encoding="utf-8")[: 40 * need + 4096])
    else:
        units = common.load_text("he", need, segment)
    common.log(f"{args.preset}: {params / 1e6:.1f}M parameters, {args.rows} x {args.units} units, {args.dtype}, "
               f"checkpointing {model.spec.checkpointed_roles or 'none'}")  # fmt: skip

    def batch_of(rows: int) -> Any:
        return make_batches(model, units, rows, args.units, 1, shapes=model.fixed_shapes(rows, args.units + 1))[0]

    runs = {f"{args.rows}x{args.units}": tracked_step(model, batch_of(args.rows), args.dtype)}
    result: dict[str, Any] = {
        "preset": args.preset,
        "overrides": args.set,
        "dtype": args.dtype,
        "checkpointing": list(model.spec.checkpointed_roles),
        "parameters": params,
        "text": str(args.text) if args.text else "he-news test",
        "measured_with": "torch.distributed._tools.mem_tracker.MemTracker",
        "runs": runs,
    }
    show(f"{args.preset} {args.rows} x {args.units} {args.dtype}, checkpointing {args.checkpointing}",
         runs[f"{args.rows}x{args.units}"])  # fmt: skip
    if target:
        half = max(args.rows // 2, 1)
        if half == args.rows:
            raise SystemExit("bench_memory: --scale-to fits through a second run with half the rows: --rows >= 2")
        common.log(f"second run: {half} x {args.units} units, for the fit")
        runs[f"{half}x{args.units}"] = tracked_step(model, batch_of(half), args.dtype)
        show(f"{args.preset} {half} x {args.units} {args.dtype}", runs[f"{half}x{args.units}"])
        target_batch = make_batches(model, units, target[0], target[1], 1, shapes=model.fixed_shapes(target[0], target[1] + 1))[0]  # fmt: skip
        sizes = batch_sizes(target_batch)
        scaled = scale(runs[f"{args.rows}x{args.units}"], runs[f"{half}x{args.units}"], sizes, params, args.gpu_gb)
        scaled["target"], scaled["target_sizes"] = args.scale_to, sizes
        result["scaled"] = scaled
        show_scale(args.scale_to, scaled)
    result["peak_rss_mib"] = peak_rss_bytes() / MIB
    print(f"\nprocess peak RSS {result['peak_rss_mib']:.0f} MiB")
    result["machine"], result["versions"] = machine_info(args.threads), package_versions()
    common.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
