"""LightningModule for GPT pre-training (next-token prediction on packed text)."""

from __future__ import annotations

import math
from dataclasses import asdict

import torch

from multimodal.gpt import GPT, GPTConfig, preset
from multimodal.lightning import ModelModule
from multimodal.tokenizers import get_tokenizer


def adamw_with_schedule(
    module: torch.nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    max_steps: int,
    min_lr_ratio: float = 0.1,
):
    """AdamW (no decay on biases, norms, embeddings' 1-D params) with linear warm-up then cosine decay
    to ``min_lr_ratio · lr`` at ``max_steps``; the Lightning ``configure_optimizers`` dict."""
    decay = [p for p in module.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=betas,
    )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class GPTModule(ModelModule):
    """Pre-train (or continue training) a GPT.

    Args:
        config: the model's shape; ``preset`` (``gpt2``, ``gpt3-small`` …) overrides its size fields.
        init_from: a checkpoint of ours or a Hugging Face GPT-2 directory to start from.
        tokenizer_dir: for ``config.tokenizer: gpt2``, the directory with ``vocab.json`` + ``merges.txt``;
            they are exported beside the weights so every CLI can read text with the model.
    """

    def __init__(
        self,
        config: GPTConfig | None = None,
        preset_name: str | None = None,
        init_from: str | None = None,
        tokenizer_dir: str | None = None,
        lr: float = 6e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        max_steps: int = 10000,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        config = config or GPTConfig()
        if preset_name is not None:
            config = preset(
                preset_name,
                **{k: v for k, v in asdict(config).items() if k not in ("layers", "width", "heads", "context_length")},
            )
        if init_from is not None:
            from multimodal.checkpoint import load_model

            self.model = load_model(init_from, "gpt")
            self.model.train()
        else:
            tokenizer = get_tokenizer(config.tokenizer, tokenizer_dir) if tokenizer_dir is not None else None
            self.model = GPT(config, tokenizer)
        self.save_hyperparameters(
            {
                "config": asdict(self.model.config),
                "init_from": init_from,
                "tokenizer_dir": tokenizer_dir,
                "lr": lr,
                "weight_decay": weight_decay,
                "betas": list(betas),
                "warmup_steps": warmup_steps,
                "max_steps": max_steps,
                "min_lr_ratio": min_lr_ratio,
            }
        )

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(batch)  # batch [B, T+1]
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(batch)
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        self.log("val_ppl", torch.exp(loss), sync_dist=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_with_schedule(
            self.model, hp.lr, hp.weight_decay, tuple(hp.betas), hp.warmup_steps, hp.max_steps, hp.min_lr_ratio
        )
