"""One raw webdataset sample -> ``(image tensor, caption, meta, key)``, and rows of those -> one batch dict."""

from __future__ import annotations

import json
import random
import warnings
from typing import Any

import torch
from PIL import Image

from multimodal.images import ImageError, open_image

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
TEXT_EXTS = ("txt", "text", "caption")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip OPENAI_DATASET_MEAN / STD
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMALIZE = ("clip", "unit", "signed")


class Decoder:
    """Turns a raw webdataset sample into ``(image tensor, caption, meta, key)`` or ``None`` (skipped)."""

    def __init__(self, image_size: int, normalize: str, augment: bool, counter: Any, shard_counter: Any = None) -> None:
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        self.image_size, self.normalize, self.augment, self.counter = image_size, normalize, augment, counter
        self.shard_counter = shard_counter

    def damaged_shard(self, url: str, why: str) -> None:
        """A shard whose stream broke off: named, counted (its lost samples cannot be counted)."""
        if self.shard_counter is not None:
            with self.shard_counter.get_lock():
                self.shard_counter.value += 1
        warnings.warn(f"damaged shard {url}: {why}; its remaining samples are lost", stacklevel=3)

    def skip(self, why: str) -> None:
        if self.counter is not None:
            with self.counter.get_lock():
                self.counter.value += 1
        warnings.warn(f"skipped sample: {why}", stacklevel=3)

    def __call__(self, sample: dict) -> tuple | None:
        key = sample.get("__key__", "?")
        url = sample.get("__url__", "?")
        img_ext = next((e for e in IMAGE_EXTS if e in sample), None)
        txt_ext = next((e for e in TEXT_EXTS if e in sample), None)
        if img_ext is None:
            return self.skip(f"{url}:{key} has no image member")
        if txt_ext is None:
            return self.skip(f"{url}:{key} has no caption")
        try:
            caption = sample[txt_ext].decode("utf-8").strip()
        except UnicodeDecodeError:
            return self.skip(f"{url}:{key}.{txt_ext}: caption is not UTF-8 text")
        try:
            # the suite's one image reader: EXIF orientation, alpha on black, one pixel limit; a truncated file
            # fails here, not later in a worker's collate
            image = open_image(sample[img_ext], name=f"{url}:{key}.{img_ext}")
        except ImageError as e:
            return self.skip(str(e))
        meta = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except (ValueError, UnicodeDecodeError):
                meta = {}
        return self.transform(image), caption, meta, key

    def transform(self, image: Image.Image) -> torch.Tensor:
        s = self.image_size
        w, h = image.size
        if self.augment:
            # a mild random crop only: flips or colour jitter would contradict captions that name
            # positions and colours (the shapes world)
            scale = random.uniform(0.85, 1.0)
            cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
            x0, y0 = random.randint(0, w - cw), random.randint(0, h - ch)
            image = image.crop((x0, y0, x0 + cw, y0 + ch))
            w, h = cw, ch
        if (w, h) != (s, s):
            k = s / min(w, h)  # resize the short side, centre-crop the long one
            nw, nh = max(s, round(w * k)), max(s, round(h * k))
            image = image.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - s) // 2, (nh - s) // 2
            image = image.crop((left, top, left + s, top + s))
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(s, s, 3).permute(2, 0, 1)
        x = x.float().div_(255)  # [3, H, W] in [0, 1]
        if self.normalize == "clip":
            x = (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
        elif self.normalize == "signed":
            x = x * 2 - 1
        return x


class Collate:
    def __init__(self, tokenizer: str, context_length: int, tokenizer_dir: str | None) -> None:
        self.name, self.length, self.dir = tokenizer, context_length, tokenizer_dir
        self._tok = None  # built lazily, inside each worker

    def __call__(self, rows: list[tuple]) -> dict:
        images, captions, metas, keys = zip(*rows)
        batch = {"image": torch.stack(images), "caption": list(captions), "meta": list(metas), "key": list(keys)}
        if self.name != "none":
            if self._tok is None:
                from multimodal.tokenizers import get_tokenizer

                self._tok = get_tokenizer(self.name, self.dir)
            batch["text"] = self._tok.batch(list(captions), self.length)
        return batch
