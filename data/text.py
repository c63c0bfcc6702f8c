"""Text DataModule for the GPT language model.

Documents come from text files, directories of ``.txt`` files, webdataset shards with a ``txt`` member,
or a synthetic generator of the suite. They are tokenized, joined with the end-of-text token and packed
into fixed-length sequences of ``context_length + 1`` tokens (inputs and shifted targets), as GPT-2 and
GPT-3 pre-training do.

Files and synthetic text are held in memory (map-style: Lightning's DistributedSampler gives every rank
the same number of batches). Shards stream through webdataset, split by node and by worker, with a fixed
number of batches per rank per epoch so DDP never waits on a rank that ran dry.
"""

from __future__ import annotations

import glob
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from multimodal.tokenizers import Tokenizer, get_tokenizer

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def arithmetic_documents(n: int, seed: int = 0, max_digits: int = 2) -> list[str]:
    """``n`` lines like ``"37+45=82"`` / ``"12-30=-18"``: a small language with exact rules, so a tiny
    model's validation loss must fall if it learns anything."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        a, b = rng.randrange(10**max_digits), rng.randrange(10**max_digits)
        op = rng.choice("+-")
        docs.append(f"{a}{op}{b}={a + b if op == '+' else a - b}")
    return docs


def task_documents(n: int, seed: int = 0) -> list[str]:
    """``n`` few-shot-style documents of the GPT-3 paper's synthetic tasks (``data.tasks``)."""
    from data.tasks import training_documents

    return training_documents(n, seed)


SYNTHETIC = {"arithmetic": arithmetic_documents, "tasks": task_documents}


def read_jsonl(path: str | Path) -> list[tuple[str, Any]]:
    """``(where, object)`` for every non-blank line of a UTF-8 JSON-lines file (``where`` is ``path:line``).

    Lines split at ``\\n`` only: ``str.splitlines`` also splits at U+2028, U+2029 and U+0085, which are valid
    inside JSON strings. A missing file, non-UTF-8 bytes or a bad line is a one-line ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); expected JSON lines") from None
    out = []
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{i}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    return out


def is_shard_spec(spec: str) -> bool:
    return (
        spec.startswith(("pipe:", "http://", "https://"))
        or spec.endswith(SHARD_SUFFIXES)
        or ("{" in spec and ".tar" in spec)
    )


def read_documents(spec: str | Sequence[str]) -> list[str]:
    """Documents from files (one document per file), directories (every ``*.txt`` below) or globs."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    docs: list[str] = []
    for s in specs:
        paths = sorted(Path(p) for p in glob.glob(s)) or [Path(s)]
        for p in paths:
            if p.is_dir():
                files = sorted(p.rglob("*.txt"))
            elif p.is_file():
                files = [p]
            else:
                raise FileNotFoundError(f"{p}: no such file or directory")
            docs.extend(f.read_text(encoding="utf-8", errors="replace") for f in files)
    return docs


def pack(docs: Sequence[str], tokenizer: Tokenizer, length: int) -> torch.Tensor:
    """Tokenize, join with end-of-text, cut into rows of ``length`` tokens → ``[N, length]`` (tail dropped)."""
    stream: list[int] = []
    for d in docs:
        stream.extend(tokenizer.encode(d))
        stream.append(tokenizer.eot_id)
    n = len(stream) // length
    if n == 0:
        raise ValueError(f"only {len(stream)} tokens of text: not one sequence of {length}")
    return torch.tensor(stream[: n * length], dtype=torch.long).view(n, length)


class PackedDataset(Dataset):
    def __init__(self, rows: torch.Tensor):
        self.rows = rows  # [N, T+1]

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]


class ShardTextStream(IterableDataset):
    """Packed sequences streamed from webdataset shards' ``txt`` members (split by node and worker)."""

    def __init__(self, urls: str, tokenizer: Tokenizer, length: int, shuffle: bool, seed: int = 0):
        self.urls, self.tokenizer, self.length, self.shuffle, self.seed = urls, tokenizer, length, shuffle, seed

    def __iter__(self) -> Iterator[torch.Tensor]:
        import webdataset as wds

        ds = wds.WebDataset(
            self.urls,
            nodesplitter=wds.split_by_node,  # explicit: webdataset's default raises under DDP
            workersplitter=wds.split_by_worker,
            shardshuffle=100 if self.shuffle else False,
            seed=self.seed,
            handler=wds.warn_and_continue,
            empty_check=False,
        )
        buf: list[int] = []
        for sample in ds:
            text = sample.get("txt")
            if text is None:
                continue
            buf.extend(self.tokenizer.encode(text.decode("utf-8", errors="replace")))
            buf.append(self.tokenizer.eot_id)
            while len(buf) >= self.length:
                yield torch.tensor(buf[: self.length], dtype=torch.long)
                buf = buf[self.length :]


class ResumableShuffle(Sampler[int]):
    """A shuffle that is a function of ``(seed, epoch)`` only and can start an epoch part-way: a training resumed
    from a mid-epoch checkpoint sees exactly the batches the uninterrupted run would have seen next.

    Lightning calls ``set_epoch`` at each epoch start; ``TextDataModule.train_dataloader`` sets ``epoch`` and
    ``start`` (samples to skip in that epoch) from the trainer's restored step count."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch, self.start = size, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        start, self.start = self.start, 0  # only the first pass after a resume starts part-way
        return iter(order[start:])


class TextDataModule(L.LightningDataModule):
    """Packed text for next-token prediction; batches are ``[B, context_length + 1]`` token ids.

    Args:
        train / val: files, directories, globs, or webdataset shard URLs (brace patterns, ``pipe:``, http).
        synthetic: instead of files, generate ``synthetic_docs`` documents (``arithmetic``); ``val`` is
            then a disjoint ``val_fraction`` of them.
        tokenizer: ``byte`` | ``clip`` | ``gpt2`` (``tokenizer_dir`` holds its vocab.json + merges.txt).
        batches_per_epoch: for streamed shards, batches each rank yields per epoch (equal on every rank).
    """

    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | list[str] | None = None,
        synthetic: str | None = None,
        synthetic_docs: int = 20000,
        val_fraction: float = 0.05,
        tokenizer: str = "byte",
        tokenizer_dir: str | None = None,
        context_length: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        batches_per_epoch: int = 1000,
        val_batches: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if train is None and synthetic is None:
            raise ValueError("give train files/shards or a synthetic source")
        if synthetic is not None and synthetic not in SYNTHETIC:
            raise ValueError(f"unknown synthetic source {synthetic!r}; known: {', '.join(SYNTHETIC)}")
        self.save_hyperparameters()
        self.tokenizer = get_tokenizer(tokenizer, tokenizer_dir)
        self.length = context_length + 1
        self.train_set: Dataset | IterableDataset | None = None
        self.val_set: Dataset | IterableDataset | None = None

    def _source(self, spec, shuffle: bool) -> Dataset | IterableDataset:
        if isinstance(spec, str) and is_shard_spec(spec):
            return ShardTextStream(spec, self.tokenizer, self.length, shuffle, self.hparams.seed)
        return PackedDataset(pack(read_documents(spec), self.tokenizer, self.length))

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hp.synthetic is not None:
            docs = SYNTHETIC[hp.synthetic](hp.synthetic_docs, hp.seed)
            n_val = max(1, int(len(docs) * hp.val_fraction))
            self.train_set = PackedDataset(pack(docs[n_val:], self.tokenizer, self.length))
            self.val_set = PackedDataset(pack(docs[:n_val], self.tokenizer, self.length))
            return
        self.train_set = self._source(hp.train, shuffle=True)
        if hp.val is not None:
            self.val_set = self._source(hp.val, shuffle=False)

    def _loader(self, ds, shuffle: bool, n_batches: int) -> DataLoader:
        hp = self.hparams
        if isinstance(ds, IterableDataset):
            import webdataset as wds

            loader = wds.WebLoader(ds, batch_size=hp.batch_size, num_workers=hp.num_workers)
            return loader.repeat(2).with_epoch(n_batches)  # repeat: a short shard list still fills the epoch
        trainer = self.trainer
        if shuffle and (trainer is None or trainer.world_size == 1):
            sampler = ResumableShuffle(len(ds), hp.seed)
            if trainer is not None and trainer.global_step:
                # resuming: this epoch and the batches of it already trained on, from the restored step count
                per_epoch = max(1, len(ds) // hp.batch_size)
                sampler.epoch, done = divmod(trainer.global_step * trainer.accumulate_grad_batches, per_epoch)
                sampler.start = done * hp.batch_size
            return DataLoader(ds, batch_size=hp.batch_size, sampler=sampler, num_workers=hp.num_workers, drop_last=True)
        # several processes: Lightning puts a DistributedSampler in (a resume restarts its epoch)
        return DataLoader(ds, batch_size=hp.batch_size, shuffle=shuffle, num_workers=hp.num_workers, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.hparams.batches_per_epoch)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return self._loader(self.val_set, False, self.hparams.val_batches)
