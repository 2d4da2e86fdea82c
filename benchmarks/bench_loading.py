"""Loading a saved model: peak memory against its weights' size, and time against the previous load path.

    python benchmarks/bench_loading.py                 # the small preset, 3 rounds of each path
    python benchmarks/bench_loading.py --preset tiny --rounds 2

It builds the preset once (seed 0) and saves it twice: in the current format (``save_pretrained``) and in the
previous one (``spec.yaml`` + ``model.safetensors`` with the spec in its metadata). Then each round loads each
folder in a fresh process, A and B alternating:

- ``new``: ``ILTModel.from_pretrained`` (components built with empty weights, memory-mapped tensors assigned);
- ``old``: the previous path, as it was: read every tensor and check the SHA-256 (copying each tensor's bytes),
  build every component with random weights, then copy the file's tensors into them.

Per load it records the seconds of the call, the process's RSS just before the call (imports and plugins
loaded) and its peak RSS after it (``ru_maxrss``); "growth" is peak minus before. The goal: growth within
1.3 x the weights' bytes, and the new path faster than the old one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (ilt_bench imports it); see ilt_bench.common

from ilt_bench import common  # noqa: E402


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _old_digest(tensors: dict) -> str:
    """The SHA-256 of format 1 exactly as its reader computed it (``tobytes`` copies each tensor)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.reshape(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def _old_load(folder: Path):
    """The previous ``load_checkpoint``: read + check, build with random weights, copy the tensors in."""
    import yaml
    from safetensors import safe_open

    from ilt_core.modeling.checkpoint import WEIGHTS_NAME, load_state
    from ilt_core.modeling.model import ILTModel

    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert _old_digest(tensors) == metadata["sha256"]
    for alias, target in json.loads(metadata.get("aliases", "{}")).items():
        tensors[alias] = tensors[target]
    model = ILTModel(yaml.safe_load(metadata["spec"]))
    load_state(model, tensors, str(folder))
    return model.eval()


def child(kind: str, folder: Path) -> dict:
    """One load in this (fresh) process; returns its figures."""
    import resource

    import torch

    from ilt_core.modeling.model import ILTModel
    from ilt_core.plugins.registry import get_registry

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    registry = get_registry()
    for component in registry.components():  # import every factory first: plugins' imports are not loading
        if component.available:
            component.load_factory()
    before = _rss()
    start = time.perf_counter()
    model = ILTModel.from_pretrained(folder) if kind == "new" else _old_load(folder)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    params = sum(p.numel() for p in model.parameters())
    return {"kind": kind, "seconds": seconds, "rss_before": before, "peak_rss": peak, "parameters": params}


def prepare(preset: str, root: Path) -> tuple[Path, Path, int]:
    """Build the preset and save it in both formats; returns (new folder, old folder, weights' bytes)."""
    import torch
    import yaml
    from safetensors.torch import save_file

    from ilt_core.modeling import checkpoint as ckpt
    from ilt_core.modeling.model import build_model

    model = build_model(preset, seed=0)
    new, old = root / "new", root / "old"
    model.save_pretrained(new)
    old.mkdir()
    spec_text = yaml.safe_dump(model.spec.to_dict(), sort_keys=False, allow_unicode=True)
    tensors, aliases = ckpt.unique_tensors(model.state_dict())
    metadata = {
        "format": ckpt.OLD_FORMAT,
        "spec": spec_text,
        "sha256": _old_digest(tensors),
        "aliases": json.dumps(aliases, sort_keys=True),
        "disabled": "[]",
    }
    save_file(tensors, str(old / ckpt.WEIGHTS_NAME), metadata=metadata)
    (old / ckpt.SPEC_NAME).write_text(spec_text, encoding="utf-8")
    weights = sum(p.stat().st_size for p in new.glob("*.safetensors"))
    del model, tensors
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return new, old, weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="also write the figures as JSON here")
    p.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        common.print_result(child(args.child[0], Path(args.child[1])))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-loading-") as tmp:
        start = time.perf_counter()
        new, old, weights = prepare(args.preset, Path(tmp))
        print(f"built and saved {args.preset} in both formats in {time.perf_counter() - start:.0f} s; "
              f"weights {weights / 2**20:.1f} MiB", flush=True)  # fmt: skip
        runs = []
        for r in range(args.rounds):
            for kind, folder in (("new", new), ("old", old)) if r % 2 == 0 else (("old", old), ("new", new)):
                run = common.run_child([sys.executable, __file__, "--child", kind, str(folder)], f"loading ({kind})")
                run["growth"] = run["peak_rss"] - run["rss_before"]
                run["growth_over_weights"] = run["growth"] / weights
                runs.append(run)
                print(
                    f"round {r + 1} {kind}: {run['seconds']:.2f} s, RSS before {run['rss_before'] / 2**20:.0f} MiB, "
                    f"peak {run['peak_rss'] / 2**20:.0f} MiB, growth {run['growth'] / 2**20:.0f} MiB "
                    f"= {run['growth_over_weights']:.2f} x weights",
                    flush=True,
                )
    summary: dict = {"preset": args.preset, "weights_bytes": weights, "rounds": args.rounds, "runs": runs}
    for kind in ("new", "old"):
        mine = [r for r in runs if r["kind"] == kind]
        summary[kind] = {
            "median_seconds": statistics.median(r["seconds"] for r in mine),
            "max_growth_over_weights": max(r["growth_over_weights"] for r in mine),
        }
    summary["old_over_new_seconds"] = summary["old"]["median_seconds"] / summary["new"]["median_seconds"]
    print(
        f"\n{args.preset}: weights {weights / 2**20:.1f} MiB; "
        f"new load {summary['new']['median_seconds']:.2f} s (median), peak growth at most "
        f"{summary['new']['max_growth_over_weights']:.2f} x weights; "
        f"old load {summary['old']['median_seconds']:.2f} s, peak growth at most "
        f"{summary['old']['max_growth_over_weights']:.2f} x weights; old/new time {summary['old_over_new_seconds']:.2f}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
