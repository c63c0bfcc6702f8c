"""GPT-1 supervised fine-tuning (Radford et al. 2018, §3.2): a linear classifier on the pre-trained GPT's
hidden state at the last token, trained with the language-model loss kept as an auxiliary objective:

    L3 = L2 (cross-entropy of the label) + λ · L1 (next-token loss on the same inputs),  λ = 0.5 by default.

Inputs are ``<|endoftext|> text <|endoftext|>``: the first end-of-text marks a document start as in
pre-training, the last one plays GPT-1's "extract" token, whose final hidden state the head reads.

- ``GPTClassifier`` (registered ``gpt_classifier``): the shared ``GPT`` + ``head``; exported and loaded like
  every model of the suite.
- ``ClassifierModule``: the LightningModule (``init_from`` a GPT checkpoint of ours / a HF GPT-2 directory).
- ``ClassificationDataModule``: JSONL or CSV files of text + label (or a synthetic task), padded batches.

    python -m multimodal.train fit --config configs/gpt/finetune.yaml
"""

import csv
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from data.text import read_jsonl
from multimodal.checkpoint import register
from multimodal.gpt import GPT, GPTConfig
from multimodal.lightning import ModelModule
from multimodal.tokenizers import Tokenizer, get_tokenizer

# No ``from __future__ import annotations`` here: checkpoint.config_from_dict rebuilds the nested GPTConfig
# from the dataclass field's type, which must be a class, not a string.


@dataclass
class GPTClassifierConfig:
    gpt: GPTConfig = field(default_factory=GPTConfig)
    num_classes: int = 2
    labels: list = field(default_factory=list)  # class names, index = class id (may be empty)
    head_dropout: float = 0.1  # GPT-1 used 0.1 on the classifier


@register("gpt_classifier")
class GPTClassifier(nn.Module):
    config_class = GPTClassifierConfig

    def __init__(self, config: GPTClassifierConfig, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.config = config
        self.gpt = GPT(config.gpt, tokenizer)
        self.drop = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(config.gpt.backbone.width, config.num_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.gpt.tokenizer

    def save_extra_files(self, directory: Path) -> None:
        self.gpt.save_extra_files(directory)

    def load_extra_files(self, directory: Path) -> None:
        self.gpt.load_extra_files(directory)

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``ids [B, T]`` right-padded, ``mask [B, T]`` True on real tokens → (class logits ``[B, K]``,
        hidden states ``[B, T, C]``). Causal attention: padding after a row's last token cannot reach it."""
        h = self.gpt.hidden(ids)  # [B, T, C]
        last = mask.long().sum(1) - 1  # [B] index of the final real token (the extract token)
        pooled = h[torch.arange(ids.shape[0], device=ids.device), last]  # [B, C]
        return self.head(self.drop(pooled)), h

    def losses(self, ids: Tensor, mask: Tensor, labels: Tensor, lm_weight: float = 0.5) -> dict[str, Tensor]:
        """``{"loss": L3, "task_loss": L2, "lm_loss": L1, "logits": [B, K]}``; with ``lm_weight`` 0 the LM
        head is not even run and ``loss`` is exactly the task loss."""
        logits, h = self(ids, mask)
        task = F.cross_entropy(logits.float(), labels)
        out = {"task_loss": task, "logits": logits}
        if lm_weight:
            lm_logits = self.gpt.lm_head(h[:, :-1])  # [B, T-1, V]
            targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
            lm = F.cross_entropy(lm_logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            out["lm_loss"] = lm
            out["loss"] = task + lm_weight * lm
        else:
            out["loss"] = task
        return out

    @torch.no_grad()
    def classify(self, texts: list[str]) -> list[int]:
        """Predicted class ids of ``texts`` (needs the GPT's tokenizer)."""
        tok = self.gpt._require_tokenizer()
        ids, mask = encode_batch([encode(tok, t, self.config.gpt.context_length) for t in texts], tok.eot_id)
        device = self.head.weight.device
        return self(ids.to(device), mask.to(device))[0].argmax(-1).tolist()


def encode(tok: Tokenizer, text: str, max_len: int) -> list[int]:
    """``<eot> text <eot>``, the text cut so the whole fits ``max_len`` (the extract token always stays)."""
    body = tok.encode(text)[: max(max_len - 2, 0)]
    return [tok.eot_id, *body, tok.eot_id]


def encode_batch(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad → ``ids [B, T]`` and ``mask [B, T]`` (True on real tokens)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


# -- Lightning ----------------------------------------------------------------------------------------------


class ClassifierModule(ModelModule):
    """Fine-tune a GPT as a classifier with the auxiliary LM loss (GPT-1).

    Args:
        num_classes: number of labels (the data module checks it against the data).
        init_from: a GPT checkpoint (our export, a Lightning ``.ckpt`` of ``GPTModule``, a HF GPT-2 dir);
            without it a fresh GPT of ``config`` is used (for tests and ablations).
        lm_weight: λ in L3 = L2 + λ·L1 (0.5 in GPT-1; 0 fine-tunes on the task loss alone).
        labels: class names (index = class id); filled from the data module when empty.
    """

    def __init__(
        self,
        num_classes: int = 2,
        init_from: str | None = None,
        config: GPTConfig | None = None,
        lm_weight: float = 0.5,
        labels: list[str] | None = None,
        head_dropout: float = 0.1,
        lr: float = 6.25e-5,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 10,
        min_lr_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        if lm_weight < 0:
            raise ValueError(f"lm_weight must be >= 0, got {lm_weight}")
        if init_from is not None:
            from multimodal.checkpoint import load_model

            gpt = load_model(init_from, "gpt")
            cfg = GPTClassifierConfig(gpt.config, num_classes, list(labels or []), head_dropout)
            self.model = GPTClassifier(cfg, gpt.tokenizer)
            self.model.gpt.load_state_dict(gpt.state_dict())
        else:
            cfg = GPTClassifierConfig(config or GPTConfig(), num_classes, list(labels or []), head_dropout)
            self.model = GPTClassifier(cfg)
        self.model.train()
        self.save_hyperparameters(
            {
                "num_classes": num_classes,
                "init_from": init_from,
                "config": asdict(self.model.config.gpt),
                "lm_weight": lm_weight,
                "labels": list(labels or []),
                "head_dropout": head_dropout,
                "lr": lr,
                "weight_decay": weight_decay,
                "betas": list(betas),
                "warmup_steps": warmup_steps,
                "min_lr_ratio": min_lr_ratio,
            }
        )

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(dm, "label_names", None)
        if names:
            if len(names) != self.model.config.num_classes:
                raise ValueError(
                    f"the data have {len(names)} labels {names[:5]}, the model num_classes={self.model.config.num_classes}"
                )
            self.model.config.labels = list(names)

    def _step(self, batch, stage: str) -> Tensor:
        ids, mask, labels = batch
        out = self.model.losses(ids, mask, labels, self.hparams.lm_weight)
        acc = (out["logits"].argmax(-1) == labels).float().mean()
        on_step = stage == "train"
        self.log(
            f"{stage}_loss", out["loss"], prog_bar=True, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step
        )
        self.log(f"{stage}_task_loss", out["task_loss"], on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        if "lm_loss" in out:
            self.log(f"{stage}_lm_loss", out["lm_loss"], on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        self.log(f"{stage}_acc", acc, prog_bar=True, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        return out["loss"]

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self):
        hp = self.hparams
        return self.adamw_with_schedule(hp.lr, hp.weight_decay, tuple(hp.betas), hp.warmup_steps, hp.min_lr_ratio)


# -- data -----------------------------------------------------------------------------------------------


def read_examples(path: str | Path, text_field: str = "text", label_field: str = "label") -> list[tuple[str, str]]:
    """(text, label) pairs from a ``.jsonl`` file (one object per line) or a ``.csv`` file with a header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows: list[tuple[str, str]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {text_field, label_field} <= set(reader.fieldnames):
                raise ValueError(f"{path}: the CSV header needs columns {text_field!r} and {label_field!r}")
            rows = [(r[text_field], str(r[label_field])) for r in reader]
    else:
        for where, obj in read_jsonl(path):
            if not isinstance(obj, dict) or text_field not in obj or label_field not in obj:
                raise ValueError(f"{where}: a record needs {text_field!r} and {label_field!r}")
            rows.append((str(obj[text_field]), str(obj[label_field])))
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def arithmetic_check(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Synthetic 2-class task: is ``a+b=c`` / ``a-b=c`` right? Wrong sums are off by a little."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, op = rng.randrange(100), rng.randrange(100), rng.choice("+-")
        c = a + b if op == "+" else a - b
        ok = rng.random() < 0.5
        if not ok:
            c += rng.choice([-10, -2, -1, 1, 2, 10])
        out.append((f"{a}{op}{b}={c}", "true" if ok else "false"))
    return out


def task_kind(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Synthetic 3-class task: is the line arithmetic, an unscrambled word or a translation?"""
    from data import tasks

    rng = random.Random(seed)
    kinds = {"arithmetic": tasks.GROUPS["arithmetic"], "words": tasks.GROUPS["words"], "translation": ["translate"]}
    out = []
    for _ in range(n):
        label = rng.choice(sorted(kinds))
        r = tasks.sample(rng.choice(kinds[label]), rng, "train")
        out.append((tasks.format_example(r["prompt"], r["completion"]), label))
    return out


def compare(n: int, seed: int = 0, split: str = "train") -> list[tuple[str, str]]:
    """``data.tasks``' 2-class ``compare`` (``37 vs 52`` → ``less`` / ``more``) from ``split``: the
    classification task on which few-shot prompting is set against fine-tuning."""
    from data import tasks

    return [(r["prompt"], r["completion"]) for r in tasks.instances("compare", n, seed, split)]


SYNTHETIC_TASKS = {"arithmetic_check": arithmetic_check, "task_kind": task_kind, "compare": compare}
# Synthetic tasks of data.tasks with a held-out side: validation is drawn from it (the very queries
# `multimodal.fewshot --tasks compare --seed S` asks), so val_acc and few-shot accuracy measure the same thing.
HELD_OUT_VAL = {"compare"}


class ClassificationDataModule(L.LightningDataModule):
    """Batches ``(ids [B, T], mask [B, T], labels [B])`` of text + label.

    Args:
        train / val: ``.jsonl`` or ``.csv`` files with ``text_field`` and ``label_field``.
        synthetic: instead, ``arithmetic_check`` or ``task_kind`` (``synthetic_examples`` of them, ``val``
            a disjoint ``val_fraction``) or ``compare`` (``val``: ``val_examples`` held-out instances, the
            first ones ``multimodal.fewshot --tasks compare`` draws with the same seed).
        label_names: class names in class-id order; default: the sorted label values (integers numerically).
        tokenizer: ``auto`` takes the model's; or ``byte`` | ``clip`` | ``gpt2`` (+ ``tokenizer_dir``).
        max_length: tokens per example at most, including the two end-of-text tokens.
    """

    def __init__(
        self,
        train: str | None = None,
        val: str | None = None,
        synthetic: str | None = None,
        synthetic_examples: int = 4000,
        val_fraction: float = 0.1,
        val_examples: int = 200,
        text_field: str = "text",
        label_field: str = "label",
        label_names: list[str] | None = None,
        tokenizer: str = "auto",
        tokenizer_dir: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if (train is None) == (synthetic is None):
            raise ValueError("give train files or a synthetic task (one of them)")
        if synthetic is not None and synthetic not in SYNTHETIC_TASKS:
            raise ValueError(f"unknown synthetic task {synthetic!r}; known: {', '.join(SYNTHETIC_TASKS)}")
        self.save_hyperparameters()
        self.tokenizer: Tokenizer | None = None if tokenizer == "auto" else get_tokenizer(tokenizer, tokenizer_dir)
        self.label_names: list[str] = list(label_names or [])
        self.max_length = max_length
        self.train_rows: list[tuple[str, str]] = []
        self.val_rows: list[tuple[str, str]] = []
        self._load()

    def _load(self) -> None:
        hp = self.hparams
        if hp.synthetic is not None:
            make = SYNTHETIC_TASKS[hp.synthetic]
            if hp.synthetic in HELD_OUT_VAL:
                self.train_rows = make(hp.synthetic_examples, hp.seed, "train")
                self.val_rows = make(hp.val_examples, hp.seed, "test")
            else:
                rows = make(hp.synthetic_examples, hp.seed)
                n_val = max(1, int(len(rows) * hp.val_fraction))
                self.val_rows, self.train_rows = rows[:n_val], rows[n_val:]
        else:
            self.train_rows = read_examples(hp.train, hp.text_field, hp.label_field)
            self.val_rows = read_examples(hp.val, hp.text_field, hp.label_field) if hp.val else []
        if not self.label_names:
            values = {y for _, y in self.train_rows + self.val_rows}
            numeric = all(v.lstrip("-").isdigit() for v in values)
            self.label_names = sorted(values, key=int) if numeric else sorted(values)
        known = set(self.label_names)
        for _, y in self.train_rows + self.val_rows:
            if y not in known:
                raise ValueError(f"label {y!r} is not one of {self.label_names}")

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def setup(self, stage: str | None = None) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        model = getattr(module, "model", None)
        if isinstance(model, GPTClassifier):  # never longer than the model's context
            self.max_length = min(self.hparams.max_length, model.config.gpt.context_length)
        if self.tokenizer is None:
            tok = getattr(model, "tokenizer", None)
            if tok is None:
                raise ValueError("tokenizer 'auto' needs a model with a tokenizer; name one (byte, clip, gpt2)")
            self.tokenizer = tok

    def collate(self, rows: list[tuple[str, str]]) -> tuple[Tensor, Tensor, Tensor]:
        index = {name: i for i, name in enumerate(self.label_names)}
        ids, mask = encode_batch([encode(self.tokenizer, t, self.max_length) for t, _ in rows], self.tokenizer.eot_id)
        return ids, mask, torch.tensor([index[y] for _, y in rows], dtype=torch.long)

    def _loader(self, rows, shuffle: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(rows, hp.batch_size, shuffle=shuffle, collate_fn=self.collate, num_workers=hp.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_rows, True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_rows, False) if self.val_rows else []
