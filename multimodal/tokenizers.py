"""One small interface over the suite's tokenizers.

- ``ByteTokenizer``: UTF-8 bytes + end-of-text (257 ids); needs no files, used by the CPU configs.
- ``ClipTokenizer``: CLIP's BPE (open_clip's ``SimpleTokenizer`` and the vocabulary shipped in open_clip, read
  from its file: importing the open_clip package costs seconds, the tokenizer file alone does not).
- ``GPT2Tokenizer``: GPT-2 byte-level BPE from ``vocab.json`` + ``merges.txt`` (``tokenizers``);
  ``train_byte_level_bpe`` learns one from a corpus (digits kept one per token).

Each has ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``, ``eot_id``, ``name``,
and ``batch(texts, length)`` giving a padded ``[B, length]`` tensor with the end-of-text id last.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def pad_batch(rows: list[list[int]], length: int, pad_id: int = 0) -> Tensor:
    out = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        row = row[:length]
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class ByteTokenizer:
    name = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def batch(self, texts: Sequence[str], length: int) -> Tensor:
        return pad_batch([self.encode(t)[: length - 1] + [self.eot_id] for t in texts], length)


def openclip_dir() -> Path:
    """open_clip's package folder, found without running its ``__init__``."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip is not installed (pip install open_clip_torch)")
    return Path(list(spec.submodule_search_locations)[0])


def openclip_file_module(name: str):
    """``open_clip.<name>`` if already imported, else that file loaded on its own (it has no relative imports)."""
    full = f"open_clip.{name}"
    if full in sys.modules:
        return sys.modules[full]
    key = f"_multimodal_openclip_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, openclip_dir() / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]


class ClipTokenizer:
    """open_clip's BPE: ``<start_of_text> tokens <end_of_text>``, lower-cased and cleaned like CLIP."""

    name = "clip"
    max_cache_words = 50_000  # open_clip's BPE memo, cleared past this many words (a few MB)

    def __init__(self) -> None:
        self._tok = openclip_file_module("tokenizer").SimpleTokenizer()
        self._specials = [t for t, v in self._tok.cache.items() if t == v]
        self.vocab_size = len(self._tok.encoder)
        self.sot_id = self._tok.all_special_ids[0]
        self.eot_id = self._tok.all_special_ids[1]

    def encode(self, text: str) -> list[int]:
        ids = self._tok.encode(text)
        # open_clip memoises the BPE of every word it has seen, forever: a long-running service fed new words
        # would grow without bound, so the memo starts over past a fixed size (its special tokens kept)
        if len(self._tok.cache) > self.max_cache_words:
            self._tok.cache = {t: t for t in self._specials}
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if int(i) not in (self.sot_id, self.eot_id, 0)]
        return self._tok.decode(ids).strip()

    def batch(self, texts: Sequence[str], length: int = 77) -> Tensor:
        """Same ids as ``open_clip.tokenize``: truncated so the end-of-text token is always kept."""
        rows = [[self.sot_id] + self.encode(t)[: length - 2] + [self.eot_id] for t in texts]
        return pad_batch(rows, length)


class GPT2Tokenizer:
    """GPT-2's byte-level BPE read from ``vocab.json`` and ``merges.txt``."""

    name = "gpt2"
    files = ("vocab.json", "merges.txt")

    def __init__(self, vocab_file: str | Path, merges_file: str | Path) -> None:
        from tokenizers import ByteLevelBPETokenizer

        # the files' bytes are kept: ``save`` writes them even when the originals were temporary
        self._files = {name: Path(f).read_bytes() for name, f in zip(self.files, (vocab_file, merges_file))}
        self._tok = ByteLevelBPETokenizer(str(vocab_file), str(merges_file), add_prefix_space=False)
        eot = self._tok.token_to_id("<|endoftext|>")
        if eot is None:
            raise ValueError(f"{vocab_file}: no <|endoftext|> token")
        self._tok.add_special_tokens(["<|endoftext|>"])
        self.eot_id = eot
        self.vocab_size = self._tok.get_vocab_size()

    @classmethod
    def from_directory(cls, directory: str | Path) -> GPT2Tokenizer:
        directory = Path(directory)
        return cls(directory / "vocab.json", directory / "merges.txt")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def batch(self, texts: Sequence[str], length: int) -> Tensor:
        return pad_batch([self.encode(t)[: length - 1] + [self.eot_id] for t in texts], length, self.eot_id)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        for name, data in self._files.items():
            dst = directory / name
            if not dst.is_file() or dst.read_bytes() != data:
                dst.write_bytes(data)


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, directory: str | Path) -> GPT2Tokenizer:
    """Learn GPT-2's kind of tokenizer (byte-level BPE, ``<|endoftext|>`` special) from ``texts`` with
    ``tokenizers`` and write its ``vocab.json`` + ``merges.txt`` into ``directory``.

    Digits are split one per pre-token while learning, so no merge ever joins two digits (or a space and a
    digit): numbers stay digit by digit, which arithmetic needs (GPT-2's BPE turns ``48`` into one opaque
    token). Read back with GPT-2's own pre-tokenizer the files give the same ids, since none of their
    merges can apply across a digit boundary; the HF export and ``transformers`` read them unchanged."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(directory))
    return GPT2Tokenizer.from_directory(directory)


def get_tokenizer(name: str, directory: str | Path | None = None) -> Tokenizer:
    """``byte`` | ``clip`` | ``gpt2`` (the latter reads ``vocab.json`` + ``merges.txt`` from ``directory``)."""
    if name == "byte":
        return ByteTokenizer()
    if name == "clip":
        return ClipTokenizer()
    if name == "gpt2":
        if directory is None:
            raise ValueError("the gpt2 tokenizer needs a directory holding vocab.json and merges.txt")
        return GPT2Tokenizer.from_directory(directory)
    raise ValueError(f"unknown tokenizer {name!r} (byte, clip, gpt2)")
