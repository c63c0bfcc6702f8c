"""Tiny GPTs for the few-shot, score, fine-tune and scaling tests (no downloads, a few ms each)."""

from __future__ import annotations

import torch

from multimodal.gpt import GPT, GPTConfig


def tiny_gpt(context_length: int = 128, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        GPTConfig(vocab_size=257, context_length=context_length, backbone={"width": 32, "layers": 2, "heads": 4})
    ).eval()


@torch.no_grad()
def always_predicts(char: str, context_length: int = 128) -> GPT:
    """A GPT built so that whatever the context, the next byte is ``char`` with probability ≈ 1.

    The final LayerNorm's gain is zeroed, so every hidden state equals its bias ``β``; the tied LM head
    gives logits ``β · E_v``, and the embedding of ``char`` is set along ``β`` with a large norm."""
    model = tiny_gpt(context_length)
    beta = torch.randn(model.config.backbone.width)
    beta /= beta.norm()
    model.ln_final.weight.zero_()
    model.ln_final.bias.copy_(beta)
    model.token_embedding.weight[ord(char)] = 50 * beta
    return model
