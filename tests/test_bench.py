"""``ilt bench``: mixes, baselines, FLOPs, the report, and one end-to-end run on two shrunk mixes."""

from __future__ import annotations

import argparse
import json
import math
import types
from pathlib import Path

import pytest
import torch
from ilt_bench.baselines import BaselineLM, BaselineSpec, ByteCodec, TokenStream, train_bpe
from ilt_bench.harness import add_bench_parser
from ilt_bench.mixes import load_mix, resolve_mixes
from ilt_bench.report import (
    FIGURES,
    aggregate_runs,
    goal_checks,
    mean_curve,
    missing_figures,
    separations,
    sweep_edge,
)
from ilt_bench.run import ILTRunner, budget_share, lr_at, take_blocks, text_stream, total_flops

from ilt_core import hookimpl
from ilt_core.errors import ILTError
from ilt_core.modeling.flops import FlopCounter, PartWork, attention_shape
from ilt_core.modeling.products import openblas_threads
from ilt_core.plugins.registry import Registry
from ilt_core.specs.spec import merge_spec
from ilt_core.text.segmentation import segment

REPO = Path(__file__).resolve().parents[1]
MIX_DIR = REPO / "benchmarks" / "mixes"

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "שלום עולם, זהו משפט בעברית עם מילים רבות.",
    "Benchmarks compare mixes on the same data and budget.",
    "הכלב הקטן רץ בגן ושיחק עם הכדור האדום.",
    "Bits per byte are comparable across tokenizers 🙂.",
    "A longer sentence, with punctuation; numbers like 2024 and 3.14, and more words at the end.",
]

SMALL_ILT = """\
name: small-ilt
base: tiny
image_encoder: false
renderer: false
modality_dropout: 0.0
latent_transformer:
  config: {hidden_size: 64, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 128}
bytes_encoder:
  config: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}
bytes_decoder:
  config: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2, intermediate_size: 64}
bench: {batch_size: 4, block_units: 16}
"""

SMALL_BYTES = """\
name: small-bytes
baseline: bytes
model: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}
bench: {batch_size: 4, block_size: 64, lr: 2.0e-3}
"""


def small_baseline(block_size: int = 16) -> BaselineLM:
    torch.manual_seed(0)
    spec = BaselineSpec(
        baseline="bytes",
        model={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    )
    lm = BaselineLM(spec, ByteCodec(), block_size)
    lm.model.eval()
    return lm


# ---- mixes --------------------------------------------------------------------------------------------


def test_shipped_mixes_load_and_name_registered_components():
    from ilt_core.plugins.registry import get_registry
    from ilt_core.specs.spec import check_components, parse_spec

    mixes = {m.name: m for m in resolve_mixes(None, MIX_DIR)}
    required = {"tiny", "tiny-no-images", "tiny-no-bytes", "tiny-timm", "tiny-clip", "reference-tiny"}
    assert required | {"baseline-bytes", "baseline-bpe"} <= set(mixes)
    registry = get_registry()
    for name in required:
        check_components(parse_spec(mixes[name].spec), registry)  # raises on an unknown component
    assert mixes["tiny-no-images"].spec["image_encoder"] is False
    assert mixes["tiny-no-bytes"].spec["bytes_encoder"] is False
    assert mixes["tiny-timm"].spec["image_encoder"]["component"] == "timm:model"
    assert mixes["tiny-timm"].spec["image_encoder"]["model_name"] == "vit_tiny_patch16_224"
    assert mixes["tiny-clip"].spec["image_encoder"]["component"] == "clip:visual"
    ref = mixes["reference-tiny"]
    assert ref.spec["bytes_decoder"]["config"]["num_hidden_layers"] == 2
    assert ref.spec["bytes_decoder"]["config"]["hidden_size"] == 256  # merged, not replaced
    assert ref.spec["image_encoder"]["config"]["num_hidden_layers"] == 12
    assert ref.spec["image_encoder"]["config"]["hidden_size"] == 192
    assert ref.spec["latent_transformer"]["config"]["num_hidden_layers"] == 6
    assert ref.spec["latent_transformer"]["config"]["hidden_size"] == 512
    assert (ref.spec["labels"], ref.spec["label_bytes"], ref.spec["modality_dropout"]) == ("bytes", 32, 0.0)
    assert (ref.bench.batch_size, ref.bench.block_units) == (8, 64)
    for name in ("baseline-bytes", "baseline-bpe"):
        body = BaselineSpec.model_validate(mixes[name].spec).body()
        assert (body["num_hidden_layers"], body["hidden_size"]) == (6, 512)  # the tiny latent's size


def test_merge_spec_replaces_blocks_that_name_a_component_and_merges_the_rest():
    base = {
        "image_encoder": {"component": "hf:vision", "config": {"a": 1}},
        "bytes_decoder": {"component": "x:y", "config": {"a": 1, "b": 2}},
    }
    out = merge_spec(base, {"image_encoder": {"component": "timm:model"}, "bytes_decoder": {"config": {"b": 3}}})
    assert out["image_encoder"] == {"component": "timm:model"}
    assert out["bytes_decoder"] == {"component": "x:y", "config": {"a": 1, "b": 3}}
    assert base["bytes_decoder"]["config"]["b"] == 2  # the base is not changed


def test_a_plugin_contributes_mixes_beside_the_mix_dir(tmp_path):
    """``ilt_bench_mixes``: a plugin's folder (and single files) of mixes join --mix-dir's, by file name."""
    folder = tmp_path / "plugin-mixes"
    folder.mkdir()
    (folder / "small-bytes.yaml").write_text(SMALL_BYTES)
    single = tmp_path / "one-file.yaml"
    single.write_text(SMALL_BYTES.replace("name: small-bytes", "name: from-a-file"))
    (folder / "tiny.yaml").write_text(SMALL_BYTES.replace("name: small-bytes", "name: shadowed"))
    plugin = types.SimpleNamespace(ilt_bench_mixes=hookimpl(lambda: [str(folder), single]))
    registry = Registry(load_entry_points=False)
    registry.register(plugin, "mixes-plugin")
    extra = registry.bench_mix_paths()
    assert extra == [folder, single]
    chosen = resolve_mixes("small-bytes,one-file,tiny", MIX_DIR, extra)
    assert [(m.name, m.kind) for m in chosen] == [
        ("small-bytes", "baseline"),
        ("from-a-file", "baseline"),
        ("tiny", "ilt"),
    ]
    everything = [m.name for m in resolve_mixes(None, MIX_DIR, extra)]
    assert {"small-bytes", "from-a-file", "tiny"} <= set(everything) and "shadowed" not in everything
    with pytest.raises(ILTError, match="no-such-folder: no such file or folder"):
        resolve_mixes("tiny", MIX_DIR, [tmp_path / "no-such-folder"])


def test_mix_errors_name_the_problem(tmp_path):
    with pytest.raises(ILTError, match="not a mix.*available: .*tiny"):
        resolve_mixes("no-such-mix", MIX_DIR)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: tiny\nbench: {batch_size: 0}\n")
    with pytest.raises(ILTError, match="bench.batch_size"):
        load_mix(bad)
    bad.write_text("baseline: trigram\n")
    with pytest.raises(ILTError, match="baseline"):
        load_mix(bad)


# ---- baselines ------------------------------------------------------------------------------------------


def test_bpe_encodes_every_text_exactly_and_counts_its_bytes():
    codec = train_bpe(TEXTS * 5, vocab_size=300)
    for text in TEXTS + ["unseen: ξένο κείμενο \t tabs\nand newlines"]:
        ids = codec.encode(text)
        assert codec.decode(ids) == text
        assert sum(codec.token_bytes(ids)) == len(text.encode("utf-8"))
    assert len(codec.encode(TEXTS[0])) < len(TEXTS[0].encode("utf-8"))  # it merged something


def test_baseline_bits_per_byte_is_the_nll_of_every_byte_and_the_end_of_text():
    lm = small_baseline(block_size=128)
    text = TEXTS[1]
    ids = torch.tensor([[lm.codec.bos_id, *lm.codec.encode(text), lm.codec.eos_id]])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0, :-1].float(), -1)
    nll = -logp.gather(-1, ids[0, 1:, None]).sum().item()
    expected = nll / math.log(2) / len(text.encode("utf-8"))
    # scored beside a longer text in one padded batch: padding changes nothing
    result = lm.bits_per_byte([text], batch_size=1)
    assert result.bits_per_byte == pytest.approx(expected, rel=1e-5)
    both = lm.bits_per_byte([text, TEXTS[5]], batch_size=2)
    alone = lm.bits_per_byte([TEXTS[5]], batch_size=1)
    assert both.nll_bits == pytest.approx(result.nll_bits + alone.nll_bits, rel=1e-5)
    assert both.num_bytes == len(text.encode()) + len(TEXTS[5].encode())
    assert both.num_units == len(segment(text)) + len(segment(TEXTS[5]))


def test_long_texts_are_scored_in_blocks_that_predict_every_token_once():
    lm = small_baseline(block_size=16)
    text = TEXTS[5]
    blocks = lm.text_blocks(text)
    assert len(blocks) > 1 and all(len(b) <= 16 and b[0] == lm.codec.bos_id for b in blocks)
    predicted = [t for b in blocks for t in b[1:]]
    assert predicted == lm.codec.encode(text) + [lm.codec.eos_id]


def test_token_stream_rows_cover_the_stream_once_with_its_bytes_and_units():
    codec = ByteCodec()
    texts = iter(TEXTS * 3)
    stream = TokenStream(texts, codec, block_size=12)
    rows, nbytes, nunits = [], 0, 0
    for _ in range(6):
        batch = stream.next_batch(3)
        assert batch.input_ids.shape == (3, 12)
        rows += batch.input_ids.tolist()
        nbytes += batch.num_bytes
        nunits += batch.num_units
    flat = rows[0] + [t for r in rows[1:] for t in r[1:]]  # rows overlap by one token
    expected, starts = [], set()
    for t in TEXTS * 3:
        expected.append(codec.bos_id)
        offset = len(expected)
        for u in segment(t):
            starts.add(offset)
            offset += len(u.encode("utf-8"))
        expected += codec.encode(t) + [codec.eos_id]
    assert flat == expected[: len(flat)]
    assert nbytes == sum(1 for t in flat[1:] if t < 256)  # each predicted byte once
    assert nunits == sum(1 for i in range(1, len(flat)) if i in starts)


def test_a_baseline_in_lm_eval_scores_as_the_bench_does():
    from ilt_bench.lm_eval_models import BaselineLMEval
    from lm_eval.api.instance import Instance

    lm = small_baseline(block_size=16)
    adapter = BaselineLMEval(lm, batch_size=3)
    rolling = adapter.loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(TEXTS)]
    )
    expected = lm.bits_per_byte(TEXTS)  # texts longer than a block: several blocks each
    assert -sum(rolling) / math.log(2) == pytest.approx(expected.nll_bits, rel=1e-5)
    prompt = "Benchmar"  # a random model whose greedy bytes here are ASCII (text that re-encodes to them)
    greedy = lm.generate([prompt], 2)[0]
    assert greedy.isascii()
    pairs = [(prompt, greedy), (prompt, greedy[:-1] + ("x" if greedy[-1] != "x" else "y"))]
    answers = adapter.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])
    assert [g for _, g in answers] == [True, False] and answers[0][0] > answers[1][0]
    (text,) = adapter.generate_until([Instance("generate_until", {}, (prompt, {"max_gen_toks": 2}), 0)])
    assert text == greedy


def test_generation_of_a_baseline_writes_exactly_the_tokens_asked():
    lm = small_baseline(block_size=64)
    ids = lm.generate_ids(["שלום ", "hello there "], max_new_tokens=5)
    assert ids.shape == (2, 5)
    assert bool((ids < 256).all())  # end of text, pad and start suppressed: every row writes 5 bytes


# ---- the training loop's pieces --------------------------------------------------------------------


def test_take_blocks_fills_at_most_batch_size_rows_in_stream_order():
    from ilt_core.text.collator import pack_rows

    texts = text_stream(TEXTS, seed=0)
    pending: list = []
    seen = []
    for _ in range(4):
        blocks = take_blocks(pending, texts, segment, batch_size=2, block_units=12)
        rows = pack_rows([len(b.units) + 1 for b in blocks], 12)
        assert 1 <= len(rows) <= 2
        assert all(len(b.units) + 1 <= 12 for b in blocks)
        seen += blocks
    # the blocks, joined, are the stream's texts in order (a long text continues across calls)
    joined = "".join(u for b in seen for u in b.units)
    order = text_stream(TEXTS, seed=0)
    stream_text = "".join(next(order) for _ in range(len(TEXTS) * 2))
    assert len(joined) > len(max(TEXTS, key=len)) and stream_text.startswith(joined)
    assert any(not b.complete for b in seen)  # the long text was cut into blocks


def test_same_seed_same_data_order_and_schedule_shape():
    a, b = text_stream(TEXTS, 3), text_stream(TEXTS, 3)
    assert [next(a) for _ in range(15)] == [next(b) for _ in range(15)]
    assert lr_at(0, 0.0, 1.0) == pytest.approx(0.1)  # warm-up
    assert lr_at(20, 0.0, 1.0) == pytest.approx(1.0)
    assert lr_at(20, 1.0, 1.0) == pytest.approx(0.1)  # cosine to 10%
    assert lr_at(20, 0.25, 1.0) > lr_at(20, 0.75, 1.0)


def test_ilt_components_train_at_the_rate_times_the_latent_width_over_their_own(tmp_path):
    from ilt_core.modeling.parameters import learning_rate_groups

    (tmp_path / "small-ilt.yaml").write_text(SMALL_ILT)
    runner = ILTRunner(load_mix(tmp_path / "small-ilt.yaml").to_dict(), {"seed": 0}, torch.device("cpu"))
    groups = runner.param_groups("width", 1e-3)
    # SMALL_ILT: latent 64 wide, bytes encoder and bytes decoder 32: twice the rate; the latent and mappings 1x
    assert {g["name"]: g["factor"] for g in groups} == {"bytes_encoder": 2.0, "bytes_decoder": 2.0, "rest": 1.0}
    names = {id(p): n for n, p in runner.model.named_parameters()}
    for g in groups:
        assert all(names[id(p)].split(".")[0] == g["name"] or g["name"] == "rest" for p in g["params"])
    assert {g["weight_decay"] for g in groups} == {0.1, 0.0}  # no decay on norms and biases, as ilt train
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in runner.parameters()) and len(set(every)) == len(every)
    # ilt train's groups exactly (the same function), so the two train each component alike
    core = learning_rate_groups(runner.model, 1e-3, "width", weight_decay=0.1)
    assert [[id(p) for p in g["params"]] for g in groups] == [[id(p) for p in g["params"]] for g in core]
    one = runner.param_groups("none", 1e-3)
    assert {(g["name"], g["factor"]) for g in one} == {("rest", 1.0)} and len(one) == 2
    assert sum(len(g["params"]) for g in one) == len(every)


def test_bench_flops_are_ilt_trains_count(tmp_path):
    """The harness adds each batch's FLOPs with the function ILTTrainer reports as total_flos."""
    from ilt_core.modeling.flops import batch_flops

    (tmp_path / "small-ilt.yaml").write_text(SMALL_ILT)
    runner = ILTRunner(load_mix(tmp_path / "small-ilt.yaml").to_dict(), {"seed": 0}, torch.device("cpu"))
    stream, expected = text_stream(TEXTS, 0), 0.0
    for _ in range(2):
        batch, _, nbytes = runner.next_batch(stream)
        runner.count_flops(batch, nbytes)
        expected += batch_flops(runner.model, batch)
        assert runner.flops.num_bytes > 0
    assert total_flops(runner.flops) == pytest.approx(expected, rel=1e-12) and expected > 0
    assert set(runner.flops.parts) == {
        "bytes_encoder",
        "latent_transformer",
        "bytes_decoder",
        "encoder_mapping",
        "decoder_mapping",
    }


def test_flops_formula_and_attention_shapes():
    lm = small_baseline()
    assert attention_shape(lm.model) == (1, 32)
    work = PartWork(params=1000, layers=2, width=8)
    work.add([3, 5])
    assert work.flops() == 6 * 1000 * 8 + 12 * 2 * 8 * (9 + 25)
    counter = FlopCounter(parts={"p": work}, num_bytes=4)
    assert counter.flops_per_byte() == pytest.approx(work.flops() / 4)


def test_report_checks_flag_missing_or_non_positive_figures_and_goals():
    good = {"name": "reference-tiny", "status": "ok"}
    for path in FIGURES:
        node = good
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = 1.0
    assert missing_figures(good) == []
    bad = json.loads(json.dumps(good))
    bad["mfu"] = float("nan")
    bad["generation"]["batch_8"]["units_per_second"] = 0.0
    assert missing_figures(bad) == ["mfu", "generation.batch_8.units_per_second"]
    good.update(units_per_second=400.0, peak_rss_train_bytes=1.2e9)
    heavy = {**good, "name": "reference-tiny-no-images", "peak_rss_train_bytes": 1.6e9}
    # no reference measurement in this run: only the goal that needs none (peak memory) is checked
    checks = goal_checks([good, heavy, {**good, "name": "tiny"}])
    assert [(c["mix"], c["goal"], c["met"]) for c in checks] == [
        ("reference-tiny", "peak_rss_train_bytes", True),
        ("reference-tiny-no-images", "peak_rss_train_bytes", False),
    ]


def test_bench_parser_and_data_errors(tmp_path):
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--train-file", str(tmp_path / "a.txt"), "--mixes", "tiny"])
    # the defaults: a byte budget (not wall-clock), 3 seeds, a learning-rate sweep per mix
    assert args.command == "bench" and callable(args.func)
    assert args.budget_bytes > 0 and not args.budget_seconds and not args.budget_flops
    assert args.seeds == 3 and args.lr is None and len(args.lr_sweep.split(",")) >= 3
    with pytest.raises(ILTError, match="--train-file and --eval-file go together"):
        args.func(args)
    for argv, message in (
        (["--budget-bytes", "0"], "no budget"),
        (["--budget-flops", "-1"], "--budget-flops must be >= 0"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--lr-sweep", "1e-3,fast"], "--lr-sweep"),
        (["--sweep-share", "0"], "--sweep-share"),
    ):
        bad = parser.parse_args(["bench", "--mixes", "tiny", *argv])
        with pytest.raises(ILTError, match=message):
            bad.func(bad)


def test_budget_share_is_the_largest_share_among_the_budgets_given():
    assert budget_share({"budget_bytes": 1000}, 50.0, 250, 1e12) == pytest.approx(0.25)  # time and FLOPs unbudgeted
    assert budget_share({"budget_flops": 1e9}, 50.0, 250, 5e8) == pytest.approx(0.5)
    both = {"budget_bytes": 1000, "budget_flops": 1e9, "budget_seconds": 0}
    assert budget_share(both, 50.0, 900, 5e8) == pytest.approx(0.9)
    assert budget_share({"budget_seconds": 10.0, "budget_bytes": 0}, 5.0, 10**9, 0.0) == pytest.approx(0.5)
    with pytest.raises(ILTError, match="no budget"):
        budget_share({"budget_bytes": 0, "budget_flops": 0}, 1.0, 1, 1.0)


def _run(seed: int, bpb: float, curve: list[float], status: str = "ok") -> dict:
    run = {
        "name": "m",
        "kind": "ilt",
        "status": status,
        "seed": seed,
        "bits_per_byte": bpb,
        "units_per_second": 10.0 * seed,
    }
    run["curve"] = [{"train_bytes": 100 * i, "train_flops": 1e9 * i, "bits_per_byte": v} for i, v in enumerate(curve)]
    return run


def test_seeds_aggregate_to_mean_and_min_max_and_separations_need_a_gap_wider_than_both_spreads():
    runs = [_run(1, 3.0, [8.0, 4.0]), _run(2, 3.2, [8.2, 4.2]), _run(3, 3.4, [8.4, 4.0])]
    agg = aggregate_runs(runs)
    assert agg["bits_per_byte"] == pytest.approx(3.2) and agg["units_per_second"] == pytest.approx(20.0)
    assert agg["spread"]["bits_per_byte"] == pytest.approx({"mean": 3.2, "min": 3.0, "max": 3.4, "n": 3})
    assert agg["seeds_ok"] == 3 and [r["seed"] for r in agg["runs"]] == [1, 2, 3]
    assert agg["curve"][1]["bits_per_byte"] == pytest.approx(4.0667, abs=1e-3)
    assert (agg["curve"][1]["bits_per_byte_min"], agg["curve"][1]["bits_per_byte_max"]) == (4.0, 4.2)
    # a failed seed is left out of the figures and named
    partial = aggregate_runs([*runs[:2], {**_run(3, 0.0, [0.0]), "status": "error", "error": "boom"}])
    assert partial["bits_per_byte"] == pytest.approx(3.1) and partial["seeds_ok"] == 2
    assert partial["failed_seeds"] == ["seed 3: boom"]
    assert aggregate_runs([{**_run(1, 0.0, []), "status": "error"}])["status"] == "error"

    def mix(name: str, values: list[float]) -> dict:
        return {**aggregate_runs([_run(i, v, [v]) for i, v in enumerate(values)]), "name": name}

    a, b, c = mix("a", [3.0, 3.2]), mix("b", [3.5, 3.6]), mix("c", [3.15, 3.8])
    pairs = {(p["a"], p["b"]): p for p in separations([a, b, c])}
    assert pairs[("a", "b")]["separated"] and pairs[("a", "b")]["difference"] == pytest.approx(-0.45)
    assert not pairs[("a", "c")]["separated"]  # 0.375 apart, but c spreads over 0.65
    assert not pairs[("b", "c")]["separated"]
    assert separations([mix("one", [3.0]), mix("two", [4.0])]) == []  # one seed: no spread, no verdict


def test_a_rate_at_either_end_of_the_sweep_is_flagged():
    points = [{"lr": x, "bits_per_byte": b} for x, b in ((1e-3, 3.0), (2e-3, 2.5), (4e-3, 2.4))]
    assert sweep_edge(points, 4e-3) == "highest" and sweep_edge(points, 1e-3) == "lowest"
    assert sweep_edge(points, 2e-3) is None  # both neighbours tried: a best inside the sweep
    # a rate above that failed (diverged) bounds the chosen one: not at the edge
    failed_above = [*points, {"lr": 8e-3, "bits_per_byte": None, "error": "loss became nan"}]
    assert sweep_edge(failed_above, 4e-3) is None
    assert sweep_edge(points[:1], 1e-3) is None and sweep_edge(points, None) is None  # no sweep; nothing chosen
    # the default sweep runs on the whole budget (a fifth of it chose rates that lost over the whole) and has a rate
    # on each side of those the whole-budget nano report chose (2e-3 for ILT, 4e-3 for the baselines)
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench"])
    rates = [float(x) for x in args.lr_sweep.split(",")]
    assert args.sweep_share == 1.0
    assert rates == sorted(rates) and min(rates) < 2e-3 and max(rates) > 4e-3


def test_mean_curve_keeps_the_points_every_seed_has():
    curves = [
        [{"train_bytes": 0, "bits_per_byte": 8.0}, {"train_bytes": 10, "bits_per_byte": 5.0}],
        [{"train_bytes": 0, "bits_per_byte": 9.0}],
    ]
    assert mean_curve(curves) == [
        {"train_bytes": 0, "bits_per_byte": 8.5, "bits_per_byte_min": 8.0, "bits_per_byte_max": 9.0}
    ]


# ---- end to end -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_end_to_end_writes_every_figure_for_every_mix(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("\n".join(TEXTS * 8) + "\n", encoding="utf-8")
    evaluation = tmp_path / "eval.txt"
    evaluation.write_text("\n".join(reversed(TEXTS)) + "\n\n", encoding="utf-8")
    (tmp_path / "small-ilt.yaml").write_text(SMALL_ILT)
    (tmp_path / "small-bytes.yaml").write_text(SMALL_BYTES)
    out = tmp_path / "report"
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["bench", "--mixes", "small-ilt,small-bytes", "--mix-dir", str(tmp_path)]
        + ["--train-file", str(train), "--eval-file", str(evaluation), "--eval-lines", "4"]
        + ["--budget-bytes", "1500", "--seeds", "2", "--lr-sweep", "1e-3,3e-3", "--sweep-share", "0.5"]
        + ["--sweep-lines", "2", "--curve-points", "2", "--curve-lines", "2", "--threads", "1", "--in-process"]
        + ["--gen-new-units", "1", "--gen-prompt-units", "3", "--t2b-lines", "4", "--matmul-size", "128"]
        + ["--out", str(out), "--tasks", "ilt_he_news_mc,ilt_he_news_bpb", "--task-data-dir", str(tmp_path)]
    )
    (tmp_path / "test.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")  # what the offline tasks read
    assert args.func(args) == 0

    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["name"] for r in report["results"]] == ["small-ilt", "small-bytes"]
    for r in report["results"]:  # lm_eval's tasks on every seed, ILT mix and baseline alike
        for run in r["runs"]:
            assert set(run["tasks"]) == {"ilt_he_news_mc", "ilt_he_news_bpb"}
            assert (
                0 <= run["tasks"]["ilt_he_news_mc"]["acc"] <= 1 and run["tasks"]["ilt_he_news_bpb"]["bits_per_byte"] > 0
            )
            assert run["loglikelihood"]["batch_size"] == 16 and run["loglikelihood"]["requests_per_second"] > 0
        assert r["spread"]["tasks.ilt_he_news_mc.acc"]["n"] == 2
    assert report["machine"]["torch_threads"] == 1 and report["machine"]["cpu_count"] >= 1
    assert report["versions"]["torch"] and report["matmul_peak"]["flops_per_second"] > 0
    assert report["settings"]["seeds"] == [0, 1] and report["settings"]["budget_bytes"] == 1500
    for r in report["results"]:
        assert r["status"] == "ok", r.get("error")
        assert missing_figures(r) == [], r["name"]
        assert r["seeds_ok"] == 2 and [run["seed"] for run in r["runs"]] == [0, 1]
        # a byte budget: every seed stops at the first step past it, whatever the machine's speed
        for run in r["runs"]:
            assert 1500 <= run["train_bytes"] < 1500 + 2000 and run["train_flops"] > 0
        assert r["spread"]["bits_per_byte"]["min"] <= r["bits_per_byte"] <= r["spread"]["bits_per_byte"]["max"]
        # points at 0, half and all of the budget, with FLOPs and bytes for the plots
        assert len(r["curve"]) == 3 and all(math.isfinite(p["bits_per_byte"]) for p in r["curve"])
        assert r["curve"][0]["train_bytes"] == 0 and r["curve"][-1]["train_flops"] == pytest.approx(r["train_flops"])
        assert r["eval"]["num_texts"] == 4
        assert r["generation"]["batch_8"]["batch_size"] == 8
        assert r["spec"]["name"] == r["name"]
    ilt, base = report["results"]
    # the ILT mix swept its rate (scored on the held-out texts after the report's 4), the baseline fixed its own
    assert [p["lr"] for p in ilt["sweep"]] == [1e-3, 3e-3] and ilt["lr"] in (1e-3, 3e-3)
    assert ilt["lr_choice"] == "sweep" and report["settings"]["sweep_offset"] == 4  # texts 5-6 of 6
    assert ilt["lr"] == min(ilt["sweep"], key=lambda p: p["bits_per_byte"])["lr"]
    assert base["lr"] == 2e-3 and base["lr_choice"] == "the mix's bench.lr" and base["sweep"] == []
    assert all(run["lr"] == ilt["lr"] for run in ilt["runs"])
    assert ilt["lr_factors"] == {"rest": 1.0, "bytes_encoder": 2.0, "bytes_decoder": 2.0}  # latent 64, they 32
    assert base["lr_factors"] == {"transformer": 1.0} and report["settings"]["lr_scaling"] == "width"
    assert set(ilt["parameters"]) == {"bytes_encoder", "latent_transformer", "bytes_decoder", "mappings"}
    assert ilt["generation"]["batch_8"]["units"] == 8  # one unit for each of 8 rows, end of text suppressed
    for r in report["results"]:  # bytes/s: what the units written weigh, so that mixes compare
        for run in r["runs"]:
            g = run["generation"]["batch_8"]
            assert g["bytes"] >= g["units"] and g["bytes_per_second"] == pytest.approx(g["bytes"] / g["seconds"])
    assert set(ilt["flops_parts"]) >= {"bytes_encoder", "latent_transformer", "bytes_decoder"}
    assert base["parameters"] == {"transformer": base["parameters_total"]}
    assert len(report["separations"]) == 1 and {"a", "b", "separated"} <= set(report["separations"][0])

    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "| small-ilt |" in markdown and "| small-bytes |" in markdown
    assert "gen b1 units/s (bytes/s)" in markdown and "## Which mixes separate" in markdown
    assert "| ilt_he_news_mc acc | ilt_he_news_bpb bits_per_byte |" in markdown and "## lm_eval tasks" in markdown
    assert "loglikelihood req/s (batch 16)" in markdown
    assert "| mix | lr 0.001 | lr 0.003 | chosen |" in markdown and "small-bytes: learning rate 0.002" in markdown
    # two rates: whichever won is at an edge of the sweep, and the report says so
    edge = "highest" if ilt["lr"] == 3e-3 else "lowest"
    assert ilt["lr_edge"] == edge and base["lr_edge"] is None
    assert f"**At the edge of the sweep:** small-ilt chose the {edge} rate tried" in markdown
    assert f"| {ilt['lr']:g} (**{edge} tried**) |" in markdown
    assert "No reference measurement in this run" in markdown and "reference (another day)" not in markdown
    for png in ("bpb_vs_flops.png", "bpb_vs_bytes.png", "throughput.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def bench_one_mix(tmp_path: Path, name: str, mix_yaml: str, *options: str) -> tuple[int, Path]:
    """``ilt bench`` on one mix file over ``TEXTS`` x 4 (the training and held-out file alike, 2 held-out lines) with
    ``options``; returns its exit code and the report folder."""
    train = tmp_path / "train.txt"
    train.write_text("\n".join(TEXTS * 4) + "\n", encoding="utf-8")
    (tmp_path / f"{name}.yaml").write_text(mix_yaml)
    out = tmp_path / "report"
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["bench", "--mixes", name, "--mix-dir", str(tmp_path), "--train-file", str(train), "--eval-file", str(train)]
        + ["--eval-lines", "2", *options, "--out", str(out)]
    )
    return args.func(args), out


@pytest.mark.slow
def test_a_run_in_its_own_process_starts_as_the_ilt_command(tmp_path):
    # make bench runs each mix in a fresh process: with numpy's default OpenBLAS threads there, the numpy products
    # of a mix shared the cores with torch's threads (a baseline stepped 1.4x slower than under ``ilt train``)
    assert openblas_threads() is not None  # numpy's OpenBLAS is loaded here, so the worker's count is read
    code, out = bench_one_mix(
        tmp_path, "small-bytes", SMALL_BYTES,
        "--budget-bytes", "600", "--seeds", "1", "--curve-lines", "2", "--curve-points", "1", "--threads", "1",
        "--matmul-size", "64", "--gen-new-units", "1", "--gen-prompt-units", "2", "--t2b-lines", "2",
    )  # fmt: skip
    assert code == 0
    (result,) = json.loads((out / "results.json").read_text(encoding="utf-8"))["results"]
    assert [run["openblas_threads"] for run in result["runs"]] == [1]
    # and `ilt train`'s allocator setting (glibc's defaults page-faulted the large activations in every step)
    assert [run["process_settings"] for run in result["runs"]] == [{"openblas_threads": 1, "cpu_malloc": "reuse"}]


@pytest.mark.slow
def test_a_mix_whose_every_swept_rate_fails_is_reported_failed(tmp_path):
    code, out = bench_one_mix(
        tmp_path, "small-ilt", SMALL_ILT,
        "--budget-bytes", "3000", "--seeds", "2", "--lr-sweep", "1e30", "--curve-lines", "2", "--threads", "1",
        "--in-process", "--matmul-size", "64",
    )  # fmt: skip
    assert code == 1  # the training loss diverges at this rate: no rate to run the seeds with
    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    (result,) = report["results"]
    assert result["status"] == "error" and "every rate of the sweep failed" in result["error"]
    assert result["sweep"][0]["bits_per_byte"] is None and "loss became" in result["sweep"][0]["error"]
    assert "none: every rate failed" in (out / "results.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_flop_budget_stops_every_seed_at_the_first_step_past_it(tmp_path):
    code, out = bench_one_mix(
        tmp_path, "small-bytes", SMALL_BYTES,
        "--budget-bytes", "0", "--budget-flops", "2e8", "--seeds", "2", "--curve-lines", "2", "--curve-points", "2",
        "--threads", "1", "--in-process", "--gen-new-units", "1", "--gen-prompt-units", "2", "--t2b-lines", "2",
        "--matmul-size", "64",
    )  # fmt: skip
    assert code == 0
    (result,) = json.loads((out / "results.json").read_text(encoding="utf-8"))["results"]
    for run in result["runs"]:
        per_step = run["train_flops"] / run["steps"]  # every step of this baseline does the same work
        assert 2e8 <= run["train_flops"] < 2e8 + per_step
        assert [p["train_flops"] >= 1e8 for p in run["curve"]] == [False, True, True]  # points at 0, 1/2, all


def test_the_reference_setup_is_a_mix_beside_the_catalogue():
    from ilt_bench.setups import REFERENCE_SETUPS, reference_spec, setup_mixes

    found = setup_mixes(["nano", "reference-setup", "reference-setup-no-images"])
    assert [m.name for m in found] == ["nano", *REFERENCE_SETUPS]
    assert found[0].spec == resolve_mixes("nano")[0].spec
    for mix, images in zip(found[1:], (True, False), strict=True):
        assert mix.kind == "ilt" and mix.spec == reference_spec(images)
        assert (mix.bench.batch_size, mix.bench.block_units) == (8, 65)  # 8 texts x 64 words and the start marker
    assert found[1].spec["image_encoder"] and found[2].spec["image_encoder"] in (False, None)
    with pytest.raises(ILTError, match="not a mix"):
        setup_mixes(["reference-setup-typo"])
