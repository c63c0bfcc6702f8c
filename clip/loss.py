"""CLIP's symmetric contrastive loss, with features gathered across data-parallel ranks.

Each image should pick its own caption among all captions of the (global) batch and each caption its
own image: ``(CE(scale · I Tᵀ, labels) + CE(scale · T Iᵀ, labels)) / 2``.

Under DDP every rank gathers the others' features *with gradients*
(``torch.distributed.nn.functional.all_gather``), so the loss is the one of the global batch. With
``local_loss`` a rank only computes the rows of its own samples against the global batch (``B × N``
logits instead of ``N × N``, as open_clip's ``--local-loss``); the mean over ranks is the same loss and
DDP's gradient averaging gives the same gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def gather_features(image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate ``[B, E]`` features of every rank in rank order → ``[N, E]``, gradients flowing back to each."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(image), dim=0), torch.cat(all_gather(text), dim=0)


class ClipLoss(nn.Module):
    def __init__(self, local_loss: bool = False) -> None:
        super().__init__()
        self.local_loss = local_loss

    def forward(self, image: Tensor, text: Tensor, logit_scale: Tensor, hard_negatives: Tensor | None = None) -> Tensor:
        """``image, text [B, E]`` (normalised) and ``logit_scale`` (already exponentiated) → scalar loss.

        ``hard_negatives [M, E]``: extra captions (this rank's) that every image must rank below its own, added
        to the image → text side only, as in NegCLIP (Yuksekgonul et al., 2023).
        """
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world == 1:
            logits = logit_scale * image @ text.t()  # [B, B]
            labels = torch.arange(image.shape[0], device=image.device)
            logits_i = _with_negatives(logits, image, hard_negatives, logit_scale)  # [B, B + M]
            return (F.cross_entropy(logits_i.float(), labels) + F.cross_entropy(logits.t().float(), labels)) / 2
        all_image, all_text = gather_features(image, text)  # [N, E]
        if self.local_loss:
            logits_i = logit_scale * image @ all_text.t()  # [B, N]
            logits_t = logit_scale * text @ all_image.t()  # [B, N]
            labels = torch.arange(image.shape[0], device=image.device) + dist.get_rank() * image.shape[0]
        else:
            logits_i = logit_scale * all_image @ all_text.t()  # [N, N]
            logits_t = logits_i.t()
            labels = torch.arange(all_image.shape[0], device=image.device)
            if hard_negatives is not None:
                raise ValueError("hard negatives across ranks need local_loss=True (each rank scores its own)")
        logits_i = _with_negatives(logits_i, image, hard_negatives, logit_scale)
        return (F.cross_entropy(logits_i.float(), labels) + F.cross_entropy(logits_t.float(), labels)) / 2


def _with_negatives(logits: Tensor, image: Tensor, negatives: Tensor | None, logit_scale: Tensor) -> Tensor:
    """Image → text logits ``[B, N]`` with one column per hard-negative caption appended ``[B, N + M]``."""
    if negatives is None or negatives.shape[0] == 0:
        return logits
    return torch.cat([logits, logit_scale * image @ negatives.t()], dim=1)


def contrastive_accuracy(image: Tensor, text: Tensor) -> Tensor:
    """Fraction of images whose most similar text in the batch is their own ``[B, E] x [B, E]``."""
    return (image @ text.t()).argmax(-1).eq(torch.arange(image.shape[0], device=image.device)).float().mean()
