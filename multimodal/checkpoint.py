"""Saving and loading models: our export format, Lightning checkpoints, and peers' directories.

Export format: a directory holding ``config.json`` (``{"kind": ..., "config": {...}, ...}``) and
``model.safetensors``. Anything read with ``torch.load`` goes through ``weights_only=True``: a pickle
that carries code is refused, never executed.

Every model class that can be exported registers itself with ``@register("kind")``; it has a dataclass
``config`` attribute and is built as ``Cls(config)``.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import math
import os
import pickle
import re
import tempfile
import types
import typing
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Key a Lightning checkpoint carries so it can be rebuilt without the training code's arguments.
LIGHTNING_KEY = "multimodal"

# kind -> module that defines (and registers) it; imported on first use so loading a GPT does not
# import the CLIP or DALL·E code.
KIND_MODULES = {
    "gpt": "multimodal.gpt.model",
    "gpt_classifier": "multimodal.gpt.finetune",
    "clip": "clip.model",
    "vae": "dalle.vae.model",
    "dalle": "dalle.model",
    "judge": "data.judge",
}
_REGISTRY: dict[str, type[nn.Module]] = {}
# Reads a Hugging Face GPT-2 directory; imported by name, like KIND_MODULES, so the core imports no head.
HF_GPT2_MODULE = "multimodal.gpt.hf"
# Peers' directory layouts ``load_model`` also reads: marker file -> (module, loader, kind). Imported on use, so
# the core does not import a head; a loader takes the directory and returns the model.
DIRECTORY_LOADERS = {"open_clip_config.json": ("clip.openclip", "load_openclip_dir", "clip")}
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# The packaged demo models (trained on the shapes world, shipped inside the package), by name.
PACKAGED_DIR = Path(__file__).parent / "demo_models"
PACKAGED = {"clip": "clip", "dalle": "dalle", "judge": "judge", "gpt": "gpt"}
SHAPES_ONLY_NOTE = "note: the demo model knows only the synthetic shapes world (coloured shapes at named places)"
GPT_TASKS_NOTE = (
    "note: the packaged GPT (2.2M parameters, BPE, 128-token context) knows only data/tasks.py's world: English words "
    "in French, Spanish and German ('sky = ciel; dog = chien; cat = chat; children ='), made-up words and endings "
    "read from the prompt, 'a vs b'; not arithmetic (README, GPT-3's claims at CPU scale)"
)


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line meant for the user."""


def register(kind: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return wrap


def model_class(kind: str) -> type[nn.Module]:
    if kind not in _REGISTRY and kind in KIND_MODULES:
        importlib.import_module(KIND_MODULES[kind])
    if kind not in _REGISTRY:
        raise CheckpointError(f"unknown model kind {kind!r} (known: {', '.join(sorted(KIND_MODULES))})")
    return _REGISTRY[kind]


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def config_from_dict(cls: type, data: Any) -> Any:
    """Build ``cls.config_class`` from a dict (``config.json``'s ``"config"``), checked field by field.

    Every field's value is checked against its annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``,
    ``Literal``, ``list[X]``, ``tuple``, ``dict``, nested dataclasses, recursively), numbers are finite and
    counts not negative; the first problem is a one-line ``CheckpointError`` naming the field
    (``config.text.width: expected int, got str 'four'``)."""
    return _dataclass_from(cls.config_class, data, "config")


def _dataclass_from(config_cls: type, data: Any, where: str) -> Any:
    if isinstance(data, config_cls):
        return data
    if hasattr(config_cls, "upgrade") and isinstance(data, dict):
        data = config_cls.upgrade(dict(data))  # older exports: one explicit conversion per head
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{where}: expected an object with the fields of {config_cls.__name__}, got {_describe(data)}"
        )
    fields = dataclasses.fields(config_cls)
    unknown = [k for k in data if k not in {f.name for f in fields}]
    if unknown:
        raise CheckpointError(f"{where}: fields {sorted(map(str, unknown))} unknown to {config_cls.__name__}")
    try:
        hints = typing.get_type_hints(config_cls)
    except (NameError, TypeError):  # an annotation that does not resolve: check nothing rather than guess
        hints = {}
    kwargs = {
        f.name: _checked(data[f.name], hints.get(f.name, Any), f"{where}.{f.name}") for f in fields if f.name in data
    }
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        raise CheckpointError(
            f"{where}: invalid {config_cls.__name__}: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from None


def _describe(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    kind = names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
    return kind if text == type(value).__name__ else f"{kind} {text[:60]}"


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _checked(value: Any, tp: Any, where: str) -> Any:
    """``value`` (parsed JSON) as the annotation ``tp`` wants it, or a ``CheckpointError`` naming ``where``."""

    def wrong() -> CheckpointError:
        return CheckpointError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")

    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _checked(value, option, where)
            except CheckpointError:
                continue
        raise wrong()
    if origin is typing.Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args if a == value):
            raise wrong()
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_from(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong()
        if value < 0:
            raise CheckpointError(f"{where}: must not be negative, got {value}")
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise wrong()
        if not math.isfinite(value):
            raise CheckpointError(f"{where}: must be a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise wrong()
        return [_checked(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_checked(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args:
            if len(args) != len(value):
                raise CheckpointError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_checked(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(_checked(v, Any, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise wrong()
        return value
    return value  # an annotation this checker does not know: the config class's own checks apply


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


def packaged_path(name: str, root: Path | None = None) -> Path | None:
    """Directory of the packaged demo model ``name`` (``clip``, ``dalle``, ``judge``, ``gpt``), if shipped."""
    if name not in PACKAGED:
        return None
    path = (root or PACKAGED_DIR) / PACKAGED[name]
    return path if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file() else None


def resolve(path: str | Path) -> Path:
    """``path``, or the packaged model of that name when ``path`` is one (``"clip"``) and names no model on disk."""
    p = Path(path)
    if str(path) in PACKAGED and not p.is_file() and not (p / CONFIG_FILE).is_file():
        return packaged_model_path(str(path))
    return p


def packaged_model_path(name: str, root: Path | None = None) -> Path:
    """``packaged_path`` or a one-line ``CheckpointError`` saying how to build the missing model."""
    path = packaged_path(name, root)
    if path is None:
        known = ", ".join(n for n in PACKAGED if packaged_path(n, root) is not None)
        if name in PACKAGED:
            raise CheckpointError(
                f"the packaged {name!r} model is not in {root or PACKAGED_DIR}; build it with "
                f"`python -m multimodal.demo build` (packaged: {known or 'none'})"
            )
        raise CheckpointError(f"{name}: no such file or directory, and not a packaged model ({known or 'none'})")
    return path


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


def _check_meta(meta: dict, where: Path) -> None:
    """``kind`` a string, ``config`` an object: what ``build`` reads (its fields are checked there)."""
    if not isinstance(meta.get("kind"), str):
        raise CheckpointError(f"{where}: 'kind' must be a string naming the model, got {_describe(meta.get('kind'))}")
    if not isinstance(meta.get("config", {}), dict):
        raise CheckpointError(
            f"{where}: 'config' must be an object with the model's settings, got {_describe(meta['config'])}"
        )


def _check_kind(found: str, kind: str | tuple[str, ...] | None, path: Path) -> None:
    wanted = (kind,) if isinstance(kind, str) else kind
    if wanted and found not in wanted:
        raise CheckpointError(f"{path}: this is a {found!r} checkpoint, expected {' or '.join(map(repr, wanted))}")


def build(meta: dict, state: dict[str, torch.Tensor], path: Path, directory: Path | None = None) -> nn.Module:
    """Instantiate the model ``meta`` describes and load ``state`` into it, strictly.

    The config is checked field by field, then the model is first built on the meta device (no memory) and
    its parameter names and shapes compared with ``state``: a config that does not match its weights (or asks
    for a model far larger than they are) is a one-line error before anything is allocated."""
    kind = meta.get("kind")
    cls = model_class(kind)
    try:
        config = config_from_dict(cls, meta.get("config", {}))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        with torch.device("meta"):
            mismatch = describe_mismatch(cls(config).state_dict(), state)
        if mismatch:
            raise CheckpointError(f"{path}: weights do not match the {kind!r} config ({mismatch})")
        model = cls(config)
    except (TypeError, ValueError, RuntimeError, KeyError, AssertionError, ZeroDivisionError) as e:
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: cannot build the {kind!r} model from its config: {msg}") from None
    if directory is not None and hasattr(model, "load_extra_files"):
        model.load_extra_files(directory)
    mismatch = describe_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{path}: weights do not match the {kind!r} config ({mismatch})")
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    model.eval()
    return model


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


def load_model(
    path: str | Path, kind: str | tuple[str, ...] | None = None, dtype: torch.dtype | str | None = None
) -> nn.Module:
    """Load a model from our export directory, a Lightning ``.ckpt``, a Hugging Face GPT-2 directory or an
    open_clip ``local-dir:`` directory (``open_clip_config.json`` + weights).

    ``dtype`` (a ``torch.dtype`` or ``fp32`` | ``bf16`` | ``fp16``): the weights are kept in it; default fp32.
    Raises ``CheckpointError`` (one line) for a missing, damaged or wrong-kind checkpoint.
    """
    model = _load_model(path, kind)
    return model.to(dtype=to_dtype(dtype)) if dtype is not None else model


def to_dtype(precision: torch.dtype | str) -> torch.dtype:
    """``fp32`` | ``bf16`` | ``fp16`` (or a ``torch.dtype``) → the ``torch.dtype``."""
    if isinstance(precision, torch.dtype):
        return precision
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    return PRECISIONS[precision]


def _load_model(path: str | Path, kind: str | tuple[str, ...] | None = None) -> nn.Module:
    path = resolve(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        config_path = path / CONFIG_FILE
        for marker, (module, loader, found) in DIRECTORY_LOADERS.items():
            if not config_path.is_file() and (path / marker).is_file():
                _check_kind(found, kind, path)
                return getattr(importlib.import_module(module), loader)(path)
        if not config_path.is_file():
            raise CheckpointError(f"{path}: no {CONFIG_FILE} in this directory; not a model export")
        try:
            meta = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None
        except OSError as e:
            raise CheckpointError(f"{config_path}: cannot read ({e.strerror or type(e).__name__})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{config_path}: expected a JSON object, got {_describe(meta)}")
        if "kind" not in meta and meta.get("model_type") == "gpt2":
            _check_kind("gpt", kind, path)
            return importlib.import_module(HF_GPT2_MODULE).load_hf_gpt2(path)
        if "kind" not in meta:
            raise CheckpointError(f"{config_path}: not a model export of this suite (no 'kind')")
        _check_meta(meta, config_path)
        _check_kind(meta["kind"], kind, path)
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{path}: {WEIGHTS_FILE} is missing")
        return build(meta, load_state_file(weights), path, directory=path)
    if path.suffix == ".safetensors":
        raise CheckpointError(
            f"{path}: a bare weights file; pass the export directory that holds it and its config.json"
        )
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    meta = ckpt.get(LIGHTNING_KEY)
    if not isinstance(meta, dict) or "kind" not in meta:
        raise CheckpointError(f"{path}: a Lightning checkpoint not written by this suite's modules")
    _check_meta(meta, path)
    _check_kind(meta["kind"], kind, path)
    prefix = meta.get("prefix", "model.")
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    files = meta.get("files") or {}
    if not files:
        return build(meta, state, path)
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise CheckpointError(f"{path}: its 'files' entry is not a mapping of names to base64 text")
    with tempfile.TemporaryDirectory() as tmp:  # the model reads what it needs from them while it is built
        for name, data in files.items():
            if Path(name).name != name or name.startswith("."):
                raise CheckpointError(f"{path}: extra file name {name!r} is not a plain file name")
            try:
                (Path(tmp) / name).write_bytes(base64.b64decode(data, validate=True))
            except ValueError:
                raise CheckpointError(f"{path}: extra file {name!r} is not valid base64") from None
        return build(meta, state, path, directory=Path(tmp))
