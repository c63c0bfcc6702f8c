"""Import (and export) Hugging Face GPT-2 checkpoints.

A GPT-2 directory holds ``config.json`` (``model_type: gpt2``), ``model.safetensors`` or
``pytorch_model.bin``, and the tokenizer's ``vocab.json`` + ``merges.txt``. HF's ``Conv1D`` stores
weights as ``[in, out]``; our ``nn.Linear`` wants ``[out, in]``, so those are transposed. Every shape
is checked against ours before loading.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from multimodal.checkpoint import CheckpointError, load_state_file
from multimodal.gpt import GPT, GPTConfig
from multimodal.tokenizers import GPT2Tokenizer

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
# our key (per block) -> (HF key, transpose?)
BLOCK_KEYS = {
    "ln_1.weight": ("ln_1.weight", False),
    "ln_1.bias": ("ln_1.bias", False),
    "attn.qkv.weight": ("attn.c_attn.weight", True),
    "attn.qkv.bias": ("attn.c_attn.bias", False),
    "attn.proj.weight": ("attn.c_proj.weight", True),
    "attn.proj.bias": ("attn.c_proj.bias", False),
    "ln_2.weight": ("ln_2.weight", False),
    "ln_2.bias": ("ln_2.bias", False),
    "mlp.fc.weight": ("mlp.c_fc.weight", True),
    "mlp.fc.bias": ("mlp.c_fc.bias", False),
    "mlp.proj.weight": ("mlp.c_proj.weight", True),
    "mlp.proj.bias": ("mlp.c_proj.bias", False),
}
TOP_KEYS = {
    "token_embedding.weight": "wte.weight",
    "position_embedding.weight": "wpe.weight",
    "ln_final.weight": "ln_f.weight",
    "ln_final.bias": "ln_f.bias",
}


def config_from_hf(hf: dict) -> GPTConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"unsupported GPT-2 activation {act!r}")
    width = hf["n_embd"]
    inner = hf.get("n_inner") or 4 * width
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise CheckpointError(
            "GPT-2 variants with scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported"
        )
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        context_length=hf.get("n_positions", hf.get("n_ctx", 1024)),
        width=width,
        layers=hf["n_layer"],
        heads=hf["n_head"],
        mlp_ratio=inner / width,
        activation=ACTIVATIONS[act],
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tokenizer="gpt2",
    )


def _weights_file(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin")


def convert_hf_state(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Map a GPT-2 state dict (with or without the ``transformer.`` prefix) onto our key names."""
    prefix = "transformer." if any(k.startswith("transformer.") for k in state) else ""
    out = {}

    def take(key: str) -> torch.Tensor:
        full = prefix + key
        if full not in state:
            raise CheckpointError(f"GPT-2 weights lack {full!r}")
        return state[full]

    for ours, theirs in TOP_KEYS.items():
        out[ours] = take(theirs)
    for i in range(config.layers):
        for ours, (theirs, transpose) in BLOCK_KEYS.items():
            w = take(f"h.{i}.{theirs}")
            out[f"transformer.blocks.{i}.{ours}"] = w.t() if transpose else w
    out["lm_head.weight"] = out["token_embedding.weight"]
    if "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], out["token_embedding.weight"]):
        raise CheckpointError("lm_head.weight differs from wte.weight: untied GPT-2 heads are not supported")
    return out


def load_hf_gpt2(directory: str | Path) -> GPT:
    """A Hugging Face GPT-2 directory → our ``GPT`` (with its tokenizer if vocab.json + merges.txt exist)."""
    directory = Path(directory)
    hf = json.loads((directory / "config.json").read_text())
    if hf.get("model_type") != "gpt2":
        raise CheckpointError(f"{directory}: model_type {hf.get('model_type')!r}, expected 'gpt2'")
    config = config_from_hf(hf)
    state = convert_hf_state(load_state_file(_weights_file(directory)), config)
    tokenizer = GPT2Tokenizer.from_directory(directory) if (directory / "vocab.json").is_file() else None
    model = GPT(config, tokenizer)
    own = model.state_dict()
    for k, v in own.items():
        if k not in state:
            raise CheckpointError(f"{directory}: no weight for {k}")
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{directory}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    model.load_state_dict({k: state[k].to(v.dtype) for k, v in own.items()})
    return model.eval()
