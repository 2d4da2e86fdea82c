"""The decoding loop: KV cache vs recompute, batch independence, strategies, streaming, seeds, bad input.

Models are small custom specs (bytes-only, a few layers, random weights) so each test takes seconds. Random
decoders rarely write ``eos``, so rows are made to finish at different steps with stop strings taken from their
own greedy continuations.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
import torch
from helpers import GENERATION_LATENTS, PROMPTS, memorise, small_model, small_spec, stops_for, swapped

import ilt_core
from ilt_core.cli.generate import add_generate_parser
from ilt_core.errors import ILTError
from ilt_core.generation import Generation, GenerationOptions, GenerationResult, generate, stream_generate
from ilt_core.generation.beams import beam_search
from ilt_core.modeling.model import build_model
from ilt_core.text.byte_tokenizer import EOS_ID


# ---- the KV cache ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("latent", list(GENERATION_LATENTS))
def test_cached_loop_gives_the_same_text_as_recomputing(latent):
    model = small_model(latent)
    compositions = [PROMPTS, [PROMPTS[2], PROMPTS[3], PROMPTS[0]]]
    for prompts in compositions:
        stop = stops_for(model, prompts, 5)  # may end some rows earlier still
        cached = generate(model, prompts, 5, stop=stop, return_scores=True)
        recomputed = generate(model, prompts, 5, stop=stop, use_cache=False, return_scores=True)
        assert [r.text for r in cached] == [r.text for r in recomputed], (latent, prompts)
        assert [r.finish_reason for r in cached] == [r.finish_reason for r in recomputed]
        assert len({len(r.units) for r in cached}) > 1, [r.units for r in cached]  # rows finished apart


def test_cache_grows_one_unit_per_step(monkeypatch):
    """Each new unit costs one latent step over the cache: the latent sees one new position per call."""
    model = small_model("llama")
    lengths = []
    original = model.latent_transformer.forward

    def spy(inputs_embeds, *args, **kwargs):
        lengths.append(inputs_embeds.shape[1])
        return original(inputs_embeds, *args, **kwargs)

    monkeypatch.setattr(model.latent_transformer, "forward", spy)
    generate(model, ["the cat sat on the mat "], 5)
    assert lengths == [7, 1, 1, 1, 1]
    lengths.clear()
    generate(model, ["the cat sat on the mat "], 5, use_cache=False)
    assert lengths == [7, 8, 9, 10, 11]


class LatentWithoutCacheMethods(torch.nn.Module):
    """A latent transformer offering only the required protocol: no ``select_cache`` / ``crop_cache_left``."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner
        self.hidden_size, self.max_positions = inner.hidden_size, inner.max_positions

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize("latent", ["llama", "gemma3_text"])
def test_the_cache_methods_are_used_and_a_latent_without_them_gives_the_same_text(latent, monkeypatch):
    model = small_model(latent)
    prompts = PROMPTS  # the 10-unit prompt fills its context first: its padding columns can go
    stop = stops_for(model, prompts, 5)
    recomputed = generate(model, prompts, 5, stop=stop, use_cache=False)
    calls = {"select_cache": [], "crop_cache_left": []}
    for name, calls_of in calls.items():
        method = getattr(model.latent_transformer, name)

        def spy(*args, method=method, calls_of=calls_of):
            calls_of.append(method(*args))
            return calls_of[-1]

        monkeypatch.setattr(model.latent_transformer, name, spy)
    assert generate(model, prompts, 5, stop=stop) == recomputed
    assert calls["select_cache"]  # rows finished apart: the cache lost rows
    # full-attention caches crop columns that became padding everywhere; a sliding-window layer refuses
    assert calls["crop_cache_left"] and all(calls["crop_cache_left"]) == (latent == "llama")
    monkeypatch.undo()
    with swapped(model, "latent_transformer", LatentWithoutCacheMethods(model.latent_transformer)):
        assert generate(model, prompts, 5, stop=stop) == recomputed
        assert generate(model, prompts, 3, num_beams=2) == generate(model, prompts, 3, num_beams=2, use_cache=False)


@pytest.mark.parametrize("latent", ["gpt_neox", "gpt2"])
def test_continuation_is_the_same_alone_or_in_a_batch(latent):
    model = small_model(latent)
    alone = [generate(model, p, 5)[0] for p in PROMPTS]
    assert generate(model, PROMPTS, 5) == alone
    assert generate(model, PROMPTS[::-1], 5) == alone[::-1]


def test_tiny_preset_batch_independence_and_cache(tiny_models):
    model = tiny_models["full"]
    prompts = ["the cat ", "שלום "]
    alone = [generate(model, p, 2, max_unit_bytes=3)[0] for p in prompts]
    assert generate(model, prompts, 2, max_unit_bytes=3) == alone
    assert generate(model, prompts, 2, max_unit_bytes=3, use_cache=False) == alone


# ---- word-level beam search --------------------------------------------------------------------------------------
def test_word_beam_search_with_one_beam_equals_greedy():
    model = small_model()
    stop = stops_for(model, PROMPTS)
    greedy = generate(model, PROMPTS, 5, stop=stop, return_scores=True)
    run = Generation(model, PROMPTS, GenerationOptions(max_new_units=5, stop=stop, return_scores=True))
    with run.session:
        beams = beam_search(model, run.hypotheses, run.decoding)
    assert [b.text for b in beams] == [g.text for g in greedy]
    assert [b.score for b in beams] == pytest.approx([g.score for g in greedy], abs=1e-4)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_word_beam_search_is_never_worse_than_greedy(length_penalty):
    model = small_model()
    greedy = generate(model, PROMPTS, 4, return_scores=True, length_penalty=length_penalty)
    improved = 0
    for k in (2, 3) if length_penalty == 0.0 else (2,):
        beams = generate(model, PROMPTS, 4, num_beams=k, return_scores=True, length_penalty=length_penalty)
        for b, g in zip(beams, greedy, strict=True):
            # every hypothesis here has 4 units, so the penalised and raw comparisons agree
            assert b.score >= g.score - 1e-9, (k, b, g)
            improved += b.score > g.score + 1e-6
    assert improved > 0  # the search does find better-scored continuations than greedy


def test_scores_are_summed_byte_log_probs():
    model = small_model()
    (r,) = generate(model, ["the cat "], 2, return_scores=True)
    assert isinstance(r, GenerationResult) and r.finish_reason == "max_new_units" and len(r.units) == 2
    # the same sum by hand: teacher-forced log-probs of each unit's bytes (+ eos when it was written)
    batch = model.processor(["the cat " + r.units[0]])
    with torch.no_grad():
        latents = model(**batch.model_inputs()).hidden_states[0, -2:]  # after "cat ", after unit 0
    total = 0.0
    for latent, unit in zip(latents, r.units, strict=True):
        ids = list(unit.encode())
        if len(ids) < model.spec.max_unit_bytes:
            ids.append(EOS_ID)
        labels = torch.tensor([ids + [-100]])
        with torch.no_grad():
            logp = model.decode_logits(latent[None], labels).log_softmax(-1)
        total += float(logp[0, torch.arange(len(ids)), torch.tensor(ids)].sum())
    if all("\ufffd" not in u for u in r.units):  # bytes re-encode exactly only when they were valid UTF-8
        assert r.score == pytest.approx(total, abs=1e-3)
    assert r.score < 0


# ---- sampling and seeds ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        dict(do_sample=True),
        dict(do_sample=True, temperature=0.7, top_k=4, unit_candidates=4),
        dict(do_sample=True, top_p=0.9, unit_candidates=4),
        dict(byte_do_sample=True, byte_temperature=0.8, repetition_penalty=1.2),
    ],
)
def test_seeded_sampling_is_repeatable(options):
    model = small_model()
    prompts = PROMPTS[:3]
    state = torch.get_rng_state()
    a = generate(model, prompts, 3, seed=7, **options)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left alone
    b = generate(model, prompts, 3, seed=7, **options)
    c = generate(model, prompts, 3, seed=8, **options)
    assert a == b
    assert a != c
    assert a != generate(model, prompts, 3)  # it did sample


def test_greedy_needs_no_seed_and_byte_beams_pass_through():
    model = small_model()
    assert generate(model, PROMPTS, 3) == generate(model, PROMPTS, 3)
    beams = generate(model, PROMPTS, 3, byte_num_beams=3)
    assert beams != generate(model, PROMPTS, 3) and all(beams)


def test_word_sampling_at_low_temperature_picks_the_most_probable_candidate():
    model = small_model()
    results = generate(
        model, PROMPTS[:2], 2, do_sample=True, temperature=1e-3, unit_candidates=6, seed=0, return_scores=True
    )
    assert all(len(r.units) == 2 for r in results)


# ---- streaming and the command line ------------------------------------------------------------------------------
def test_stream_yields_units_and_matches_generate():
    model = small_model()
    pieces = list(stream_generate(model, "the cat ", 4))
    full = generate(model, "the cat ", 4, return_scores=True)[0]
    assert pieces == full.units
    stop = [full.units[2][:2]]
    pieces = list(stream_generate(model, "the cat ", 4, stop=stop))
    assert "".join(pieces) == generate(model, "the cat ", 4, stop=stop)[0]
    assert stop[0] not in "".join(pieces)
    assert "".join(stream_generate(model, "the cat ", 3, num_beams=2)) == generate(model, "the cat ", 3, num_beams=2)[0]
    sampled = []
    for piece in stream_generate(model, "the cat ", 3, do_sample=True, seed=1):
        # between yields the caller's own state is in force: gradients on, no inference mode
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        sampled.append(piece)
        torch.rand(3)  # the caller drawing random numbers must not change the seeded stream
    assert "".join(sampled) == generate(model, "the cat ", 3, do_sample=True, seed=1)[0]


def test_cli_generate_prints_the_continuation(tmp_path, capsys):
    model = small_model()
    model.save_pretrained(tmp_path / "m")
    parser = argparse.ArgumentParser()
    add_generate_parser(parser.add_subparsers())
    expected = generate(model, "the cat ", 3)[0]
    args = parser.parse_args(
        ["generate", "--model", str(tmp_path / "m"), "--prompt", "the cat ", "--max-new-units", "3"]
    )
    assert args.func(args) == 0
    assert capsys.readouterr().out == expected + "\n"
    args = parser.parse_args(
        ["generate", "--model", str(tmp_path / "m"), "--prompt", "the cat ", "--max-new-units", "3", "--stream"]
    )
    assert args.func(args) == 0
    assert capsys.readouterr().out == expected + "\n"
    args = parser.parse_args(
        ["generate", "--model", str(tmp_path / "m"), "--prompt", "a", "--do-sample", "--num-beams", "2"]
    )
    with pytest.raises(ILTError, match="num_beams=2 with do_sample=True"):
        args.func(args)


# ---- layering ------------------------------------------------------------------------------------------------------
def test_generation_imports_no_model_and_the_core_names_no_backbone_internals():
    """The model imports generation (``model.generate``), and backbone specifics live behind the protocols."""
    root = Path(ilt_core.__file__).parent
    for path in sorted((root / "generation").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in modules if m.startswith("ilt_core.modeling")], path
    internals = ("DynamicCache", "DynamicLayer", "cache_utils", "reorder_cache", "set_grad_checkpointing")
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert [w for w in internals if w in text] == [], path


# ---- options as one value ----------------------------------------------------------------------------------------
def test_options_value_equals_keywords_and_keywords_override_it():
    model = small_model()
    options = GenerationOptions(max_new_units=3, do_sample=True, top_k=3, unit_candidates=4, seed=5)
    by_value = generate(model, PROMPTS[:3], options=options)
    assert by_value == generate(model, PROMPTS[:3], 3, do_sample=True, top_k=3, unit_candidates=4, seed=5)
    assert by_value != generate(model, PROMPTS[:3], options=options.replace(seed=6))
    # keywords (and max_new_units) win over the value's fields; byte options add to its own
    greedy = GenerationOptions(max_new_units=5, byte_options={"suppress_tokens": [EOS_ID]})
    assert generate(model, PROMPTS[:3], 2, options=greedy) == generate(model, PROMPTS[:3], 2, suppress_tokens=[EOS_ID])
    results = generate(model, PROMPTS[:2], options=greedy, return_scores=True, max_unit_bytes=3)
    assert all(len(r.units) == 5 and all(len(u.encode()) <= 3 for u in r.units if "\ufffd" not in u) for r in results)
    assert (
        "".join(stream_generate(model, "the cat ", options=options)) == generate(model, "the cat ", options=options)[0]
    )


def test_options_are_checked_when_built_and_sorted_by_level():
    with pytest.raises(ILTError, match="num_beams=2 with do_sample=True"):
        GenerationOptions(num_beams=2, do_sample=True)
    with pytest.raises(ILTError, match="unit_candidates=0"):
        GenerationOptions(unit_candidates=0)
    with pytest.raises(ILTError, match="byte_top_k=5 with word-level do_sample=True"):
        GenerationOptions.from_kwargs(do_sample=True, byte_top_k=5)
    options = GenerationOptions.from_kwargs(top_k=4, do_sample=True, byte_repetition_penalty=1.3, stop=["x"])
    assert (options.top_k, options.stop, dict(options.byte_options)) == (4, ("x",), {"repetition_penalty": 1.3})
    more = GenerationOptions.from_kwargs(options, byte_options={"byte_length_penalty": 0.5}, no_repeat_ngram_size=2)
    assert dict(more.byte_options) == {"repetition_penalty": 1.3, "length_penalty": 0.5, "no_repeat_ngram_size": 2}
    with pytest.raises(ILTError, match="options: expected a GenerationOptions"):
        generate(small_model(), "a", options={"max_new_units": 2})
    with pytest.raises(AttributeError):
        options.top_k = 2  # frozen: a checked value stays checked


# ---- bad input ---------------------------------------------------------------------------------------------------
def test_empty_prompt_generates_from_the_start_marker():
    model = small_model()
    (text,) = generate(model, "", 3)
    assert text and generate(model, ["", "x"], 3)[0] == text
    # its first unit is what the decoder writes greedily from the latent of the start marker alone
    batch = model.processor([""])
    limit = model.spec.max_unit_bytes
    with torch.no_grad():
        prefix = model.decoder_mapping(model(**batch.model_inputs()).hidden_states[:, 0])[:, None]
        ids = model.bytes_decoder.generate(prefix, torch.ones(1, 1, dtype=torch.long), max_new_tokens=limit)[0]
    ids = ids.tolist()
    first = bytes(ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids).decode("utf-8", errors="replace")
    assert generate(model, "", 1)[0] == first


def test_zero_new_units_and_empty_batch():
    model = small_model()
    assert generate(model, ["a", "b c "], 0) == ["", ""]
    assert generate(model, [], 3) == []
    assert list(stream_generate(model, "a", 0)) == []


def test_prompt_longer_than_the_context_is_a_clear_error_and_a_full_context_stops():
    spec = small_spec("llama")
    spec["latent_transformer"]["config"]["max_position_embeddings"] = 8
    model = build_model(spec, seed=0).eval()
    assert model.max_units == 8
    with pytest.raises(ILTError, match="prompts\\[1\\] has 9 units .* at most 8"):
        generate(model, ["a", "1 2 3 4 5 6 7 8 9"], 2)
    (r,) = generate(model, "1 2 3 4 5 ", 10, return_scores=True)  # 6 positions used, 2 more can be read back
    assert r.finish_reason == "context_full" and len(r.units) == 3


def test_a_decoder_without_eos_is_cut_at_the_byte_limit(monkeypatch):
    model = small_model()
    written = []
    greedy = model.bytes_decoder.greedy

    def spy(*args, **kwargs):
        written.append(greedy(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(model.bytes_decoder, "greedy", spy)
    results = generate(model, PROMPTS, 3, max_unit_bytes=5, suppress_tokens=[EOS_ID], return_scores=True)
    assert all(len(r.units) == 3 and r.finish_reason == "max_new_units" for r in results)
    # "one" is cut inside a word: forced through its 3 bytes, its decoder may write 2 more (a call of its own),
    # then its 3 units come one step after the other rows'
    assert sorted(ids.shape[1] for ids in written) == [2, 5, 5, 5, 5]
    assert not any(bool((ids == EOS_ID).any()) for ids in written)
    rest = results[0].text[: len(results[0].text) - len("".join(results[0].units))]  # the rest of "one"
    assert len(rest.encode()) == 2 or "\ufffd" in rest
    assert all(len(u.encode()) <= 5 for r in results for u in r.units if "\ufffd" not in u)


def test_eos_first_ends_the_text_and_invalid_utf8_becomes_replacement_characters():
    model = small_model()
    # a decoder pushed to write eos first: every row ends at once with an empty continuation
    results = generate(model, PROMPTS, 4, sequence_bias={(EOS_ID,): 100.0}, return_scores=True)
    assert all(r.text == "" and r.units == [] and r.finish_reason == "end_of_text" for r in results)
    # a random decoder writes arbitrary bytes: invalid sequences are kept as U+FFFD, never an exception
    texts = generate(model, PROMPTS, 4, max_unit_bytes=6)
    assert any("\ufffd" in t for t in texts)
    # a decoder barred from every ASCII byte must write multi-byte sequences or lone continuation bytes
    texts = generate(model, ["x"], 2, suppress_tokens=list(range(128)))
    assert isinstance(texts[0], str) and texts[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(num_beams=2, do_sample=True), "num_beams=2 with do_sample=True"),
        (dict(temperature=0.5), "temperature=0.5 without do_sample=True"),
        (dict(top_k=5), "top_k=5 without do_sample=True"),
        (dict(do_sample=True, byte_do_sample=True), "byte_do_sample=True with word-level do_sample=True"),
        (dict(num_beams=3, byte_num_beams=2), "byte_num_beams=2 with word-level num_beams=3"),
        (dict(max_new_tokens=4), "max_new_tokens=4: not a byte-level option here"),
        (dict(max_new_units=-1), "max_new_units=-1"),
        (dict(do_sample=True, top_p=1.5), "top_p=1.5"),
        (dict(do_sample=True, temperature=0), "temperature=0"),
        (dict(stop="x"), "stop='x'"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    model = small_model()
    max_new = options.pop("max_new_units", 2)
    with pytest.raises(ILTError, match=message.replace("[", "\\[")):
        generate(model, "a", max_new, **options)


def test_generate_restores_training_mode():
    model = build_model(small_spec(), seed=0)
    model.train()
    generate(model, "a", 1)
    assert model.training


def test_bytes_labels_model_generates_one_unit_per_step():
    model = build_model(small_spec(labels="bytes", label_bytes=8), seed=0).eval()
    results = generate(model, PROMPTS[:3], 3, return_scores=True)
    for r in results:
        assert len(r.units) == 3 or r.finish_reason == "end_of_text"
        for u in r.units:  # each kept piece is one unit of the segmentation
            assert model.processor.segment(u) == [u]


# ---- learning ----------------------------------------------------------------------------------------------------
def test_memorised_sentences_are_reproduced_from_their_first_words():
    # the micro spec (tiny's architectures, shrunk): with AdamW at lr 1e-3 this seed reproduces all four texts
    # from step 50 on (checked every 50 steps up to 400); 100 steps leave a margin
    texts = ["the cat sat on my mat", "a dog ran in green fields", "one two three four five", "שלום לכם חברים יקרים"]
    model = memorise(texts, steps=100, lr=1e-3)
    prompts = [" ".join(t.split()[:2]) + " " for t in texts]
    results = generate(model, prompts, 10, return_scores=True)
    for text, prompt, r in zip(texts, prompts, results, strict=True):
        assert prompt + r.text == text, (prompt, r)
        assert r.finish_reason == "end_of_text"  # rows of different lengths each end on their own
    assert generate(model, prompts, 10, use_cache=False) == [r.text for r in results]


def test_generation_steps_yield_prompt_indices():
    model = small_model()
    events = list(Generation(model, ["a ", "b "], GenerationOptions(max_new_units=2)).steps())
    assert sorted(p for p, _ in events) == [0, 0, 1, 1]


def test_a_few_rows_run_on_one_thread_and_the_callers_count_comes_back(monkeypatch):
    """A CPU call of at most ONE_THREAD_ROWS rows runs on one intra-op thread (same text), then restores the count;
    more rows (prompts x beams) keep the caller's threads."""
    from ilt_hf import fast_greedy

    from ilt_core.generation import loop

    model = small_model()
    monkeypatch.setattr(fast_greedy, "ONE_THREAD_ROWS", None)  # the decoder's own rule: tested in test_fast_greedy
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n) or real(n))
    before = torch.get_num_threads()
    real(2)
    try:
        one = generate(model, PROMPTS, 3)
        assert seen[0] == 1 and seen[-1] == 2 and torch.get_num_threads() == 2
        monkeypatch.setattr(loop, "ONE_THREAD_ROWS", 2 * len(PROMPTS) - 1)  # 2 beams x 5 prompts: more rows
        seen.clear()
        beams = generate(model, PROMPTS, 3, num_beams=2)
        assert 1 not in seen and torch.get_num_threads() == 2
        monkeypatch.setattr(loop, "ONE_THREAD_ROWS", None)
        assert generate(model, PROMPTS, 3) == one and 1 not in seen
    finally:
        real(before)
    assert len(beams) == len(PROMPTS)
