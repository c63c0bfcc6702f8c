"""Zero-shot image classification with CLIP: which of the given labels does each image show?

    python -m clip.zeroshot --labels cat,dog image.jpg photos/
    python -m clip.zeroshot --checkpoint runs/clip-shapes --labels "red circle,blue square" img.png --json
    python -m clip.zeroshot --model ViT-B-32 --checkpoint open_clip_pytorch_model.bin --labels cat,dog a.jpg

Each label is put in every prompt template (by default OpenAI's 80 ImageNet templates, as open_clip
ships them), the normalised text embeddings of a label are averaged and normalised again; an image's
probabilities are ``softmax(100 · image · labelsᵀ)``. Text embeddings are computed once; images are
encoded in batches.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torch import Tensor

from multimodal.checkpoint import CheckpointError
from multimodal.cli import fail

DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
# Refuse images over this many pixels (PIL warns at 89M and raises at 2x that); 64M px is a 8000² photo.
MAX_IMAGE_PIXELS = 64_000_000
# packaged demo export (config.json + model.safetensors), written by `python -m multimodal.demo build`
SHAPES_DEMO = Path(__file__).resolve().parents[1] / "multimodal" / "demo_models" / "clip"


# -- prompts and label embeddings -----------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def format_prompt(template: str, label: str) -> str:
    """``template`` with ``{}`` → label and optional ``{article}`` → "a"/"an" for the label."""
    return template.format(label, article=_article(label))


@torch.no_grad()
def label_embeddings(model, labels: Sequence[str], templates: Sequence[str], batch_size: int = 256) -> Tensor:
    """Normalised, template-averaged text embeddings of ``labels`` → ``[K, E]``."""
    prompts = [format_prompt(t, label) for label in labels for t in templates]
    ids = model.tokenize(prompts)
    device = next(model.parameters()).device
    feats = torch.cat([model.encode_text(ids[i : i + batch_size].to(device)) for i in range(0, len(ids), batch_size)])
    feats = feats.view(len(labels), len(templates), -1).mean(1)  # [K, E]
    return torch.nn.functional.normalize(feats, dim=-1)


# -- images -------------------------------------------------------------------------------------
class ImageError(Exception):
    """An input that cannot be classified; the message is one line."""


def open_rgb(path: str | Path) -> Image.Image:
    """Any image PIL reads (RGBA, palette, grayscale, 16-bit, CMYK, EXIF-rotated) as upright RGB."""
    path = Path(path)
    try:  # the size check below reads only the header; PIL's global limit is left alone for other code
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError("")
                im = ImageOps.exif_transpose(im)  # also loads the pixels
                return _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{path}: refused: image too large (over {MAX_IMAGE_PIXELS // 1_000_000}M pixels; decompression bomb?)"
        ) from None
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
        msg = str(e).split("\n")[0][:160] or type(e).__name__
        raise ImageError(f"{path}: not a readable image ({msg})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits, not clip
        import numpy as np

        a = np.asarray(im).astype("float64")
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray((a / top * 255).clip(0, 255).astype("uint8"), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):  # transparent pixels over white, as a viewer shows them
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")  # palette, grayscale, CMYK, YCbCr, 1-bit ...


def preprocess(im: Image.Image, vision) -> Tensor:
    """open_clip's eval transform: resize the short side (bicubic), centre crop, normalise → ``[3, S, S]``."""
    s = vision.image_size
    w, h = im.size
    if (w, h) != (s, s):
        k = s / min(w, h)
        nw, nh = max(s, round(w * k)), max(s, round(h * k))
        resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}.get(
            vision.interpolation, Image.Resampling.BICUBIC
        )
        im = im.resize((nw, nh), resample)
        left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))  # torchvision's CenterCrop
        im = im.crop((left, top, left + s, top + s))
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(s, s, 3).permute(2, 0, 1).float() / 255
    mean = torch.tensor(vision.image_mean).view(3, 1, 1)
    std = torch.tensor(vision.image_std).view(3, 1, 1)
    return (x - mean) / std


def expand_inputs(items: Iterable[str]) -> list[Path]:
    """Files as given; folders → their image files (recursively, sorted)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


# -- models -------------------------------------------------------------------------------------
def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
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


def load_clip(checkpoint: str | None, model: str | None, pretrained: str | None):
    """Our ``CLIP`` from the CLI's model flags (see ``--help``)."""
    from clip.openclip import load_openclip

    if model == "shapes" and checkpoint is None:
        if not (SHAPES_DEMO / "config.json").is_file():
            raise CheckpointError(
                f"the shapes demo model is not packaged ({SHAPES_DEMO} missing); build it with "
                f"`python -m multimodal.demo build`, or train `configs/clip/shapes.yaml` and pass --checkpoint runs/clip-shapes"
            )
        checkpoint, model = str(SHAPES_DEMO), None
    if checkpoint is not None:
        path = Path(checkpoint)
        if model is not None:  # an open_clip weights file for the named config
            return load_openclip(model, path)
        if path.is_file() and path.suffix in (".bin", ".pt", ".pth", ".safetensors"):
            raise CheckpointError(f"{path}: open_clip weights need --model NAME (e.g. --model ViT-B-32)")
        from multimodal.checkpoint import load_model

        return _load_fast(path) if path.is_dir() else load_model(path, "clip")
    name, tag = model or DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED
    file, cfg = _pretrained_file(name, tag)
    quick_gelu = True if (cfg.get("quick_gelu") or tag == "openai") else None
    return load_openclip(name, file, quick_gelu=quick_gelu, preprocess=cfg)


def _load_fast(path: Path):
    """Our export directory without a random init (the weights are assigned onto a meta-device model)."""
    from multimodal.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model, load_state_file

    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return load_model(path, "clip")  # lets checkpoint.py word the error
    if meta.get("kind") != "clip" or not (path / WEIGHTS_FILE).is_file():
        return load_model(path, "clip")
    from clip.model import CLIP
    from clip.openclip import build_from_state
    from multimodal.checkpoint import config_from_dict

    try:
        config = config_from_dict(CLIP, meta.get("config", {}))
        return build_from_state(config, load_state_file(path / WEIGHTS_FILE))
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: weights do not match its config ({str(e).splitlines()[0][:160]})") from None


# -- CLI ----------------------------------------------------------------------------------------
def parse_labels(text: str) -> list[str]:
    labels = [x.strip() for x in text.split(",")]
    if not text.strip() or not all(labels):
        raise ValueError("--labels needs a comma-separated list of non-empty labels, e.g. --labels cat,dog")
    seen, dups = set(), []
    for x in labels:
        if x.lower() in seen:
            dups.append(x)
        seen.add(x.lower())
    if dups:
        raise ValueError(f"duplicate labels: {', '.join(dict.fromkeys(dups))}")
    if len(labels) < 2:
        raise ValueError("give at least two labels (probabilities are relative to the other labels)")
    return labels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clip.zeroshot",
        description="Zero-shot classification of images among the given labels with a CLIP model.",
        epilog=(
            f"With no model flags: open_clip {DEFAULT_MODEL} {DEFAULT_PRETRAINED} (downloaded once; needs network the "
            "first time). --model shapes: the suite's demo model of the shapes world."
        ),
    )
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--labels", required=True, help="comma-separated labels, e.g. cat,dog")
    p.add_argument("--checkpoint", help="our export dir / Lightning .ckpt, or an open_clip weights file with --model")
    p.add_argument(
        "--model", help="open_clip model name (ViT-B-32, ViT-L-14, ...) or config json; 'shapes' for the demo"
    )
    p.add_argument("--pretrained", help=f"open_clip pretrained tag (default {DEFAULT_PRETRAINED} for {DEFAULT_MODEL})")
    p.add_argument(
        "--template",
        action="append",
        help="prompt template with {} for the label (repeatable); default: OpenAI's 80 ImageNet templates",
    )
    p.add_argument("--top-k", type=int, default=None, help="print only the N most probable labels")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help='one line per image: {"image": PATH, "probs": {LABEL: P}}')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        labels = parse_labels(args.labels)
        if args.top_k is not None and args.top_k < 1:
            raise ValueError("--top-k must be at least 1")
        if args.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        if args.pretrained and args.checkpoint:
            raise ValueError("--pretrained names open_clip's downloadable weights; with --checkpoint leave it out")
        templates = args.template
        if templates:
            for t in templates:
                if "{}" not in t:
                    raise ValueError(f"template {t!r} has no {{}} for the label")
                try:
                    format_prompt(t, "x")
                except (IndexError, KeyError, ValueError) as e:
                    raise ValueError(f"template {t!r} is not a valid pattern ({e})") from None
        paths = expand_inputs(args.images)
        if not paths:
            raise ValueError("no images found in the given folders")
        model = load_clip(args.checkpoint, args.model, args.pretrained).to(args.device)
        if templates is None:
            from clip.openclip import imagenet_templates

            templates = imagenet_templates()
    except (ValueError, CheckpointError, OSError) as e:
        return fail(e)

    failures = 0
    with torch.inference_mode():
        classes = label_embeddings(model, labels, templates)  # [K, E], once
        scale = float(model.logit_scale.exp().clamp(max=100.0))  # the learned temperature (100 for open_clip's)
        for start in range(0, len(paths), args.batch_size):
            ok: list[Path] = []
            tensors = []
            for path in paths[start : start + args.batch_size]:
                try:
                    tensors.append(preprocess(open_rgb(path), model.config.vision))
                    ok.append(path)
                except ImageError as e:
                    print(f"error: {e}", file=sys.stderr)
                    failures += 1
            if not tensors:
                continue
            feats = model.encode_image(torch.stack(tensors).to(args.device))  # [b, E]
            probs = (scale * feats @ classes.t()).softmax(-1).cpu()  # [b, K]
            for path, row in zip(ok, probs):
                order = row.argsort(descending=True).tolist()[: args.top_k or len(labels)]
                if args.json:
                    print(
                        json.dumps({"image": str(path), "probs": {labels[i]: round(float(row[i]), 6) for i in order}})
                    )
                else:
                    print(f"{path}: " + ", ".join(f"{labels[i]} {float(row[i]):.3f}" for i in order))
            sys.stdout.flush()
    return 2 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
