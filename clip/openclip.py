"""Import and export open_clip / OpenAI CLIP weights (ViT towers) to and from ``clip.model.CLIP``.

Any ViT-based open_clip model config works, named (``ViT-B-32``, ``ViT-B-32-quickgelu``, ``ViT-B-16``,
``ViT-L-14`` …) or as a json file (an open_clip model config, or the ``open_clip_config.json`` the hub
ships), with a local weights file: a plain state dict (``.pt``, ``.bin``, ``.safetensors``) or a training
checkpoint ``{"state_dict": {"module.…"}}``. Keys are mapped one-to-one and every shape is checked.
GELU vs QuickGELU comes from the config (``"quick_gelu": true``, names ending in ``-quickgelu``, or the
``openai`` pretrained tag), never from the weights.

    python -m clip.openclip import --model ViT-B-32 --weights open_clip_pytorch_model.bin --out runs/vit-b-32
    python -m clip.openclip export --checkpoint runs/vit-b-32 --out exported/   # open_clip's local-dir: layout

An exported directory (``open_clip_config.json`` with ``model_cfg`` + ``preprocess_cfg``, and
``open_clip_model.safetensors``) loads with ``open_clip.create_model_and_transforms("local-dir:exported")``, and
back with ``multimodal.load("exported")`` or any ``--checkpoint``.

Reading open_clip's package costs seconds of imports (it pulls in transformers); the tokenizer, the
templates and the model configs are read straight from its files instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clip.model import CLIP, CLIPConfig, TextConfig, VisionConfig, imagenet_templates  # noqa: F401 - re-exported
from multimodal.checkpoint import (
    CheckpointError,
    load_model,
    load_state_file,
    packaged_model_path,
    resolve,
    save_export,
)
from multimodal.cli import check_writable, fail
from multimodal.images import OPENAI_MEAN, OPENAI_STD
from multimodal.tokenizers import openclip_dir
from multimodal.transformer import TransformerConfig

# open_clip config fields we read (everything else must be absent or at its default).
_VISION_DEFAULTS = {
    "ls_init_value": None,
    "patch_dropout": 0.0,
    "attentional_pool": False,
    "pos_embed_type": "learnable",
    "output_tokens": False,
    "act_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "timm_model_name": None,
}
_TEXT_DEFAULTS = {
    "hf_tokenizer_name": None,
    "tokenizer_mode": None,
    "tokenizer_kwargs": None,
    "ls_init_value": None,
    "embed_cls": False,
    "pad_id": 0,
    "proj_type": "linear",
    "output_tokens": False,
    "act_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "hf_model_name": None,
}
# Keys that OpenAI's original state dicts carry besides weights.
_IGNORED_KEYS = {"input_resolution", "context_length", "vocab_size", "attn_mask", "visual.attn_mask"}


# -- open_clip's files without its package import ------------------------------------------------
def _openclip_dir() -> Path:
    try:
        return openclip_dir()
    except ImportError as e:
        raise CheckpointError(str(e)) from None


# -- configs ------------------------------------------------------------------------------------
def known_model_names() -> list[str]:
    return sorted(p.stem for p in (_openclip_dir() / "model_configs").glob("ViT-*.json"))


def openclip_model_config(name_or_path: str | Path) -> dict:
    """An open_clip model config dict from a name (``ViT-B-32``) or a json file."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise CheckpointError(f"{path}: no such config file")
        try:
            cfg = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        if "model_cfg" in cfg:  # the hub's open_clip_config.json
            out = dict(cfg["model_cfg"])
            if "preprocess_cfg" in cfg:
                out["preprocess_cfg"] = cfg["preprocess_cfg"]
            cfg = out
        if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
            raise CheckpointError(f"{path}: not an open_clip model config (needs vision_cfg and text_cfg)")
        return cfg
    name = str(name_or_path)
    file = _openclip_dir() / "model_configs" / f"{name}.json"
    if not file.is_file():
        close = [n for n in known_model_names() if n.lower().startswith(name.lower().split("-quickgelu")[0][:5])]
        raise CheckpointError(
            f"unknown open_clip model {name!r} (ViT models: {', '.join(close or known_model_names())})"
        )
    return json.loads(file.read_text())


def _check_defaults(part: dict, defaults: dict, where: str) -> None:
    for k, default in defaults.items():
        if k in part and part[k] != default and not (default is None and part[k] in ({}, None)):
            raise CheckpointError(f"open_clip {where}.{k}={part[k]!r} is not supported by this CLIP (ViT towers only)")


def config_from_openclip(cfg: dict, quick_gelu: bool | None = None, preprocess: dict | None = None) -> CLIPConfig:
    """``CLIPConfig`` from an open_clip model config dict.

    ``quick_gelu`` overrides the config's flag only when the weights' source says so (the ``openai`` tag).
    """
    if cfg.get("custom_text") and cfg["text_cfg"].get("hf_model_name"):
        raise CheckpointError("open_clip configs with a Hugging Face text tower are not supported")
    if cfg.get("init_logit_bias") is not None:
        raise CheckpointError("open_clip configs with a logit bias (SigLIP) are not supported")
    v, t = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
    _check_defaults(v, _VISION_DEFAULTS, "vision_cfg")
    _check_defaults(t, _TEXT_DEFAULTS, "text_cfg")
    if isinstance(v.get("layers", 12), (list, tuple)):
        raise CheckpointError("ResNet image towers are not supported (ViT only)")
    image_size = v.get("image_size", 224)
    patch = v.get("patch_size", 16)
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise CheckpointError(f"non-square image_size {image_size} is not supported")
        image_size = image_size[0]
    if isinstance(patch, (list, tuple)):
        patch = patch[0]
    eps = {(v.get("norm_kwargs") or {}).get("eps", 1e-5), (t.get("norm_kwargs") or {}).get("eps", 1e-5)}
    if len(eps) != 1:
        raise CheckpointError("different LayerNorm eps in the two towers is not supported")
    preprocess = preprocess or cfg.get("preprocess_cfg") or {}
    quick = bool(cfg.get("quick_gelu", False)) if quick_gelu is None else quick_gelu
    blocks = {"activation": "quick_gelu" if quick else "gelu", "norm_eps": eps.pop()}
    width = v.get("width", 768)
    vision = VisionConfig(
        image_size=image_size,
        patch_size=patch,
        backbone=TransformerConfig(
            width=width,
            layers=v.get("layers", 12),
            heads=width // v.get("head_width", 64),
            mlp_ratio=v.get("mlp_ratio", 4.0),
            **blocks,
        ),
        pool_type=v.get("pool_type", "tok"),
        final_ln_after_pool=v.get("final_ln_after_pool", False),
        no_ln_pre=v.get("no_ln_pre", False),
        image_mean=tuple(preprocess.get("mean", OPENAI_MEAN)),
        image_std=tuple(preprocess.get("std", OPENAI_STD)),
        interpolation=preprocess.get("interpolation", "bicubic"),
        resize_mode=preprocess.get("resize_mode", "shortest"),
    )
    if t.get("final_ln_after_pool"):
        pass  # LayerNorm is per token: pooling before or after it is the same
    text = TextConfig(
        context_length=t.get("context_length", 77),
        vocab_size=t.get("vocab_size", 49408),
        backbone=TransformerConfig(
            width=t.get("width", 512),
            heads=t.get("heads", 8),
            layers=t.get("layers", 12),
            mlp_ratio=t.get("mlp_ratio", 4.0),
            **blocks,
        ),
        pool_type=t.get("pool_type", "argmax"),
        eos_id=t.get("eos_id", 49407) if t.get("pool_type") == "eos" else 49407,
        causal=not t.get("no_causal_mask", False),
        proj_bias=t.get("proj_bias", False),
        tokenizer="clip",
    )
    if text.vocab_size != 49408:
        raise CheckpointError(f"text vocab_size {text.vocab_size}: only CLIP's BPE tokenizer (49408) is supported")
    return CLIPConfig(embed_dim=cfg.get("embed_dim", 512), vision=vision, text=text)


def config_to_openclip(config: CLIPConfig) -> dict:
    """The open_clip model config dict of ``config`` (for ``open_clip.create_model(..., **cfg)`` or a json)."""
    v, t = config.vision, config.text
    vb, tb = v.backbone, t.backbone
    for f in ("activation", "norm_eps"):
        if getattr(vb, f) != getattr(tb, f):
            raise CheckpointError(f"backbone.{f} differs between the towers; open_clip sets it once for both")
    if vb.activation not in ("gelu", "quick_gelu"):
        raise CheckpointError(f"backbone.activation {vb.activation!r}: open_clip towers use gelu or quick_gelu")
    if not (vb.bias and tb.bias):
        raise CheckpointError("backbone.bias=False: open_clip's towers always have biases")
    if config.text.tokenizer != "clip":
        raise CheckpointError(f"open_clip models use CLIP's BPE tokenizer; this one uses {t.tokenizer!r}")
    out: dict[str, Any] = {
        "embed_dim": config.embed_dim,
        "quick_gelu": config.quick_gelu,
        "vision_cfg": {
            "image_size": v.image_size,
            "layers": vb.layers,
            "width": vb.width,
            "head_width": vb.width // vb.heads,
            "mlp_ratio": vb.mlp_ratio,
            "patch_size": v.patch_size,
            "pool_type": v.pool_type,
            "final_ln_after_pool": v.final_ln_after_pool,
            "no_ln_pre": v.no_ln_pre,
        },
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": t.vocab_size,
            "width": tb.width,
            "heads": tb.heads,
            "layers": tb.layers,
            "mlp_ratio": tb.mlp_ratio,
            "pool_type": t.pool_type,
            "no_causal_mask": not t.causal,
            "proj_bias": t.proj_bias,
        },
        "preprocess_cfg": {
            "mean": list(v.image_mean),
            "std": list(v.image_std),
            "interpolation": v.interpolation,
            "resize_mode": v.resize_mode,
        },
    }
    if t.pool_type == "eos":
        out["text_cfg"]["eos_id"] = t.eos_id
    if vb.norm_eps != 1e-5:
        out["vision_cfg"]["norm_kwargs"] = out["text_cfg"]["norm_kwargs"] = {"eps": vb.norm_eps}
    return out


# -- state dicts --------------------------------------------------------------------------------
_BLOCK_RENAMES = [
    ("attn.in_proj_weight", "attn.qkv.weight"),
    ("attn.in_proj_bias", "attn.qkv.bias"),
    ("attn.out_proj.", "attn.proj."),
    ("mlp.c_fc.", "mlp.fc."),
    ("mlp.c_proj.", "mlp.proj."),
]
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def _ours(key: str) -> str | None:
    """open_clip key → our key (None for keys we do not know)."""
    if key.startswith("text."):
        key = key[len("text.") :]  # CustomTextCLIP keeps the text tower under ``text.``
    m = _BLOCK.match(key)
    if m:
        rest = m.group(3)
        for a, b in _BLOCK_RENAMES:
            if rest.startswith(a):
                rest = b + rest[len(a) :]
        return f"{'visual' if m.group(1) else 'text'}.transformer.blocks.{m.group(2)}.{rest}"
    if key.startswith("visual."):
        return key
    simple = {
        "token_embedding.weight": "text.token_embedding.weight",
        "positional_embedding": "text.positional_embedding",
        "ln_final.weight": "text.ln_final.weight",
        "ln_final.bias": "text.ln_final.bias",
        "text_projection": "text.text_projection",
        "text_projection.weight": "text.text_projection",  # proj_bias configs use nn.Linear ([E, W])
        "text_projection.bias": "text.text_projection_bias",
        "logit_scale": "logit_scale",
    }
    return simple.get(key)


def unwrap_state_dict(obj: Any, path: str | Path = "weights") -> dict[str, Tensor]:
    """A flat state dict from a plain one or an open_clip training checkpoint (``state_dict``, ``module.``)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DDP
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def convert_openclip_state_dict(state: dict[str, Tensor], config: CLIPConfig, path: str | Path = "weights") -> dict:
    """open_clip state dict → ours, every key accounted for and every shape checked."""
    with torch.device("meta"):  # shapes only
        reference = CLIP(config)
    own = reference.state_dict()
    out: dict[str, Tensor] = {}
    unknown = []
    for k, v in state.items():
        if k in _IGNORED_KEYS:
            continue
        ours = _ours(k)
        if ours is None or ours not in own:
            unknown.append(k)
            continue
        if k == "text_projection.weight":
            v = v.t()
        if tuple(v.shape) != tuple(own[ours].shape):
            raise CheckpointError(
                f"{path}: {k} has shape {tuple(v.shape)}, the config needs {tuple(own[ours].shape)} "
                f"(wrong --model for these weights?)"
            )
        out[ours] = v
    missing = [k for k in own if k not in out]
    if unknown or missing:
        raise CheckpointError(
            f"{path}: weights do not match the config (unexpected {unknown[:3]}{'…' if len(unknown) > 3 else ''}, "
            f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}; wrong --model?)"
        )
    return out


def to_openclip_state_dict(model: CLIP) -> dict[str, Tensor]:
    """Our state dict → open_clip's key names and layouts (loads into ``open_clip.create_model``)."""
    inverse = [(b, a) for a, b in _BLOCK_RENAMES]
    out = {}
    for k, v in model.state_dict().items():
        m = re.match(r"^(visual|text)\.transformer\.blocks\.(\d+)\.(.+)$", k)
        if m:
            rest = m.group(3)
            for a, b in inverse:
                if rest.startswith(a):
                    rest = b + rest[len(a) :]
            key = f"{'visual.' if m.group(1) == 'visual' else ''}transformer.resblocks.{m.group(2)}.{rest}"
        elif k.startswith("visual.") or k == "logit_scale":
            key = k
        elif k == "text.text_projection" and model.config.text.proj_bias:
            key, v = "text_projection.weight", v.t()
        elif k == "text.text_projection_bias":
            key = "text_projection.bias"
        else:
            key = k[len("text.") :]
        out[key] = v.detach().contiguous()
    return out


DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"


# -- loading any CLIP the CLIs take ----------------------------------------------------------------
def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers, asked through ``huggingface_hub`` so its endpoint (``HF_ENDPOINT``,
    mirrors), proxies and offline switches (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``) apply."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")  # also when set after import
    if constants.HF_HUB_OFFLINE or (offline or "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - offline, DNS, proxy and TLS failures come in many types
        return False


def _pretrained_file(name: str, tag: str) -> tuple[str, dict]:
    """The local weights file of open_clip's pretrained ``name``/``tag`` (downloaded once if online)."""
    try:
        from open_clip import pretrained as P  # noqa: N812
    except ImportError:
        raise CheckpointError("open_clip is not installed (pip install open_clip_torch)") from None
    cfg = P.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = P.list_pretrained_tags_by_model(name)
        raise CheckpointError(
            f"no pretrained {name!r} weights tagged {tag!r} (known tags: {', '.join(tags) or 'none'})"
        )
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        for fn in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
            cached = try_to_load_from_cache(repo, fn)
            if isinstance(cached, str):
                return cached, cfg
    if not _hub_reachable():
        raise CheckpointError(
            f"{name} {tag} weights are not cached and this machine is offline; use --checkpoint DIR (an export "
            f"of this suite, e.g. --model shapes), or --model NAME --checkpoint open_clip_weights.bin"
        )
    try:
        return P.download_pretrained(cfg), cfg
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise CheckpointError(f"could not download {name} {tag}: {str(e).splitlines()[0][:200]}") from None


def load_clip(checkpoint: str | Path | None = None, model: str | None = None, pretrained: str | None = None) -> CLIP:
    """Our ``CLIP`` from the CLIs' model flags: ``checkpoint`` an export directory, a Lightning ``.ckpt``, the
    packaged ``"clip"``, or (with ``model``, an open_clip config name) an open_clip weights file; neither:
    open_clip's pretrained ``model`` / ``pretrained`` (downloaded once). ``model="shapes"``: the packaged demo."""
    if model == "shapes" and checkpoint is None:
        checkpoint, model = packaged_model_path("clip"), None
    if checkpoint is not None:
        path = Path(checkpoint) if model is not None else resolve(checkpoint)
        if not path.exists():
            raise CheckpointError(f"{path}: no such file or directory")
        if model is not None:  # an open_clip weights file for the named config
            return load_openclip(model, path)
        if path.is_file() and path.suffix in (".bin", ".pt", ".pth", ".safetensors"):
            raise CheckpointError(f"{path}: open_clip weights need --model NAME (e.g. --model ViT-B-32)")
        return _load_fast(path) if path.is_dir() else load_model(path, "clip")
    name, tag = model or DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED
    file, cfg = _pretrained_file(name, tag)
    quick_gelu = True if (cfg.get("quick_gelu") or tag == "openai") else None
    return load_openclip(name, file, quick_gelu=quick_gelu, preprocess=cfg)


def _load_fast(path: Path):
    """Our export directory without a random init (the weights are assigned onto a meta-device model)."""
    from multimodal.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    if not (path / CONFIG_FILE).is_file() and (path / OPENCLIP_CONFIG_FILE).is_file():
        return load_openclip_dir(path)
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return load_model(path, "clip")  # lets checkpoint.py word the error
    if not isinstance(meta, dict) or meta.get("kind") != "clip" or not (path / WEIGHTS_FILE).is_file():
        return load_model(path, "clip")
    from multimodal.checkpoint import config_from_dict, describe_mismatch

    if not isinstance(meta.get("config", {}), dict):
        return load_model(path, "clip")  # lets checkpoint.py word the error
    try:
        config = config_from_dict(CLIP, meta.get("config", {}))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    state = load_state_file(path / WEIGHTS_FILE)
    try:
        with torch.device("meta"):
            mismatch = describe_mismatch(CLIP(config).state_dict(), state)
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot build the 'clip' model from its config: {str(e)[:160]}") from None
    if mismatch:
        raise CheckpointError(f"{path}: weights do not match its config ({mismatch})")
    try:
        return build_from_state(config, state)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: weights do not match its config ({str(e).splitlines()[0][:160]})") from None


# -- loading ------------------------------------------------------------------------------------
def build_from_state(config: CLIPConfig, state: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> CLIP:
    """Build ``CLIP(config)`` without a random init (meta device) and assign ``state`` (our key names)."""
    with torch.device("meta"):
        model = CLIP(config)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model.eval()
    return model


def read_weights(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory; pass the weights file (open_clip_pytorch_model.bin, .safetensors)")
    try:
        state = load_state_file(path)
    except CheckpointError as e:
        if "pickled Python objects" in str(e):
            raise CheckpointError(
                f"{path}: not a plain state dict (OpenAI's TorchScript archives are not read; "
                f"use open_clip's .bin/.safetensors weights)"
            ) from None
        raise
    return unwrap_state_dict(state, path)


def load_openclip(
    model: str | Path | dict,
    weights: str | Path,
    quick_gelu: bool | None = None,
    preprocess: dict | None = None,
) -> CLIP:
    """Our ``CLIP`` from an open_clip config (name, json path or dict) and a local weights file."""
    cfg = model if isinstance(model, dict) else openclip_model_config(model)
    config = config_from_openclip(cfg, quick_gelu, preprocess)
    state = convert_openclip_state_dict(read_weights(weights), config, weights)
    return build_from_state(config, state)


OPENCLIP_CONFIG_FILE = "open_clip_config.json"
OPENCLIP_WEIGHTS_FILE = "open_clip_model.safetensors"
# the weights open_clip's local-dir: loader looks for, in its order of preference
_OPENCLIP_WEIGHTS = (
    OPENCLIP_WEIGHTS_FILE,
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)


def export_openclip(model: CLIP, directory: str | Path) -> Path:
    """Our ``CLIP`` → open_clip's ``local-dir:`` layout: ``open_clip_config.json`` (``model_cfg`` and
    ``preprocess_cfg``: mean, std, interpolation, resize_mode) and ``open_clip_model.safetensors``.

    ``open_clip.create_model_and_transforms("local-dir:" + directory)`` loads it. What open_clip cannot express
    (another model kind, a tokenizer other than CLIP's BPE) is refused with a one-line ``CheckpointError``."""
    from safetensors.torch import save_file

    if getattr(model, "kind", None) != "clip":
        raise CheckpointError(f"a {getattr(model, 'kind', type(model).__name__)!r} model is not a CLIP")
    model_cfg = config_to_openclip(model.config)
    preprocess_cfg = model_cfg.pop("preprocess_cfg")
    directory = Path(directory)
    if directory.is_file():
        raise CheckpointError(f"{directory}: a file; the export is a directory (open_clip's local-dir: layout)")
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.float().contiguous().cpu() for k, v in to_openclip_state_dict(model).items()}
    save_file(state, str(directory / OPENCLIP_WEIGHTS_FILE), metadata={"format": "pt"})
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (directory / OPENCLIP_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_openclip_dir(directory: str | Path) -> CLIP:
    """Our ``CLIP`` from an open_clip ``local-dir:`` directory (``open_clip_config.json`` + weights)."""
    directory = Path(directory)
    weights = next((directory / n for n in _OPENCLIP_WEIGHTS if (directory / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{directory}: {OPENCLIP_CONFIG_FILE} but no weights ({OPENCLIP_WEIGHTS_FILE})")
    return load_openclip(directory / OPENCLIP_CONFIG_FILE, weights)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clip.openclip", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="open_clip weights → our export directory")
    imp.add_argument("--model", required=True, help="open_clip model name (ViT-B-32, ...) or config json")
    imp.add_argument("--weights", required=True, help="local .bin/.pt/.safetensors (plain or training checkpoint)")
    imp.add_argument("--out", required=True, help="export directory to write (config.json + model.safetensors)")
    imp.add_argument("--quick-gelu", action="store_true", help="weights trained with QuickGELU (OpenAI's own)")
    exp = sub.add_parser("export", help="our checkpoint → open_clip's local-dir: layout (same as multimodal.export)")
    exp.add_argument("--checkpoint", required=True, help="our export directory or Lightning .ckpt")
    exp.add_argument("--out", required=True, help="directory to write (open_clip_config.json + weights)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "import":
            out = Path(args.out)
            if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
                raise CheckpointError(f"{out}: exists and is not a model export; refusing to write into it")
            model = load_openclip(args.model, args.weights, quick_gelu=True if args.quick_gelu else None)
            save_export(model, out, {"source": f"open_clip {args.model}"})
            print(f"wrote {out} ({model.num_params() / 1e6:.1f}M parameters)")
        else:
            if Path(args.out).is_dir():
                raise CheckpointError(f"--out {args.out}: a directory; give the weights file to write")
            check_writable(args.out)
            model = load_model(args.checkpoint, "clip")
            out = export_openclip(model, args.out)
            print(f"wrote {out} (open_clip.create_model_and_transforms('local-dir:{out}'))")
    except (CheckpointError, OSError, ValueError) as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
