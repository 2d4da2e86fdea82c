"""The benchmark report: ``results.json`` (every figure, every seed), ``results.md`` (tables), PNG plots.

Each mix ran once per seed; :func:`aggregate_runs` gives every figure's mean and min-max over the seeds and the
mean validation curve (the seeds' curve points are taken at the same shares of the budget). A difference
between two mixes *separates* them when it exceeds the spread (max - min over the seeds) of both
(:func:`separations`).

No figure of the reference implementation is written into the code: figures measured on another day,
on another text, compare nothing. A comparison with it must read a measurement made in the same run
(``benchmarks/bench_reference.py`` makes one); this harness makes none, so the report says so ("no
reference measurement in this run") and checks only the goals that need no reference (peak memory).
"""

from __future__ import annotations

import copy
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


#: Figures averaged over the seeds besides :data:`FIGURES` (their spread is kept too).
EXTRA_FIGURES: tuple[str, ...] = (
    "train_bytes",
    "train_flops",
    "train_seconds",
    "wall_seconds",
    "steps",
    "final_loss",
    "achieved_flops_per_second",
    "generation.batch_1.units_per_second",
    "loglikelihood.requests_per_second",
)

#: The metric a task's column shows, the first of these that it reports (else its first metric).
TASK_METRICS: tuple[str, ...] = ("acc", "bits_per_byte", "exact_match", "acc_norm", "f1")


def task_figures(result: dict[str, Any]) -> list[str]:
    """Dotted paths ``tasks.<task>.<metric>`` of every lm_eval figure of a mix result."""
    return [f"tasks.{task}.{metric}" for task, metrics in (result.get("tasks") or {}).items() for metric in metrics]


def task_columns(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(task, metric)`` per report column: every task some mix was scored on, its main metric."""
    columns: dict[str, str] = {}
    for r in results:
        for task, metrics in (r.get("tasks") or {}).items():
            if task not in columns and metrics:
                columns[task] = next((m for m in TASK_METRICS if m in metrics), next(iter(metrics)))
    return list(columns.items())


def spread(values: list[float]) -> dict[str, float]:
    """Mean, min and max of ``values`` (one per seed)."""
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)}


def _set(result: dict[str, Any], path: str, value: Any) -> None:
    node = result
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def mean_curve(curves: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The seeds' validation curves point by point: the mean of every field, min and max of bits-per-byte.

    Points line up when the budget is bytes or FLOPs (the same shares of it); with fewer points in some seed
    (a time budget), the common prefix is kept.
    """
    n = min(len(c) for c in curves)
    out = []
    for i in range(n):
        points = [c[i] for c in curves]
        merged = {
            k: sum(p[k] for p in points) / len(points) for k in points[0] if isinstance(points[0][k], (int, float))
        }
        bpb = [p["bits_per_byte"] for p in points]
        merged.update(bits_per_byte_min=min(bpb), bits_per_byte_max=max(bpb))
        out.append(merged)
    return out


def aggregate_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One mix's seeds as one result: the first successful run's fields, every figure replaced by its mean
    over the successful seeds, ``spread`` (mean, min, max per figure), the mean ``curve`` and the ``runs``."""
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        first = runs[0]
        return {**first, "runs": runs, "seeds_ok": 0, "seeds": len(runs)}
    result = copy.deepcopy({k: v for k, v in ok[0].items() if k not in ("curve", "seed")})  # the runs stay as run
    spreads = {}
    for path in (*FIGURES, *EXTRA_FIGURES, *task_figures(ok[0])):
        values = [figure(r, path) for r in ok]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            spreads[path] = spread([float(v) for v in values])
            _set(result, path, spreads[path]["mean"])
    result["spread"] = spreads
    result["curve"] = mean_curve([r["curve"] for r in ok])
    result["runs"] = [{k: v for k, v in r.items() if k not in ("spec", "bench", "flops_parts")} for r in runs]
    result["seeds_ok"], result["seeds"] = len(ok), len(runs)
    failed = [r for r in runs if r.get("status") != "ok"]
    if failed:
        result["failed_seeds"] = [f"seed {r.get('seed')}: {r.get('error')}" for r in failed]
    return result


def separations(results: list[dict[str, Any]], path: str = "bits_per_byte") -> list[dict[str, Any]]:
    """Every pair of mixes with at least two seeds each: the difference of their means at ``path`` and whether
    it exceeds the spread (max - min over seeds) of both mixes (``separated``)."""
    ok = [r for r in results if r.get("status") == "ok" and r.get("spread", {}).get(path, {}).get("n", 0) >= 2]
    pairs = []
    for i, a in enumerate(ok):
        for b in ok[i + 1 :]:
            sa, sb = a["spread"][path], b["spread"][path]
            diff = sa["mean"] - sb["mean"]
            width_a, width_b = sa["max"] - sa["min"], sb["max"] - sb["min"]
            pairs.append(
                {
                    "a": a["name"],
                    "b": b["name"],
                    "difference": diff,
                    "spread_a": width_a,
                    "spread_b": width_b,
                    "separated": abs(diff) > width_a and abs(diff) > width_b,
                }
            )
    return pairs


# ---- goals -------------------------------------------------------------------------------------------


def sweep_edge(points: list[dict[str, Any]], chosen: float | None) -> str | None:
    """``"highest"`` / ``"lowest"`` when the chosen rate is the highest / lowest rate the sweep tried (failed rates
    count: a rate that diverged above the chosen one bounds it), else None. A rate at the edge may not be the
    best: the best may lie beyond the rates tried. One rate tried is no sweep (None)."""
    rates = sorted({float(p["lr"]) for p in points})
    if chosen is None or len(rates) < 2:
        return None
    if chosen >= rates[-1]:
        return "highest"
    if chosen <= rates[0]:
        return "lowest"
    return None


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


def _spread_text(r: dict[str, Any], path: str, fmt: Any = None) -> str:
    """``mean [min-max]`` of a figure over the seeds (just the value with one seed)."""
    fmt = fmt or _num
    s = r.get("spread", {}).get(path)
    if not s or s["n"] < 2:
        return fmt(figure(r, path))
    return f"{fmt(s['mean'])} [{fmt(s['min'])}–{fmt(s['max'])}]"


def budget_words(settings: dict[str, Any]) -> str:
    """The budget as the report states it."""
    parts = []
    if settings.get("budget_bytes"):
        parts.append(f"{settings['budget_bytes']:,} training bytes")
    if settings.get("budget_flops"):
        parts.append(f"{settings['budget_flops']:.3g} training FLOPs")
    if settings.get("budget_seconds"):
        parts.append(f"{settings['budget_seconds']:g} s of training")
    return " or ".join(parts) + (" (whichever came first)" if len(parts) > 1 else "")


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """``results.md``: figures with their spread over seeds, separations, the learning-rate sweep, parameters,
    FLOPs, reference and goals, settings and machine."""
    results = report["results"]
    ok = [r for r in results if r.get("status") == "ok"]
    columns = task_columns(ok)
    settings, machine = report["settings"], report["machine"]
    seeds = settings.get("seeds") or [settings.get("seed", 0)]
    lines = [
        f"# ILT benchmark: {report['data']['name']}",
        "",
        f"Every mix trained for the same budget ({budget_words(settings)}), once per seed ({', '.join(map(str, seeds))}: "
        "a seed sets the initialisation and the order of the texts, the same order for every mix), with AdamW and the "
        "same schedule at its own peak learning rate (see the sweep below"
        + (
            "; an ILT model's encoders and decoder at that rate times the latent's width over their own"
            if settings.get("lr_scaling", "none") == "width"
            else ""
        )
        + "); each run in a fresh process. "
        f"Held-out: {report['data']['eval_texts']} texts of `{report['data']['eval_file']}`. Figures are the mean over "
        "the seeds with [min–max]. Units are words (a word and the whitespace after it, "
        "`ilt_core.text.segmentation.segment`); for the baselines they are counted the same way on the text their "
        "tokens stand for. Wall-clock figures are reported, not budgeted: they follow the machine's load.",
        "",
        "| mix | bits/byte | "
        + "".join(f"{task} {metric} | " for task, metric in columns)
        + "lr | params | FLOPs/byte | train bytes | train FLOPs | train s | bytes/s | s/step | "
        "data share | MFU | peak RSS | gen b1 units/s (bytes/s) | gen b8 units/s (bytes/s) | "
        "text->batch cold/warm units/s | loglikelihood req/s (batch 16) |",
        "|---" * (17 + len(columns)) + "|",
    ]
    for r in results:
        if r.get("status") != "ok":
            lines.append(f"| {r['name']} | failed: {r.get('error', '?')} |" + " |" * (15 + len(columns)))
            continue
        t2b = r["text_to_batch"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["name"]
                    + (f" ({r['seeds_ok']}/{r['seeds']} seeds)" if r.get("seeds_ok", 1) < r.get("seeds", 1) else ""),
                    _spread_text(r, "bits_per_byte"),
                    *(_spread_text(r, f"tasks.{task}.{metric}") for task, metric in columns),
                    f"{r['lr']:g}" if r.get("lr") else "-",
                    _millions(r["parameters_total"]),
                    _num(r["flops_per_byte"]),
                    _num(r.get("train_bytes")),
                    _num(r.get("train_flops")),
                    _spread_text(r, "train_seconds", lambda v: f"{v:,.0f}"),
                    _spread_text(r, "bytes_per_second", lambda v: f"{v:,.0f}"),
                    _num(r["step_seconds"]),
                    f"{r['data_share']:.1%}",
                    f"{r['mfu']:.1%}",
                    f"{r['peak_rss_bytes'] / 1e9:.2f} GB",
                    f"{_num(figure(r, 'generation.batch_1.units_per_second'))} "
                    f"({_num(figure(r, 'generation.batch_1.bytes_per_second'))})",
                    f"{_num(figure(r, 'generation.batch_8.units_per_second'))} "
                    f"({_num(figure(r, 'generation.batch_8.bytes_per_second'))})",
                    f"{_num(t2b['cold_units_per_second'])} / {_num(t2b['warm_units_per_second'])}",
                    _spread_text(r, "loglikelihood.requests_per_second"),
                ]
            )
            + " |"
        )

    if columns:
        limit = settings.get("task_limit")
        lines += [
            "",
            "## lm_eval tasks",
            "",
            "Scored by lm_eval after training, on every seed (ILT mixes as its `ilt` model, the baselines through "
            f"`ilt_bench.lm_eval_models`){f', {limit} examples per task' if limit else ''}; every metric, mean "
            "[min–max] over the seeds.",
            "",
            "| mix | task | metrics |",
            "|---|---|---|",
        ]
        for r in ok:
            for task, _ in columns:
                metrics = (r.get("tasks") or {}).get(task, {})
                cells = "; ".join(f"{m} {_spread_text(r, f'tasks.{task}.{m}')}" for m in metrics) or "-"
                lines.append(f"| {r['name']} | {task} | {cells} |")

    pairs = separations(results)
    lines += ["", "## Which mixes separate", ""]
    if pairs:
        lines += [
            "A difference in mean bits-per-byte *separates* two mixes when it exceeds the spread (max - min over "
            "the seeds) of both.",
            "",
            "| mix A | mix B | A - B bits/byte | spread A | spread B | separated |",
            "|---|---|---|---|---|---|",
        ]
        for p in pairs:
            lines.append(
                f"| {p['a']} | {p['b']} | {p['difference']:+.3f} | {p['spread_a']:.3f} | {p['spread_b']:.3f} | "
                f"{'**yes**' if p['separated'] else 'no'} |"
            )
    else:
        lines.append("(one seed per mix: no spread to compare differences with; run with --seeds 2 or more)")

    lines += ["", "## Learning rates", ""]
    swept = [r for r in results if r.get("sweep")]
    if swept:
        lines += [
            f"Each mix's peak learning rate is the one with the lowest held-out bits-per-byte after "
            f"{settings.get('sweep_share', 0):.0%} of the budget (seed {seeds[0]}), scored on "
            f"{settings.get('sweep_lines')} held-out texts "
            + (
                f"from line {settings.get('sweep_offset')} on (not those of the table)."
                if settings.get("sweep_offset")
                else "(the first ones: the held-out file has no others)."
            ),
            "",
        ]
        rates = sorted({p["lr"] for r in swept for p in r["sweep"]})
        lines.append("| mix | " + " | ".join(f"lr {x:g}" for x in rates) + " | chosen |")
        lines.append("|---" * (len(rates) + 2) + "|")
        edges = []
        for r in swept:
            by = {p["lr"]: p["bits_per_byte"] for p in r["sweep"]}
            cells = [_num(by.get(x)) if by.get(x) is not None else ("failed" if x in by else "-") for x in rates]
            chosen = f"{r['lr']:g}" if r.get("lr") else "none: every rate failed"
            edge = sweep_edge(r["sweep"], r.get("lr"))
            if edge:
                chosen += f" (**{edge} tried**)"
                edges.append((r["name"], edge))
            lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {chosen} |")
        if edges:
            lines += [
                "",
                "**At the edge of the sweep:** "
                + "; ".join(f"{name} chose the {edge} rate tried" for name, edge in edges)
                + ". Its best rate may lie beyond: run again with a wider `--lr-sweep` (its figures above are at "
                "the best rate tried, not necessarily its best).",
            ]
    for r in results:
        if r.get("lr_choice") and r["lr_choice"] != "sweep":
            lines.append(f"- {r['name']}: learning rate {r['lr']:g} ({r['lr_choice']})")

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

    lines += ["", "## Plots", "", "![bits-per-byte against training FLOPs](bpb_vs_flops.png)", ""]
    lines += ["![bits-per-byte against training bytes](bpb_vs_bytes.png)", "", "![throughput](throughput.png)"]
    lines += ["", "## Settings and machine", ""]
    lines.append(f"- command: `{report['command']}`")
    lines.append(f"- settings: `{json.dumps(settings, sort_keys=True)}`")
    lines.append(
        f"- machine: {machine['cpu_model']}, {machine['cpu_count']} cores, torch threads {machine['torch_threads']}, "
        f"device {machine['device']}" + (f" ({machine['gpu']})" if machine.get("gpu") else "")
    )
    lines.append("- packages: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    lines.append(
        f"- commit {report.get('commit') or 'unknown'}, started {report['started']}, took {report['wall_seconds']:.0f} s"
    )
    lines.append("- every figure, the exact specs and the curves are in `results.json`")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """``bpb_vs_flops.png`` and ``bpb_vs_bytes.png`` (validation curves) and ``throughput.png`` (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["results"] if r.get("status") == "ok"]
    written = []
    n_curve = report["settings"]["curve_lines"]
    for key, label, name in (
        ("train_flops", "training FLOPs", "bpb_vs_flops.png"),
        ("train_bytes", "training bytes", "bpb_vs_bytes.png"),
    ):
        fig, ax = plt.subplots(figsize=(8, 5))
        for r in ok:
            xs = [p[key] for p in r["curve"]]
            ys = [p["bits_per_byte"] for p in r["curve"]]
            style = "--" if r["kind"] == "baseline" else "-"
            (line,) = ax.plot(xs, ys, style, marker="o", markersize=3, label=f"{r['name']} (lr {r.get('lr', 0):g})")
            if r.get("seeds_ok", 1) > 1:  # min-max over the seeds
                lows = [p.get("bits_per_byte_min", p["bits_per_byte"]) for p in r["curve"]]
                highs = [p.get("bits_per_byte_max", p["bits_per_byte"]) for p in r["curve"]]
                ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2)
        ax.set_xlabel(label)
        ax.set_ylabel("validation bits-per-byte")
        seeds = len(report["settings"].get("seeds") or [0])
        ax.set_title(
            f"{report['data']['name']}: validation bits-per-byte ({n_curve} held-out texts; mean and min-max over "
            f"{seeds} seed(s)) vs {label}",
            fontsize=9,
        )
        ax.grid(True, alpha=0.3)
        if ok:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / name
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
    report["separations"] = separations(report["results"])
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    md_path = out_dir / "results.md"
    write_markdown(report, md_path)
    plots = write_plots(report, out_dir)
    return {"json": json_path, "markdown": md_path, **{p.stem: p for p in plots}}
