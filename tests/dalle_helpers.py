"""Tiny DALL·E models (with a tiny dVAE) and files for the DALL·E tests; built on the fly, no downloads."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from dalle.model import DALLE, DALLEConfig
from dalle.vae import DiscreteVAE, VAEConfig
from multimodal.checkpoint import save_export
from multimodal.transformer import BACKBONE_FIELDS

# 16x16 images -> 4x4 grid of 16 codes
TINY_VAE = dict(image_size=16, codebook_size=16, downsample=4, hidden=8, blocks_per_group=1, init_channels=8)


def tiny_vae(seed: int = 0) -> DiscreteVAE:
    torch.manual_seed(seed)
    return DiscreteVAE(VAEConfig(**TINY_VAE)).eval()


def tiny_config(**overrides) -> DALLEConfig:
    """A small DALL·E config; backbone fields (``layers=2``) may be given beside the head's own."""
    backbone = {"width": 32, "layers": 4, "heads": 4}
    backbone.update({k: overrides.pop(k) for k in BACKBONE_FIELDS if k in overrides})
    kw = dict(text_length=16, text_vocab_size=257, tokenizer="byte", image_grid=4, image_vocab_size=16, conv_kernel=3)
    kw.update(overrides)
    return DALLEConfig(**kw, backbone=backbone)


def tiny_dalle(seed: int = 0, with_vae: bool = True, **overrides) -> DALLE:
    vae = tiny_vae(seed) if with_vae else None
    config = tiny_config(vae=asdict(vae.config) if vae is not None else None, **overrides)
    torch.manual_seed(seed)
    model = DALLE(config)
    if vae is not None:
        model.vae.load_state_dict(vae.state_dict())
    return model.eval()


def dalle_export(directory: Path, **overrides) -> Path:
    return save_export(tiny_dalle(**overrides), directory)


def tiny_clip_export(directory: Path) -> Path:
    from clip.model import CLIP, CLIPConfig, TextConfig, VisionConfig

    torch.manual_seed(0)
    config = CLIPConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=16, patch_size=8, backbone={"width": 32, "layers": 1, "heads": 4}),
        text=TextConfig(
            context_length=32,
            vocab_size=257,
            tokenizer="byte",
            pool_type="last",
            backbone={"width": 32, "heads": 4, "layers": 1},
        ),
    )
    return save_export(CLIP(config).eval(), directory)
