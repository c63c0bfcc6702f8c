"""The shared core of the suite: transformer backbone, sampling, tokenizers, the load factory, checkpoints and the
Lightning CLI. The heads (GPT, CLIP, DALL·E, the judge) register themselves with it (``multimodal.registry``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__version__ = "0.1.0"


def load(
    path_or_name: str | Path,
    kind: str | tuple[str, ...] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    arch: str | Path | dict | Any = None,
) -> nn.Module:
    """Any model the suite reads, ready for inference (``eval()``, on ``device``): the one load factory.

    ``path_or_name``: an export directory (``config.json`` + ``model.safetensors``), a Lightning ``.ckpt`` of
    the suite, a Hugging Face GPT-2 directory, an open_clip ``local-dir:`` directory (or ``"local-dir:DIR"``), an
    open_clip weights file with ``arch="ViT-B-32"`` (its model name or config json), or a packaged model by name:
    ``"gpt"``, ``"clip"``, ``"dalle"``, ``"judge"``. Returns the head's model: ``GPT`` (``generate`` / ``score``),
    ``DALLE`` (``generate_images``), ``CLIP`` (``classify`` / ``embed_images`` / ``embed_texts``), ...
    ``kind``: the kind wanted (``"gpt"``, or a tuple of kinds); a checkpoint of another kind is refused.
    ``dtype``: ``"fp32"`` (default) | ``"bf16"`` | ``"fp16"`` or a ``torch.dtype``; the weights are kept in it.
    Raises ``multimodal.checkpoint.CheckpointError`` (one line) for anything it cannot load."""
    from multimodal.checkpoint import load as load_checkpoint

    return load_checkpoint(path_or_name, kind, device=device, dtype=dtype, arch=arch)
