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

This module holds the DataModules; the pieces live by job in ``data.sources`` (shard URLs, sample counts),
``data.decode`` (sample -> tensors, rows -> batch) and ``data.stream`` (the per-rank, per-worker stream), and
every name stays importable from here (configs name ``data.datamodule.ShapesDataModule``).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

# the pieces, by job; re-exported here because configs and callers name them as data.datamodule.*
from data.decode import CLIP_MEAN, CLIP_STD, IMAGE_EXTS, NORMALIZE, TEXT_EXTS, Collate, Decoder
from data.sources import count_samples, expand_urls
from data.stream import ShardStream, SizedLoader, SplitByNode, rank_info

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGE_EXTS",
    "NORMALIZE",
    "TEXT_EXTS",
    "Collate",
    "Decoder",
    "ImageTextDataModule",
    "ShapesDataModule",
    "ShardStream",
    "SizedLoader",
    "SplitByNode",
    "count_samples",
    "expand_urls",
    "rank_info",
]

log = logging.getLogger(__name__)


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
        return SizedLoader(
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
