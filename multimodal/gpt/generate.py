"""``python -m multimodal.generate "prompt" --checkpoint PATH``: continue a prompt with a GPT.

The checkpoint may be our export directory, a Lightning ``.ckpt`` of ``multimodal.gpt.lm.GPTModule``, or a
Hugging Face GPT-2 directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import torch

from multimodal.checkpoint import CheckpointError
from multimodal.cli import UsageError, add_device_flag, add_precision_flag, fail, unescape
from multimodal.gpt.model import load_cli_models

DEFAULT_MAX_TOKENS = 64


def default_max_tokens(model, prompt: str) -> int:
    """``DEFAULT_MAX_TOKENS``, or fewer so that the whole prompt stays in the context window."""
    prompt_tokens = len(model.tokenizer.encode(prompt)) or 1
    return max(1, min(DEFAULT_MAX_TOKENS, model.config.context_length + 1 - prompt_tokens))


MAX_NUM = 10_000  # samples per run; each is generated on its own


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m multimodal.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("prompt", help="text to continue")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="export directory, Lightning .ckpt, or HF GPT-2 directory (default: the packaged GPT)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"new tokens at most (default {DEFAULT_MAX_TOKENS}, fewer when only that many fit in the context "
        "after the prompt: the default never cuts the prompt)",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument(
        "--seed", type=int, default=None, help="seed for reproducible sampling (any integer, taken mod 2**64)"
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        type=unescape,
        help=r"stop string (repeatable), not included in the output; \n \t \r \\ are a newline, tab, return, "
        r'backslash: --stop "\n" stops at the end of the line',
    )
    p.add_argument("--num", type=int, default=1, help="number of samples (seeds seed, seed+1, …)")
    add_device_flag(p)
    add_precision_flag(p)
    p.add_argument("--json", action="store_true", help="one JSON object per sample on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_tokens is not None and args.max_tokens < 1:
        return fail("--max-tokens must be at least 1")
    if args.num < 1 or args.num > MAX_NUM:
        return fail(f"--num must be in [1, {MAX_NUM}], got {args.num}")
    if not 0 <= args.temperature < float("inf"):  # also refuses nan
        return fail(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        return fail("--top-p must be in (0, 1]")
    if args.top_k is not None and args.top_k < 0:
        return fail("--top-k must be >= 0")
    try:
        ((_, model),) = load_cli_models([args.checkpoint], args.device, args.precision)
    except (UsageError, CheckpointError) as e:
        return fail(e)
    max_tokens = args.max_tokens or default_max_tokens(model, args.prompt)
    for i in range(args.num):
        seed = None if args.seed is None else args.seed + i
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.inference_mode():
                out = model.generate(args.prompt, max_tokens, args.temperature, args.top_k, args.top_p, seed, args.stop)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        if args.json:
            record = {
                "prompt": args.prompt,
                "completion": out.text,
                "tokens": len(out.tokens),
                "finish_reason": out.finish_reason,
                "prompt_truncated": out.truncated_prompt,
                "seed": seed,
            }
            print(json.dumps(record), flush=True)
        else:
            print(args.prompt + out.text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
