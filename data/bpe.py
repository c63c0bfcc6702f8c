"""``python -m data.bpe --out DIR``: learn the GPT tools' byte-level BPE (GPT-2's tokenizer kind) on the
documents a ``TextDataModule`` would train on, and write ``vocab.json`` + ``merges.txt``.

The task GPT's tokenizer (``data/tokenizers/tasks/``) is made by the defaults::

    python -m data.bpe --synthetic tasks --docs 100000 --vocab-size 2048 --out data/tokenizers/tasks

The same documents (same generator, count and seed) give the same files.
"""

from __future__ import annotations

import argparse
import json
import sys

from data.text import SYNTHETIC, read_documents
from multimodal.cli import fail
from multimodal.tokenizers import train_byte_level_bpe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.bpe", description=__doc__.split("\n\n")[0])
    p.add_argument("--synthetic", default="tasks", help=f"synthetic corpus ({', '.join(SYNTHETIC)}; default tasks)")
    p.add_argument("--text", action="append", help="text files, directories or globs instead of --synthetic")
    p.add_argument("--docs", type=int, default=100_000, help="synthetic documents (default 100000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=2048, help="tokens, <|endoftext|> and 256 bytes included")
    p.add_argument("--out", required=True, help="directory for vocab.json + merges.txt")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    args = p.parse_args(argv)
    if args.vocab_size < 300:
        return fail("--vocab-size must be at least 300 (256 bytes, end-of-text and some merges)")
    if args.synthetic not in SYNTHETIC and not args.text:
        return fail(f"unknown synthetic corpus {args.synthetic!r}; known: {', '.join(SYNTHETIC)}")
    try:
        docs = read_documents(args.text) if args.text else SYNTHETIC[args.synthetic](args.docs, args.seed)
    except (OSError, ValueError) as e:
        return fail(str(e))
    tok = train_byte_level_bpe(docs, args.vocab_size, args.out)
    sample = docs[: min(len(docs), 2000)]
    n_tokens = sum(len(tok.encode(d)) for d in sample)
    n_bytes = sum(len(d.encode("utf-8")) for d in sample)
    summary = {"out": args.out, "vocab_size": tok.vocab_size, "bytes_per_token": round(n_bytes / n_tokens, 3)}
    print(
        json.dumps(summary)
        if args.json
        else f"{args.out}: {tok.vocab_size} tokens, {summary['bytes_per_token']} bytes/token"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
