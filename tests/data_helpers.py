"""Helpers for the data tests: small shard sets, damaged shards, img2dataset-style shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from data import shapes


def tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_shapes(
    out: Path, split: str = "train", count: int = 40, shard_size: int = 10, seed: int = 0, objects: str = "1"
) -> list[Path]:
    shapes.write_shards(out, split, count, seed=seed, objects=objects, shard_size=shard_size, progress=False)
    return shapes.shard_paths(out, split)


def write_damaged_shard(path: Path, good: int = 6) -> dict:
    """A shard with ``good`` valid samples, one truncated png, one sample without caption."""
    keys = []
    with tarfile.open(path, "w") as tf:
        for i in range(good):
            s = shapes.make_sample(0, "train", i)
            key = f"{i:09d}"
            keys.append(key)
            tar_add(tf, f"{key}.png", shapes.png_bytes(s["image"]))
            tar_add(tf, f"{key}.txt", s["caption"].encode())
            tar_add(tf, f"{key}.json", json.dumps(s["meta"]).encode())
        png = shapes.png_bytes(shapes.make_sample(0, "train", 99)["image"])
        tar_add(tf, "000000100.png", png[: len(png) // 2])  # truncated image
        tar_add(tf, "000000100.txt", b"a red circle")
        tar_add(tf, "000000101.png", png)  # no caption
        tar_add(tf, "000000101.json", b"{}")
    return {"good": keys, "bad": ["000000100", "000000101"]}


def write_img2dataset_shard(directory: Path, index: int = 0, count: int = 5) -> Path:
    """What img2dataset writes: ``00000.tar`` with jpg + txt + json (+ a parquet and _stats.json)."""
    path = directory / f"{index:05d}.tar"
    with tarfile.open(path, "w") as tf:
        for i in range(count):
            key = f"{index:05d}{i:04d}"
            s = shapes.make_sample(1, "train", i, size=80)
            tar_add(tf, f"{key}.jpg", encode(s["image"], "JPEG"))
            tar_add(tf, f"{key}.txt", s["caption"].encode())
            meta = {"url": f"http://example.com/{key}.jpg", "key": key, "status": "success", "caption": s["caption"]}
            tar_add(tf, f"{key}.json", json.dumps(meta).encode())
    (directory / f"{index:05d}_stats.json").write_text(
        json.dumps({"count": count, "successes": count, "failed_to_download": 0})
    )
    return path
