"""Saving and loading models: our export format, Lightning checkpoints, and peers' directories.

Export format: a directory holding ``config.json`` (``{"kind": ..., "config": {...}, ...}``) and
``model.safetensors``. Anything read with ``torch.load`` goes through ``weights_only=True``: a pickle
that carries code is refused, never executed.

Every model class that can be exported registers itself with ``@register("kind")``; it has a dataclass
``config`` attribute and is built as ``Cls(config)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pickle
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

# The packaged demo models (trained on the shapes world, shipped inside the package), by name.
PACKAGED_DIR = Path(__file__).parent / "demo_models"
PACKAGED = {"clip": "clip", "dalle": "dalle", "judge": "judge", "gpt": "gpt"}
SHAPES_ONLY_NOTE = "note: the demo model knows only the synthetic shapes world (coloured shapes at named places)"
GPT_TASKS_NOTE = (
    "note: the packaged GPT knows only the synthetic GPT-3 tasks of data/tasks.py (prompts like "
    "'sky = ciel; dog = chien; sky =' or '12 + 35 =>', unscrambling, 'a vs b'), bytes, 128-token context; it "
    "reads made-up words from the prompt only weakly so far (README, GPT at CPU scale)"
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


def config_from_dict(cls: type, data: dict) -> Any:
    """Build ``cls.config_class`` from a dict, rejecting unknown fields with a clear message."""
    config_cls = cls.config_class
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(data) - names
    if unknown:
        raise CheckpointError(f"config has fields {sorted(unknown)} unknown to {config_cls.__name__}")
    kwargs = {}
    for f in dataclasses.fields(config_cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = f.type if isinstance(f.type, type) else None
        if isinstance(value, dict) and sub is not None and dataclasses.is_dataclass(sub):
            value = sub(**value)
        kwargs[f.name] = value
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid {config_cls.__name__}: {e}") from None


def payload(model: nn.Module, extra: dict | None = None) -> dict:
    """What ``config.json`` (and a Lightning checkpoint's ``multimodal`` key) holds for ``model``."""
    out = {"format_version": FORMAT_VERSION, "kind": model.kind, "config": config_to_dict(model.config)}
    out.update(extra or {})
    return out


def save_export(model: nn.Module, directory: str | Path, extra: dict | None = None) -> Path:
    """Write ``directory/config.json`` and ``directory/model.safetensors``; returns the directory.

    Files go to temporary names first so an interrupted save never leaves a half-written export
    over a good one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state = _untie(state)
    tmp_w, tmp_c = directory / (WEIGHTS_FILE + ".tmp"), directory / (CONFIG_FILE + ".tmp")
    save_file(state, str(tmp_w), metadata={"kind": model.kind})
    tmp_c.write_text(json.dumps(payload(model, extra), indent=2) + "\n")
    tmp_w.replace(directory / WEIGHTS_FILE)
    tmp_c.replace(directory / CONFIG_FILE)
    if hasattr(model, "save_extra_files"):
        model.save_extra_files(directory)
    return directory


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


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and one-line errors."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported object"
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled Python objects, not only weights "
            f"({first[:160]}); nothing was executed"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or damaged?): {msg[:200]}") from None


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


def _check_kind(found: str, kind: str | tuple[str, ...] | None, path: Path) -> None:
    wanted = (kind,) if isinstance(kind, str) else kind
    if wanted and found not in wanted:
        raise CheckpointError(f"{path}: this is a {found!r} checkpoint, expected {' or '.join(map(repr, wanted))}")


def build(meta: dict, state: dict[str, torch.Tensor], path: Path, directory: Path | None = None) -> nn.Module:
    """Instantiate the model ``meta`` describes and load ``state`` into it, strictly."""
    cls = model_class(meta.get("kind", "?"))
    config = config_from_dict(cls, meta.get("config", {}))
    model = cls(config)
    if directory is not None and hasattr(model, "load_extra_files"):
        model.load_extra_files(directory)
    missing, unexpected = _load_strict(model, state)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the {meta['kind']!r} config "
            f"(missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''})"
        )
    model.eval()
    return model


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        return missing, unexpected
    for k, v in own.items():
        if v.shape != state[k].shape:
            raise CheckpointError(f"shape mismatch for {k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return [], []


def load_model(path: str | Path, kind: str | tuple[str, ...] | None = None) -> nn.Module:
    """Load a model from our export directory, a Lightning ``.ckpt``, or a Hugging Face GPT-2 directory.

    Raises ``CheckpointError`` (one line) for a missing, damaged or wrong-kind checkpoint.
    """
    path = resolve(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise CheckpointError(f"{path}: no {CONFIG_FILE} in this directory; not a model export")
        try:
            meta = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None
        if "kind" not in meta and meta.get("model_type") == "gpt2":
            from multimodal.gpt.hf import load_hf_gpt2

            _check_kind("gpt", kind, path)
            return load_hf_gpt2(path)
        if "kind" not in meta:
            raise CheckpointError(f"{config_path}: not a model export of this suite (no 'kind')")
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
    _check_kind(meta["kind"], kind, path)
    prefix = meta.get("prefix", "model.")
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return build(meta, state, path)
