"""Shared helpers of the CLIP tests: tiny models, reduced open_clip configs, test images."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from PIL import Image

from clip.model import CLIP, CLIPConfig
from multimodal.checkpoint import save_export


def tiny_config(**overrides) -> CLIPConfig:
    """A CLIP small enough to train for a few steps in a test (32×32 images, CLIP's tokenizer)."""
    blocks = dict(width=32, layers=2, heads=2)
    if overrides.pop("quick_gelu", False):
        blocks["activation"] = "quick_gelu"
    kw = dict(
        embed_dim=32,
        vision=dict(image_size=32, patch_size=8, backbone=blocks),
        text=dict(context_length=32, backbone=blocks),
    )
    kw.update(overrides)
    return CLIPConfig(**kw)


def tiny_model(seed: int = 0, **overrides) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(tiny_config(**overrides)).eval()


def tiny_export(directory: Path, seed: int = 0) -> Path:
    return save_export(tiny_model(seed), directory)


def openclip_config(name: str, layers: int | None = None) -> dict:
    """open_clip's config of ``name``, optionally with ``layers`` blocks per tower (same widths/heads/patch)."""
    from clip.openclip import openclip_model_config

    cfg = copy.deepcopy(openclip_model_config(name))
    if layers is not None:
        cfg["vision_cfg"]["layers"] = layers
        cfg["text_cfg"]["layers"] = layers
    return cfg


def random_openclip(cfg: dict, seed: int = 0):
    """A randomly initialised ``open_clip.CLIP`` built from a config dict, as ``create_model`` builds it."""
    import open_clip

    torch.manual_seed(seed)
    cfg = {k: v for k, v in cfg.items() if k != "preprocess_cfg"}
    model = open_clip.CLIP(**cfg).eval()
    with torch.no_grad():  # open_clip leaves some vision weights at their init; perturb all for a real test
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def shape_image(size: int = 48, color=(220, 30, 30), box=(8, 12, 30, 40)) -> Image.Image:
    """An asymmetric picture (so a rotation changes it)."""
    im = Image.new("RGB", (size, size + 8), (20, 20, 20))
    im.paste(color, box)
    im.paste((30, 80, 230), (34, 2, 44, 10))
    return im
