"""What every LightningModule of the suite shares: the wrapped model lives at ``self.model`` and the
checkpoint carries what is needed to rebuild it (``multimodal.checkpoint.load_model`` reads it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from multimodal.checkpoint import LIGHTNING_KEY, extra_files_of, payload, save_export


class ModelModule(L.LightningModule):
    """Base class: subclasses set ``self.model`` to a registered model (see ``checkpoint.register``)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The module's hyper-parameters move under our key: LightningCLI's `--ckpt_path` resume re-parses a
        # checkpoint's `hyper_parameters` as CLI arguments, and ours (plain dicts, so that the file loads
        # with weights_only=True) are not in that form.
        hparams = checkpoint.pop("hyper_parameters", None)
        extra = {"prefix": "model.", "hparams": hparams, "files": extra_files_of(self.model)}
        checkpoint[LIGHTNING_KEY] = payload(self.model, extra)

    def adamw_with_schedule(
        self,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        eps: float = 1e-8,
        module: nn.Module | None = None,
        no_decay: Callable[[str, nn.Parameter], bool] | None = None,
    ) -> dict:
        """The suite's one optimiser and schedule, for every module's ``configure_optimizers``.

        AdamW, with no weight decay on 1-D parameters (gains, biases) and on what ``no_decay(name, p)`` adds;
        learning rate linear warm-up over ``warmup_steps`` (at most half the run), then cosine decay to
        ``min_lr_ratio · lr`` at the last step. The run's length is the trainer's
        (``trainer.estimated_stepping_batches``: ``max_steps``, or epochs × batches / accumulation), so it is
        set once, in the trainer config, and never duplicated model-side. ``module`` defaults to ``self.model``.
        """
        module = module if module is not None else self.model
        decay, keep = [], []
        for name, p in module.named_parameters():
            if p.requires_grad:
                (keep if p.ndim < 2 or (no_decay is not None and no_decay(name, p)) else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        warmup = min(warmup_steps, total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def export(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write the model as ``config.json`` + ``model.safetensors``."""
        return save_export(self.model, directory, extra)
