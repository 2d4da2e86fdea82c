"""``cache_implementation="static"``: generation whose unit steps keep their shapes, with the same text.

The latent's cache is allocated once for the prompts and every step, rows stay in the batch to the end, and each
latent step reads a mask over every column: what a captured graph needs. The text must not change with it.
"""

from __future__ import annotations

import contextlib

import pytest
from helpers import PROMPTS, small_model

from ilt_core.errors import ILTError
from ilt_core.generation import Generation, GenerationOptions, generate

# rows of different lengths, one cut inside a word, one that fills the context (12 units) before the others end
ROWS = [*PROMPTS, "The capital is", "x y z w v u t s "]


@contextlib.contextmanager
def recorded(obj, name: str, record):
    """``obj.<name>`` calls ``record`` with its arguments first, inside the block."""
    real = getattr(obj, name)

    def wrapper(*args, **kwargs):
        record(*args, **kwargs)
        return real(*args, **kwargs)

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        delattr(obj, name)


OPTIONS = [
    {},
    {"do_sample": True, "seed": 3},
    {"do_sample": True, "seed": 5, "temperature": 0.7, "top_k": 20, "unit_candidates": 3},
    {"max_unit_bytes": 4},
    {"return_scores": True},
]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_a_static_cache_gives_the_same_text(options):
    model = small_model()
    dynamic = generate(model, ROWS, 6, **options)
    static = generate(model, ROWS, 6, cache_implementation="static", **options)
    if options.get("return_scores"):  # scores to float rounding (attention over more, masked, columns)
        assert [(r.text, r.units, r.finish_reason) for r in static] == [
            (r.text, r.units, r.finish_reason) for r in dynamic
        ]
        assert [r.score for r in static] == pytest.approx([r.score for r in dynamic], rel=1e-6)
        assert {r.finish_reason for r in static} >= {"context_full", "max_new_units"}
    else:
        assert static == dynamic


def test_a_static_cache_with_stops_and_unit_by_unit():
    model = small_model()
    units = [r.units for r in generate(model, PROMPTS, 5, return_scores=True)]
    stops = [units[1][2]]  # row 1 stops at its third unit, the others wherever that unit comes
    ended = generate(model, PROMPTS, 5, stop=stops, return_scores=True)
    assert len({len(r.units) for r in ended}) > 1  # rows end at different steps
    dynamic = [r.text for r in ended]
    assert generate(model, PROMPTS, 5, stop=stops, cache_implementation="static") == dynamic
    pieces = ["" for _ in PROMPTS]
    options = GenerationOptions(max_new_units=5, stop=tuple(stops), cache_implementation="static")
    for i, new in Generation(model, PROMPTS, options).steps():  # unit by unit, as streaming reads them
        pieces[i] += new
    assert pieces == dynamic


def test_every_latent_step_has_the_same_shapes():
    """With a static cache the latent reads the same input and mask shapes at every unit step, rows ending or not;
    a dynamic cache grows (so the check means something)."""
    model = small_model()
    seen = []

    def record(inputs_embeds, attention_mask=None, **kwargs):
        seen.append((tuple(inputs_embeds.shape), tuple(attention_mask.shape)))

    with recorded(model.latent_transformer, "forward", record):
        results = generate(model, ROWS, 6, cache_implementation="static", return_scores=True)
        static, seen[:] = list(seen), []
        generate(model, ROWS, 6)
        dynamic = list(seen)
    assert len({r.finish_reason for r in results}) > 1  # rows ended at different steps
    assert len(static) == 7 and len(set(static[1:])) == 1 and static[1][0] == (len(ROWS), 1, 64)
    assert len(set(dynamic[1:])) == len(dynamic) - 1  # the growing cache: a new shape each step


def test_greedy_decodes_every_row_at_every_step_with_a_static_cache():
    """The decoder's batch keeps its size too (greedy ids do not depend on the other rows), finished rows or not."""
    model = small_model()
    sizes = []

    def record(inputs_embeds, *args, **kwargs):
        sizes.append(tuple(inputs_embeds.shape))

    with recorded(model.bytes_decoder, "greedy", record):
        results = generate(model, ROWS, 6, cache_implementation="static", return_scores=True)
        static, sizes[:] = list(sizes), []
        generate(model, ROWS, 6)
        dynamic = list(sizes)
    assert len({len(r.units) for r in results}) > 1
    # the first step decodes rows cut inside a word in groups of their forced bytes; the 5 steps after it, all rows
    assert set(static[-5:]) == {(len(ROWS), 1, 64)}
    assert len({s[0] for s in dynamic}) > 1  # a growing cache drops finished rows


def test_unit_steps_read_the_device_twice_at_most():
    """Per unit step: the byte loop's one check of whether its rows ended, and the ids read back once."""
    from ilt_bench.opcount import DispatchCount

    model = small_model()
    with DispatchCount() as one:
        generate(model, ROWS[:3], 1, cache_implementation="static")
    with DispatchCount() as five:
        generate(model, ROWS[:3], 5, cache_implementation="static")
    assert (five.syncs - one.syncs) / 4 <= 2, dict(five.sync_ops)


def test_an_unknown_cache_implementation_is_refused():
    with pytest.raises(ILTError, match="cache_implementation='sliding'.*dynamic, static"):
        GenerationOptions(cache_implementation="sliding")


def test_new_word_images_reach_the_image_encoder_in_one_shape():
    """With a static cache the new units' word images are packed in ceil(n / 2) rows of fixed size (the training
    step's packing): one image-encoder call of one shape per unit step, and the same text as per-width calls."""
    from helpers import micro_spec

    from ilt_core.modeling.model import build_model

    model = build_model(micro_spec("full"), seed=0).eval()
    assert model.image_packing is not None
    shapes, widths = [], []
    prompts = ["the cat sat ", "a b ", "שלום לכם ", "one two three "]
    with (
        recorded(model.image_encoder, "encode_packed", lambda patches, *a: shapes.append(tuple(patches.shape))),
        recorded(model.image_encoder, "forward", lambda pixels, *a, **k: widths.append(pixels.shape[-1])),
    ):
        static = generate(model, prompts, 5, cache_implementation="static")
        assert widths == [] and len(shapes) >= 5
        dynamic = generate(model, prompts, 5)
    assert static == dynamic
    assert len(set(shapes[1:])) == 1 and shapes[1][0] == 2  # 4 new units a step: 2 rows
    assert len(set(widths)) > 1  # per width without tiles
