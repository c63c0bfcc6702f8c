"""What the suite's command-line tools share."""

from __future__ import annotations

import sys


def fail(msg: str) -> int:
    """Print one ``error:`` line on stderr; return the exit code for bad input (2)."""
    print(f"error: {msg}", file=sys.stderr)
    return 2
