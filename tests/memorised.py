"""A micro model that has memorised a few English and Hebrew sentences, trained once per test session and shared by
the tests of scoring, generation inside a word and lm_eval (``from memorised import memorised_model``)."""

from __future__ import annotations

import functools

import torch
from conftest import micro_spec

ENGLISH = ["the cat sat on my mat", "a dog ran in green fields", "one two three four five", "The capital is Paris."]
HEBREW = [
    "הילד הלך לבית הספר בבוקר",
    "אמא אפתה עוגה טעימה מאוד",
    "השמש זורחת מעל ההרים הגבוהים",
    "הכלב רץ מהר בגינה הירוקה",
    "אנחנו נוסעים לים בקיץ הזה",
    "המורה כתבה שאלה קשה על הלוח",
]
SENTENCES = ENGLISH + HEBREW


@functools.lru_cache(maxsize=1)
def memorised_model():
    """The micro preset without images, trained on :data:`SENTENCES` (AdamW, lr 3e-3, 80 full-batch steps, seed 0):
    greedy decoding then reproduces each English sentence from any cut of it; the Hebrew ones are learnt less
    well (twice the bytes), well enough to tell their endings from each other's."""
    from ilt_core.modeling.model import build_model

    model = build_model(micro_spec("bytes-only"), seed=0)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = model.processor(SENTENCES)
    model.train()
    for _ in range(80):
        loss = model(**batch.model_inputs()).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
