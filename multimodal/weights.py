"""Weights on disk: our export format, atomic writes, ``torch.load`` with one-line diagnostics, and precision.

Export format: a directory holding ``config.json`` (``{"kind": ..., "config": {...}, ...}``) and
``model.safetensors``. Anything read with ``torch.load`` goes through ``weights_only=True``: a pickle
that carries code is refused, never executed.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from multimodal.config_check import config_to_dict
from multimodal.errors import CheckpointError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Key a Lightning checkpoint carries so it can be rebuilt without the training code's arguments.
LIGHTNING_KEY = "multimodal"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- our export format ----------------------------------------------------------------------------------------
def payload(model: nn.Module, extra: dict | None = None) -> dict:
    """What ``config.json`` (and a Lightning checkpoint's ``multimodal`` key) holds for ``model``."""
    out = {"format_version": FORMAT_VERSION, "kind": model.kind, "config": config_to_dict(model.config)}
    out.update(extra or {})
    return out


def extra_files_of(model: nn.Module) -> dict[str, str]:
    """The files a model writes beside its weights (a tokenizer's vocabulary, say), as ``{name: base64}``: a
    Lightning checkpoint carries them under our key, so a ``.ckpt`` loads with them as an export does."""
    if not hasattr(model, "save_extra_files"):
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_extra_files(Path(tmp))
        return {f.name: base64.b64encode(f.read_bytes()).decode() for f in sorted(Path(tmp).iterdir()) if f.is_file()}


def save_export(model: nn.Module, directory: str | Path, extra: dict | None = None) -> Path:
    """Write ``directory/config.json`` and ``directory/model.safetensors``; returns the directory.

    Each file is written under a unique temporary name in the same folder, then renamed over the old one:
    an interrupted save never leaves half a file, and two processes exporting to one directory at once never
    write into each other's file (the last rename wins, whole). Files get the mode the user's umask gives.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state = _untie(state)
    config_text = json.dumps(payload(model, extra), indent=2) + "\n"
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"kind": model.kind}))
    atomic_write(directory / CONFIG_FILE, lambda tmp: tmp.write_text(config_text))
    if hasattr(model, "save_extra_files"):
        model.save_extra_files(directory)
    return directory


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a unique temporary file beside ``path``, then rename it to ``path``."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a saved model is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied embeddings); store a copy of each repeat.
    seen: dict[tuple, str] = {}
    out = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        out[k] = v.clone() if key in seen else v
        seen.setdefault(key, k)
    return out


# -- reading weights --------------------------------------------------------------------------------------------
def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` and one-line errors: a pickle that carries code is refused
    (and says so), bytes that are no checkpoint at all are called that. ``mmap``: tensors stay on disk until
    touched (a cheap check of a large file)."""
    path = Path(path)
    try:
        if mmap and zipfile.is_zipfile(path):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        refused = next((ln for ln in lines if "Unsupported global" in ln), None)
        if refused is None and not _looks_pickled(path):
            raise CheckpointError(
                f"{path}: not a checkpoint (neither a PyTorch archive nor a pickle; damaged, or another format?)"
            ) from None
        named = re.search(r"GLOBAL (\S+)", refused or "")
        detail = (
            f"it references {named.group(1)}"
            if named
            else next((ln for ln in lines if "Unsupported" in ln), lines[0] if lines else "")
        )
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled Python objects, not only weights "
            f"({detail[:160]}); nothing was executed"
        ) from None
    except Exception as e:  # noqa: BLE001 - bytes the unpickler trips over (IndexError, KeyError ...): one line
        if path.is_file() and not _looks_pickled(path):
            raise CheckpointError(
                f"{path}: not a checkpoint (neither a PyTorch archive nor a pickle; damaged, or another format?)"
            ) from None
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or damaged?): {msg[:200]}") from None


def _looks_pickled(path: Path) -> bool:
    """A ``torch.save`` zip archive, or a raw pickle (protocol 2 and up start with the PROTO opcode 0x80)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head == b"PK\x03\x04":  # a zip archive's first local header: torch.save's format, maybe cut short
                return True
            return zipfile.is_zipfile(f) or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)
    except OSError:
        return False


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file or a torch weights file into a flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{path}: damaged safetensors file: {str(e).splitlines()[0][:200]}") from None
    obj = safe_torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def describe_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """How the tensors ``state`` holds differ from what a model's ``own`` state dict wants (names, then shapes);
    ``None`` when they match."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        more = lambda keys: "…" if len(keys) > 3 else ""  # noqa: E731
        return (
            f"{len(missing)} missing, e.g. {missing[:3]}{more(missing)}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}{more(unexpected)}"
        )
    for k, v in own.items():
        if tuple(v.shape) != tuple(state[k].shape):
            return f"{k}: weights {tuple(state[k].shape)}, config wants {tuple(v.shape)}"
    return None


# -- precision ----------------------------------------------------------------------------------------------
def to_dtype(precision: torch.dtype | str) -> torch.dtype:
    """``fp32`` | ``bf16`` | ``fp16`` (or a ``torch.dtype``) → the ``torch.dtype``."""
    if isinstance(precision, torch.dtype):
        return precision
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    return PRECISIONS[precision]
