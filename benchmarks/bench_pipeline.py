"""Speed of the text pipeline: rendering (cold and warm cache) and raw text -> collated batch.

    .venv/bin/python benchmarks/bench_pipeline.py --out runs/bench_pipeline.json
    .venv/bin/python benchmarks/bench_pipeline.py --quick          # smoke run, a few seconds

For each renderer (``freetype:default``, ``cairo:default``) on the same Hebrew (he-news) and English
(en-brown) words, in one run and interleaved (renderer A, B, A, B ...) so that load changes on a
shared machine hit both alike:

- ``render_each``: ``renderer.render`` on every unit, no cache (what rendering alone costs);
- ``cold_cache``: a fresh :class:`~ilt_core.text.render_cache.RenderCache` over the words (each distinct
  unit rendered once, repeats served from memory: what a first epoch sees);
- ``warm_cache``: the same words again from the filled cache (goal: > 200,000 units/s);
- ``processor``: raw texts -> collated batch of 8 x 64 units (segment, bytes, render, pixels), cold
  and warm cache, with a per-stage breakdown.

Units per second count every unit of the text (repeats included), as words per second would.
Goals: FreeType at least as fast as cairo cold; warm cache above 200,000 units/s.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (ilt_bench imports it); see ilt_bench.common

from ilt_bench import common  # noqa: E402
from ilt_bench.machine import machine_info, package_versions  # noqa: E402

RENDERERS = ("freetype:default", "cairo:default")
LANGS = ("he", "en")
WARM_GOAL = 200_000.0
PATCHED = "freetype:default+memoized-cache_key"


def build_renderer(address: str) -> Any:
    """A renderer from the registry at the tiny preset's geometry (height 32, patch 16)."""
    from ilt_core import get_registry
    from ilt_core.plugins.registry import BuildContext

    return get_registry().build(address, "renderer", BuildContext(image_height=32, width_multiple=16), {})


class MemoizedKeyRenderer:
    """A renderer whose ``cache_key()`` is computed once: the patched copy behind a suggested plugin fix.

    ``FreeTypeRenderer.cache_key()`` re-reads package metadata on every call (about 7 ms), once per
    ``render_many`` call; computing it once in ``__init__`` (as ``CairoRenderer`` does) removes that.
    """

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer
        self.height = renderer.height
        self.width_multiple = renderer.width_multiple
        self._key = renderer.cache_key()

    def render(self, unit: str) -> Any:
        return self.renderer.render(unit)

    def cache_key(self) -> tuple:
        return self._key


def bench_rendering(renderer: Any, units: list[str], repeats: int) -> dict[str, float]:
    """Units per second of ``render_each``, ``cold_cache``, ``warm_cache`` (medians of ``repeats``)."""
    from ilt_core.text.render_cache import RenderCache

    each, cold, warm = [], [], []
    for _ in range(repeats):
        seconds, _ = common.timed(lambda: [renderer.render(u) for u in units])
        each.append(seconds)
        cache = RenderCache(renderer)
        seconds, _ = common.timed(lambda cache=cache: cache.render_many(units))
        cold.append(seconds)
        for _ in range(5):  # warm lookups are fast: average a few calls per repeat
            seconds, _ = common.timed(lambda cache=cache: cache.render_many(units))
            warm.append(seconds)
    n = len(units)
    return {
        "render_each_units_per_s": n / common.median(each),
        "cold_cache_units_per_s": n / common.median(cold),
        "warm_cache_units_per_s": n / common.median(warm),
        "distinct_units": len(set(units)),
    }


def bench_processor(renderer: Any, units: list[str], rows: int, length: int, repeats: int) -> dict[str, float]:
    """Raw text -> collated batches of ``rows x length`` units, cold and warm cache, with stage times.

    The words are cut into consecutive texts of ``length`` units, ``rows`` per batch; texts are
    given to the processor as raw strings (so segmentation is timed too).
    """
    from ilt_core.text.collator import TextUnits, collate_units
    from ilt_core.text.processor import ILTProcessor
    from ilt_core.text.render_cache import images_to_batches

    per_batch = rows * length
    n_batches = max(1, -(-len(units) // per_batch))
    texts = common.chunk_texts(units, rows * n_batches, length)
    raw_batches = [["".join(t) for t in texts[b * rows : (b + 1) * rows]] for b in range(n_batches)]
    processor = ILTProcessor(renderer, max_units=length + 1)
    total = per_batch * n_batches

    def all_batches() -> list[Any]:
        return [processor(raw, max_units=length + 1) for raw in raw_batches]

    cold, warm = [], []
    stages: dict[str, list[float]] = {"segment": [], "bytes_and_labels": [], "render_warm": [], "pixels": []}
    for _ in range(repeats):
        processor.cache.clear()
        seconds, batches = common.timed(all_batches)
        cold.append(seconds)
        seconds, _ = common.timed(all_batches)
        warm.append(seconds)
        # stage breakdown on the warm cache (rendering cold is in the rendering figures)
        seconds, segmented = common.timed(lambda: [[processor.segment(t) for t in raw] for raw in raw_batches])
        stages["segment"].append(seconds)
        text_units = [[TextUnits(u) for u in seg] for seg in segmented]
        seconds, _ = common.timed(
            lambda text_units=text_units: [
                collate_units(tu, processor.encode_unit, None, max_units=length + 1) for tu in text_units
            ]
        )
        stages["bytes_and_labels"].append(seconds)
        distinct = [[""] + b.units[1:] for b in batches]
        seconds, images = common.timed(lambda distinct=distinct: [processor.cache.render_many(d) for d in distinct])
        stages["render_warm"].append(seconds)
        seconds, _ = common.timed(lambda images=images: [images_to_batches(i) for i in images])
        stages["pixels"].append(seconds)
    out = {
        "batch": f"{rows}x{length}",
        "units": total,
        "cold_units_per_s": total / common.median(cold),
        "warm_units_per_s": total / common.median(warm),
    }
    out.update({f"stage_{k}_units_per_s": total / common.median(v) for k, v in stages.items()})
    return out


def profile_cold(renderer: Any, units: list[str], top: int = 15) -> str:
    """cProfile of one cold text -> batch pass (the top functions by own time)."""
    import cProfile
    import io
    import pstats

    from ilt_core.text.processor import ILTProcessor

    processor = ILTProcessor(renderer, max_units=65)
    raw = ["".join(t) for t in common.chunk_texts(units, 8, 64)]
    prof = cProfile.Profile()
    prof.enable()
    processor(raw, max_units=65)
    prof.disable()
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(top)
    return stream.getvalue()


def print_table(results: dict[str, Any]) -> None:
    rows = []
    for address, by_lang in results["renderers"].items():
        for lang, r in by_lang.items():
            p = r["processor"]
            rows.append(
                (
                    address,
                    lang,
                    common.fmt(r["render_each_units_per_s"]),
                    common.fmt(r["cold_cache_units_per_s"]),
                    common.fmt(r["warm_cache_units_per_s"]),
                    common.fmt(p["cold_units_per_s"]),
                    common.fmt(p["warm_units_per_s"]),
                )
            )
    head = ("renderer", "text", "render each/s", "cold cache/s", "warm cache/s", "text->batch cold/s", "warm/s")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for row in (head, *rows):
        print(
            "  ".join(
                str(x).rjust(w) if i > 1 else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print()
    for lang, goal in results["goals"].items():
        print(f"[{lang}] " + "; ".join(f"{k}: {v}" for k, v in goal.items()))
    print("(units/s, wall clock on a shared machine: noisy; the ratios were taken interleaved in one run)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=2000, help="units of each text (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    parser.add_argument("--rows", type=int, default=8, help="texts per batch (default 8)")
    parser.add_argument("--length", type=int, default=64, help="units per text (default 64)")
    parser.add_argument("--renderers", nargs="+", default=list(RENDERERS), help="renderer addresses")
    parser.add_argument(
        "--no-patched", action="store_true", help=f"skip the {PATCHED} arm (a suggested plugin fix, measured)"
    )
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one cold text->batch pass")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 words, 1 repeat, batch 2x16")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.words, args.repeats, args.rows, args.length = 200, 1, 2, 16

    from ilt_core.text.segmentation import segment

    common.log(f"loading {args.words} words of {', '.join(common.TEXTS[lang][0] for lang in LANGS)}")
    texts = {lang: common.load_text(lang, args.words, segment) for lang in LANGS}
    renderers = {}
    for address in args.renderers:
        seconds, renderers[address] = common.timed(lambda address=address: build_renderer(address))
        common.log(f"built {address} in {seconds:.2f} s")
    if "freetype:default" in renderers and not args.no_patched:
        renderers[PATCHED] = MemoizedKeyRenderer(renderers["freetype:default"])
    for renderer in renderers.values():  # glyph and font caches warm, as in any long run
        for units in texts.values():
            for u in units[:50]:
                renderer.render(u)

    results: dict[str, Any] = {
        "benchmark": "pipeline",
        "machine": machine_info(),
        "versions": package_versions(),
        "args": vars(args) | {"out": str(args.out)},
    }
    by_renderer: dict[str, dict[str, Any]] = {a: {} for a in renderers}
    # interleave: one repeat of every renderer x text, then the next repeat
    for repeat in range(args.repeats):
        for lang, units in texts.items():
            for address, renderer in renderers.items():
                common.log(f"repeat {repeat + 1}/{args.repeats}: {address} {lang}")
                r = bench_rendering(renderer, units, 1)
                p = bench_processor(renderer, units, args.rows, args.length, 1)
                slot = by_renderer[address].setdefault(lang, {"runs": [], "processor_runs": []})
                slot["runs"].append(r)
                slot["processor_runs"].append(p)
    for by_lang in by_renderer.values():
        for slot in by_lang.values():
            runs, pruns = slot.pop("runs"), slot.pop("processor_runs")
            for key in runs[0]:
                slot[key] = common.median([r[key] for r in runs])
            slot["processor"] = {
                k: (common.median([p[k] for p in pruns]) if isinstance(v, float) else v) for k, v in pruns[0].items()
            }
    results["renderers"] = by_renderer

    goals: dict[str, dict[str, Any]] = {}
    ft, ca = "freetype:default", "cairo:default"
    for lang in LANGS:
        goal: dict[str, Any] = {}
        if ft in by_renderer and ca in by_renderer:
            cold_ratio = (
                by_renderer[ft][lang]["cold_cache_units_per_s"] / by_renderer[ca][lang]["cold_cache_units_per_s"]
            )
            each_ratio = (
                by_renderer[ft][lang]["render_each_units_per_s"] / by_renderer[ca][lang]["render_each_units_per_s"]
            )
            goal["freetype_over_cairo_cold_ratio"] = round(cold_ratio, 3)
            goal["freetype_over_cairo_render_each_ratio"] = round(each_ratio, 3)
            goal["freetype_at_least_cairo_cold"] = bool(cold_ratio >= 1.0)
        warm = min(by_lang[lang]["warm_cache_units_per_s"] for a, by_lang in by_renderer.items() if a != PATCHED)
        goal["warm_cache_min_units_per_s"] = round(warm)
        goal["warm_cache_above_200k"] = bool(warm > WARM_GOAL)
        if PATCHED in by_renderer:
            patched = by_renderer[PATCHED][lang]["warm_cache_units_per_s"]
            goal["patched_freetype_warm_over_unpatched_ratio"] = round(
                patched / by_renderer[ft][lang]["warm_cache_units_per_s"], 2
            )
            goal["patched_freetype_warm_above_200k"] = bool(patched > WARM_GOAL)
        goals[lang] = goal
    results["goals"] = goals
    print_table(results)
    if args.profile:
        for address, renderer in renderers.items():
            if address == PATCHED:
                continue
            print(f"\ncProfile, one cold text->batch pass, {address}, he:\n")
            print(profile_cold(renderer, texts["he"]))
    common.write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
