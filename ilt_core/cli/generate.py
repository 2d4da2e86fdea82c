"""``ilt generate``: continue prompts with a trained model, printed whole or unit by unit."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ilt_core.errors import ILTError
from ilt_core.generation.loop import generate, stream_generate
from ilt_core.generation.options import CACHE_IMPLEMENTATIONS, GenerationOptions
from ilt_core.modeling.model import ILTModel

__all__ = ["add_generate_parser", "cmd_generate"]


def _parse_byte_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (the value read as JSON when it is JSON, else as a string) -> ``(KEY, value)``."""
    if "=" not in text:
        raise ILTError(f"--byte-option {text!r}: expected KEY=VALUE, e.g. repetition_penalty=1.3")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


#: ``--no-fast-paths`` of ``ilt generate`` and ``ilt eval`` (``ILTModel.set_fast_paths``)
NO_FAST_PATHS_HELP = (
    "run every layer as its backbone's library writes it: no products through numpy, no fused inference steps "
    "(the same results to float rounding, slower on a CPU)"
)


def options_from_args(args: argparse.Namespace) -> GenerationOptions:
    """The :class:`GenerationOptions` that ``ilt generate``'s flags ask for (checked: a bad one raises ILTError)."""
    byte_options: dict[str, Any] = {}
    for item in args.byte_option or []:
        key, value = _parse_byte_option(item)
        byte_options[key if key.startswith("byte_") else f"byte_{key}"] = value
    return GenerationOptions(
        max_new_units=args.max_new_units,
        use_cache=not args.no_cache,
        cache_implementation=args.cache_implementation,
        num_beams=args.num_beams,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=tuple(args.stop or ()),
        length_penalty=args.length_penalty,
        byte_options=byte_options,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    """``ilt generate``: print each prompt's continuation (unit by unit with ``--stream``)."""
    options = options_from_args(args)  # checked before the model is loaded
    prompts = args.prompt
    if args.stream and len(prompts) != 1:
        raise ILTError(f"--stream takes one --prompt, got {len(prompts)}")
    model = ILTModel.from_pretrained(args.model)
    model.set_fast_paths(not args.no_fast_paths)
    if args.stream:
        for piece in stream_generate(model, prompts[0], options=options):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        return 0
    for text in generate(model, prompts, options=options):
        print(text, flush=True)
    return 0


def add_generate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ilt generate`` to an argparse ``subparsers``; its handler is ``func=cmd_generate``."""
    p = subparsers.add_parser("generate", help="continue a prompt with a trained model")
    p.add_argument("--model", required=True, help="checkpoint folder (from save_pretrained / ilt build --save)")
    p.add_argument("--prompt", required=True, action="append", help="text to continue (repeat for a batch)")
    p.add_argument("--max-new-units", type=int, default=32, help="most units to generate (default 32)")
    p.add_argument("--num-beams", type=int, default=1, help="word-level beam search over units")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam ranking: score / units ** this")
    p.add_argument("--do-sample", action="store_true", help="sample units instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="word-level temperature (with --do-sample)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most probable candidate units")
    p.add_argument("--top-p", type=float, default=None, help="keep the most probable units up to this mass")
    p.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    p.add_argument("--stop", action="append", help="stop before this string (repeatable)")
    p.add_argument(
        "--byte-option",
        action="append",
        metavar="KEY=VALUE",
        help="a transformers GenerationConfig option for the bytes decoder, e.g. repetition_penalty=1.3",
    )
    p.add_argument("--no-cache", action="store_true", help="recompute the latent at every step (slow; for checks)")
    p.add_argument(
        "--cache-implementation",
        choices=CACHE_IMPLEMENTATIONS,
        default="dynamic",
        help="the latent's KV cache: one that grows (default) or one allocated once, every step the same shapes",
    )
    p.add_argument("--stream", action="store_true", help="print each unit as soon as it is decoded")
    p.add_argument("--no-fast-paths", action="store_true", help=NO_FAST_PATHS_HELP)
    p.set_defaults(func=cmd_generate)
    return p
