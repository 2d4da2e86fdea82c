"""What the tests share: specs, backbone configurations, corpora, small models and fakes.

Test modules import from here (never from one another); ``conftest.py`` holds the fixtures.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections import Counter

import numpy as np
import torch

# ------------------------------------------------------------------------------------------------------------ specs

VARIANTS = ("full", "image-only", "bytes-only")  # ilt_core.specs.spec.VARIANTS, in this order


def tiny_spec(variant: str = "full", **overrides) -> dict:
    """The tiny preset as a mapping, one modality off for the variants, no modality dropout."""
    from ilt_core.specs.spec import spec_variant

    return spec_variant("tiny", variant, **{"modality_dropout": 0.0, **overrides})


def micro_spec(variant: str = "full", **overrides) -> dict:
    """The ``micro`` preset (tiny's architectures, narrowed) as a mapping, like :func:`tiny_spec`: learning and
    memorisation tests show their invariants as well on it, in a fraction of the time."""
    from ilt_core.specs.spec import spec_variant

    return spec_variant("micro", variant, **{"modality_dropout": 0.0, **overrides})


def training_spec() -> dict:
    """The training tests' spec: tiny's bytes-only layout narrowed further than ``micro`` (width 64, one encoder and
    one decoder layer, dropout off), so a few `ilt train` steps on a few dozen sentences take seconds."""
    spec = tiny_spec("bytes-only")
    spec["name"] = "micro"
    small = dict(hidden_size=64, num_attention_heads=2, intermediate_size=128)
    spec["bytes_encoder"]["config"].update(
        small, num_hidden_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    spec["latent_transformer"]["config"].update(small, num_hidden_layers=2, max_position_embeddings=64)
    spec["bytes_decoder"]["config"].update(
        small, num_hidden_layers=1, num_key_value_heads=2, max_position_embeddings=64
    )
    return spec


NATIVE_BLOCKS = {
    "image_encoder": {
        "hf": {
            "component": "hf:vision",
            "config": {
                "model_type": "vit",
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "image_size": 224,
                "patch_size": 16,
            },
        },
        "timm": {"component": "timm:model", "model_name": "vit_tiny_patch16_224", "depth": 1},
        "clip": {
            "component": "clip:visual",
            "embed_dim": 32,
            "vision_cfg": {"layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
        },
    },
    "bytes_encoder": {
        "component": "hf:encoder",
        "config": {
            "model_type": "bert",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    },
    "latent_transformer": {
        "component": "hf:causal-lm",
        "config": {
            "model_type": "llama",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 256,
        },
    },
    "bytes_decoder": {
        "component": "hf:causal-lm",
        "config": {
            "model_type": "llama",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "intermediate_size": 64,
            "tie_word_embeddings": True,
        },
    },
}


def native_spec(variant: str = "full", image: str = "hf") -> dict:
    """The tiny preset's layout with micro backbones (a few thousand parameters each)."""
    spec = tiny_spec(variant)
    for role in ("bytes_encoder", "latent_transformer", "bytes_decoder"):
        if spec.get(role) is not False:
            spec[role] = copy.deepcopy(NATIVE_BLOCKS[role])
    if spec.get("image_encoder") is not False:
        spec["image_encoder"] = copy.deepcopy(NATIVE_BLOCKS["image_encoder"][image])
    spec["name"] = f"micro-{variant}-{image}"
    return spec


# ------------------------------------------------------------------ backbone configurations, shrunken (width 32)

LATENT_CONFIGS = {
    "llama": {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "vocab_size": 100,
    },
    "gpt_neox": {
        "model_type": "gpt_neox",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "rotary_pct": 0.25,
        "max_position_embeddings": 128,
        "vocab_size": 100,
    },
    # a sliding window shorter than the test sequences, so the window really cuts attention
    "gemma3_text": {
        "model_type": "gemma3_text",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "sliding_window": 4,
        "layer_types": ["sliding_attention", "full_attention"],
        "max_position_embeddings": 128,
        "vocab_size": 100,
    },
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128, "vocab_size": 100},
}

ENCODER_CONFIGS = {
    "bert": {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
    "modernbert": {
        "model_type": "modernbert",
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "global_attn_every_n_layers": 3,
        "local_attention": 4,
        "max_position_embeddings": 64,
        "pad_token_id": 50283,  # the hub's ids, far beyond the byte vocabulary: must be replaced
        "cls_token_id": 50281,
        "sep_token_id": 50282,
    },
    "deberta-v2": {
        "model_type": "deberta-v2",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "relative_attention": True,
        "position_buckets": 8,
        "pos_att_type": ["p2c", "c2p"],
        "position_biased_input": False,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "type_vocab_size": 0,
    },
}


VISION_CONFIGS = {
    "vit": {
        "model_type": "vit",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 224,
        "patch_size": 16,
    },
    "swinv2": {
        "model_type": "swinv2",
        "image_size": 256,
        "patch_size": 4,
        "embed_dim": 8,
        "depths": [1, 1, 2, 1],
        "num_heads": [1, 1, 2, 2],
        "window_size": 16,
        "drop_path_rate": 0.0,
    },
    "clip_vision_model": {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 224,
        "patch_size": 32,
    },
}


# ------------------------------------------------------------------ small generation models (bytes-only, width 64)

GENERATION_LATENTS = {
    "llama": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 12,
        "vocab_size": 8,
    },
    "gpt_neox": {
        "model_type": "gpt_neox",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "rotary_pct": 0.25,
        "max_position_embeddings": 12,
        "vocab_size": 8,
    },
    # a window shorter than the prompts, so the cache's sliding layer really drops units
    "gemma3_text": {
        "model_type": "gemma3_text",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "sliding_window": 3,
        "layer_types": ["sliding_attention", "full_attention"],
        "max_position_embeddings": 12,
        "vocab_size": 8,
    },
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 12, "vocab_size": 8},
}
GENERATION_DECODER = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 64,
    "vocab_size": 8,
}
# A context of 12 units (start marker included): the 10-unit prompt fills it after 3 new units, so rows of one
# batch finish at different steps even though random decoders rarely write eos.
PROMPTS = ["one", "the cat sat on the mat ", "a b c d e f g h i ", "", "שלום לכם "]


def small_spec(latent: str = "gpt_neox", **overrides) -> dict:
    """tiny's bytes-only layout with a small latent (a context of 12 units) and a small Llama decoder."""
    spec = tiny_spec("bytes-only", max_unit_bytes=6)
    spec["latent_transformer"] = {"component": "hf:causal-lm", "config": copy.deepcopy(GENERATION_LATENTS[latent])}
    spec["bytes_decoder"] = {"component": "hf:causal-lm", "config": dict(GENERATION_DECODER)}
    spec.update(overrides)
    return spec


_MODELS: dict = {}


def small_model(latent: str = "gpt_neox"):
    """An eval-mode model of :func:`small_spec`, built once per process and latent (seed 0)."""
    from ilt_core.modeling.model import build_model

    if latent not in _MODELS:
        _MODELS[latent] = build_model(small_spec(latent), seed=0).eval()
    return _MODELS[latent]


def stops_for(model, prompts, n=5):
    """Stop strings that each occur in one row's continuation only, so rows end at different steps."""
    from ilt_core.generation import generate

    texts = [r.units for r in generate(model, prompts, n, return_scores=True)]
    stops = []
    for i, units in enumerate(texts):
        k = 1 + i % (n - 1)  # stop inside unit k of row i
        if len(units) <= k:
            continue
        others = "".join("".join(u) for j, u in enumerate(texts) if j != i) + "".join(units[:k])
        pieces = [units[k][a : a + 2] for a in range(len(units[k]) - 1)] + [units[k]]
        found = next((x for x in pieces if x and x not in others and not any(x in s for s in stops)), None)
        if found is not None:
            stops.append(found)
    return stops


@contextlib.contextmanager
def swapped(model, role: str, component):
    """``model.<role> = component`` for the block (monkeypatch would delete a submodule on undo)."""
    saved = getattr(model, role)
    setattr(model, role, component)
    try:
        yield
    finally:
        setattr(model, role, saved)


# ------------------------------------------------------------------------------------------------------ corpora

SUBJECTS = ["הילד", "המורה", "השכנה", "הרופא", "הנהג", "הסטודנטית"]
VERBS = ["קורא", "כותב", "מחפש", "רואה", "אוהב", "שומע"]
OBJECTS = ["ספר חדש", "מכתב ארוך", "שיר יפה", "את החדשות", "סיפור מצחיק", "עיתון של אתמול"]
PLACES = ["בבית", "בגן הציבורי", "בספרייה", "בתחנה המרכזית", "ליד הים", "בעבודה"]


def hebrew_sentences(n: int, offset: int = 0) -> list[str]:
    """n short, regular Hebrew sentences (a pattern the micro model can start to learn in a few steps)."""
    out = []
    for i in range(offset, offset + n):
        out.append(f"{SUBJECTS[i % 6]} {VERBS[(i // 6) % 6]} {OBJECTS[(i * 5) % 6]} {PLACES[(i * 7 + 1) % 6]} היום.")
    return out


def losses(log_history: list[dict]) -> dict[int, float]:
    """Trainer's logged training losses by step."""
    return {h["step"]: h["loss"] for h in log_history if "loss" in h}


# ----------------------------------------------------------------------------------------------- fakes and checks


class SavedBytes:
    """Counts the bytes of the distinct storages autograd keeps for backward while the context is open."""

    def __init__(self) -> None:
        self.total = 0
        self._seen: set[int] = set()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.total += storage.nbytes()
        return t


@contextlib.contextmanager
def saved_bytes():
    """``with saved_bytes() as kept: ...forward...``; then ``kept.total`` is what backward would keep, in bytes."""
    kept = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(kept.pack, lambda t: t):
        yield kept


class CountingRenderer:
    """A fake renderer: width 2 * (len(unit) + 1), pixels derived from the unit; counts its calls."""

    def __init__(self, height: int = 4, width_multiple: int = 2) -> None:
        self.height = height
        self.width_multiple = width_multiple
        self.key: tuple = ("fake", 1)
        self.calls: Counter[str] = Counter()
        self.buffer = np.zeros((height, 0), np.uint8)

    def render(self, unit: str) -> np.ndarray:
        self.calls[unit] += 1
        width = self.width_multiple * (len(unit) + 1)
        self.buffer = np.full((self.height, width), sum(map(ord, unit)) % 256, np.uint8)
        self.buffer[0, 0] = self.key[1]  # the key's setting changes the pixels, as it should
        return self.buffer  # deliberately the renderer's own buffer: the cache must copy it

    def cache_key(self) -> tuple:
        return self.key


def assert_same_training_step(native: torch.nn.Module, fast: torch.nn.Module, ids: torch.Tensor) -> None:
    """The language-model loss of ``ids`` and every parameter's gradient are the same in both models."""
    losses = []
    for model in (native, fast):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0])
    for (name, a), b in zip(native.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------- memorised model
# A micro model that has memorised a few English and Hebrew sentences, trained once per test session and shared by
# the tests of scoring, generation inside a word and lm_eval.

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
    return memorise(SENTENCES, steps=80, lr=3e-3)


def memorise(texts: list[str], steps: int, lr: float):
    """The micro preset without images (seed 0), trained full-batch on ``texts`` for ``steps`` AdamW steps at
    ``lr`` (dropout seeded 0); returned in eval mode."""
    from ilt_core.modeling.model import build_model

    model = build_model(micro_spec("bytes-only"), seed=0)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    batch = model.processor(texts)
    model.train()
    for _ in range(steps):
        loss = model(**batch.model_inputs()).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
