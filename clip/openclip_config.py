"""open_clip's model configs ↔ our ``CLIPConfig``: named configs read straight from open_clip's files (its package
import costs seconds), json files (an open_clip model config or the hub's ``open_clip_config.json``), every field we
read checked with one line naming it, and what open_clip cannot express refused."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip.model import CLIPConfig, TextConfig, VisionConfig
from multimodal.checkpoint import CheckpointError
from multimodal.config_check import describe, fields_from_dict
from multimodal.images import OPENAI_MEAN, OPENAI_STD
from multimodal.tokenizers import openclip_dir
from multimodal.transformer import TransformerConfig

# open_clip config fields we read (everything else must be absent or at its default).
_TOWER_DEFAULTS = {  # fields both towers share
    "ls_init_value": None,
    "output_tokens": False,
    "act_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
_VISION_DEFAULTS = {
    **_TOWER_DEFAULTS,
    "patch_dropout": 0.0,
    "attentional_pool": False,
    "pos_embed_type": "learnable",
    "timm_model_name": None,
}
_TEXT_DEFAULTS = {
    **_TOWER_DEFAULTS,
    "hf_tokenizer_name": None,
    "tokenizer_mode": None,
    "tokenizer_kwargs": None,
    "embed_cls": False,
    "pad_id": 0,
    "proj_type": "linear",
    "hf_model_name": None,
}


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
        if isinstance(cfg, dict) and "model_cfg" in cfg:  # the hub's open_clip_config.json
            if not isinstance(cfg["model_cfg"], dict):
                raise CheckpointError(f"{path}: model_cfg: expected an object, got {describe(cfg['model_cfg'])}")
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


# -- the fields of an open_clip config we read, with their types (open_clip's defaults); others are left alone --
@dataclass
class _NormFields:
    extra_fields_allowed = True
    eps: float = 1e-5


@dataclass
class _VisionFields:
    extra_fields_allowed = True
    image_size: int | list[int] = 224
    patch_size: int | list[int] = 16
    width: int = 768
    layers: int | list[int] = 12  # a list: a ResNet, refused below
    head_width: int = 64
    mlp_ratio: float = 4.0
    pool_type: str = "tok"
    final_ln_after_pool: bool = False
    no_ln_pre: bool = False
    norm_kwargs: _NormFields | None = None


@dataclass
class _TextFields:
    extra_fields_allowed = True
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    pool_type: str = "argmax"
    eos_id: int = 49407
    no_causal_mask: bool = False
    proj_bias: bool = False
    final_ln_after_pool: bool = False
    norm_kwargs: _NormFields | None = None


@dataclass
class _PreprocessFields:
    extra_fields_allowed = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


@dataclass
class _ModelFields:
    extra_fields_allowed = True
    vision_cfg: _VisionFields
    text_cfg: _TextFields
    embed_dim: int = 512
    quick_gelu: bool = False
    preprocess_cfg: _PreprocessFields | None = None


def _first(value: int | list[int], name: str) -> int:
    """open_clip's ``image_size`` / ``patch_size``: a number or a square pair."""
    if isinstance(value, int):
        return value
    if not value or len(set(value)) != 1:
        raise CheckpointError(f"vision_cfg.{name}: non-square {value} is not supported")
    return value[0]


def config_from_openclip(cfg: dict, quick_gelu: bool | None = None, preprocess: dict | None = None) -> CLIPConfig:
    """``CLIPConfig`` from an open_clip model config dict, checked field by field (one line naming the field:
    ``vision_cfg.width: expected int, got a string "wide"``).

    ``quick_gelu`` overrides the config's flag only when the weights' source says so (the ``openai`` tag).
    """
    if not isinstance(cfg, dict):
        raise CheckpointError("not an open_clip model config (expected an object with vision_cfg and text_cfg)")
    text_cfg = cfg.get("text_cfg")
    if cfg.get("custom_text") and isinstance(text_cfg, dict) and text_cfg.get("hf_model_name"):
        raise CheckpointError("open_clip configs with a Hugging Face text tower are not supported")
    if cfg.get("init_logit_bias") is not None:
        raise CheckpointError("open_clip configs with a logit bias (SigLIP) are not supported")
    fields = fields_from_dict(_ModelFields, {k: v for k, v in cfg.items() if k in _MODEL_KEYS})
    _check_defaults(cfg["vision_cfg"], _VISION_DEFAULTS, "vision_cfg")
    _check_defaults(cfg["text_cfg"], _TEXT_DEFAULTS, "text_cfg")
    v, t = fields.vision_cfg, fields.text_cfg
    if isinstance(v.layers, list):
        raise CheckpointError("ResNet image towers are not supported (ViT only)")
    given = fields_from_dict(_PreprocessFields, preprocess, "preprocess_cfg") if preprocess else None
    pre = given or fields.preprocess_cfg or _PreprocessFields()
    eps = {(n or _NormFields()).eps for n in (v.norm_kwargs, t.norm_kwargs)}
    if len(eps) != 1:
        raise CheckpointError("different LayerNorm eps in the two towers is not supported")
    quick = fields.quick_gelu if quick_gelu is None else quick_gelu
    blocks = {"activation": "quick_gelu" if quick else "gelu", "norm_eps": eps.pop()}
    try:
        vision = VisionConfig(
            image_size=_first(v.image_size, "image_size"),
            patch_size=_first(v.patch_size, "patch_size"),
            backbone=TransformerConfig(
                width=v.width, layers=v.layers, heads=v.width // v.head_width, mlp_ratio=v.mlp_ratio, **blocks
            ),
            pool_type=v.pool_type,
            final_ln_after_pool=v.final_ln_after_pool,
            no_ln_pre=v.no_ln_pre,
            image_mean=tuple(pre.mean if pre.mean is not None else OPENAI_MEAN),
            image_std=tuple(pre.std if pre.std is not None else OPENAI_STD),
            interpolation=pre.interpolation,
            resize_mode=pre.resize_mode,
        )
        # t.final_ln_after_pool needs nothing: LayerNorm is per token, pooling before or after it is the same
        text = TextConfig(
            context_length=t.context_length,
            vocab_size=t.vocab_size,
            backbone=TransformerConfig(width=t.width, heads=t.heads, layers=t.layers, mlp_ratio=t.mlp_ratio, **blocks),
            pool_type=t.pool_type,
            eos_id=t.eos_id if t.pool_type == "eos" else 49407,
            causal=not t.no_causal_mask,
            proj_bias=t.proj_bias,
            tokenizer="clip",
        )
        config = CLIPConfig(embed_dim=fields.embed_dim, vision=vision, text=text)
    except (ValueError, TypeError, ZeroDivisionError, AssertionError) as e:
        raise CheckpointError(
            f"not a valid open_clip config: {(str(e).splitlines() or [type(e).__name__])[0]}"
        ) from None
    if text.vocab_size != 49408:
        raise CheckpointError(f"text vocab_size {text.vocab_size}: only CLIP's BPE tokenizer (49408) is supported")
    return config


_MODEL_KEYS = {f.name for f in dataclasses.fields(_ModelFields)}


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
