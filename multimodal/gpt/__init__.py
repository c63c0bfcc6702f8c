"""The GPT head: the language model on the shared backbone and its tools (Hugging Face import, Lightning
pre-training, GPT-1 fine-tuning, generate / score / few-shot CLIs, the scaling sweep).

Importing it registers the head with the core (the ``multimodal.heads`` entry point ``gpt`` names this package):
the kinds ``gpt`` and ``gpt_classifier``, Hugging Face GPT-2 directories, and the packaged GPT with its note.
"""

from multimodal import registry
from multimodal.gpt.model import GPT, PRESETS, GPTConfig, preset

__all__ = ["GPT", "PRESETS", "GPTConfig", "preset"]

GPT_TASKS_NOTE = (
    "note: the packaged GPT (2.2M parameters, BPE, 128-token context) knows only data/tasks.py's world: English words "
    "in French, Spanish and German ('sky = ciel; dog = chien; cat = chat; children ='), made-up words and endings "
    "read from the prompt, 'a vs b'; not arithmetic (README, GPT-3's claims at CPU scale)"
)


def is_hf_gpt2_config(config: dict) -> bool:
    """A Hugging Face ``config.json`` of a GPT-2 (``model_type: gpt2``)."""
    return config.get("model_type") == "gpt2"


registry.declare_kind("gpt", "multimodal.gpt.model")
registry.declare_kind("gpt_classifier", "multimodal.gpt.finetune")
registry.register_directory_format(
    "hf-gpt2", kind="gpt", marker="config.json", loader="multimodal.gpt.hf:load_hf_gpt2", accepts=is_hf_gpt2_config
)
registry.register_packaged("gpt", note=GPT_TASKS_NOTE)
