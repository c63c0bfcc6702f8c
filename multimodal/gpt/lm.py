"""LightningModule for GPT pre-training (next-token prediction on packed text)."""

from __future__ import annotations

from dataclasses import asdict

import torch

from multimodal.gpt import GPT, GPTConfig, preset
from multimodal.lightning import ModelModule
from multimodal.tokenizers import get_tokenizer


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
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        config = config or GPTConfig()
        if preset_name is not None:
            # the preset sets the size (width, layers, heads, context); the rest of the config is kept
            keep = {k: v for k, v in asdict(config).items() if k != "context_length"}
            config = preset(preset_name, **keep)
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
        return self.adamw_with_schedule(hp.lr, hp.weight_decay, tuple(hp.betas), hp.warmup_steps, hp.min_lr_ratio)
