"""The byte-level chain rule (``ilt_core.likelihood``) and generation that continues inside a word.

- log P(context) + log P(continuation | context) = log P(context + continuation) on random splits of Hebrew,
  Arabic and English text, at unit boundaries and inside units, in one batch and alone;
- the events scored are the ones the module docstring names (checked by hand on ``"The capital is" + " Paris"``);
- a whole text's log-probability is ``ilt eval``'s bits-per-byte, long texts in the same blocks;
- a model that memorised sentences completes a prompt cut inside a word byte for byte, at batch sizes 1 and many,
  greedy, sampling and beams; ``is_greedy`` is true exactly when greedy generation gives the continuation.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from helpers import ENGLISH, SENTENCES, memorised_model, micro_spec

from ilt_core.errors import ILTError
from ilt_core.evaluation import bits_per_byte
from ilt_core.generation import generate
from ilt_core.likelihood import _continuation_rows, _text_rows, continuation_logprobs, text_logprobs
from ilt_core.modeling.model import build_model
from ilt_core.text.byte_tokenizer import EOS_ID
from ilt_core.text.segmentation import WHITESPACE

TEXTS = [
    "שלום לכם, חברים יקרים: היום נלמד משהו חדש על השפה.",
    "مرحبا بكم يا أصدقائي الأعزاء، اليوم نتعلم شيئا جديدا.",
    "The capital of France is Paris, and it is lovely in May.",
]

_RANDOM: dict = {}


def random_model():
    """The micro preset with word images (freetype), random weights."""
    if "model" not in _RANDOM:
        _RANDOM["model"] = build_model(micro_spec("full"), seed=0).eval()
    return _RANDOM["model"]


def splits(text: str, rng: random.Random) -> dict[str, list[int]]:
    """Character positions of each kind: after a unit's whitespace (a unit boundary), right before whitespace (the
    context's last word is whole but has no space yet), inside a word."""
    kinds: dict[str, list[int]] = {"boundary": [], "before_space": [], "inside": []}
    for k in range(1, len(text)):
        a, b = text[k - 1], text[k]
        if a in WHITESPACE and b not in WHITESPACE:
            kinds["boundary"].append(k)
        elif a not in WHITESPACE and b in WHITESPACE:
            kinds["before_space"].append(k)
        elif a not in WHITESPACE and b not in WHITESPACE:
            kinds["inside"].append(k)
    return {kind: rng.sample(ks, min(3, len(ks))) for kind, ks in kinds.items()}


def test_chain_rule_identity_on_random_splits():
    model = random_model()
    rng = random.Random(0)
    pairs, cases = [], []
    for text in TEXTS:
        for kind, positions in splits(text, rng).items():
            for k in positions:
                ctx, cont = text[:k], text[k:]
                cases.append((kind, len(pairs)))
                pairs += [("", ctx), (ctx, cont), ("", text)]
    scores = continuation_logprobs(model, pairs, batch_size=16)
    for kind, i in cases:
        p_ctx, p_cont, p_all = (s.logprob for s in scores[i : i + 3])
        assert p_ctx < 0 and p_cont < 0
        assert p_ctx + p_cont == pytest.approx(p_all, abs=2e-3), (kind, pairs[i + 1])
    assert {kind for kind, _ in cases} == {"boundary", "before_space", "inside"}
    # the same scores one request at a time: padding and the batch's other rows change nothing
    for i in (0, 1, len(pairs) - 2):
        (alone,) = continuation_logprobs(model, [pairs[i]], batch_size=1)
        assert alone.logprob == pytest.approx(scores[i].logprob, abs=1e-3)


def test_the_events_scored_are_the_rest_of_the_cut_unit_its_eos_then_the_next_units_bytes():
    model = random_model()
    (score,) = continuation_logprobs(model, [("The capital is", " Paris")])
    batch = model.processor(["The capital is Paris"])
    with torch.no_grad():
        latents = model(**batch.model_inputs()).hidden_states[0]  # START, The, capital, is, Paris
    logp = 0.0
    # unit "is " read after "capital " (position 2): "is" given, " " and eos scored; "Paris" (position 3): its bytes
    for position, ids, given in ((2, list(b"is ") + [EOS_ID], 2), (3, list(b"Paris"), 0)):
        labels = torch.tensor([ids])
        with torch.no_grad():
            per_byte = model.decode_logits(latents[position][None], labels).log_softmax(-1)[0]
        logp += float(per_byte[torch.arange(len(ids)), labels[0]][given:].sum())
    assert score.logprob == pytest.approx(logp, abs=1e-4)
    assert continuation_logprobs(model, [("The capital is", "")])[0].logprob == 0.0


def test_is_greedy_skips_the_eos_generation_never_asks_for():
    model = random_model()
    limit = model.spec.max_unit_bytes
    # a word longer than the byte limit: its first piece is cut there, and generation writes no eos after it
    (row,) = _continuation_rows(model, 0, "", "a" * (limit + 3) + " b", 255)
    assert [(len(t.ids), t.greedy_to) for t in row.targets] == [(limit + 1, limit), (5, None), (1, None)]
    # a context ending in whitespace is a finished unit for generation: its eos is scored, not checked
    (row,) = _continuation_rows(model, 0, "one ", "two", 255)
    assert [(t.given, t.greedy_from) for t in row.targets] == [(4, 5), (0, 0)]


@pytest.mark.parametrize("window", [None, 4])
def test_whole_text_logprob_is_ilt_evals_bits_per_byte(window):
    model = random_model()
    texts = [*TEXTS, "a"]
    scores = text_logprobs(model, texts, batch_size=3, window_units=window)
    expected = bits_per_byte(model, texts, block_units=window)
    assert sum(s.num_bytes for s in scores) == expected.num_bytes
    nats = -sum(s.logprob for s in scores)
    assert nats / math.log(2) / expected.num_bytes == pytest.approx(expected.bits_per_byte, abs=1e-5)


def test_rolling_windows_with_context_score_every_unit_once():
    model = random_model()
    text = TEXTS[2]
    units = model.processor.segment(text)
    rows, _, _ = _text_rows(model, 0, text, 4, 2)
    labels = [t.ids for r in rows for t in r.targets]
    assert labels == [[*u.encode(), EOS_ID] for u in units] + [[EOS_ID]]  # every unit once, then the end of text
    assert all(len(r.units) <= 4 for r in rows) and len(rows) == 1 + math.ceil((len(units) - 4) / 2)
    with_context = text_logprobs(model, [text], window_units=4, context_units=2)[0].logprob
    assert with_context != text_logprobs(model, [text], window_units=4)[0].logprob
    with pytest.raises(ILTError, match="context_units=4"):
        text_logprobs(model, [text], window_units=4, context_units=4)


# ---- a model that memorised sentences ---------------------------------------------------------------------------
def inside_word_cuts(text: str) -> list[int]:
    return [k for k in range(1, len(text)) if text[k - 1] not in WHITESPACE and text[k] not in WHITESPACE]


@pytest.mark.parametrize(
    "options",
    # word-level sampling nearly greedy: the test is about the forced bytes in each strategy's path; a model trained
    # for 80 steps leaves mass on other bytes that a sample at temperature 1 may take
    [{}, {"num_beams": 2}, {"do_sample": True, "temperature": 0.05, "seed": 0}],
    ids=["greedy", "beams", "word-sampling"],
)
def test_a_prompt_cut_inside_a_word_is_completed_byte_for_byte(options):
    model = memorised_model()
    rng = random.Random(1)
    prompts = [text[:k] for text in ENGLISH for k in rng.sample(inside_word_cuts(text), 2)]
    texts = [text for text in ENGLISH for _ in range(2)]
    batched = generate(model, prompts, 8, **options)
    assert [p + r for p, r in zip(prompts, batched, strict=True)] == texts
    assert generate(model, prompts[0], 8, **options) == batched[:1]  # batch size 1


def test_plain_sampling_from_a_prompt_cut_inside_a_word_is_seeded():
    """Byte-level sampling at temperature 1 through the forced bytes: the same seed gives the same texts, another
    seed may not, and every row goes on from inside its word."""
    model = memorised_model()
    prompts = ["the cat s", "one two thr", "a dog ran in gr"]
    first = generate(model, prompts, 4, do_sample=True, seed=0)
    assert generate(model, prompts, 4, do_sample=True, seed=0) == first
    assert all(first)


def test_is_greedy_exactly_when_greedy_generation_gives_the_continuation():
    model = memorised_model()
    rng = random.Random(2)
    pairs = []
    for text in SENTENCES:
        for k in rng.sample(range(1, len(text)), 3):
            ctx, rest = text[:k], text[k:]
            wrong = rest[:1] + ("x" if rest[1:2] != "x" else "y") + rest[2:]
            pairs += [(ctx, rest[:1]), (ctx, rest[:5]), (ctx, rest), (ctx, wrong)]
    scores = continuation_logprobs(model, pairs)
    generated = generate(model, [c for c, _ in pairs], 8)
    flags = [s.is_greedy for s in scores]
    assert flags == [g.startswith(cont) for g, (_, cont) in zip(generated, pairs, strict=True)]
    assert 0.2 < sum(flags) / len(flags) < 0.9  # both answers occur


def test_a_continuation_longer_than_a_row_is_scored_in_rows_that_keep_context():
    model = random_model()
    text = TEXTS[2]  # 12 units
    units = model.processor.segment(text)
    context = "".join(units[:3])
    rows = _continuation_rows(model, 0, context, text[len(context) :], 4)
    scored = [r.units[t.position] if t.position < len(r.units) else None for r in rows for t in r.targets]
    # every unit of the continuation once, and the context's last one ("of "), whose eos falls after the context
    assert [len(t.ids) - 1 - t.given for r in rows for t in r.targets][:2] == [0, len(units[3].encode())]
    assert len([t for r in rows for t in r.targets]) == len(units) - 2
    assert all(len(r.units) < 4 for r in rows) and all(t.position >= 2 for r in rows for t in r.targets)
    assert scored[-1] is None  # the last unit is predicted after the row's units, not read
    (long,) = continuation_logprobs(model, [(context, text[len(context) :])], window_units=4)
    (short,) = continuation_logprobs(model, [(context, text[len(context) :])])
    assert long.logprob != short.logprob and math.isfinite(long.logprob)
