"""Shards -> batches for one rank and DataLoader worker: the node / worker / sample split, shuffling, repeats.

``ShardStream`` is the ``IterableDataset``; ``SizedLoader`` a DataLoader over it whose length is known, so that
every rank yields the same number of batches (see ``data.datamodule`` for how the length is chosen).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from data.decode import Collate, Decoder


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


class SizedLoader(DataLoader):
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
