"""Smoke runs of the speed benchmarks (``--quick``): they run end to end and report usable figures.

Each script runs in a subprocess, as a user runs it; the JSON it writes must hold finite, positive
throughputs and memory figures. (Nothing here judges speed: timings are never asserted.)
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def run_script(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--out", str(out), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[bench]" in done.stderr  # progress is printed
    return json.loads(out.read_text(encoding="utf-8"))


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_bench_pipeline_quick(tmp_path):
    data = run_script("bench_pipeline", tmp_path)
    renderers = data["renderers"]
    assert {"freetype:default", "cairo:default"} <= set(renderers)
    for by_lang in renderers.values():
        assert set(by_lang) == {"he", "en"}
        for r in by_lang.values():
            for key in ("render_each_units_per_s", "cold_cache_units_per_s", "warm_cache_units_per_s"):
                assert positive(r[key]), key
            p = r["processor"]
            assert p["batch"] == "2x16" and p["units"] % 32 == 0 and p["units"] >= 200  # --quick: 200 words
            for key in (
                "cold_units_per_s",
                "warm_units_per_s",
                "stage_segment_units_per_s",
                "stage_pixels_units_per_s",
            ):
                assert positive(p[key]), key
    for goal in data["goals"].values():
        assert positive(goal["freetype_over_cairo_cold_ratio"]) and isinstance(goal["warm_cache_above_200k"], bool)


@pytest.mark.slow
def test_bench_model_quick(tmp_path):
    # in this process (--no-isolate): a fresh process per configuration would double the run time
    data = run_script("bench_model", tmp_path, "--no-isolate", "--configs", "tiny-full", "tiny-bytes-only")
    assert set(data["configs"]) == {"tiny-full", "tiny-bytes-only"}
    assert positive(data["calibration_gflop_per_s"])
    for name, r in data["configs"].items():
        for key in (
            "step_s",
            "units_per_s",
            "bytes_per_s",
            "peak_rss_mb",
            "gflop_per_step",
            "text_to_batch_cold_units_per_s",
        ):
            assert positive(r[key]), (name, key)
        assert r["units_per_batch"] == 2 * 8  # --quick: 2 texts x 8 units, start markers not counted
        assert math.isfinite(r["last_loss"])
    assert "no reference measurement in this run" in data["reference_implementation"] and "goals" not in data
    # the image encoder costs FLOPs: the full model does more work per step than the bytes-only one
    assert data["configs"]["tiny-full"]["gflop_per_step"] > data["configs"]["tiny-bytes-only"]["gflop_per_step"]


@pytest.mark.slow
def test_bench_generation_small(tmp_path):
    out = tmp_path / "gen.json"
    argv = ["--contexts", "4", "12", "--batches", "1", "2", "--new-units", "2", "--repeats", "1"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench_generation.py"), *argv, "--decoder", "--vit", "--parts", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert {(r["context"], r["batch"], r["use_cache"]) for r in data["rows"]} == {
        (c, b, k) for c in (4, 12) for b in (1, 2) for k in (True, False)
    }
    assert all(positive(r["units_per_second"]) for r in data["rows"])
    assert {(r["decoder_layers"], r["batch"]) for r in data["decoder"]} == {(4, 1), (4, 2), (2, 1), (2, 2)}
    assert all(positive(r["greedy_ms_per_byte"]) and positive(r["generate_ms_per_byte"]) for r in data["decoder"])
    assert [r["batch"] for r in data["vit"]] == [1, 2] and all(positive(r["fused_ms"]) for r in data["vit"])
    for part in data["parts"]:
        assert part["context"] == 12
        shared = part["encode_new_units"] + part["decode_unit_bytes"]
        assert math.isclose(part["speedup_ceiling"], (part["latent_recomputed"] + shared) / shared)
        assert 0 < part["speedup_allowed"] < part["speedup_ceiling"]
    assert set(data["goals"]) == {"batch1", "batch2"}


@pytest.mark.slow
def test_bench_model_breakdown_quick(tmp_path):
    data = run_script("bench_model", tmp_path, "--breakdown", "--threads", "1")
    assert data["configs"] == {}  # --breakdown alone runs only the breakdown
    with_images, without = data["breakdown"]["with images"], data["breakdown"]["without images"]
    assert "image_encoder" in with_images and "image_encoder" not in without
    for parts in (with_images, without):
        components = ("bytes_encoder", "latent_transformer", "bytes_decoder")
        for name in components:
            assert positive(parts[name]["gflop"]) and positive(parts[name]["cpu_s"]), name
        assert positive(parts["optimizer_step"]["cpu_s"]) and positive(parts["whole_step"]["gflop"])
        # the components' products are the step's, but for the two mappings
        assert (
            sum(parts[n]["gflop"] for n in (*components, "image_encoder") if n in parts) <= parts["whole_step"]["gflop"]
        )
        # each part's share is its CPU time over the whole step's
        whole_cpu = parts["whole_step"]["cpu_s"]
        for name in (*components, "optimizer_step"):
            assert math.isclose(parts[name]["share_of_step_cpu"], parts[name]["cpu_s"] / whole_cpu), name
        assert all(positive(v) for v in parts["matmul_gflop_per_cpu_s"].values())


@pytest.mark.slow
def test_bench_bounds_quick(tmp_path):
    data = run_script("bench_bounds", tmp_path)
    assert set(data["setups"]) == {"with images", "without images"} and positive(data["peak_gflop_per_s"])
    with_images, without = data["setups"]["with images"], data["setups"]["without images"]
    # the peak is the fastest rate any recorded shape reached, with either library (torch's alone for the other)
    timed = {tuple(s["shape"]): s for r in (with_images, without) for s in r["shapes"]}
    rates = [(2 * math.prod(shape) / min(s["torch_s"], s["numpy_s"]), 2 * math.prod(shape) / s["torch_s"])
             for shape, s in timed.items()]  # fmt: skip
    assert math.isclose(data["peak_gflop_per_s"], max(r for r, _ in rates) / 1e9)
    assert math.isclose(data["peak_gflop_per_s_torch"], max(r for _, r in rates) / 1e9)
    for r in (with_images, without):
        train, gen = r["training_step_products"], r["generation_step_products"]
        assert train["products"] > 100 and gen["products"] > 10
        # every total is the per-shape table's: counts, GFLOP, and the faster library per shape
        shapes = r["shapes"]
        assert train["products"] == sum(s["train"] for s in shapes)
        assert gen["products"] == sum(s["generation_two_steps"] for s in shapes) // 2  # per step
        assert math.isclose(train["gflop"], sum(2 * math.prod(s["shape"]) * s["train"] for s in shapes) / 1e9)
        for side, key, per in ((train, "train", 1), (gen, "generation_two_steps", 2)):
            assert math.isclose(side["torch_s"], sum(s[key] * s["torch_s"] for s in shapes) / per)
            assert math.isclose(side["numpy_s"], sum(s[key] * s["numpy_s"] for s in shapes) / per)
            assert math.isclose(side["best_s"], sum(s[key] * min(s["torch_s"], s["numpy_s"]) for s in shapes) / per)
        words = r["words_per_training_step"]
        assert 0 < words <= 8 * 64  # the reference's batch: 8 rows of 64 units, start markers included
        at_peak = train["gflop"] / data["peak_gflop_per_s"]
        assert math.isclose(r["training_s_at_peak"], at_peak)
        assert math.isclose(r["training_words_per_s_bound"], words / min(train["best_s"], at_peak))
        torch_bound = words / min(train["torch_s"], train["gflop"] / data["peak_gflop_per_s_torch"])
        assert math.isclose(r["training_words_per_s_bound_torch"], torch_bound)
        assert math.isclose(r["training_gflop_per_word"], train["gflop"] / words)
        assert math.isclose(r["generation_ms_per_step_bound"], 1000 * gen["best_s"])
        # no figure of the reference implementation from another run: nothing to divide by
        assert not [key for key in r if key.startswith("reference_") or key.endswith("_speedup_bound")]
    assert "no reference measurement in this run" in data["reference_implementation"]
    assert data["machine"]["cpu_count"] >= 1 and "torch" in data["versions"]  # the harness's machine facts
    # the word images add products: the ViT's
    assert with_images["training_step_products"]["gflop"] > without["training_step_products"]["gflop"]
    assert positive(with_images["memory_floor_mb"]) and "memory_floor_mb" not in without


FAKE_REFERENCE = """\
import json, sys
summary = {"head_train_noimg_words_per_s": 150.0, "head_train_noimg_peak_rss_mib_loop": 3000.0,
           "head_prep_words_per_s_processor_cold_cache_fast_ip": 3000.0, "head_prep_words_per_s_processor_warm_cache": 3e4}
json.dump({"meta": {"text": {"sha256": "another text"}}, "summary": summary}, open(sys.argv[2], "w"))
"""


@pytest.mark.slow
def test_bench_reference_runs_the_project_between_the_reference_runs(tmp_path):
    fake = tmp_path / "fake_reference.py"
    fake.write_text(FAKE_REFERENCE, encoding="utf-8")
    text = tmp_path / "text.txt"
    text.write_text("שלום עולם, זהו משפט בעברית עם מילים רבות. " * 40, encoding="utf-8")
    out = tmp_path / "ratios.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench_reference.py"), "--text", str(text), "--quick", "--rounds", "2"]
        + ["--reference-cmd", f"{sys.executable} {fake} {{text}} {{out}}", "--only", "train-noimg", "prep"]
        + ["--out", str(out), "--reference-gflop", "339", "248"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    # the work beside the speed: FLOPs a word on both sides, and the goal in words/s (1.5x the reference's 150)
    assert all(positive(r["train_noimg_gflop_per_word"]) for r in data["rounds"]["project"])
    assert "train_noimg_words_per_s: goal 1.5x the reference = 225.0 words/s" in done.stdout
    assert f"reference {248 / 512:.3f} GFLOP/word" in done.stdout
    assert len(data["rounds"]["reference"]) == 2 and len(data["rounds"]["project"]) == 2  # A B A B
    ratios = {r["figure"]: r for r in data["ratios"]}
    row = ratios["train_noimg_words_per_s"]
    assert len(row["project"]) == 2 and all(positive(v) for v in row["project"])
    assert row["ratio"] == pytest.approx(sum(row["project"]) / 2 / 150.0)  # the median of two: their mean
    rss = ratios["train_noimg_peak_rss_mib"]  # lower is better: the reference's over ours
    assert rss["ratio"] == pytest.approx(3000.0 / (sum(rss["project"]) / 2))
    assert ratios["train_img_words_per_s"]["ratio"] is None  # not measured on either side: no ratio
    assert data["text_mismatch"] and "WARNING: the reference ran on another text" in done.stdout
    assert "| train_noimg_words_per_s |" in done.stdout


@pytest.mark.slow
def test_bench_learning_quick_curves_per_variant_and_seed(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench_learning.py"), "--quick", "--seeds", "2", "--out", str(tmp_path)]
        + ["--variants", "bytes=nano-baseline-bytes,ilt=nano-no-images+lr-width+dec-std-0.02", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "learning.json").read_text(encoding="utf-8"))
    bytes_, ilt = data["results"]
    assert (bytes_["kind"], ilt["kind"]) == ("baseline", "ilt") and ilt["treatments"] == ["lr-width", "dec-std-0.02"]
    for r in data["results"]:
        assert r["seeds"] == [0, 1] and [p["step"] for p in r["curve"]] == [0, 1, 2]  # --quick: 2 steps
        for p in r["curve"]:
            values = [run["curve"][r["curve"].index(p)]["bits_per_byte"] for run in r["runs"]]
            assert p["min"] == min(values) and p["max"] == max(values) and positive(p["bits_per_byte"])
            assert p["bits_per_byte"] == pytest.approx(sum(values) / 2)
            assert p["min"] < p["max"]  # two seeds, two models: never the same figure
    assert ilt["curve"][0]["bits_per_byte"] > ilt["curve"][-1]["bits_per_byte"]  # two steps at 2e-3 already learn
    assert "| ilt |" in done.stdout and (tmp_path / "learning.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run(
        [sys.executable, str(BENCH / "bench_learning.py"), "--quick", "--variants", "x=nano+lr-everything-2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "unknown treatment 'lr-everything-2'" in bad.stderr


def test_pool_rounds_pairs_each_round_and_pools_the_runs(tmp_path):
    table = (
        "| figure | reference | project | ratio (>1: project better) |\n|---|---|---|---|\n"
        "| train_noimg_words_per_s | {ref} | {ours} | 1.00x |\n| generate_img_ms_per_step | - | - | - |\n"
        "| train_ckpt_words_per_s | 90.0 | - | - |\n"  # one side only: not a round
    )
    (tmp_path / "a.log").write_text(table.format(ref="100.0, 200.0", ours="160.0, 220.0"), encoding="utf-8")
    (tmp_path / "b.log").write_text(table.format(ref="1,000.0", ours="1,400.0"), encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(BENCH / "pool_rounds.py"), str(tmp_path / "a.log"), str(tmp_path / "b.log")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # rounds pair within a run: 1.6, 1.1 and 1.4; medians of sides 200 / 220
    assert "3 rounds; medians reference 200.0, project 220.0, ratio 1.100" in out
    assert "per-round ratios 1.100, 1.400, 1.600 (median 1.400); 1 of 3 rounds >= 1.5" in out


def test_bench_memory_quick(tmp_path):
    data = run_script("bench_memory", tmp_path, "--checkpointing", "image_encoder", "--scale-to", "4x16")
    assert data["preset"] == "micro" and data["checkpointing"] == ["image_encoder"]
    big, half = data["runs"]["2x8"], data["runs"]["1x8"]
    for run in (big, half):
        parts = run["components"]
        assert set(parts) >= {"image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder", "model"}
        assert all(positive(parts[role]["param"]) for role in parts)
        assert all(positive(parts[role]["kept"]) for role in ("bytes_encoder", "bytes_decoder", "model"))
        assert run["step_peak"] >= run["step_peak_parts"]["Parameter"] > 0
        assert positive(run["optimizer_states"]) and run["steady_peak"] >= run["step_peak"]
    # more words keep more: the larger batch's activations exceed the smaller's, and the fit passes through both
    assert big["components"]["model"]["kept"] > half["components"]["model"]["kept"]
    scaled = data["scaled"]
    assert scaled["weights_grads_adamw"] == 16 * data["parameters"]
    assert scaled["total"] == scaled["weights_grads_adamw"] + scaled["kept"] + scaled["largest_bw_peak"]
    for role, row in scaled["components"].items():
        n_half, n_big = row["measured_n"]
        assert abs(row["kept_fixed"] + row["kept_per"] * n_big - big["components"][role]["kept"]) < 1e-6 * 2**30
        assert row["target_n"] >= n_big >= n_half


def test_bench_step_parts_quick(tmp_path):
    lines = ["שלום עולם, זה משפט ראשון של בדיקה ועוד כמה מילים כדי למלא שורה."] * 40
    for name in ("train.txt", "validation.txt"):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = run_script(
        "bench_step_parts",
        tmp_path,
        "--mixes", "nano-no-images", "nano-no-images", "nano-baseline-bytes",
        "--label-rows", "136", "0", "0",
        "--ladder-growth", "1.25", "0", "0",
        "--set", "1:bytes_encoder.config.hidden_dropout_prob=0.1",
        "--attr", "0:bytes_encoder.group_lengths=false",
        "--components", "1",
        "--train-file", str(tmp_path / "train.txt"),
        "--eval-file", str(tmp_path / "validation.txt"),
    )  # fmt: skip
    arms = data["arms"]
    assert [a["label_rows"] for a in arms] == [136, 40, "-"]  # the knob, the model's own, a baseline's none
    assert [a["ladder_growth"] for a in arms] == [1.25, 1.0625, None]
    assert 0 < arms[0]["label_fill"] <= 1 and 0 < arms[1]["label_fill"] <= 1 and arms[2]["label_fill"] is None
    sets = [[], ["bytes_encoder.config.hidden_dropout_prob=0.1"], []]
    assert [a["sets"] for a in arms] == [["bytes_encoder.group_lengths=false"], *sets[1:]]
    for arm in arms:
        assert positive(arm["bytes_per_step"]) and positive(arm["bytes_per_second"])
        assert all(positive(arm[f"{part}_ms"]) for part in ("data", "forward", "backward", "clip", "optimizer"))
    # each component alone, on the inputs of the last counted step
    assert [list(a["components_ms"]) for a in arms] == [
        ["bytes_encoder", "latent_transformer", "bytes_decoder"]
    ] * 2 + [["transformer"]]
    # forward and backward: every component's parameters got a gradient (the latent returns a dataclass)
    assert all(n > 0 for a in arms for n in a["components_parameters_with_grad"].values())
    for arm in arms[:2]:
        assert all(positive(ms) for ms in arm["components_ms"].values())
        ceilings = list(arm["ceilings"].values())  # each adds parts of the step: each allows less than the one before
        assert len(ceilings) == 3 and ceilings[0] > ceilings[1] > ceilings[2] > 0
        assert ceilings[1] == arm["bytes_per_step"] / (sum(arm["components_ms"].values()) / 1000)
