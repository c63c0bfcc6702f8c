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
from typing import TYPE_CHECKING

from dalle.pipeline import ImageSamples, generate_images
from multimodal.checkpoint import SHAPES_ONLY_NOTE, CheckpointError, load_model, packaged_path
from multimodal.cli import (
    UsageError,
    add_device_flag,
    add_precision_flag,
    add_progress_flag,
    check_finite,
    check_writable,
    fail,
    resolve_device,
    resolve_precision,
)
from multimodal.images import ImageError, open_image, save_png, tile
from multimodal.sampling import SamplingSettings

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from clip.model import CLIP
    from dalle.model import DALLE

MAX_NUM = 4096  # candidates per run (sampled --batch-size at a time)


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
    p.add_argument("--num", type=int, default=8, help=f"candidates drawn (default 8, at most {MAX_NUM})")
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
    p.add_argument("--batch-size", type=int, default=64, help="sequences sampled per forward batch (default 64)")
    add_device_flag(p)
    add_precision_flag(p)
    p.add_argument("--json", action="store_true", help="print paths and CLIP scores as JSON")
    add_progress_flag(p)
    return p


def use_demo_models(args: argparse.Namespace, root: Path | None = None) -> None:
    """No ``--checkpoint``: the packaged shapes-world DALL·E, reranked by the packaged CLIP."""
    dalle = packaged_path("dalle", root)
    if dalle is None:
        raise UsageError(
            "no --checkpoint given and no demo model is packaged; build it with `python -m multimodal.demo build` "
            "or train `configs/dalle/shapes.yaml` and pass --checkpoint runs/dalle-shapes"
        )
    args.checkpoint = str(dalle)
    clip = packaged_path("clip", root)
    if args.clip is None and clip is not None:
        args.clip = str(clip)
    print(SHAPES_ONLY_NOTE, file=sys.stderr)


def check_args(args: argparse.Namespace) -> Path | None:
    """Every flag that can be checked before loading a model (one ``UsageError`` line each); returns the grid
    PNG to write (None with ``--out-dir`` alone)."""
    if not 1 <= args.num <= MAX_NUM:
        raise UsageError(f"--num must be in [1, {MAX_NUM}], got {args.num}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
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
    if args.prompt_rows is not None and args.prompt_rows < 1:
        raise UsageError(f"--prompt-rows must be >= 1, got {args.prompt_rows}")
    for target in (out, Path(args.out_dir) if args.out_dir else None):
        if target is not None:
            check_writable(target)
    check_finite("--guidance", args.guidance)
    return out


def load_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[DALLE, CLIP | None]:
    """The DALL·E of ``--checkpoint`` (it must carry its dVAE) and the CLIP of ``--clip``, if any."""
    model = load_model(args.checkpoint, "dalle", dtype).to(device).eval()
    if model.vae is None:
        raise UsageError(f"{args.checkpoint}: this DALL·E checkpoint carries no dVAE to decode images")
    clip = None
    if args.clip:
        from clip.openclip import load_clip

        clip = load_clip(args.clip, args.clip_model).to(device, dtype).eval()
    return model, clip


def read_image_prompt(args: argparse.Namespace, model: DALLE) -> Image.Image | None:
    """``--image-prompt`` opened (a note when the pipeline will resize it), after checking ``--prompt-rows``
    against the model's grid."""
    grid = model.config.image_grid
    if args.prompt_rows is not None and args.prompt_rows > grid:
        raise UsageError(
            f"--prompt-rows must be in [1, {grid}] (the code grid has {grid} rows), got {args.prompt_rows}"
        )
    if args.image_prompt is None:
        return None
    try:
        image = open_image(args.image_prompt)
    except ImageError as e:
        raise UsageError(str(e)) from None
    size = model.vae.config.image_size
    if image.size != (size, size):
        w, h = image.size
        print(f"note: image prompt {w}x{h} resized to {size}x{size}", file=sys.stderr)
    return image


def warn_if_truncated(model: DALLE, prompt: str) -> None:
    """The caption's truncation warning as one ``warning:`` line (the pipeline then runs with warnings off)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.tokenize([prompt])
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def write_images(args: argparse.Namespace, samples: ImageSamples, out: Path | None, guidance: float) -> dict:
    """The kept images as PNGs (``--out-dir``: one each; ``out``: the grid) → the JSON ``--json`` prints."""
    result: dict = {
        "prompt": args.prompt,
        "checkpoint": str(args.checkpoint),
        "seed": args.seed,
        "guidance": guidance,
        "images": [],
    }
    paths: list[str | None] = [None] * len(samples.images)
    if args.out_dir:
        d = Path(args.out_dir)
        for r, image in enumerate(samples.images):
            paths[r] = str(save_png(image, d / f"{r:02d}.png"))
    if out is not None:
        result["grid"] = str(save_png(tile(samples.images, 8), out))
    for r, i in enumerate(samples.candidates):
        score = samples.scores[r] if samples.scores is not None else None
        result["images"].append(
            {
                "rank": r,
                "candidate": i,
                "path": paths[r],
                "clip_score": round(float(score), 5) if score is not None else None,
            }
        )
    return result


def run(args: argparse.Namespace) -> dict:
    """Flags → models → ``dalle.pipeline.generate_images`` → PNGs; returns what ``--json`` prints."""
    if args.checkpoint is None:
        use_demo_models(args)
    out = check_args(args)
    try:
        settings = SamplingSettings(args.temperature, args.top_k, args.top_p, args.seed)
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from None
    device = resolve_device(args.device)
    model, clip = load_models(args, device, resolve_precision(args.precision, device))
    image_prompt = read_image_prompt(args, model)
    warn_if_truncated(model, args.prompt)
    guidance = model.config.guidance if args.guidance is None else args.guidance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncation warning was printed once above
        (samples,) = generate_images(
            model,
            args.prompt,
            args.num,
            settings,
            guidance,
            image_prompt=image_prompt,
            prompt_rows=args.prompt_rows,
            rerank=clip,
            keep=args.rerank,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    return write_images(args, samples, out, guidance)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (UsageError, CheckpointError, ValueError, OSError) as e:
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
