"""Import (and export) Hugging Face GPT-2 checkpoints.

A GPT-2 directory holds ``config.json`` (``model_type: gpt2``), ``model.safetensors`` or
``pytorch_model.bin``, and the tokenizer's ``vocab.json`` + ``merges.txt``. HF's ``Conv1D`` stores
weights as ``[in, out]``; our ``nn.Linear`` wants ``[out, in]``, so those are transposed. Every shape
is checked against ours before loading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from multimodal.checkpoint import CheckpointError, load_state_file
from multimodal.config_check import fields_from_dict
from multimodal.gpt import GPT, GPTConfig
from multimodal.tokenizers import GPT2Tokenizer
from multimodal.transformer import TransformerConfig

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


@dataclass
class HFGPT2Fields:
    """The fields of a Hugging Face GPT-2 ``config.json`` we read, typed, with ``GPT2Config``'s defaults (as
    ``from_pretrained`` fills them); the many others such a file carries are left alone."""

    extra_fields_allowed = True
    model_type: str = "gpt2"
    vocab_size: int = 50257
    n_positions: int | None = None
    n_ctx: int | None = None
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False


def config_from_hf(hf: dict) -> GPTConfig:
    """Our ``GPTConfig`` from a GPT-2 ``config.json``, checked field by field: the first problem is a one-line
    ``CheckpointError`` naming the field (``n_embd: expected int, got a string "32"``)."""
    f = fields_from_dict(HFGPT2Fields, hf)
    if f.activation_function not in ACTIVATIONS:
        raise CheckpointError(f"activation_function: unsupported GPT-2 activation {f.activation_function!r}")
    if f.scale_attn_by_inverse_layer_idx or f.reorder_and_upcast_attn:
        raise CheckpointError(
            "GPT-2 variants with scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported"
        )
    if f.n_embd == 0:
        raise CheckpointError("n_embd: must be positive, got 0")
    inner = f.n_inner or 4 * f.n_embd
    context = next((n for n in (f.n_positions, f.n_ctx) if n is not None), 1024)
    try:
        backbone = TransformerConfig(
            width=f.n_embd,
            layers=f.n_layer,
            heads=f.n_head,
            mlp_ratio=inner / f.n_embd,
            activation=ACTIVATIONS[f.activation_function],
            norm_eps=f.layer_norm_epsilon,
        )
        return GPTConfig(vocab_size=f.vocab_size, context_length=context, tokenizer="gpt2", backbone=backbone)
    except (ValueError, TypeError, ZeroDivisionError, AssertionError) as e:
        raise CheckpointError(f"not a valid GPT-2 config: {(str(e).splitlines() or [type(e).__name__])[0]}") from None


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
    for i in range(config.backbone.layers):
        for ours, (theirs, transpose) in BLOCK_KEYS.items():
            w = take(f"h.{i}.{theirs}")
            out[f"transformer.blocks.{i}.{ours}"] = w.t() if transpose else w
    out["lm_head.weight"] = out["token_embedding.weight"]
    if "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], out["token_embedding.weight"]):
        raise CheckpointError("lm_head.weight differs from wte.weight: untied GPT-2 heads are not supported")
    return out


def load_hf_gpt2(directory: str | Path) -> GPT:
    """A Hugging Face GPT-2 directory → our ``GPT`` (with its tokenizer if vocab.json + merges.txt exist). The
    config is checked field by field and the weights' names and shapes against a model built on the meta device,
    so a bad directory is a one-line ``CheckpointError`` before anything large is allocated."""
    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        hf = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_path}: cannot read it as JSON ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(hf, dict) or hf.get("model_type") != "gpt2":
        found = hf.get("model_type") if isinstance(hf, dict) else None
        raise CheckpointError(f"{directory}: model_type {found!r}, expected 'gpt2'")
    try:
        config = config_from_hf(hf)
    except CheckpointError as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    state = convert_hf_state(load_state_file(_weights_file(directory)), config)
    tokenizer = GPT2Tokenizer.from_directory(directory) if (directory / "vocab.json").is_file() else None
    try:
        with torch.device("meta"):
            _check_shapes(GPT(config, tokenizer).state_dict(), state, directory)
        model = GPT(config, tokenizer)
    except (ValueError, RuntimeError, TypeError, AssertionError) as e:
        raise CheckpointError(f"{directory}: cannot build the GPT of this config: {str(e).splitlines()[0]}") from None
    own = model.state_dict()
    model.load_state_dict({k: state[k].to(v.dtype) for k, v in own.items()})
    return model.eval()


def _check_shapes(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], directory: Path) -> None:
    for k, v in own.items():
        if k not in state:
            raise CheckpointError(f"{directory}: no weight for {k}")
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{directory}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")


# -- export --------------------------------------------------------------------------------------------------
EXPORT_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "quick_gelu": "quick_gelu"}  # transformers' ACT2FN names
EOT_TOKEN = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (the alphabet of every byte-level BPE vocab.json)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_level_vocab() -> dict[str, int]:
    """Our byte tokenizer as a byte-level BPE with no merges: byte ``b`` is id ``b``, end-of-text is 256."""
    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    vocab[EOT_TOKEN] = 256
    return vocab


def hf_config_of(config: GPTConfig, eot_id: int) -> dict:
    """GPT-2 ``config.json`` for ``config``; a one-line ``CheckpointError`` naming the field GPT-2 cannot express."""
    if config.backbone.activation not in EXPORT_ACTIVATIONS:
        raise CheckpointError(f"backbone.activation {config.backbone.activation!r} has no GPT-2 equivalent")
    if not config.backbone.bias:
        # GPT-2's Conv1D layers and LayerNorms always have biases; zeros would load but train differently.
        raise CheckpointError("backbone.bias=False: GPT-2 layers always have biases")
    inner = int(config.backbone.width * config.backbone.mlp_ratio)
    if inner != config.backbone.width * config.backbone.mlp_ratio:
        raise CheckpointError(
            f"backbone.mlp_ratio {config.backbone.mlp_ratio}: width × mlp_ratio is not a whole number"
        )
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,
        "n_embd": config.backbone.width,
        "n_layer": config.backbone.layers,
        "n_head": config.backbone.heads,
        "n_inner": inner,
        "activation_function": EXPORT_ACTIVATIONS[config.backbone.activation],
        "layer_norm_epsilon": config.backbone.norm_eps,
        "resid_pdrop": config.backbone.dropout,
        "embd_pdrop": config.backbone.dropout,
        "attn_pdrop": config.backbone.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "dtype": "float32",
    }


def _hf_state(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict → GPT-2's key names (``transformer.`` prefix, Conv1D ``[in, out]``); the tied
    ``lm_head.weight`` is left out, as ``save_pretrained`` does: ``tie_word_embeddings`` restores it."""
    state = model.state_dict()
    out = {f"transformer.{theirs}": state[ours] for ours, theirs in TOP_KEYS.items()}
    for i in range(model.config.backbone.layers):
        for ours, (theirs, transpose) in BLOCK_KEYS.items():
            w = state[f"transformer.blocks.{i}.{ours}"]
            out[f"transformer.h.{i}.{theirs}"] = w.t() if transpose else w
    return {k: v.detach().float().contiguous().cpu() for k, v in out.items()}


def _write_tokenizer(model: GPT, directory: Path) -> None:
    """``vocab.json`` + ``merges.txt`` (and the ``tokenizer.json`` / ``tokenizer_config.json`` that
    ``AutoTokenizer`` reads first) for the model's tokenizer, or a one-line refusal."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    tok = model.tokenizer
    if isinstance(tok, GPT2Tokenizer):
        tok.save(directory)
    elif tok is not None and tok.name == "byte":
        (directory / "vocab.json").write_text(json.dumps(byte_level_vocab(), ensure_ascii=False) + "\n")
        # no merges: every byte stays its own token, so the ids are the UTF-8 bytes, as ours
        (directory / "merges.txt").write_text("#version: 0.2\n")
    elif tok is None:
        raise CheckpointError("tokenizer: this GPT has no tokenizer files to export (vocab.json + merges.txt)")
    else:
        raise CheckpointError(f"tokenizer {tok.name!r}: not a byte-level BPE, so GPT-2's tokenizer cannot express it")
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    merges = [
        tuple(line.split(" "))
        for line in (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#version")
    ]
    fast = HFTokenizer(models.BPE(vocab, merges))
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    fast.decoder = decoders.ByteLevel()
    fast.add_special_tokens([EOT_TOKEN])
    fast.save(str(directory / "tokenizer.json"))
    common = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN}
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPT2Tokenizer",
                **common,
                "add_prefix_space": False,
                "add_bos_token": False,
                "clean_up_tokenization_spaces": False,
                "model_max_length": model.config.context_length,
            },
            indent=2,
        )
        + "\n"
    )
    (directory / "special_tokens_map.json").write_text(json.dumps(common, indent=2) + "\n")


def export_hf_gpt2(model: GPT, directory: str | Path) -> Path:
    """Our ``GPT`` → a Hugging Face GPT-2 directory (``config.json``, ``model.safetensors`` with the tied
    embedding once, ``generation_config.json``, tokenizer files) that ``AutoModelForCausalLM`` and
    ``AutoTokenizer`` load. Whatever GPT-2 cannot express is refused with a one-line ``CheckpointError``."""
    from safetensors.torch import save_file

    if getattr(model, "kind", None) != "gpt":
        raise CheckpointError(f"a {getattr(model, 'kind', type(model).__name__)!r} model is not a GPT language model")
    if model.tokenizer is None:
        raise CheckpointError("tokenizer: this GPT has no tokenizer files to export (vocab.json + merges.txt)")
    eot = model.tokenizer.eot_id
    config = hf_config_of(model.config, eot)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(model, directory)
    save_file(_hf_state(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return directory
