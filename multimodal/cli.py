"""What the suite's command-line tools share: one ``error:`` line, one ``UsageError``, one ``--device``."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

import torch


class UsageError(ValueError):
    """Bad input from the command line: printed as one ``error:`` line, exit code 2."""


def fail(msg: str | BaseException) -> int:
    """Print one ``error:`` line on stderr; return the exit code for bad input (2).

    An exception gives the first line of its message (its type name when the message is empty)."""
    if isinstance(msg, BaseException):
        text = str(msg).strip()
        msg = text.splitlines()[0] if text else type(msg).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2


def warn(msg: str | BaseException) -> None:
    """One ``error:`` line for an input that is skipped while the rest of the run goes on."""
    text = str(msg).strip()
    print(f"error: {text.splitlines()[0] if text else type(msg).__name__}", file=sys.stderr)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU) | ``cpu`` | ``cuda[:N]`` | ``mps``; a bad or absent device is a
    ``UsageError`` naming ``--device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"--device {name!r}: {str(e).splitlines()[0]}") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {name}: no such CUDA device on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine")
    return device


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU) | cpu | cuda[:N]")


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def add_precision_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="dtype the weights are kept and run in (default fp32; bf16 / fp16 halve the memory)",
    )


def resolve_precision(name: str, device: str | torch.device) -> torch.dtype:
    """The dtype of ``--precision``, or a ``UsageError`` naming it where ``device`` cannot compute in it
    (checked with a tiny matmul, LayerNorm and attention, the operations every model here runs)."""
    from multimodal.checkpoint import PRECISIONS

    dtype = PRECISIONS[name]
    if dtype == torch.float32:
        return dtype
    try:
        device = torch.device(device if str(device) != "auto" else resolve_device("auto"))
    except (RuntimeError, ValueError):
        return dtype  # a bad --device is reported where the device is used
    if device.type == "cuda" and dtype == torch.bfloat16 and torch.cuda.is_available():
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16")
    try:
        x = torch.ones(1, 1, 4, 8, device=device, dtype=dtype)
        torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True)
        torch.nn.functional.layer_norm(x @ x.transpose(-1, -2), (4,))
    except (RuntimeError, TypeError, NotImplementedError) as e:
        raise UsageError(f"--precision {name}: not supported on {device} ({str(e).splitlines()[0][:120]})") from None
    return dtype


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    """``\\n``, ``\\t``, ``\\r`` and ``\\\\`` typed on a command line → newline, tab, carriage return, backslash
    (any other backslash is kept): ``--stop "\\n"`` stops at a newline in every shell, as the playground's stop box
    does. The one convention for every flag that takes a stop string."""
    return re.sub(r"\\([ntr\\])", lambda m: ESCAPES[m.group(1)], text)


def check_finite(flag: str, value: float | None) -> None:
    """A float flag must be a real number: ``--temperature nan`` is a ``UsageError`` here, not a "probability
    tensor contains nan" traceback after the model has loaded."""
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number, got {value}")


def check_writable(path: str | os.PathLike) -> None:
    """Refuse an output location that cannot be written (read-only mount, no permission, a file where a folder
    is needed) before any expensive work starts. ``path`` is a file to write or a folder to write into."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{path}: cannot write there ({folder} is not a directory)")
    if not os.access(folder, os.W_OK) or _read_only_mount(folder):
        raise UsageError(f"{path}: cannot write there (permission denied or read-only)")


def _read_only_mount(folder: Path) -> bool:
    # os.access ignores a read-only mount for root on some systems; statvfs reports it
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False
