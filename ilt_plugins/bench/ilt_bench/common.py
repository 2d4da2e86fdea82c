"""Shared helpers of the benchmark scripts in ``benchmarks/``: benchmark texts, timing, child processes, JSON.

Importing :mod:`ilt_bench` loads torch (through ``ilt_core``), so a script sets ``OMP_WAIT_POLICY`` first
(``os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")``): the OpenMP runtime reads it once, when torch loads.
Why PASSIVE: torch's OpenMP threads spin at every barrier, and when the cores are shared with other processes a
spinning thread holds a core its partner needs, which makes small matrix products much slower with 2 threads
than with 1; PASSIVE makes waiting threads sleep.

Machine facts, package versions and the process's memory come from the ``ilt bench`` harness
(:mod:`ilt_bench.machine`), so both kinds of benchmark record them the same way.

Texts come from :func:`ilt_data.recipes.prepare` (fetched from the package registries with
checksums, cached under ``$ILT_DATA_HOME`` or ``./data``), never from a machine-local copy, so every
user benchmarks the same words.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Benchmark texts: (recipe, split). The test split is fixed by the recipe, so the words are too.
TEXTS = {"he": ("he-news", "test"), "en": ("en-brown", "test")}
#: ``ilt train`` flags every training benchmark shares: one fixed rate and seed, no saving, evaluation or logging.
QUIET_TRAINING_ARGS = [
    "--learning_rate", "5e-4",
    "--save_strategy", "no",
    "--eval_strategy", "no",
    "--logging_steps", "100000",
    "--report_to", "none",
    "--disable_tqdm", "true",
    "--dataloader_pin_memory", "false",
    "--seed", "0",
]  # fmt: skip


def as_the_ilt_command(train: bool = False) -> dict[str, Any]:
    """Make the process-wide settings the ``ilt`` command makes at start-up (numpy's OpenBLAS on one thread; with
    ``train``, also ``ilt train``'s default ``--cpu_malloc``), so that a model run in the benchmark's own process
    runs as under ``ilt train`` / ``ilt generate``. Returns what it set, for the results."""
    from ilt_core.modeling.memory import set_cpu_malloc
    from ilt_core.modeling.products import set_openblas_threads
    from ilt_core.training.arguments import ILTArguments

    set_openblas_threads(1)
    applied: dict[str, Any] = {"openblas_threads": 1}
    if train:
        policy = ILTArguments.__dataclass_fields__["cpu_malloc"].default
        set_cpu_malloc(policy)
        applied["cpu_malloc"] = policy
    return applied


def log(message: str) -> None:
    """Progress line on stderr (stdout carries the table)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---- texts -------------------------------------------------------------------------------------


def load_text(lang: str, words: int, segment: Callable[[str], list[str]]) -> list[str]:
    """The first ``words`` units of the benchmark text of ``lang`` (``"he"`` or ``"en"``).

    Lines (one sentence each) are joined with a space, as running text, then segmented with
    ``segment`` (a processor's). Raises ``ValueError`` if the split holds fewer units.
    """
    from ilt_data.recipes import prepare

    recipe, split = TEXTS[lang]
    path = prepare(recipe, progress=False)[split]
    units: list[str] = []
    lines: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            lines.append(line.strip())
            if len(lines) % 64 == 0:  # segment in chunks: stop reading once there are enough units
                units = segment(" ".join(lines))
                if len(units) >= words:
                    break
    units = segment(" ".join(lines))
    if len(units) < words:
        raise ValueError(f"{recipe}/{split} holds {len(units)} units; the benchmark needs {words}")
    return units[:words]


def chunk_texts(units: list[str], rows: int, length: int) -> list[list[str]]:
    """``rows`` consecutive pieces of ``length`` units each (cycling through ``units`` if short)."""
    need = rows * length
    stream = (units * (need // len(units) + 1))[:need]
    return [stream[i * length : (i + 1) * length] for i in range(rows)]


# ---- timing ------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call of ``fn`` and what it returned."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def fastest(run: Callable[[], Any], repeats: int) -> float:
    """Wall seconds of the fastest of ``repeats`` calls of ``run``, after one untimed warm-up call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def interleaved(
    arms: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, setup: Callable[[str], None] | None = None
) -> dict[str, list[float]]:
    """Time several variants A, B, ... in rounds (A B A B ...), so load changes hit them alike.

    ``setup(name)`` runs (untimed) before each call of arm ``name``. Returns seconds per call per arm.
    """
    times: dict[str, list[float]] = {name: [] for name in arms}
    for round_ in range(warmup + repeats):
        for name, fn in arms.items():
            if setup is not None:
                setup(name)
            seconds, _ = timed(fn)
            if round_ >= warmup:
                times[name].append(seconds)
    return times


# ---- output ------------------------------------------------------------------------------------


#: how a benchmark's child process hands its figures to the parent: one stdout line, this prefix, then JSON
RESULT_PREFIX = "RESULT "


def _child_result(stdout: str, stderr: str | None, returncode: int, label: str) -> Any:
    """The figures a child printed last after :data:`RESULT_PREFIX`; exits naming ``label`` if it failed."""
    results = [line[len(RESULT_PREFIX) :] for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if returncode != 0 or not results:
        said = f":\n{stderr[-3000:]}" if stderr else " (its messages are above)"
        raise SystemExit(f"{label}: the child process failed (exit {returncode}){said}")
    return json.loads(results[-1])


def print_result(figures: Any) -> None:
    """In a child process: hand ``figures`` to the parent (one stdout line, :data:`RESULT_PREFIX` then JSON)."""
    print(RESULT_PREFIX + json.dumps(figures, default=float), flush=True)


def answer_as_child(args: Any, children: dict[str, Callable[[dict[str, Any]], Any]]) -> bool:
    """In a child process: when the flag of one of ``children`` is set (its value the JSON spec the parent sent,
    ``args.<name>``), print what that child measures (:func:`print_result`) and return True; else False."""
    for name, measure in children.items():
        spec = getattr(args, name, None)
        if spec:
            print_result(measure(json.loads(spec)))
            return True
    return False


def run_children(
    commands: list[list[str]], label: str, env: dict[str, str] | None = None, show_progress: bool = False
) -> list[Any]:
    """Run each command (an argv) as its own process, all side by side, and return what each printed with
    :func:`print_result`, in order. The one way the benchmarks start a child: a fresh process per measurement
    keeps its peak memory and its allocator's state its own. ``show_progress``: the children's stderr goes to
    this process's as they run (else it is kept, and shown only when a child fails)."""
    stderr = None if show_progress else subprocess.PIPE
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env) for c in commands]
    out = []
    for proc in procs:
        stdout, err = proc.communicate()
        out.append(_child_result(stdout, err, proc.returncode, label))
    return out


def run_child(command: list[str], label: str, env: dict[str, str] | None = None, show_progress: bool = False) -> Any:
    """:func:`run_children` for one command."""
    return run_children([command], label, env, show_progress)[0]


def write_json(path: str | Path | None, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` (parents created); nothing when ``path`` is None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=float) + "\n", encoding="utf-8")
    tmp.replace(path)
    log(f"wrote {path}")


def fmt(value: float, digits: int = 0) -> str:
    """A number with thousands separators, or '-' for a missing one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"
