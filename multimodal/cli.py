"""What the suite's command-line tools share."""

from __future__ import annotations

import sys

from multimodal.checkpoint import CheckpointError, load_model


def fail(msg: str | BaseException) -> int:
    """Print one ``error:`` line on stderr; return the exit code for bad input (2).

    An exception gives the first line of its message (its type name when the message is empty)."""
    if isinstance(msg, BaseException):
        text = str(msg).strip()
        msg = text.splitlines()[0] if text else type(msg).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2


def load_text_model(checkpoint: str, device: str = "cpu"):
    """A GPT with its tokenizer, for the CLIs that read text; every failure is a one-line ``CheckpointError``."""
    try:
        model = load_model(checkpoint, "gpt").to(device)
    except (RuntimeError, ValueError) as e:  # e.g. a device that does not exist
        raise CheckpointError(f"{checkpoint}: {str(e).splitlines()[0]}") from None
    if model.tokenizer is None:
        raise CheckpointError(f"{checkpoint}: the checkpoint has no tokenizer files (vocab.json + merges.txt)")
    return model
