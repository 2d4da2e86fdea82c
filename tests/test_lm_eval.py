"""ILT in EleutherAI's lm-evaluation-harness (the ``ilt_lm_eval`` plugin), offline.

- ``ilt lm-eval`` on a checkpoint folder, end to end: lm_eval's results file; the offline Hebrew multiple-choice
  task, on sentences the model memorised, well above chance; its bits-per-byte equal to ``ilt eval``'s;
- lm_eval's own command line (``ilt-lm-eval``, lm_eval's ``run`` with ``ilt`` registered) on the same folder;
- a random model on the multiple-choice task does not beat chance by more than noise;
- ``generate_until``: stop strings, ``max_gen_toks`` in units or bytes, greedy and sampling, inside a word.
"""

from __future__ import annotations

import json
import math
import random
import sys

import ilt_lm_eval
import lm_eval
import pytest
from helpers import HEBREW, memorised_model, micro_spec
from ilt_lm_eval.model import ILTLM
from ilt_lm_eval.tasks.he_news import make_mc_items
from lm_eval.api.instance import Instance

from ilt_core.cli.main import main as ilt_main
from ilt_core.evaluation import bits_per_byte
from ilt_core.modeling.model import build_model

MC_METADATA = {"mc_min_words": 4}  # the memorised sentences have 5 or 6 words


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-eval")
    memorised_model().save_pretrained(folder / "model")
    (folder / "test.txt").write_text("\n".join(HEBREW) + "\n", encoding="utf-8")
    return folder


def results_file(out) -> dict:
    (path,) = out.rglob("results_*.json")
    return json.loads(path.read_text(encoding="utf-8"))


def test_ilt_lm_eval_on_a_checkpoint_folder(checkpoint, capsys):
    out = checkpoint / "out"
    metadata = json.dumps({**MC_METADATA, "data_file": str(checkpoint / "test.txt")})
    argv = ["lm-eval", "--model", str(checkpoint / "model"), "--tasks", "ilt_he_news_mc,ilt_he_news_bpb"]
    assert ilt_main([*argv, "--metadata", metadata, "--output-path", str(out), "--batch-size", "4"]) == 0
    results = results_file(out)["results"]
    assert "ilt_he_news_mc" in capsys.readouterr().out  # lm_eval's table
    # the model memorised these sentences: it tells each one's ending from three others' (chance: 0.25)
    assert results["ilt_he_news_mc"]["acc,none"] >= 5 / 6
    expected = bits_per_byte(memorised_model(), HEBREW)
    assert results["ilt_he_news_bpb"]["bits_per_byte,none"] == pytest.approx(expected.bits_per_byte, abs=1e-4)


def test_lm_evals_own_command_line_finds_the_ilt_model(checkpoint, monkeypatch, capsys):
    from ilt_lm_eval.__main__ import main
    from lm_eval.tasks import TaskManager

    # lm_eval's command line indexes its own few thousand task configs first (about 20 s here); these tasks are ours
    original = TaskManager.__init__

    def ours_only(self, *args, include_defaults=False, **kwargs):
        original(self, *args, include_defaults=include_defaults, **kwargs)

    monkeypatch.setattr(TaskManager, "__init__", ours_only)
    out = checkpoint / "out-cli"
    argv = ["ilt-lm-eval", "--model", "ilt", "--model_args", f"pretrained={checkpoint / 'model'}"]
    argv += ["--tasks", "ilt_he_news_mc", "--include_path", str(ilt_lm_eval.TASKS_DIR), "--limit", "3"]
    argv += ["--metadata", json.dumps({**MC_METADATA, "data_file": str(checkpoint / "test.txt")})]
    monkeypatch.setattr(sys, "argv", [*argv, "--output_path", str(out), "--device", "cpu"])
    main()
    results = results_file(out)
    assert results["results"]["ilt_he_news_mc"]["sample_len"] == 3  # --limit
    assert results["config"]["model"] == "ilt"


def test_a_random_model_does_not_beat_chance_by_more_than_noise(tmp_path):
    words = HEBREW[0].split() + HEBREW[1].split() + HEBREW[2].split() + HEBREW[3].split()
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 9))) for _ in range(48)]
    (tmp_path / "test.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    n = len(make_mc_items(sentences))
    model = build_model(micro_spec("bytes-only"), seed=0).eval()
    results = lm_eval.simple_evaluate(
        model=ILTLM(pretrained=model, batch_size=16),
        tasks=["ilt_he_news_mc"],
        task_manager=ilt_lm_eval.task_manager(
            metadata={"data_file": str(tmp_path / "test.txt")}, include_defaults=False
        ),
    )["results"]["ilt_he_news_mc"]
    noise = 3 * math.sqrt(0.25 * 0.75 / n)
    assert results["sample_len"] == n == 48
    assert results["acc,none"] <= 0.25 + noise and results["acc_norm,none"] <= 0.25 + noise


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_generate_until_stops_and_counts_units_or_bytes():
    lm = ILTLM(pretrained=memorised_model(), batch_size=2)
    answers = lm.generate_until(
        requests(
            "generate_until",
            [
                ("The capital is", {"until": ["."], "max_gen_toks": 5}),  # inside a word, then a stop string
                ("the cat sat", {"until": ["\n"], "max_gen_toks": 2}),  # completes "sat " then two units
                ("a dog r", {"until": ["."], "do_sample": True, "temperature": 0.5}),  # word-level sampling
                ("one two", {"until": ["."], "do_sample": False, "temperature": 0.0}),  # lm_eval's greedy
            ],
        )
    )
    assert answers == [" Paris", " on my ", "an in green fields", " three four five"]
    in_bytes = ILTLM(pretrained=memorised_model(), max_gen_toks_unit="bytes")
    (answer,) = in_bytes.generate_until(requests("generate_until", [("the cat sat", {"max_gen_toks": 4})]))
    assert answer == " on "


def test_loglikelihood_requests_answer_the_chain_rule_and_is_greedy():
    lm = ILTLM(pretrained=memorised_model())
    answers = lm.loglikelihood(requests("loglikelihood", [("The capital is", " Paris"), ("The capital is", " Rome")]))
    (paris, paris_greedy), (rome, rome_greedy) = answers
    assert paris_greedy and not rome_greedy and paris > rome
    (whole,) = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [("The capital is Paris.",)]))
    expected = bits_per_byte(memorised_model(), ["The capital is Paris."])
    assert -whole / math.log(2) == pytest.approx(expected.nll_bits, abs=1e-3)
