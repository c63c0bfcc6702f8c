"""The suite's one optimiser and schedule: warm-up then cosine to ``min_lr_ratio``, the run's length from the
trainer (never a second ``max_steps`` model-side)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn

from multimodal.lightning import ModelModule


class Tiny(ModelModule):
    def __init__(self, **schedule) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.schedule = schedule
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        self.lrs.append(self.optimizers().param_groups[0]["lr"])
        return self.model(batch).pow(2).mean()

    def configure_optimizers(self):
        return self.adamw_with_schedule(**self.schedule)


@pytest.mark.parametrize("max_steps", [10, 40])
def test_schedule_spans_the_trainers_run(max_steps):
    module = Tiny(lr=1.0, weight_decay=0.1, warmup_steps=4, min_lr_ratio=0.1)
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=1))
    lrs = module.lrs
    assert len(lrs) == max_steps
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warm-up
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # then only down
    t = (max_steps - 1 - 4) / (max_steps - 4)  # the cosine ends at min_lr_ratio when the trainer's run ends
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
    groups = trainer.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]  # gains and biases are not decayed
    assert sum(p.numel() for p in groups[0]["params"]) == 16  # only the 2-D weight is
