"""``python -m dalle.sample "a red circle in the top left" --checkpoint runs/dalle-shapes``

Draws ``--num`` candidates in one batch (KV-cached, the suite's one decode loop), optionally reranks
them with CLIP and keeps the best ``--rerank``, and writes a grid PNG (``--out``) and/or one PNG per
image (``--out-dir``). ``--image-prompt IMG --prompt-rows R`` keeps the first R rows of the image's
codes and completes the rest. The same ``--seed`` gives the same PNG bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from multimodal.checkpoint import CheckpointError, load_model
from multimodal.cli import fail
from multimodal.sampling import SamplingSettings


class UsageError(Exception):
    """Bad input from the command line: one line on stderr, exit code 2."""


# -------------------------------------------------------------------------------------------------
# CLIP reranking


def load_clip(path: str, model_name: str | None = None):
    """The suite's CLIP from an export directory / Lightning .ckpt, or open_clip weights (``model_name``)."""
    from clip.zeroshot import load_clip as _load

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    return _load(str(p), model_name, None).eval()


@torch.no_grad()
def clip_scores(clip, images: Tensor, prompts: Sequence[str]) -> Tensor:
    """Cosine similarity of each image ``[B, 3, H, W]`` in [0, 1] with its prompt → ``[B]``."""
    v = clip.config.vision
    device = next(clip.parameters()).device
    x = images.float().to(device)
    if x.shape[-2:] != (v.image_size, v.image_size):
        x = F.interpolate(x, size=(v.image_size, v.image_size), mode="bicubic", antialias=True, align_corners=False)
    mean = torch.tensor(v.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(v.image_std, device=device).view(1, 3, 1, 1)
    img = clip.encode_image((x.clamp(0, 1) - mean) / std)
    unique = list(dict.fromkeys(prompts))
    txt = clip.encode_text(clip.tokenize(unique).to(device))
    index = torch.tensor([unique.index(p) for p in prompts], device=device)
    return (img * txt[index]).sum(-1).float().cpu()


# -------------------------------------------------------------------------------------------------
# Sampling


def image_prompt_codes(model, path: str, rows: int) -> Tensor:
    """The first ``rows`` rows of the codes of the image at ``path`` → ``[1, rows · grid]``."""
    from dalle.vae import UsageError as VAEUsageError
    from dalle.vae import load_image

    if model.vae is None:
        raise UsageError("this checkpoint carries no dVAE; image prompts need one")
    grid = model.config.image_grid
    if not 1 <= rows <= grid:
        raise UsageError(f"--prompt-rows must be in [1, {grid}] (the code grid has {grid} rows), got {rows}")
    size = model.vae.config.image_size
    try:
        from PIL import Image

        with Image.open(path) as im:
            original = im.size
        image = load_image(path, size)  # shorter side resized, centre crop
    except VAEUsageError as e:
        raise UsageError(str(e)) from None
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as e:
        raise UsageError(f"{path}: not a readable image ({type(e).__name__})") from None
    if original != (size, size):
        print(f"note: image prompt {original[0]}x{original[1]} resized to {size}x{size}", file=sys.stderr)
    device = model.text_embedding.weight.device
    codes = model.vae.encode(image[None].to(device))  # [1, h, w]
    return codes[:, :rows].flatten(1)


def sample(
    model,
    prompt: str,
    num: int = 8,
    settings: SamplingSettings | None = None,
    guidance: float | None = None,
    image_prefix: Tensor | None = None,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """``num`` images of ``prompt`` in one batch → (images ``[num, 3, H, W]`` in [0, 1], codes)."""
    from tqdm import tqdm

    text = model.tokenize([prompt]).repeat(num, 1)
    prefix = image_prefix.repeat(num, 1) if image_prefix is not None else None
    todo = model.config.image_length - (prefix.shape[1] if prefix is not None else 0)
    bar = tqdm(total=todo, desc="image tokens", unit="tok", disable=not progress, file=sys.stderr, leave=False)
    try:
        codes = model.generate_codes(text, settings, guidance, prefix, progress=lambda i: bar.update(1))
    finally:
        bar.close()
    with torch.no_grad():
        images = model.vae.decode(codes).clamp(0, 1)
    return images, codes


# -------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dalle.sample", description="Generate images from a caption with a DALL·E checkpoint."
    )
    p.add_argument("prompt", help="the caption")
    p.add_argument(
        "--checkpoint",
        help="DALL·E export directory or Lightning .ckpt (carries its dVAE); default: the packaged shapes-world "
        "demo model, reranked by the demo CLIP",
    )
    p.add_argument("--num", type=int, default=8, help="candidates drawn in one batch (default 8)")
    p.add_argument("--rerank", type=int, default=None, help="keep the K best candidates by CLIP score (needs --clip)")
    p.add_argument(
        "--clip", default=None, help="CLIP for reranking/scoring: our export dir or .ckpt, or open_clip weights"
    )
    p.add_argument("--clip-model", default=None, help="open_clip config name when --clip is an open_clip weights file")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images (default 0)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely codes at each step")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (1 = off; default: the model's own, its config's `guidance`)",
    )
    p.add_argument("--image-prompt", default=None, help="an image whose first --prompt-rows code rows are kept")
    p.add_argument("--prompt-rows", type=int, default=None, help="code rows kept from --image-prompt (default: half)")
    p.add_argument("--out", default=None, help="grid PNG to write (default dalle.png unless --out-dir is given)")
    p.add_argument("--out-dir", default=None, help="directory for one PNG per image (NN.png)")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    p.add_argument("--json", action="store_true", help="print paths and CLIP scores as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def use_demo_models(args: argparse.Namespace, root: Path | None = None) -> None:
    """No ``--checkpoint``: the packaged shapes-world DALL·E, reranked by the packaged CLIP."""
    from multimodal.demo import SHAPES_ONLY_NOTE, demo_path

    dalle = demo_path("dalle", root)
    if dalle is None:
        raise UsageError(
            "no --checkpoint given and no demo model is packaged; build it with `python -m multimodal.demo build` "
            "or train `configs/dalle/shapes.yaml` and pass --checkpoint runs/dalle-shapes"
        )
    args.checkpoint = str(dalle)
    clip = demo_path("clip", root)
    if args.clip is None and clip is not None:
        args.clip = str(clip)
    print(SHAPES_ONLY_NOTE, file=sys.stderr)


def run(args: argparse.Namespace) -> dict:
    if args.checkpoint is None:
        use_demo_models(args)
    if args.num < 1:
        raise UsageError(f"--num must be >= 1, got {args.num}")
    if args.rerank is not None and not 1 <= args.rerank <= args.num:
        raise UsageError(f"--rerank must be in [1, --num={args.num}], got {args.rerank}")
    if args.rerank is not None and args.clip is None:
        raise UsageError("--rerank needs --clip PATH (a CLIP model to score the candidates)")
    if args.prompt_rows is not None and args.image_prompt is None:
        raise UsageError("--prompt-rows needs --image-prompt IMG")
    if not args.prompt.strip():
        raise UsageError("empty prompt")
    out = Path(args.out) if args.out else (None if args.out_dir else Path("dalle.png"))
    if out is not None and out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: expected a .png path")
    if args.out_dir and Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise UsageError(f"--out-dir {args.out_dir}: exists and is not a directory")
    try:
        settings = SamplingSettings(args.temperature, args.top_k, args.top_p, args.seed)
        device = torch.device(args.device)
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device available")

    model = load_model(args.checkpoint, "dalle").to(device).eval()
    if model.vae is None:
        raise UsageError(f"{args.checkpoint}: this DALL·E checkpoint carries no dVAE to decode images")
    clip = load_clip(args.clip, args.clip_model).to(device) if args.clip else None
    prefix = None
    if args.image_prompt is not None:
        rows = args.prompt_rows if args.prompt_rows is not None else model.config.image_grid // 2
        prefix = image_prompt_codes(model, args.image_prompt, rows)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.tokenize([args.prompt])  # surfaces the truncation warning once
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guidance = model.config.guidance if args.guidance is None else args.guidance
        images, _ = sample(model, args.prompt, args.num, settings, guidance, prefix, not args.no_progress)

    scores = clip_scores(clip, images, [args.prompt] * len(images)) if clip is not None else None
    order = list(range(len(images)))
    if scores is not None:
        order = sorted(order, key=lambda i: -float(scores[i]))
    if args.rerank is not None:
        order = order[: args.rerank]
    kept = images[order]

    from dalle.vae import image_grid, save_png

    result: dict = {
        "prompt": args.prompt,
        "checkpoint": str(args.checkpoint),
        "seed": args.seed,
        "guidance": guidance,
        "images": [],
    }
    paths: list[str | None] = [None] * len(order)
    if args.out_dir:
        d = Path(args.out_dir)
        d.mkdir(parents=True, exist_ok=True)
        for r, img in enumerate(kept):
            paths[r] = str(save_png(img, d / f"{r:02d}.png"))
    if out is not None:
        cols = min(len(kept), 8)
        rows = [kept[i : i + cols] for i in range(0, len(kept), cols)]
        if len(rows) > 1 and len(rows[-1]) < cols:  # pad the last row with white
            rows[-1] = torch.cat([rows[-1], torch.ones(cols - len(rows[-1]), *kept.shape[1:])])
        result["grid"] = str(save_png(image_grid(rows), out))
    for r, i in enumerate(order):
        result["images"].append(
            {
                "rank": r,
                "candidate": i,
                "path": paths[r],
                "clip_score": round(float(scores[i]), 5) if scores is not None else None,
            }
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (UsageError, CheckpointError, ValueError) as e:
        return fail(e)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        where = result.get("grid") or args.out_dir
        scored = [x["clip_score"] for x in result["images"] if x["clip_score"] is not None]
        extra = f"; CLIP scores {', '.join(f'{s:.3f}' for s in scored)}" if scored else ""
        print(f"{len(result['images'])} image(s) of {args.prompt!r} written to {where}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
