"""Model FLOPs per byte: an analytic count over the tokens each part of a model actually processed.

The formula (Kaplan et al. 2020 for the weights, PaLM appendix B for attention), for training
(forward + backward = 3 x forward, 2 FLOPs per multiply-add)::

    FLOPs = sum over parts p of  6 * N_p * tokens_p  +  12 * layers_p * width_p * sum_over_sequences(S^2)

- ``N_p``: the part's parameters without embedding tables (:func:`ilt_core.modeling.parameters.count_parameters`:
  token tables and vocabulary heads are excluded, position tables are counted).
- ``tokens_p``: tokens the part processed: the bytes encoder's real bytes of every distinct unit of a
  batch (each distinct unit is encoded once), the image encoder's patches (+1 class token) of every
  distinct unit image, the latent transformer's real positions (units and start markers), the bytes
  decoder's label bytes (prefix + bytes, one per label byte), the two mappings one token per distinct
  unit / labelled position. A baseline is one part: every token of every row.
- ``S``: the length of each attended sequence (a unit's bytes, an image's patches, a text's units inside
  a packed row, a decoder's label window, a baseline's row). Queries are counted against every key of the
  sequence (no causal halving), as PaLM counts them.

FLOPs per byte = FLOPs / UTF-8 bytes of training text. Model-FLOPs utilisation (MFU) = FLOPs per byte x
training bytes per second / the measured peak FLOP/s of one large fp32 matmul on the same machine.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ilt_core.modeling.parameters import count_parameters

FORMULA = (
    "FLOPs/byte = sum over parts [6 x non-embedding params x tokens + 12 x layers x width x sum(S^2)] / text bytes; "
    "tokens and sequence lengths S are those each part processed in training (see ilt_core/modeling/flops.py)"
)


def attention_shape(module: nn.Module | None) -> tuple[int, int] | None:
    """``(layers, width)`` of the transformer inside ``module``, or None (see ``protocols.AttentionShape``)."""
    if module is None:
        return None
    own = getattr(module, "attention_shape", None)
    if callable(own):
        return own()
    for sub in module.modules():
        cfg = getattr(sub, "config", None)
        layers, width = getattr(cfg, "num_hidden_layers", None), getattr(cfg, "hidden_size", None)
        if isinstance(layers, int) and isinstance(width, int):
            return layers, width
    return None


@dataclass
class PartWork:
    """The work of one part: its size and the tokens / squared sequence lengths it processed."""

    params: int
    layers: int = 0
    width: int = 0
    tokens: int = 0
    sum_sq: int = 0  # sum over processed sequences of length^2

    def add(self, lengths: torch.Tensor | list[int]) -> None:
        """Count sequences of the given lengths (each a tensor element or int)."""
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.tokens += int(lengths.sum())
        self.sum_sq += int((lengths * lengths).sum())

    def add_tokens(self, n: int) -> None:
        """Count tokens that pass through weights only (no attention: the mappings)."""
        self.tokens += int(n)

    def flops(self) -> float:
        return 6.0 * self.params * self.tokens + 12.0 * self.layers * self.width * self.sum_sq


@dataclass
class FlopCounter:
    """Per-part work over a training run and the UTF-8 bytes of text it covered."""

    parts: dict[str, PartWork] = field(default_factory=dict)
    num_bytes: int = 0

    def part(self, name: str, module: nn.Module, params: int | None = None) -> PartWork:
        """Register a part (its params counted without embedding tables, its attention shape read)."""
        shape = attention_shape(module) or (0, 0)
        n = count_parameters(module) if params is None else params
        self.parts[name] = PartWork(params=n, layers=shape[0], width=shape[1])
        return self.parts[name]

    def flops_per_byte(self) -> float:
        return sum(p.flops() for p in self.parts.values()) / max(self.num_bytes, 1)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per part: params, layers, width, tokens per byte, FLOPs per byte."""
        n = max(self.num_bytes, 1)
        return {
            name: {**asdict(p), "tokens_per_byte": p.tokens / n, "flops_per_byte": p.flops() / n}
            for name, p in self.parts.items()
        }


def image_sequence_length(encoder: nn.Module, height: int, width: int) -> int:
    """Tokens a patch encoder sees for one ``height x width`` image: its patches plus a class token."""
    pw = int(getattr(encoder, "patch_size", 16) or 16)
    ph = int(getattr(encoder, "_patch_height", pw) or pw)
    return -(-height // ph) * -(-width // pw) + 1


# ---- an ILT model's own count: shared by the trainer (total_flos) and the benchmark harness ----------------------

ILT_PARTS = ("image_encoder", "bytes_encoder", "latent_transformer", "bytes_decoder")
_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ilt_counter(model: Any) -> FlopCounter:
    """An empty :class:`FlopCounter` with one part per component of an ILT model plus its two mappings.

    The parts' sizes (parameters without embedding tables, attention layers and width) are read once per model.
    """
    shapes = _SHAPES.get(model)
    if shapes is None:
        probe = FlopCounter()
        for name in ILT_PARTS:
            module = getattr(model, name, None)
            if module is not None:
                probe.part(name, module)
        probe.part("encoder_mapping", model.encoder_mapping)
        probe.part("decoder_mapping", model.decoder_mapping)
        shapes = _SHAPES[model] = {n: (p.params, p.layers, p.width) for n, p in probe.parts.items()}
    return FlopCounter(parts={n: PartWork(params=a, layers=b, width=c) for n, (a, b, c) in shapes.items()})


def _field(inputs: Any, name: str) -> Any:
    """``inputs[name]`` of a batch (a ``Batch``, whose absent fields raise AttributeError) or a mapping, else None."""
    try:
        return inputs[name]
    except (KeyError, AttributeError):
        return None


def count_ilt_batch(counter: FlopCounter, model: Any, inputs: Mapping[str, Any], num_bytes: int | None = None) -> None:
    """Add one collated batch's work per part (see the module docstring) and its UTF-8 bytes of text.

    ``inputs``: the batch (``Batch`` or its ``model_inputs()``): ``unit_attention_mask`` (U, T), ``image_groups``,
    ``segment_ids`` (B, L) with -1 for padding, ``labels`` (B, L, K) with -100 where none, ``num_bytes`` (B,).
    """
    parts = counter.parts
    # distinct units past the last one any position reads are a fixed-shape batch's padding slots: no text
    unit_mask = inputs["unit_attention_mask"][: int(inputs["unit_index"].max()) + 1]
    if "bytes_encoder" in parts:
        parts["bytes_encoder"].add(unit_mask.sum(1))
    groups = _field(inputs, "image_groups")
    if "image_encoder" in parts and groups and "image" not in getattr(model, "disabled", ()):
        for idx, pixels in groups:
            length = image_sequence_length(model.image_encoder, pixels.shape[-2], pixels.shape[-1])
            parts["image_encoder"].add([length] * int(idx.numel()))
    packed = _field(inputs, "image_segments")
    if "image_encoder" in parts and packed is not None and "image" not in getattr(model, "disabled", ()):
        # packed rows of patches: one attended sequence per image (its class token and patches)
        per_row = [torch.bincount(row[row >= 0]).tolist() for row in packed.cpu()]
        parts["image_encoder"].add([n for row in per_row for n in row if n])
    seg = inputs["segment_ids"]
    # one attended sequence per text inside a (packed) row; padding (-1) is no text
    lengths = [int((seg[b] == s).sum()) for b in range(seg.shape[0]) for s in range(int(seg[b].max()) + 1)]
    parts["latent_transformer"].add([n for n in lengths if n])
    label_len = (inputs["labels"] != -100).sum(-1)
    label_len = label_len[label_len > 0]
    parts["bytes_decoder"].add(label_len)
    parts["encoder_mapping"].add_tokens(int(unit_mask.shape[0]))
    parts["decoder_mapping"].add_tokens(int(label_len.numel()))
    counter.num_bytes += int(inputs["num_bytes"].sum()) if num_bytes is None else int(num_bytes)


def batch_flops(model: Any, inputs: Mapping[str, Any]) -> float:
    """Training FLOPs (forward + backward) of one collated batch through an ILT model (the module's formula)."""
    counter = ilt_counter(model)
    count_ilt_batch(counter, model, inputs)
    return sum(p.flops() for p in counter.parts.values())


def measure_matmul_peak(device: torch.device | str = "cpu", size: int | None = None, repeats: int = 5) -> dict:
    """Best FLOP/s of an fp32 ``size x size`` matmul (2 * size^3 FLOPs) over ``repeats`` timed runs."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b)  # warm up: thread pool, kernels
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return {"size": size, "dtype": "float32", "seconds": best, "flops_per_second": 2.0 * size**3 / best}
