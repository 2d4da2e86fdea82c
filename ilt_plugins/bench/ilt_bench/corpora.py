"""Generated Hebrew corpora of a given size, and the small model the data-scale benchmarks train.

:func:`make_corpus` writes (or reuses) a corpus of lines drawn at random from the he-news and he-mishnah recipes,
a share of each line's words respelled at random (a letter replaced or inserted), so that the vocabulary, and with
it the render cache's work, grows with the corpus; as one ``.txt`` and as parquet shards with a ``text`` column
(``benchmarks/bench_data_scale.py``, ``bench_stream.py``). :data:`SMALL_MODEL` narrows every backbone of the tiny
preset.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

SOURCES = ("he-news", "he-mishnah")
HEBREW_LETTERS = "אבגדהוזחטיכלמנסעפצקרשת"
#: The small model: the tiny preset's components (images on), every backbone narrowed.
SMALL_MODEL = (
    "image_encoder.config.hidden_size=64",
    "image_encoder.config.num_hidden_layers=2",
    "image_encoder.config.num_attention_heads=2",
    "image_encoder.config.intermediate_size=128",
    "bytes_encoder.config.hidden_size=64",
    "bytes_encoder.config.num_hidden_layers=1",
    "bytes_encoder.config.intermediate_size=128",
    "latent_transformer.config.hidden_size=128",
    "latent_transformer.config.num_hidden_layers=2",
    "latent_transformer.config.num_attention_heads=4",
    "latent_transformer.config.intermediate_size=256",
    "bytes_decoder.config.hidden_size=128",
    "bytes_decoder.config.num_hidden_layers=2",
    "bytes_decoder.config.num_attention_heads=4",
    "bytes_decoder.config.num_key_value_heads=4",
    "bytes_decoder.config.intermediate_size=256",
)


def _respell(word: str, rng: random.Random) -> str:
    """The word with one Hebrew letter replaced, or one inserted (a new spelling, mostly a new word)."""
    letters = [i for i, ch in enumerate(word) if "\u05d0" <= ch <= "\u05ea"]
    new = rng.choice(HEBREW_LETTERS)
    if letters and rng.random() < 0.5:
        i = rng.choice(letters)
        return word[:i] + new + word[i + 1 :]
    i = rng.choice(letters) if letters else 0
    return word[:i] + new + word[i:]


def make_corpus(size_mb: float, work: Path, shards: int, respell: float, seed: int) -> dict[str, Any]:
    """Write (or reuse) the corpus of ``size_mb`` MB as .txt and as parquet shards; returns its facts."""
    from ilt_data.recipes import prepare, read_split
    from ilt_data.shards import write_parquet_shards

    tag = f"he-{size_mb:g}mb-r{respell:g}-s{seed}"
    folder = work / tag
    manifest = folder / "corpus.json"
    if manifest.is_file():
        facts = json.loads(manifest.read_text(encoding="utf-8"))
        if facts.get("shards") == shards:
            return facts
    folder.mkdir(parents=True, exist_ok=True)
    base: list[list[str]] = []
    for name in SOURCES:
        for path in prepare(name, progress=False).values():
            base.extend(line.split(" ") for line in read_split(path))
    rng = random.Random(seed)
    target = int(size_mb * 1e6)
    start = time.perf_counter()
    txt = folder / "train.txt"
    written = lines = respelled = 0
    with open(txt, "w", encoding="utf-8", newline="\n", buffering=1 << 22) as out:
        chunk: list[str] = []
        while written < target:
            words = list(rng.choice(base))
            for _ in range(int(len(words) * respell + rng.random())):
                i = rng.randrange(len(words))
                words[i] = _respell(words[i], rng)
                respelled += 1
            line = " ".join(words)
            chunk.append(line)
            written += len(line.encode("utf-8")) + 1
            lines += 1
            if len(chunk) >= 10_000:
                out.write("\n".join(chunk) + "\n")
                chunk = []
        if chunk:
            out.write("\n".join(chunk) + "\n")
    parquet = folder / "parquet"
    write_parquet_shards(txt, parquet, "train", shards)
    facts = {
        "size_mb": size_mb,
        "bytes": txt.stat().st_size,
        "lines": lines,
        "respelled_words": respelled,
        "txt": str(txt),
        "parquet": str(parquet / "*.parquet"),
        "parquet_bytes": sum(p.stat().st_size for p in parquet.glob("*.parquet")),
        "shards": shards,
        "seconds": round(time.perf_counter() - start, 1),
    }
    manifest.write_text(json.dumps(facts, indent=2), encoding="utf-8")
    return facts


__all__ = ["SMALL_MODEL", "SOURCES", "make_corpus"]
