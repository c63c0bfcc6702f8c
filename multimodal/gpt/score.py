"""``python -m multimodal.score "text" --checkpoint PATH``: how probable a GPT finds a text.

Prints the total log-probability (nats), the log-probability of every token given the ones before it, and
the perplexity ``exp(-total / tokens)``. The text is preceded by the end-of-text token, so its first token
is scored as the start of a document. ``-`` reads the text from standard input; ``--file`` from a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from multimodal.checkpoint import CheckpointError
from multimodal.cli import fail
from multimodal.gpt.model import checkpoint_or_packaged, load_text_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m multimodal.score", description=__doc__.split("\n\n")[0])
    p.add_argument("text", nargs="?", help="text to score ('-' reads standard input)")
    p.add_argument("--file", default=None, help="score the contents of this file instead")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="export directory, Lightning .ckpt, or HF GPT-2 directory (default: the packaged GPT)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps …")
    p.add_argument("--json", action="store_true", help="one JSON object: tokens, logprobs, total, perplexity")
    p.add_argument("--tokens", action="store_true", help="also list every token's log-prob (text output)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.text is None) == (args.file is None):
        return fail("give the text to score or --file (one of them)")
    if args.file is not None:
        path = Path(args.file)
        if not path.is_file():
            return fail(f"{path}: no such file")
        text = path.read_text(encoding="utf-8", errors="replace")
    else:
        text = sys.stdin.read() if args.text == "-" else args.text
    if not text:
        return fail("empty text: nothing to score")
    try:
        model = load_text_model(checkpoint_or_packaged(args.checkpoint), args.device)
    except CheckpointError as e:
        return fail(str(e))
    with torch.inference_mode():
        s = model.score(text)
    n = len(s["logprobs"])
    if args.json:
        record = {
            "text": text,
            "tokens": s["tokens"],
            "token_ids": s["token_ids"],
            "logprobs": s["logprobs"],
            "total_logprob": s["total_logprob"],
            "num_tokens": n,
            "perplexity": s["perplexity"],
            "bits_per_token": -s["total_logprob"] / max(n, 1) / 0.6931471805599453,
        }
        print(json.dumps(record))
        return 0
    if args.tokens:
        for tok, lp in zip(s["tokens"], s["logprobs"]):
            print(f"{lp:10.4f}  {tok!r}")
    print(f"tokens: {n}  total log-prob: {s['total_logprob']:.4f} nats  perplexity: {s['perplexity']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
