"""The GPT head: the language model on the shared backbone and its tools (Hugging Face import, Lightning
pre-training, GPT-1 fine-tuning, generate / score / few-shot CLIs, the scaling sweep)."""

from multimodal.gpt.model import GPT, PRESETS, GPTConfig, preset

__all__ = ["GPT", "PRESETS", "GPTConfig", "preset"]
