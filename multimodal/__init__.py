"""The shared core of the suite: transformer backbone, GPT language model, sampling, tokenizers,
checkpoints and the Lightning CLI."""

__version__ = "0.1.0"


def load(path_or_name: str, device: str = "cpu", dtype=None):
    """Any model the CLIs take, ready for inference (``eval()``, on ``device``).

    ``path_or_name``: an export directory (``config.json`` + ``model.safetensors``), a Lightning ``.ckpt`` of
    the suite, a Hugging Face GPT-2 directory, an open_clip ``local-dir:`` directory, or a packaged demo model by name: ``"clip"``, ``"dalle"``,
    ``"judge"`` (and ``"gpt"`` once packaged). Returns the head's model: ``GPT`` (``generate`` / ``score``),
    ``DALLE`` (``generate_images``), ``CLIP`` (``classify`` / ``embed_images`` / ``embed_texts``), ...
    ``dtype``: ``"fp32"`` (default) | ``"bf16"`` | ``"fp16"`` or a ``torch.dtype``; the weights are kept in it.
    Raises ``multimodal.checkpoint.CheckpointError`` (one line) for anything it cannot load."""
    from multimodal.checkpoint import load_model

    return load_model(path_or_name, dtype=dtype).to(device).eval()
