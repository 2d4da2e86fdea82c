"""The benchmark report: ``results.json`` (every figure), ``results.md`` (tables), PNG plots.

No figure of the reference implementation is written into the code: figures measured on another day,
on another text, compare nothing. A comparison with it must read a measurement made in the same run;
this harness makes none, so the report says so ("no reference measurement in this run") and checks
only the goals that need no reference (peak memory).
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

#: Where a comparison with the reference implementation would stand.
NO_REFERENCE = "no reference measurement in this run"
#: The goal that needs no reference: peak resident memory while training the reference-tiny mixes.
MAX_PEAK_RSS_BYTES = 1_500_000_000


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


# ---- goals -------------------------------------------------------------------------------------------


def goal_checks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The peak-memory goal for each reference-tiny mix present in ``results``.

    Speed goals are ratios to the reference implementation: with no reference measurement in this
    run there is nothing to divide by, so none is checked.
    """
    by_name = {r["name"]: r for r in results if r.get("status") == "ok"}
    checks = []
    for name in ("reference-tiny", "reference-tiny-no-images"):
        r = by_name.get(name)
        if r is not None:
            peak = r["peak_rss_train_bytes"]
            checks.append(
                {
                    "mix": name,
                    "goal": "peak_rss_train_bytes",
                    "ours": peak,
                    "limit": MAX_PEAK_RSS_BYTES,
                    "met": peak <= MAX_PEAK_RSS_BYTES,
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

    lines += [
        "",
        "## Against the reference implementation",
        "",
        f"{NO_REFERENCE[0].upper()}{NO_REFERENCE[1:]}: "
        "its figures from another day and another text compare nothing, so no ratio is given.",
        "",
    ]
    checks = report.get("goals", [])
    if checks:
        lines += ["| mix | goal | ours | limit | met |", "|---|---|---|---|---|"]
        for c in checks:
            lines.append(
                f"| {c['mix']} | {c['goal']} | {c['ours'] / 1e9:.2f} GB | {c['limit'] / 1e9:.2f} GB | "
                f"{'yes' if c['met'] else 'no'} |"
            )
    else:
        lines.append("(the reference-tiny mixes were not in this run: no goal was checked)")
    protocol = report["settings"].get("reference_generation")
    for r in ok:
        g = figure(r, "generation.reference_protocol")
        if g and protocol:
            lines.append(
                f"- {r['name']}, generation with the reference's protocol ({json.dumps(protocol)}): "
                f"{1000 * g['seconds'] / max(g['steps'], 1):,.1f} ms a step, {g['units_per_second']:,.1f} words/s"
            )

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
    fig.suptitle(f"{report['data']['name']}: training throughput (gray: baselines; {NO_REFERENCE})")
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
