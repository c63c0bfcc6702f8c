"""``python -m multimodal.score "text" --checkpoint PATH``: how probable a GPT finds a text.

Prints the total log-probability (nats), the log-probability of every token given the ones before it, and
the perplexity ``exp(-total / tokens)``. The text is preceded by the end-of-text token, so its first token
is scored as the start of a document; a text longer than the context is scored in full windows, every token
once. Both are lm-evaluation-harness's ``loglikelihood_rolling`` conventions: its ``--model hf`` on our
``multimodal.export --format hf`` directory gives the same totals. ``-`` reads the text from standard input;
``--file`` from a file (bytes as they are: CRLF stays CRLF).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from multimodal.checkpoint import CheckpointError
from multimodal.cli import UsageError, add_device_flag, add_precision_flag, fail
from multimodal.gpt.model import load_cli_models


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m multimodal.score", description=__doc__.split("\n\n")[0])
    p.add_argument("text", nargs="?", help="text to score ('-' reads standard input)")
    p.add_argument("--file", default=None, help="score the contents of this file instead")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="export directory, Lightning .ckpt, or HF GPT-2 directory (default: the packaged GPT)",
    )
    add_device_flag(p)
    add_precision_flag(p)
    p.add_argument("--json", action="store_true", help="one JSON object: tokens, logprobs, total, perplexity")
    p.add_argument("--tokens", action="store_true", help="also list every token's log-prob (text output)")
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="past the context: new tokens scored per window (default the context length, as lm-eval; smaller "
        "gives each token more context at more cost)",
    )
    return p


def _read_stdin() -> str:
    stream = getattr(sys.stdin, "buffer", None)  # bytes as they are, like --file
    return stream.read().decode("utf-8", errors="replace") if stream is not None else sys.stdin.read()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.text is None) == (args.file is None):
        return fail("give the text to score or --file (one of them)")
    if args.file is not None:
        path = Path(args.file)
        if not path.is_file():
            return fail(f"{path}: no such file")
        text = path.read_bytes().decode("utf-8", errors="replace")  # no newline translation: CRLF is scored
    else:
        text = _read_stdin() if args.text == "-" else args.text
    if not text:
        return fail("empty text: nothing to score")
    try:
        ((_, model),) = load_cli_models([args.checkpoint], args.device, args.precision)
    except (UsageError, CheckpointError) as e:
        return fail(e)
    n_ctx = model.config.context_length
    if args.stride is not None and not 1 <= args.stride <= n_ctx:
        return fail(f"--stride must be between 1 and the context length {n_ctx}")
    with torch.inference_mode():
        s = model.score(text, args.stride)
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
            "conventions": {
                "document_start": "end-of-text token before the text (scores its first token)",
                "document_start_id": s["document_start_id"],
                "normalisation": "none: total_logprob is a sum over tokens; perplexity is per token",
                "context_length": n_ctx,
                "stride": s["stride"],
                "windows": s["windows"],
                "lm_eval": "loglikelihood_rolling of lm_eval --model hf (default model_args) on the hf export",
            },
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
