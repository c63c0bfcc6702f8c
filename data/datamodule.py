"""Image–text webdataset shards for every head: ``ImageTextDataModule`` and ``ShapesDataModule``.

Sources: local paths, brace patterns (``shapes-{000000..000099}.tar``), lists joined with ``::``,
http(s) URLs and ``pipe:`` commands; img2dataset shards (``00000.tar`` with jpg + txt + json) are
read as they are (png / jpg / jpeg / webp image members).

Batches are dicts::

    {"image": float [B, 3, H, W], "text": long [B, L], "caption": list[str],
     "meta": list[dict] (the json member, {} if absent), "key": list[str]}

Distributed: shards are split by node (``SplitByNode``: ``wds.split_by_node`` with the rank taken in
the main process, passed explicitly) and by DataLoader
worker. When there are fewer shards than rank × worker slots, every slot reads every shard and keeps
one sample in ``slots`` instead, so no slot is ever empty. Training streams repeat (or are resampled)
and are cut with ``with_epoch`` so that **every rank yields exactly the same number of batches**
(``samples // world_size // batch_size``): DDP never waits on a rank that ran dry.

A corrupt member (truncated image, missing caption, damaged tar) is skipped with a warning and
counted: ``dm.skipped`` (shared with the workers).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import multiprocessing as mp
import random
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from multimodal.images import ImageError, open_image

log = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
TEXT_EXTS = ("txt", "text", "caption")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip OPENAI_DATASET_MEAN / STD
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMALIZE = ("clip", "unit", "signed")


def expand_urls(urls: str | list[str]) -> list[str]:
    """``a-{000..009}.tar::b.tar`` or a list -> a flat list of shard URLs (local globs expanded too)."""
    import braceexpand

    items = urls if isinstance(urls, (list, tuple)) else str(urls).split("::")
    out: list[str] = []
    for item in items:
        for u in braceexpand.braceexpand(str(item)):
            if not re.match(r"^(https?|pipe|gs|s3):", u) and any(c in u for c in "*?["):
                out.extend(sorted(str(p) for p in Path().glob(u)) if not Path(u).is_absolute() else _abs_glob(u))
            elif not re.match(r"^[a-z0-9]+:", u) and Path(u).is_dir():
                out.extend(sorted(str(p) for p in Path(u).glob("*.tar")))
            else:
                out.append(u)
    return out


def _abs_glob(pattern: str) -> list[str]:
    p = Path(pattern)
    return sorted(str(x) for x in Path(p.anchor).glob(str(p.relative_to(p.anchor))))


def count_samples(urls: list[str]) -> int | None:
    """Samples in local shards, from our ``<split>-summary.json``, img2dataset's ``*_stats.json``, or
    the tar headers. ``None`` for remote shards (pass ``train_samples`` / ``val_samples`` then)."""
    if not urls or any(re.match(r"^[a-z0-9]+:", u) for u in urls):
        return None
    total = 0
    for u in urls:
        p = Path(u)
        stats = p.with_name(p.stem + "_stats.json")  # img2dataset
        if stats.is_file():
            try:
                total += int(json.loads(stats.read_text())["successes"])
                continue
            except (ValueError, KeyError, OSError):
                pass
        total += _count_tar(p)
    return total


def _count_tar(path: Path) -> int:
    import tarfile

    keys = set()
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                if m.isfile():
                    d, _, base = m.name.rpartition("/")
                    keys.add((d, base.split(".", 1)[0]))
    except (OSError, tarfile.TarError) as e:
        warnings.warn(f"{path}: cannot count samples ({e})", stacklevel=2)
    return len(keys)


class SplitByNode:
    """``wds.split_by_node`` with the rank fixed when the loader is built: DataLoader workers do not
    always see the process group (or RANK / WORLD_SIZE), and would then read every shard."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def __call__(self, src: Iterator) -> Iterator:
        yield from itertools.islice(src, self.rank, None, self.world_size)


def rank_info() -> tuple[int, int]:
    rank, world, _, _ = wds.utils.pytorch_worker_info()
    return rank, world


# ---------------------------------------------------------------------------------------------
# Decoding and transforms


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


# ---------------------------------------------------------------------------------------------
# The stream


class ShardStream(IterableDataset):
    """Shards -> decoded, shuffled, batched samples for one rank; ``batches_per_worker`` caps (and,
    with ``repeat``, fixes) what each DataLoader worker yields."""

    def __init__(
        self,
        urls: list[str],
        decoder: Decoder,
        collate: Collate,
        batch_size: int,
        *,
        rank: int,
        world_size: int,
        num_workers: int,
        shuffle_buffer: int = 0,
        resampled: bool = False,
        repeat: bool = False,
        batches_per_worker: int | None = None,
        partial: bool = True,
        seed: int = 0,
    ) -> None:
        self.urls, self.decoder, self.collate, self.batch_size = urls, decoder, collate, batch_size
        self.rank, self.world_size, self.num_workers = rank, world_size, max(1, num_workers)
        self.shuffle_buffer, self.resampled, self.repeat = shuffle_buffer, resampled, repeat
        self.batches_per_worker, self.partial, self.seed = batches_per_worker, partial, seed
        self.epoch = 0
        # few shards: every (rank, worker) slot reads all shards and keeps every slots-th sample
        self.sample_split = not resampled and len(urls) < world_size * self.num_workers

    def _slot(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        return self.rank * self.num_workers + worker, self.world_size * self.num_workers

    def _samples(self) -> Iterator[dict]:
        slot, slots = self._slot()
        seed = self.seed + 1000003 * self.epoch
        handler = self._handler
        if self.resampled:
            # every worker draws shards with replacement from its own RNG
            ds = wds.WebDataset(
                self.urls, resampled=True, handler=handler, nodesplitter=None, empty_check=False, seed=seed + slot
            )
        elif self.sample_split:
            ds = wds.WebDataset(
                self.urls,
                shardshuffle=False,
                handler=handler,
                nodesplitter=None,
                workersplitter=None,
                empty_check=False,
            )
        else:
            ds = wds.WebDataset(
                self.urls,
                shardshuffle=len(self.urls) if self.shuffle_buffer else False,
                detshuffle=True,
                seed=seed,
                handler=handler,
                # explicit (the default raises under DDP), with this rank's index baked in
                nodesplitter=SplitByNode(self.rank, self.world_size) if self.world_size > 1 else None,
                workersplitter=wds.split_by_worker,
                empty_check=False,
            )
        url = None
        for i, s in enumerate(ds):
            if s.get("__url__") != url:
                self._check_shard(url)
                url = s.get("__url__")
            if self.sample_split and i % slots != slot:
                continue
            yield s
        self._check_shard(url)

    def _check_shard(self, url: str | None) -> None:
        # a streamed tar that is cut short just ends: look at the shard that ended for damage
        from data.shards import tar_damage

        why = tar_damage(url) if url is not None and "://" not in url and not url.startswith("pipe:") else None
        if why is not None:
            self.decoder.damaged_shard(url, why)

    def _handler(self, exn: Exception) -> bool:
        # webdataset appends the shard's url to the exception's args where it knows it
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and a != str(exn.args[0])), None)
        msg = str(exn.args[0] if exn.args else exn)[:160] or type(exn).__name__
        if url is not None:
            self.decoder.damaged_shard(url, f"{type(exn).__name__}: {msg}")
        else:
            self.decoder.skip(f"damaged shard data: {type(exn).__name__}: {msg}")
        return True  # keep going

    def _raw(self) -> Iterator[dict]:
        while True:
            n = 0
            for s in self._samples():
                n += 1
                yield s
            if not (self.repeat or self.resampled):
                return
            if n == 0:
                raise RuntimeError(f"no samples in {len(self.urls)} shards ({self.urls[:2]}...)")
            self.epoch += 1

    def _shuffled(self) -> Iterator[dict]:
        # raw (still encoded) samples are shuffled: a buffer of decoded images would be far larger
        if not self.shuffle_buffer:
            yield from self._raw()
            return
        slot, _ = self._slot()
        rng = random.Random(self.seed * 7919 + slot + 31 * self.epoch)
        buf: list[dict] = []
        for s in self._raw():
            buf.append(s)
            if len(buf) >= self.shuffle_buffer:
                j = rng.randrange(len(buf))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[dict]:
        rows: list[tuple] = []
        n, bad_run = 0, 0
        for s in self._shuffled():
            row = self.decoder(s)
            if row is None:
                bad_run += 1
                if bad_run > 10000:
                    raise RuntimeError(f"10000 unreadable samples in a row in {self.urls[:2]}...; giving up")
                continue
            bad_run = 0
            rows.append(row)
            if len(rows) == self.batch_size:
                yield self.collate(rows)
                rows, n = [], n + 1
                if self.batches_per_worker is not None and n >= self.batches_per_worker:
                    break
        else:
            if rows and self.partial:
                yield self.collate(rows)


class _Loader(DataLoader):
    """A DataLoader with a known length (``with_length`` in webdataset terms)."""

    def __init__(self, dataset: ShardStream, length: int | None, **kw: Any) -> None:
        super().__init__(dataset, batch_size=None, **kw)
        self._length = length
        self._epochs = 0

    def __iter__(self) -> Iterator[dict]:
        # set before workers start so each epoch shuffles differently (workers get a fresh copy)
        self.dataset.epoch = self._epochs
        self._epochs += 1
        return super().__iter__()

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("length unknown: pass train_samples / val_samples")
        return self._length


# ---------------------------------------------------------------------------------------------
# DataModules


class ImageTextDataModule(L.LightningDataModule):
    """Streams image–text webdataset shards (see the module docstring for the batch format)."""

    def __init__(
        self,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        image_size: int = 64,
        normalize: str = "clip",
        augment: bool = False,
        tokenizer: str = "clip",
        context_length: int = 77,
        resampled: bool = False,
        train_samples: int | None = None,
        val_samples: int | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        tokenizer_dir: str | None = None,
        test_samples: int | None = None,
    ) -> None:
        super().__init__()
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        self.train, self.val, self.test = train, val, test
        self.batch_size, self.num_workers, self.image_size = batch_size, num_workers, image_size
        self.normalize, self.augment = normalize, augment
        self.tokenizer, self.context_length, self.tokenizer_dir = tokenizer, context_length, tokenizer_dir
        self.resampled, self.shuffle_buffer, self.seed = resampled, shuffle_buffer, seed
        self.samples = {"train": train_samples, "val": val_samples, "test": test_samples}
        self._counter = None
        self._shard_counter = None

    # -- skipped-sample counter, shared with DataLoader workers
    @property
    def counter(self) -> Any:
        if self._counter is None:
            self._counter = mp.Value("l", 0)
        return self._counter

    @property
    def shard_counter(self) -> Any:
        if self._shard_counter is None:
            self._shard_counter = mp.Value("l", 0)
        return self._shard_counter

    @property
    def damaged_shards(self) -> int:
        """Shards whose stream broke off (truncated, corrupt), each named in a warning, all workers."""
        return int(self.shard_counter.value) if self._shard_counter is not None else 0

    @property
    def skipped(self) -> int:
        """Samples skipped so far (corrupt images, missing captions, damaged tars), all workers."""
        return int(self.counter.value) if self._counter is not None else 0

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return rank_info()

    def loader(self, split: str, train: bool | None = None) -> DataLoader:
        """The DataLoader of ``split`` ("train", "val", "test"); training ones shuffle and repeat."""
        source = {"train": self.train, "val": self.val, "test": self.test}[split]
        if source is None:
            raise ValueError(f"no {split} shards configured")
        urls = expand_urls(source)
        if not urls:
            raise FileNotFoundError(f"no shards match {source!r}")
        train = split == "train" if train is None else train
        rank, world = self._world()
        samples = self.samples.get(split)
        if samples is None:
            samples = count_samples(urls)
        resampled = self.resampled and train
        workers = self.num_workers
        if not resampled and len(urls) >= world and workers > 0:
            # no more workers than this rank has shards (fewer shards than ranks: split by sample)
            workers = max(1, min(workers, len(urls) // world))
        if samples is None and world > 1:
            raise ValueError(f"{split}: sample count unknown for {source!r}; pass {split}_samples under DDP")
        if samples is None or (world == 1 and not train):
            # one plain pass (evaluation on one process sees every sample exactly once)
            length, per_worker, repeat = None, None, resampled
        else:
            length = max(1, samples // world // self.batch_size)
            per_worker = math.ceil(length / max(1, workers))
            length = per_worker * max(1, workers)
            # repeating makes every worker (hence every rank) yield exactly per_worker batches
            repeat = True
        decoder = Decoder(self.image_size, self.normalize, self.augment and train, self.counter, self.shard_counter)
        stream = ShardStream(
            urls,
            decoder,
            Collate(self.tokenizer, self.context_length, self.tokenizer_dir),
            self.batch_size,
            rank=rank,
            world_size=world,
            num_workers=workers,
            # no larger than what one worker holds: a small set would otherwise be read many times over
            shuffle_buffer=min(
                self.shuffle_buffer, max(1, samples // (world * max(1, workers))) if samples else self.shuffle_buffer
            )
            if train
            else 0,
            resampled=resampled,
            repeat=repeat,
            batches_per_worker=per_worker,
            partial=per_worker is None,
            seed=self.seed,
        )
        return _Loader(
            stream,
            length,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def teardown(self, stage: str) -> None:
        if self.skipped or self.damaged_shards:
            log.warning(
                "skipped %d corrupt or incomplete samples; %d damaged shards (named above) lost their remaining "
                "samples",
                self.skipped,
                self.damaged_shards,
            )


class ShapesDataModule(ImageTextDataModule):
    """The shapes world: ``prepare_data`` renders ``root/{train,val,heldout}-*.tar`` when missing (or
    rendered with other settings), then reads them. ``heldout`` (only held-out colour × shape pairs)
    is the ``test`` split, and with ``heldout_in_val`` also a second validation dataloader.
    ``train_split="all"`` trains on every pair (for measuring instruments such as the judge)."""

    def __init__(
        self,
        root: str = "runs/data/shapes",
        train_count: int = 20000,
        val_count: int = 1000,
        heldout_count: int = 1000,
        seed: int = 0,
        objects: str = "1",
        image_size: int = 64,
        train_split: str = "train",
        heldout_in_val: bool = False,
        shard_size: int = 1000,
        batch_size: int = 64,
        num_workers: int = 2,
        normalize: str = "clip",
        augment: bool = False,
        tokenizer: str = "clip",
        context_length: int = 77,
        resampled: bool = False,
        shuffle_buffer: int = 1000,
    ) -> None:
        from data import shapes

        if train_split not in ("train", "all"):
            raise ValueError("train_split must be 'train' or 'all'")
        if str(objects) not in shapes.OBJECTS_CHOICES:
            raise ValueError(f"objects must be one of {shapes.OBJECTS_CHOICES}")
        self.root, self.objects, self.shard_size = Path(root), str(objects), shard_size
        self.counts = {train_split: train_count, "val": val_count, "heldout": heldout_count}
        self.train_split, self.heldout_in_val, self.world_seed = train_split, heldout_in_val, seed
        # distinct seeds per split are not needed: each split's RNG already includes its name
        super().__init__(
            train=str(self.root / f"{train_split}-*.tar"),
            val=str(self.root / "val-*.tar"),
            test=str(self.root / "heldout-*.tar"),
            batch_size=batch_size,
            num_workers=num_workers,
            image_size=image_size,
            normalize=normalize,
            augment=augment,
            tokenizer=tokenizer,
            context_length=context_length,
            resampled=resampled,
            train_samples=train_count,
            val_samples=val_count,
            test_samples=heldout_count,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
        )

    def _fresh(self, split: str) -> bool:
        from data import shapes

        f = self.root / f"{split}-summary.json"
        if not f.is_file() or not shapes.shard_paths(self.root, split):
            return False
        try:
            s = json.loads(f.read_text())
        except ValueError:
            return False
        want = {"count": self.counts[split], "seed": self.world_seed, "size": self.image_size}
        return all(s.get(k) == v for k, v in want.items()) and str(s.get("objects")) == self.objects

    def prepare_data(self) -> None:
        from data import shapes

        for split, count in self.counts.items():
            if count and not self._fresh(split):
                log.info("rendering %d %s images into %s", count, split, self.root)
                shapes.write_shards(
                    self.root,
                    split,
                    count,
                    self.world_seed,
                    self.image_size,
                    self.objects,
                    self.shard_size,
                    overwrite=True,
                )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.heldout_in_val:
            return [self.loader("val"), self.loader("test", train=False)]
        return self.loader("val")
