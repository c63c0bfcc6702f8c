"""The one load factory (``load``, behind ``multimodal.load``): any checkpoint of the suite or a peer's, by path
or by packaged name, to a model ready for inference; every failure one ``CheckpointError`` line.

Sources, in the order they are recognised:

- ``scheme:rest`` for a scheme a head registers (open_clip's ``local-dir:DIR``, say);
- a packaged demo model by name (``"clip"``), when no file or directory of that name holds a model;
- a bare weights file with ``arch=`` naming its architecture (open_clip weights + ``ViT-B-32``);
- our export directory (``config.json`` with ``"kind"`` + ``model.safetensors``);
- a peer's directory a head registers (a Hugging Face GPT-2 ``config.json``, open_clip's ``open_clip_config.json``);
- a Lightning ``.ckpt`` written by the suite's modules (read with ``weights_only=True``).

The jobs around it live in their own modules and are re-exported here under their old names:
``multimodal.registry`` (kinds and formats the heads register), ``multimodal.weights`` (export format, atomic
writes, ``torch.load`` diagnostics, precision), ``multimodal.config_check`` (field-by-field config checks),
``multimodal.packaged`` (the packaged models and their notes).
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimodal import registry
from multimodal.config_check import config_from_dict, config_to_dict, describe, fields_from_dict  # noqa: F401
from multimodal.errors import CheckpointError
from multimodal.packaged import (  # noqa: F401 - re-exported
    PACKAGED_DIR,
    SHAPES_ONLY_NOTE,
    packaged_model_path,
    packaged_note,
    packaged_path,
    resolve,
)
from multimodal.registry import model_class, register  # noqa: F401 - re-exported
from multimodal.weights import (  # noqa: F401 - re-exported
    CONFIG_FILE,
    FORMAT_VERSION,
    LIGHTNING_KEY,
    PRECISIONS,
    WEIGHTS_FILE,
    atomic_write,
    describe_mismatch,
    extra_files_of,
    load_state_file,
    payload,
    safe_torch_load,
    save_export,
    to_dtype,
)

Kinds = str | tuple[str, ...] | None
SCHEME = re.compile(r"^([A-Za-z][\w.+-]+):(.+)$")  # two letters at least: ``C:\models`` stays a path


def __getattr__(name: str) -> Any:
    # ``PACKAGED`` (name -> directory name) is whatever the heads registered, known only once they are imported
    if name == "PACKAGED":
        return {n: n for n in registry.packaged_names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(
    path_or_name: str | Path,
    kind: Kinds = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    arch: str | Path | dict | None = None,
) -> nn.Module:
    """Any model the suite reads, in ``eval()`` mode (see the module's docstring for the sources).

    ``kind``: the kind (or kinds) the caller wants; another is a one-line error naming both. ``device``: moved
    there (``None``: left on the CPU). ``dtype``: ``fp32`` | ``bf16`` | ``fp16`` or a ``torch.dtype``; the weights
    are kept in it. ``arch``: the architecture of a bare weights file (an open_clip model name or config).
    Raises ``CheckpointError`` (one line) for anything it cannot load."""
    precision = to_dtype(dtype) if dtype is not None else None  # an unknown precision: ValueError, before loading
    model = _load_any(path_or_name, kind, arch)
    try:
        if precision is not None:
            model = model.to(dtype=precision)
        if device is not None:
            model = model.to(device)
    except (RuntimeError, ValueError) as e:  # a device that does not exist, or has no room
        raise CheckpointError(f"{path_or_name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return model.eval()


def load_model(path: str | Path, kind: Kinds = None, dtype: torch.dtype | str | None = None) -> nn.Module:
    """``load`` on the CPU (its old name, kept for the training code and the tools)."""
    return load(path, kind, dtype=dtype)


def _check_kind(found: str, kind: Kinds, path: Path | str) -> None:
    wanted = (kind,) if isinstance(kind, str) else kind
    if wanted and found not in wanted:
        raise CheckpointError(f"{path}: this is a {found!r} checkpoint, expected {' or '.join(map(repr, wanted))}")


def _load_any(source: str | Path, kind: Kinds, arch: Any) -> nn.Module:
    if arch is not None:
        return _load_bare_weights(Path(source), kind, arch)
    text = str(source)
    match = SCHEME.match(text)
    if match and not Path(text).exists():
        found = registry.scheme(match.group(1))
        if found is not None:
            _check_kind(found.kind, kind, text)
            return registry.resolve_loader(found.loader)(match.group(2))
    path = resolve(source)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        return _load_directory(path, kind)
    weights = _weights_format_of(path, kind)
    if weights is not None:
        raise CheckpointError(f"{path}: {weights.hint}")
    if path.suffix == ".safetensors":
        raise CheckpointError(
            f"{path}: a bare weights file; pass the export directory that holds it and its config.json"
        )
    return _load_lightning(path, kind)


def _weights_format_of(path: Path, kind: Kinds) -> registry.WeightsFormat | None:
    """The bare-weights format a file given without ``arch`` would need, when the caller asked for that kind."""
    if not isinstance(kind, str):
        return None
    found = registry.weights_format(kind)
    return found if found is not None and path.suffix in found.suffixes else None


def _load_bare_weights(path: Path, kind: Kinds, arch: Any) -> nn.Module:
    wanted = kind if isinstance(kind, str) or kind is None else (kind[0] if len(kind) == 1 else None)
    found = registry.weights_format(wanted)
    if found is None:
        raise CheckpointError(
            f"{path}: no head reads bare weights with an architecture name"
            + (f" for kind {wanted!r}" if wanted else "; say which kind")
        )
    _check_kind(found.kind, kind, path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    return registry.resolve_loader(found.loader)(arch, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None


def _load_directory(path: Path, kind: Kinds) -> nn.Module:
    config_path = path / CONFIG_FILE
    meta = _read_json(config_path) if config_path.is_file() else None
    if meta is not None and not isinstance(meta, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, got {describe(meta)}")
    if meta is None or "kind" not in meta:
        for fmt in registry.directory_formats():
            if (path / fmt.marker).is_file() and _accepts(fmt, path, meta):
                _check_kind(fmt.kind, kind, path)
                return registry.resolve_loader(fmt.loader)(path)
        if meta is None:
            raise CheckpointError(f"{path}: no {CONFIG_FILE} in this directory; not a model export")
        raise CheckpointError(f"{config_path}: not a model export of this suite (no 'kind')")
    _check_meta(meta, config_path)
    _check_kind(meta["kind"], kind, path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} is missing")
    return build(meta, load_state_file(weights), path, directory=path)


def _accepts(fmt: registry.DirectoryFormat, path: Path, meta: dict | None) -> bool:
    if fmt.accepts is None:
        return True
    data = meta if fmt.marker == CONFIG_FILE else _read_json(path / fmt.marker)
    return isinstance(data, dict) and fmt.accepts(data)


def _check_meta(meta: dict, where: Path) -> None:
    """``kind`` a string, ``config`` an object: what ``build`` reads (its fields are checked there)."""
    if not isinstance(meta.get("kind"), str):
        raise CheckpointError(f"{where}: 'kind' must be a string naming the model, got {describe(meta.get('kind'))}")
    if not isinstance(meta.get("config", {}), dict):
        raise CheckpointError(
            f"{where}: 'config' must be an object with the model's settings, got {describe(meta['config'])}"
        )


def _load_lightning(path: Path, kind: Kinds) -> nn.Module:
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


def build(meta: dict, state: dict[str, torch.Tensor], path: Path, directory: Path | None = None) -> nn.Module:
    """Instantiate the model ``meta`` describes and load ``state`` into it, strictly.

    The config is checked field by field, then the model is first built on the meta device (no memory) and
    its parameter names and shapes compared with ``state``: a config that does not match its weights (or asks
    for a model far larger than they are) is a one-line error before anything is allocated."""
    kind = meta.get("kind")
    try:
        cls = model_class(kind)
        config = config_from_dict(cls, meta.get("config", {}))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if registry.built_on_meta(kind) and not _reads_files(cls):
        return _build_on_meta(cls, config, state, path, kind)
    try:
        with torch.device("meta"):
            mismatch = describe_mismatch(cls(config).state_dict(), state)
        if mismatch:
            raise CheckpointError(f"{path}: weights do not match the {kind!r} config ({mismatch})")
        model = cls(config)
    except (TypeError, ValueError, RuntimeError, KeyError, AssertionError, ZeroDivisionError) as e:
        raise CheckpointError(f"{path}: cannot build the {kind!r} model from its config: {_first_line(e)}") from None
    if directory is not None and _reads_files(cls):
        model.load_extra_files(directory)
    mismatch = describe_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{path}: weights do not match the {kind!r} config ({mismatch})")
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    model.eval()
    return model


def _reads_files(cls: type) -> bool:
    return hasattr(cls, "load_extra_files")


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def _build_on_meta(cls: type, config: Any, state: dict[str, torch.Tensor], path: Path, kind: str) -> nn.Module:
    """The model built on the meta device and ``state`` assigned to it: no random init of weights that are
    replaced at once (seconds for a large CLIP)."""
    try:
        with torch.device("meta"):
            model = cls(config)
        mismatch = describe_mismatch(model.state_dict(), state)
        if mismatch:
            raise CheckpointError(f"{path}: weights do not match the {kind!r} config ({mismatch})")
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True, assign=True)
    except (TypeError, ValueError, RuntimeError, KeyError, AssertionError, ZeroDivisionError) as e:
        raise CheckpointError(f"{path}: cannot build the {kind!r} model from its config: {_first_line(e)}") from None
    return model.eval()
