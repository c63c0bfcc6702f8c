"""Import and export open_clip / OpenAI CLIP weights (ViT towers) to and from ``clip.model.CLIP``.

Any ViT-based open_clip model config works, named (``ViT-B-32``, ``ViT-B-32-quickgelu``, ``ViT-B-16``,
``ViT-L-14`` …) or as a json file (an open_clip model config, or the ``open_clip_config.json`` the hub
ships), with a local weights file: a plain state dict (``.pt``, ``.bin``, ``.safetensors``) or a training
checkpoint ``{"state_dict": {"module.…"}}``. Keys are mapped one-to-one and every shape is checked.
GELU vs QuickGELU comes from the config (``"quick_gelu": true``, names ending in ``-quickgelu``, or the
``openai`` pretrained tag), never from the weights.

    python -m clip.openclip import --model ViT-B-32 --weights open_clip_pytorch_model.bin --out runs/vit-b-32
    python -m clip.openclip export --checkpoint runs/vit-b-32 --out exported/   # open_clip's local-dir: layout

An exported directory (``open_clip_config.json`` with ``model_cfg`` + ``preprocess_cfg``, and
``open_clip_model.safetensors``) loads with ``open_clip.create_model_and_transforms("local-dir:exported")``, and
back with ``multimodal.load("exported")`` or any ``--checkpoint``.

Reading open_clip's package costs seconds of imports (it pulls in transformers); the tokenizer, the
templates and the model configs are read straight from its files instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clip.model import CLIP, CLIPConfig, TextConfig, VisionConfig, imagenet_templates  # noqa: F401 - re-exported
from clip.openclip_config import (  # noqa: F401 - re-exported: the config half of the converter
    config_from_openclip,
    config_to_openclip,
    known_model_names,
    openclip_model_config,
)
from multimodal.checkpoint import CheckpointError, load_model, load_state_file, packaged_model_path, save_export
from multimodal.cli import check_writable, fail

# Keys that OpenAI's original state dicts carry besides weights.
_IGNORED_KEYS = {"input_resolution", "context_length", "vocab_size", "attn_mask", "visual.attn_mask"}


# -- state dicts --------------------------------------------------------------------------------
_BLOCK_RENAMES = [
    ("attn.in_proj_weight", "attn.qkv.weight"),
    ("attn.in_proj_bias", "attn.qkv.bias"),
    ("attn.out_proj.", "attn.proj."),
    ("mlp.c_fc.", "mlp.fc."),
    ("mlp.c_proj.", "mlp.proj."),
]
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def _ours(key: str) -> str | None:
    """open_clip key → our key (None for keys we do not know)."""
    if key.startswith("text."):
        key = key[len("text.") :]  # CustomTextCLIP keeps the text tower under ``text.``
    m = _BLOCK.match(key)
    if m:
        rest = m.group(3)
        for a, b in _BLOCK_RENAMES:
            if rest.startswith(a):
                rest = b + rest[len(a) :]
        return f"{'visual' if m.group(1) else 'text'}.transformer.blocks.{m.group(2)}.{rest}"
    if key.startswith("visual."):
        return key
    simple = {
        "token_embedding.weight": "text.token_embedding.weight",
        "positional_embedding": "text.positional_embedding",
        "ln_final.weight": "text.ln_final.weight",
        "ln_final.bias": "text.ln_final.bias",
        "text_projection": "text.text_projection",
        "text_projection.weight": "text.text_projection",  # proj_bias configs use nn.Linear ([E, W])
        "text_projection.bias": "text.text_projection_bias",
        "logit_scale": "logit_scale",
    }
    return simple.get(key)


def unwrap_state_dict(obj: Any, path: str | Path = "weights") -> dict[str, Tensor]:
    """A flat state dict from a plain one or an open_clip training checkpoint (``state_dict``, ``module.``)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DDP
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def convert_openclip_state_dict(state: dict[str, Tensor], config: CLIPConfig, path: str | Path = "weights") -> dict:
    """open_clip state dict → ours, every key accounted for and every shape checked."""
    with torch.device("meta"):  # shapes only
        reference = CLIP(config)
    own = reference.state_dict()
    out: dict[str, Tensor] = {}
    unknown = []
    for k, v in state.items():
        if k in _IGNORED_KEYS:
            continue
        ours = _ours(k)
        if ours is None or ours not in own:
            unknown.append(k)
            continue
        if k == "text_projection.weight":
            v = v.t()
        if tuple(v.shape) != tuple(own[ours].shape):
            raise CheckpointError(
                f"{path}: {k} has shape {tuple(v.shape)}, the config needs {tuple(own[ours].shape)} "
                f"(wrong --model for these weights?)"
            )
        out[ours] = v
    missing = [k for k in own if k not in out]
    if unknown or missing:
        raise CheckpointError(
            f"{path}: weights do not match the config (unexpected {unknown[:3]}{'…' if len(unknown) > 3 else ''}, "
            f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}; wrong --model?)"
        )
    return out


def to_openclip_state_dict(model: CLIP) -> dict[str, Tensor]:
    """Our state dict → open_clip's key names and layouts (loads into ``open_clip.create_model``)."""
    inverse = [(b, a) for a, b in _BLOCK_RENAMES]
    out = {}
    for k, v in model.state_dict().items():
        m = re.match(r"^(visual|text)\.transformer\.blocks\.(\d+)\.(.+)$", k)
        if m:
            rest = m.group(3)
            for a, b in inverse:
                if rest.startswith(a):
                    rest = b + rest[len(a) :]
            key = f"{'visual.' if m.group(1) == 'visual' else ''}transformer.resblocks.{m.group(2)}.{rest}"
        elif k.startswith("visual.") or k == "logit_scale":
            key = k
        elif k == "text.text_projection" and model.config.text.proj_bias:
            key, v = "text_projection.weight", v.t()
        elif k == "text.text_projection_bias":
            key = "text_projection.bias"
        else:
            key = k[len("text.") :]
        out[key] = v.detach().contiguous()
    return out


DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"


# -- loading any CLIP the CLIs take ----------------------------------------------------------------
def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers, asked through ``huggingface_hub`` so its endpoint (``HF_ENDPOINT``,
    mirrors), proxies and offline switches (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``) apply."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")  # also when set after import
    if constants.HF_HUB_OFFLINE or (offline or "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - offline, DNS, proxy and TLS failures come in many types
        return False


def _pretrained_file(name: str, tag: str) -> tuple[str, dict]:
    """The local weights file of open_clip's pretrained ``name``/``tag`` (downloaded once if online)."""
    try:
        from open_clip import pretrained as P  # noqa: N812
    except ImportError:
        raise CheckpointError("open_clip is not installed (pip install open_clip_torch)") from None
    cfg = P.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = P.list_pretrained_tags_by_model(name)
        raise CheckpointError(
            f"no pretrained {name!r} weights tagged {tag!r} (known tags: {', '.join(tags) or 'none'})"
        )
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        for fn in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
            cached = try_to_load_from_cache(repo, fn)
            if isinstance(cached, str):
                return cached, cfg
    if not _hub_reachable():
        raise CheckpointError(
            f"{name} {tag} weights are not cached and this machine is offline; use --checkpoint DIR (an export "
            f"of this suite, e.g. --model shapes), or --model NAME --checkpoint open_clip_weights.bin"
        )
    try:
        return P.download_pretrained(cfg), cfg
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise CheckpointError(f"could not download {name} {tag}: {str(e).splitlines()[0][:200]}") from None


def load_pretrained(name_and_tag: str) -> CLIP:
    """Our ``CLIP`` from open_clip's pretrained ``NAME`` or ``NAME/TAG`` (``ViT-B-32/openai``; the default tag
    when none is given), downloaded once: ``multimodal.load("open_clip:ViT-B-32/openai")``."""
    name, _, tag = name_and_tag.partition("/")
    tag = tag or DEFAULT_PRETRAINED
    file, cfg = _pretrained_file(name, tag)
    quick_gelu = True if (cfg.get("quick_gelu") or tag == "openai") else None
    return load_openclip(name, file, quick_gelu=quick_gelu, preprocess=cfg)


def load_clip(checkpoint: str | Path | None = None, model: str | None = None, pretrained: str | None = None) -> CLIP:
    """The CLIs' CLIP flags → ``multimodal.load``: ``checkpoint`` anything it reads (an export directory, a Lightning
    ``.ckpt``, the packaged ``"clip"``, an open_clip ``local-dir:``), or with ``model`` (an open_clip config name)
    an open_clip weights file; neither: open_clip's pretrained ``model`` / ``pretrained`` (downloaded once).
    ``model="shapes"``: the packaged demo."""
    import multimodal

    if model == "shapes" and checkpoint is None:
        return multimodal.load(packaged_model_path("clip"), "clip")
    if checkpoint is not None:
        return multimodal.load(checkpoint, "clip", arch=model)
    return multimodal.load(f"open_clip:{model or DEFAULT_MODEL}/{pretrained or DEFAULT_PRETRAINED}", "clip")


# -- loading ------------------------------------------------------------------------------------
def build_from_state(config: CLIPConfig, state: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> CLIP:
    """Build ``CLIP(config)`` without a random init (meta device) and assign ``state`` (our key names)."""
    with torch.device("meta"):
        model = CLIP(config)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model.eval()
    return model


def read_weights(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory; pass the weights file (open_clip_pytorch_model.bin, .safetensors)")
    try:
        state = load_state_file(path)
    except CheckpointError as e:
        if "pickled Python objects" in str(e):
            raise CheckpointError(
                f"{path}: not a plain state dict (OpenAI's TorchScript archives are not read; "
                f"use open_clip's .bin/.safetensors weights)"
            ) from None
        raise
    return unwrap_state_dict(state, path)


def load_openclip(
    model: str | Path | dict,
    weights: str | Path,
    quick_gelu: bool | None = None,
    preprocess: dict | None = None,
) -> CLIP:
    """Our ``CLIP`` from an open_clip config (name, json path or dict) and a local weights file."""
    cfg = model if isinstance(model, dict) else openclip_model_config(model)
    try:
        config = config_from_openclip(cfg, quick_gelu, preprocess)
    except CheckpointError as e:
        if isinstance(model, dict) or not Path(model).is_file():
            raise
        raise CheckpointError(f"{model}: {e}") from None
    state = convert_openclip_state_dict(read_weights(weights), config, weights)
    return build_from_state(config, state)


OPENCLIP_CONFIG_FILE = "open_clip_config.json"
OPENCLIP_WEIGHTS_FILE = "open_clip_model.safetensors"
# the weights open_clip's local-dir: loader looks for, in its order of preference
_OPENCLIP_WEIGHTS = (
    OPENCLIP_WEIGHTS_FILE,
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)


def export_openclip(model: CLIP, directory: str | Path) -> Path:
    """Our ``CLIP`` → open_clip's ``local-dir:`` layout: ``open_clip_config.json`` (``model_cfg`` and
    ``preprocess_cfg``: mean, std, interpolation, resize_mode) and ``open_clip_model.safetensors``.

    ``open_clip.create_model_and_transforms("local-dir:" + directory)`` loads it. What open_clip cannot express
    (another model kind, a tokenizer other than CLIP's BPE) is refused with a one-line ``CheckpointError``."""
    from safetensors.torch import save_file

    if getattr(model, "kind", None) != "clip":
        raise CheckpointError(f"a {getattr(model, 'kind', type(model).__name__)!r} model is not a CLIP")
    model_cfg = config_to_openclip(model.config)
    preprocess_cfg = model_cfg.pop("preprocess_cfg")
    directory = Path(directory)
    if directory.is_file():
        raise CheckpointError(f"{directory}: a file; the export is a directory (open_clip's local-dir: layout)")
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.float().contiguous().cpu() for k, v in to_openclip_state_dict(model).items()}
    save_file(state, str(directory / OPENCLIP_WEIGHTS_FILE), metadata={"format": "pt"})
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (directory / OPENCLIP_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_openclip_dir(directory: str | Path) -> CLIP:
    """Our ``CLIP`` from an open_clip ``local-dir:`` directory (``open_clip_config.json`` + weights)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such directory (open_clip's local-dir: layout)")
    weights = next((directory / n for n in _OPENCLIP_WEIGHTS if (directory / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{directory}: {OPENCLIP_CONFIG_FILE} but no weights ({OPENCLIP_WEIGHTS_FILE})")
    return load_openclip(directory / OPENCLIP_CONFIG_FILE, weights)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clip.openclip", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="open_clip weights → our export directory")
    imp.add_argument("--model", required=True, help="open_clip model name (ViT-B-32, ...) or config json")
    imp.add_argument("--weights", required=True, help="local .bin/.pt/.safetensors (plain or training checkpoint)")
    imp.add_argument("--out", required=True, help="export directory to write (config.json + model.safetensors)")
    imp.add_argument("--quick-gelu", action="store_true", help="weights trained with QuickGELU (OpenAI's own)")
    exp = sub.add_parser("export", help="our checkpoint → open_clip's local-dir: layout (same as multimodal.export)")
    exp.add_argument("--checkpoint", required=True, help="our export directory or Lightning .ckpt")
    exp.add_argument("--out", required=True, help="directory to write (open_clip_config.json + weights)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "import":
            out = Path(args.out)
            if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
                raise CheckpointError(f"{out}: exists and is not a model export; refusing to write into it")
            model = load_openclip(args.model, args.weights, quick_gelu=True if args.quick_gelu else None)
            save_export(model, out, {"source": f"open_clip {args.model}"})
            print(f"wrote {out} ({model.num_params() / 1e6:.1f}M parameters)")
        else:
            if Path(args.out).is_dir():
                raise CheckpointError(f"--out {args.out}: a directory; give the weights file to write")
            check_writable(args.out)
            model = load_model(args.checkpoint, "clip")
            out = export_openclip(model, args.out)
            print(f"wrote {out} (open_clip.create_model_and_transforms('local-dir:{out}'))")
    except (CheckpointError, OSError, ValueError) as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
