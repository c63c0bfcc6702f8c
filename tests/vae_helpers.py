"""Shared fixtures of the dVAE tests: tiny configs, synthetic images, PNG files and shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dalle.vae import DiscreteVAE, VAEConfig


def tiny_config(**overrides) -> VAEConfig:
    base = dict(image_size=16, codebook_size=16, downsample=4, hidden=8, blocks_per_group=1, init_channels=8)
    base.update(overrides)
    return VAEConfig(**base)


def tiny_vae(seed: int = 0, **overrides) -> DiscreteVAE:
    torch.manual_seed(seed)
    return DiscreteVAE(tiny_config(**overrides)).eval()


def blocks_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """``[n, 3, size, size]`` in [0, 1]: a coloured rectangle on black, like the shapes world."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, 3, size, size)
    for i in range(n):
        y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        h, w = torch.randint(size // 4, size // 2 + 1, (2,), generator=g).tolist()
        out[i, :, y0 : y0 + h, x0 : x0 + w] = torch.rand(3, 1, 1, generator=g)
    return out


def to_png_bytes(image: torch.Tensor) -> bytes:
    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_pngs(directory: Path, images: torch.Tensor) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        p = directory / f"img{i}.png"
        p.write_bytes(to_png_bytes(img))
        paths.append(p)
    return paths


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar with the given (name, data) members in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def shard_members(images: torch.Tensor, prefix: str = "") -> list[tuple[str, bytes]]:
    members = []
    for i, img in enumerate(images):
        key = f"{prefix}{i:06d}"
        members += [
            (f"{key}.png", to_png_bytes(img)),
            (f"{key}.txt", f"caption {i}".encode()),
            (f"{key}.json", json.dumps({"index": i}).encode()),
        ]
    return members


def read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data))
