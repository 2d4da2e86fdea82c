"""The benchmark report: ``results.json`` (every figure), ``results.md`` (tables), PNG plots.

The reference figures of the original implementation and the goals against them live here, so the
report can put them beside our figures (they were measured on another day, on another run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ilt_core.modeling.flops import FORMULA

#: Figures every successful mix has, as dotted paths into its result; each must be finite and positive.
FIGURES: tuple[str, ...] = (
    "bits_per_byte",
    "units_per_second",
    "bytes_per_second",
    "step_seconds",
    "data_share",
    "flops_per_byte",
    "mfu",
    "peak_rss_bytes",
    "peak_rss_train_bytes",
    "parameters_total",
    "generation.batch_1.units_per_second",
    "generation.batch_8.units_per_second",
    "generation.batch_1.bytes_per_second",
    "generation.batch_8.bytes_per_second",
    "text_to_batch.cold_units_per_second",
    "text_to_batch.warm_units_per_second",
)

REFERENCE: dict[str, Any] = {
    "source": (
        "the original implementation: transformers 4.57, torch 2.14.1, float32, 2 threads, a 2-core machine of "
        "this kind, reference-tiny configuration, batch 8 x 64 words, labels of up to 32 bytes; measured on "
        "another day, not in this run"
    ),
    "train_with_images": {
        "words_per_second": 113,
        "text_bytes_per_second": 682,
        "step_seconds": 4.5,
        "peak_rss_gb": 3.3,
    },
    "train_without_images": {"words_per_second": 202},
    "generation": {
        "protocol": "greedy, batch 4, prompts of 16 words, 32 new words, every word decoded to its 32-byte cap",
        "with_images": {"step_ms": 285, "words_per_second": 14},
        "without_images": {"step_ms": 248, "words_per_second": 16},
    },
    "text_to_batch": {"cold_words_per_second": 4300, "warm_words_per_second": 21000, "render_words_per_second": 9800},
}

GOALS: dict[str, str] = {
    "training": "training >= 3x the reference words/s, with peak memory (RSS) <= 1.5 GB",
    "generation": "generation >= 10x faster per generated word at the same byte cap",
    "text_to_batch": "text to batch (cold render cache) >= 2x the reference words/s",
}
TRAIN_SPEEDUP, MAX_PEAK_GB, GEN_SPEEDUP, T2B_SPEEDUP = 3.0, 1.5, 10.0, 2.0


def figure(result: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of a mix result, or None."""
    value: Any = result
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def missing_figures(result: dict[str, Any]) -> list[str]:
    """Paths of :data:`FIGURES` that are absent, not finite or not positive in ``result``."""
    bad = []
    for path in FIGURES:
        value = figure(result, path)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            bad.append(path)
    return bad


# ---- goals against the reference ----------------------------------------------------------------


def goal_checks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios of our figures to the reference's for the reference-tiny mixes present in ``results``."""
    by_name = {r["name"]: r for r in results if r.get("status") == "ok"}
    checks = []
    for name, images in (("reference-tiny", True), ("reference-tiny-no-images", False)):
        r = by_name.get(name)
        if r is None:
            continue
        ref_train = REFERENCE["train_with_images" if images else "train_without_images"]["words_per_second"]
        ratio = r["units_per_second"] / ref_train
        peak_gb = r["peak_rss_train_bytes"] / 1e9
        checks.append(
            {
                "mix": name,
                "goal": "training",
                "ours": r["units_per_second"],
                "reference": ref_train,
                "ratio": ratio,
                "peak_rss_gb": peak_gb,
                "met": ratio >= TRAIN_SPEEDUP and peak_gb <= MAX_PEAK_GB,
            }
        )
        gen = figure(r, "generation.reference_protocol")
        if gen:
            ref_gen = REFERENCE["generation"]["with_images" if images else "without_images"]
            ours_ms = 1000.0 * gen["seconds"] / max(gen["steps"], 1)
            ratio = ref_gen["step_ms"] / ours_ms
            checks.append(
                {
                    "mix": name,
                    "goal": "generation",
                    "ours": ours_ms,
                    "reference": ref_gen["step_ms"],
                    "unit": "ms a step (batch 4)",
                    "ratio": ratio,
                    "bytes_per_unit": gen.get("bytes_per_unit"),
                    "met": ratio >= GEN_SPEEDUP,
                }
            )
        if images:
            cold = r["text_to_batch"]["cold_units_per_second"]
            ref = REFERENCE["text_to_batch"]["cold_words_per_second"]
            checks.append(
                {
                    "mix": name,
                    "goal": "text_to_batch",
                    "ours": cold,
                    "reference": ref,
                    "ratio": cold / ref,
                    "met": cold / ref >= T2B_SPEEDUP,
                }
            )
    return checks


# ---- writing ------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:,.{max(0, digits - 1 - int(math.floor(math.log10(magnitude))))}f}"


def _millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}m"


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """``results.md``: the figures table, parameters, reference and goals, settings and machine."""
    results = report["results"]
    ok = [r for r in results if r.get("status") == "ok"]
    settings, machine = report["settings"], report["machine"]
    budget = f"{settings['budget_seconds']} s of training" if settings["budget_seconds"] else "no time limit"
    if settings.get("budget_bytes"):
        budget += f", at most {settings['budget_bytes']:,} training bytes"
    lines = [
        f"# ILT benchmark: {report['data']['name']}",
        "",
        f"Every mix trained on the same data in the same order (seed {settings['seed']}), with AdamW and the same "
        f"schedule, for the same budget ({budget}); each mix ran in a fresh process. Held-out: "
        f"{report['data']['eval_texts']} texts of `{report['data']['eval_file']}`. Units are words (a word and the "
        "whitespace after it, `ilt_core.text.segmentation.segment`); for the baselines they are counted the same way on "
        "the text their tokens stand for.",
        "",
        "| mix | bits/byte | units/s | bytes/s | s/step | data share | FLOPs/byte | MFU | peak RSS | params | "
        "gen b1 units/s (bytes/s) | gen b8 units/s (bytes/s) | text->batch cold/warm units/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.get("status") != "ok":
            lines.append(f"| {r['name']} | failed: {r.get('error', '?')} |" + " |" * 11)
            continue
        t2b = r["text_to_batch"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["name"],
                    _num(r["bits_per_byte"]),
                    _num(r["units_per_second"]),
                    _num(r["bytes_per_second"]),
                    _num(r["step_seconds"]),
                    f"{r['data_share']:.1%}",
                    _num(r["flops_per_byte"]),
                    f"{r['mfu']:.1%}",
                    f"{r['peak_rss_bytes'] / 1e9:.2f} GB",
                    _millions(r["parameters_total"]),
                    f"{_num(figure(r, 'generation.batch_1.units_per_second'))} "
                    f"({_num(figure(r, 'generation.batch_1.bytes_per_second'))})",
                    f"{_num(figure(r, 'generation.batch_8.units_per_second'))} "
                    f"({_num(figure(r, 'generation.batch_8.bytes_per_second'))})",
                    f"{_num(t2b['cold_units_per_second'])} / {_num(t2b['warm_units_per_second'])}",
                ]
            )
            + " |"
        )
    lines += ["", "## Parameters per component (embedding tables excluded)", ""]
    parts = []
    for r in ok:
        parts += [p for p in r["parameters"] if p not in parts]
    lines.append("| mix | " + " | ".join(parts) + " | total |")
    lines.append("|---" * (len(parts) + 2) + "|")
    for r in ok:
        cells = [_millions(r["parameters"].get(p)) for p in parts]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {_millions(r['parameters_total'])} |")

    lines += ["", "## FLOPs per byte by part", "", FORMULA + ".", ""]
    lines.append("| mix | part | params | layers x width | tokens/byte | FLOPs/byte |")
    lines.append("|---|---|---|---|---|---|")
    for r in ok:
        for part, s in r["flops_parts"].items():
            shape = f"{s['layers']} x {s['width']}" if s["layers"] else "-"
            lines.append(
                f"| {r['name']} | {part} | {_millions(s['params'])} | {shape} | {_num(s['tokens_per_byte'])} | "
                f"{_num(s['flops_per_byte'])} |"
            )
    peak = report["matmul_peak"]
    lines += [
        "",
        f"MFU is measured against this machine's fp32 matmul peak: {peak['flops_per_second'] / 1e9:.1f} GFLOP/s "
        f"({peak['size']} x {peak['size']} matmul, best of {peak.get('repeats', 5)}, {machine['torch_threads']} threads).",
    ]

    lines += ["", "## Against the reference (measured on another day)", "", f"Reference: {REFERENCE['source']}.", ""]
    ref, gen = REFERENCE, REFERENCE["generation"]
    ours = {r["name"]: r for r in ok}
    rt, rn = ours.get("reference-tiny"), ours.get("reference-tiny-no-images")
    lines.append("| figure | reference (another day) | ours (this run) |")
    lines.append("|---|---|---|")

    def cell(r: dict | None, path: str, scale: float = 1.0, fmt: str = "{:,.0f}") -> str:
        value = figure(r, path) if r else None
        return "not run" if value is None else fmt.format(value * scale)

    def gen_ms(r: dict | None) -> str:
        g = figure(r, "generation.reference_protocol") if r else None
        if not g:
            return "not run"
        return f"{1000 * g['seconds'] / max(g['steps'], 1):,.1f} ms, {g['units_per_second']:,.1f} words/s"

    rows = [
        (
            "training words/s, with images",
            f"{ref['train_with_images']['words_per_second']}",
            cell(rt, "units_per_second"),
        ),
        (
            "training text bytes/s, with images",
            f"{ref['train_with_images']['text_bytes_per_second']}",
            cell(rt, "bytes_per_second"),
        ),
        (
            "training s/step, with images",
            f"{ref['train_with_images']['step_seconds']}",
            cell(rt, "step_seconds", fmt="{:.2f}"),
        ),
        (
            "peak RSS in training, with images",
            f"{ref['train_with_images']['peak_rss_gb']} GB",
            cell(rt, "peak_rss_train_bytes", 1e-9, "{:.2f} GB"),
        ),
        (
            "training words/s, without images",
            f"{ref['train_without_images']['words_per_second']}",
            cell(rn, "units_per_second"),
        ),
        (
            "generation, with images (" + gen["protocol"] + ")",
            f"{gen['with_images']['step_ms']} ms a step, {gen['with_images']['words_per_second']} words/s",
            gen_ms(rt),
        ),
        (
            "generation, without images",
            f"{gen['without_images']['step_ms']} ms a step, {gen['without_images']['words_per_second']} words/s",
            gen_ms(rn),
        ),
        (
            "text to batch, cold, words/s",
            f"{ref['text_to_batch']['cold_words_per_second']:,}",
            cell(rt, "text_to_batch.cold_units_per_second"),
        ),
        (
            "text to batch, warm, words/s",
            f"{ref['text_to_batch']['warm_words_per_second']:,}",
            cell(rt, "text_to_batch.warm_units_per_second"),
        ),
        (
            "rendering alone, words/s",
            f"{ref['text_to_batch']['render_words_per_second']:,} (Pango/cairo)",
            cell(rt, "text_to_batch.render_units_per_second"),
        ),
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "Goals (ratios of this run's figures to the reference's):", ""]
    for key, text in GOALS.items():
        lines.append(f"- {key}: {text}")
    checks = report.get("goals", [])
    if checks:
        lines += ["", "| mix | goal | ours | reference | ratio | met |", "|---|---|---|---|---|---|"]
        for c in checks:
            extra = f" (peak RSS {c['peak_rss_gb']:.2f} GB)" if "peak_rss_gb" in c else ""
            unit = f" {c['unit']}" if c.get("unit") else ""
            lines.append(
                f"| {c['mix']} | {c['goal']} | {_num(c['ours'])}{unit}{extra} | {_num(c['reference'])} | "
                f"{c['ratio']:.2f}x | {'yes' if c['met'] else 'no'} |"
            )
        rt_ok = rt if rt and rt.get("units_per_second") else None
        if rt_ok:
            ref_train = ref["train_with_images"]
            ref_bpw = ref_train["text_bytes_per_second"] / ref_train["words_per_second"]
            ours_bpw = rt_ok["bytes_per_second"] / rt_ok["units_per_second"]
            lines += [
                "",
                f"Words are not the same size in the two measurements: the reference's figures give "
                f"{ref_train['text_bytes_per_second']} / {ref_train['words_per_second']} = {ref_bpw:.1f} UTF-8 bytes "
                f"a word, this run's text {ours_bpw:.1f} (Hebrew letters take 2 bytes). In text bytes/s, "
                f"reference-tiny trained at {rt_ok['bytes_per_second'] / ref_train['text_bytes_per_second']:.2f}x "
                "the reference.",
            ]
    else:
        lines += ["", "(the reference-tiny mixes were not in this run: no goal was checked)"]

    lines += ["", "## Plots", "", "![validation bits-per-byte](bpb_vs_time.png)", "", "![throughput](throughput.png)"]
    lines += ["", "## Settings and machine", ""]
    lines.append(f"- command: `{report['command']}`")
    lines.append(f"- settings: `{json.dumps(settings, sort_keys=True)}`")
    lines.append(
        f"- machine: {machine['cpu_model']}, {machine['cpu_count']} cores, torch threads {machine['torch_threads']}, "
        f"device {machine['device']}" + (f" ({machine['gpu']})" if machine.get("gpu") else "")
    )
    lines.append("- packages: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    lines.append(f"- started {report['started']}, took {report['wall_seconds']:.0f} s")
    lines.append("- every figure, the exact specs and the curves are in `results.json`")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """``bpb_vs_time.png`` (validation curves) and ``throughput.png`` (units/s and bytes/s bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["results"] if r.get("status") == "ok"]
    written = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in ok:
        xs = [p["train_seconds"] for p in r["curve"]]
        ys = [p["bits_per_byte"] for p in r["curve"]]
        style = "--" if r["kind"] == "baseline" else "-"
        ax.plot(xs, ys, style, marker="o", markersize=3, label=r["name"])
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation bits-per-byte")
    n_curve = report["settings"]["curve_lines"]
    ax.set_title(f"{report['data']['name']}: validation bits-per-byte ({n_curve} held-out texts) vs training time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "bpb_vs_time.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, axes = plt.subplots(1, 2, figsize=(11, max(3.0, 0.45 * len(ok) + 1.5)))
    names = [r["name"] for r in ok]
    colors = ["tab:gray" if r["kind"] == "baseline" else "tab:blue" for r in ok]
    for ax, key, label in (
        (axes[0], "units_per_second", "training units (words) / s"),
        (axes[1], "bytes_per_second", "training UTF-8 bytes / s"),
    ):
        values = [r[key] for r in ok]
        ax.barh(names, values, color=colors)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
        ax.set_xlabel(label)
        ax.invert_yaxis()
        ax.margins(x=0.2)
        ax.grid(True, axis="x", alpha=0.3)
    ref = REFERENCE["train_with_images"]
    axes[0].axvline(ref["words_per_second"], color="tab:red", linestyle=":", label="reference, with images")
    axes[1].axvline(ref["text_bytes_per_second"], color="tab:red", linestyle=":", label="reference, with images")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{report['data']['name']}: training throughput (gray: baselines; red: reference, another day)")
    fig.tight_layout()
    path = out_dir / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write the three kinds of files into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report["goals"] = goal_checks(report["results"])
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    md_path = out_dir / "results.md"
    write_markdown(report, md_path)
    plots = write_plots(report, out_dir)
    return {"json": json_path, "markdown": md_path, **{p.stem: p for p in plots}}
