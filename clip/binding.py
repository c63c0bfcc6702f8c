"""Does CLIP bind attributes to objects? Two-object scenes of the shapes world, each caption against its swaps.

    python -m clip.binding                                   # packaged CLIP, 500 scenes per split
    python -m clip.binding --checkpoint runs/clip-shapes --scenes 1000 --json

For every two-object scene its own caption is scored against each attribute swap of it
(``data.shapes.swapped_captions``: "a red circle and a blue square" against "a blue circle and a red
square"; "above" against "below"; positions exchanged). A swap keeps every word of the caption, so a text
tower that reads a bag of words scores both alike: 50% is chance. Top-1 is the share of (scene, swap) pairs
where the true caption is the closer one; ``all`` is the share of scenes whose caption beats every swap.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch
from tqdm import tqdm

from data import shapes
from multimodal.checkpoint import CheckpointError, load_model
from multimodal.cli import UsageError, add_device_flag, add_progress_flag, fail, resolve_device


def binding_scenes(split: str, count: int, seed: int = 0, size: int = 64) -> tuple[list, list[str]]:
    """``count`` two-object scenes of ``split`` (images, captions); scenes of two alike objects have no swap."""
    images, captions = [], []
    for i in range(count):
        s = shapes.make_sample(seed, split, i, 2, size)
        images.append(s["image"])
        captions.append(s["caption"])
    return images, captions


@torch.no_grad()
def binding_accuracy(
    model, images: Sequence, captions: Sequence[str], batch_size: int = 64, progress: bool = False
) -> dict:
    """Top-1 of each caption against each of its swaps, per swap kind and overall (see the module's doc)."""
    wins: dict[str, list[bool]] = {k: [] for k in shapes.SWAPS}
    every: list[bool] = []
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="scenes", unit="batch"):
        batch_images, batch_captions = images[start : start + batch_size], captions[start : start + batch_size]
        image_emb = model.embed_images(list(batch_images))  # [b, E]
        swaps = [shapes.swapped_captions(c) for c in batch_captions]
        texts = [t for c, s in zip(batch_captions, swaps) if s for t in (c, *s.values())]
        text_emb = model.embed_texts(texts) if texts else None  # [sum(1 + S), E], one call per batch
        at = 0
        for emb, s in zip(image_emb, swaps):
            if not s:
                continue
            sims = text_emb[at : at + 1 + len(s)] @ emb  # [1 + S]: the caption, then its swaps
            at += 1 + len(s)
            for k, sim in zip(s, sims[1:]):
                wins[k].append(bool(sims[0] > sim))
            every.append(bool((sims[0] > sims[1:]).all()))
    pairs = [w for v in wins.values() for w in v]
    return {
        "scenes": len(every),
        "pairs": len(pairs),
        "top1": round(sum(pairs) / max(1, len(pairs)), 4),
        "all_swaps": round(sum(every) / max(1, len(every)), 4),
        "by_swap": {k: {"pairs": len(v), "top1": round(sum(v) / len(v), 4)} for k, v in wins.items() if v},
    }


def markdown(results: dict[str, dict]) -> str:
    kinds = [k for k in shapes.SWAPS if any(k in r["by_swap"] for r in results.values())]
    lines = [
        "| split | scenes | top-1 (pairs) | all swaps | " + " | ".join(kinds) + " |",
        "|---|---|---|---|" + "---|" * len(kinds),
    ]
    for split, r in results.items():
        cells = [f"{100 * r['by_swap'][k]['top1']:.1f}%" if k in r["by_swap"] else "–" for k in kinds]
        lines.append(
            f"| {split} | {r['scenes']} | {100 * r['top1']:.1f}% | {100 * r['all_swaps']:.1f}% | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clip.binding", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="clip", help="CLIP export directory or .ckpt (default: packaged)")
    p.add_argument("--splits", nargs="+", default=["val", "heldout"], choices=["val", "heldout", "train"])
    p.add_argument("--scenes", type=int, default=500, help="two-object scenes per split (default 500)")
    p.add_argument("--seed", type=int, default=1, help="world seed of the scenes (training shards use 0)")
    add_device_flag(p)
    add_progress_flag(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.scenes < 1:
            raise UsageError("--scenes must be >= 1")
        model = load_model(args.checkpoint, "clip").to(resolve_device(args.device)).eval()
        size = model.config.vision.image_size
        results = {}
        for split in args.splits:
            images, captions = binding_scenes(split, args.scenes, args.seed, size)
            results[split] = binding_accuracy(model, images, captions, progress=not args.no_progress)
    except (CheckpointError, UsageError, ValueError, OSError) as e:
        return fail(e)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "seed": args.seed, "splits": results}, indent=2))
    elif args.markdown:
        print(markdown(results))
    else:
        for split, r in results.items():
            kinds = ", ".join(f"{k} {100 * v['top1']:.1f}%" for k, v in r["by_swap"].items())
            print(
                f"{split}: top-1 {100 * r['top1']:.1f}% over {r['pairs']} pairs ({kinds}); all swaps {100 * r['all_swaps']:.1f}%"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
