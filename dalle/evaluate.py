"""Score a DALL·E model on the shapes world with the attribute judge, with and without CLIP reranking.

    python -m dalle.evaluate --checkpoint runs/dalle-shapes --judge runs/judge --clip runs/clip-shapes

For each split (``val``: colour × shape pairs seen in training; ``heldout``: the held-out pairs) it takes
the captions of the first ``--prompts`` samples of that split, draws ``--candidates`` images per
caption (one batch), and reports

- ``all``: the fraction of *all* candidates whose every requested attribute the judge finds right
  (a random sample's accuracy), and per attribute;
- ``rerank``: the same for the one candidate per caption CLIP scores highest (``--candidates`` → 1).

``--vae DIR`` (instead of ``--checkpoint``) scores the dVAE alone: it encodes and decodes the split's own
images and reports PSNR, code usage and the judge's accuracy on the reconstructions, the ceiling of any
DALL·E that draws through that tokenizer (a shape the dVAE cannot redraw, DALL·E cannot draw either).

    python -m dalle.evaluate --vae runs/vae-shapes --judge runs/judge
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch

from multimodal.checkpoint import CheckpointError, load_model
from multimodal.cli import UsageError, add_device_flag, add_progress_flag, check_finite, fail, resolve_device
from multimodal.sampling import SamplingSettings


def shapes_prompts(split: str, count: int, seed: int = 0, objects: str = "1") -> list[str]:
    """Captions of samples ``0 .. count-1`` of a shapes-world split (no rendering)."""
    from data import shapes

    out = []
    for i in range(count):
        rng = shapes.sample_rng(seed, split, i)
        out.append(shapes.caption_for(shapes.sample(rng, split, objects), rng))
    return out


def summarize(rows: list[dict]) -> dict:
    """The judge's per-image rows -> ``{"images": n, "accuracy": {attribute: rate, "all": rate}}``."""
    attrs = sorted({a for r in rows for a in r["correct"]})
    acc = {
        a: sum(r["correct"][a] for r in rows if a in r["correct"]) / max(1, sum(a in r["correct"] for r in rows))
        for a in attrs
    }
    acc["all"] = sum(r["all"] for r in rows) / max(1, len(rows))
    return {"images": len(rows), "accuracy": {k: round(v, 4) for k, v in acc.items()}}


@torch.no_grad()
def evaluate_split(
    model,
    judge,
    prompts: Sequence[str],
    candidates: int,
    settings: SamplingSettings,
    guidance: float | None = None,
    clip=None,
    batch_rows: int = 128,
    progress: bool = True,
) -> dict:
    """Judge every candidate of every prompt (random sample) and CLIP's pick per prompt (rerank)."""
    samples = model.generate_images(
        prompts, candidates, settings, guidance, rerank=clip, batch_size=batch_rows, progress=progress
    )
    all_rows, best_rows = [], []
    for s in samples:
        scored = judge.score(s.all_images, [s.prompt] * candidates)["per_image"]
        all_rows.extend(scored)
        best_rows.append(scored[s.best])
    out = {"prompts": len(prompts), "candidates": candidates, "random": summarize(all_rows)}
    if clip is not None:
        out["rerank"] = summarize(best_rows)
        out["rerank_gain_points"] = round(
            100 * (out["rerank"]["accuracy"]["all"] - out["random"]["accuracy"]["all"]), 2
        )
    return out


@torch.no_grad()
def evaluate_reconstructions(
    vae, judge, split: str, count: int, objects: str = "1", batch_size: int = 128, progress: bool = True
) -> dict:
    """The dVAE's round trip of the first ``count`` images of a shapes split, scored by the judge."""
    from tqdm import tqdm

    from dalle.vae import code_usage, psnr
    from data import shapes
    from multimodal.images import pil_batch

    size = vae.config.image_size
    counts = torch.zeros(vae.config.codebook_size, dtype=torch.long)
    rows, psnrs, real_all = [], [], 0
    bar = tqdm(total=count, desc=f"{split} images", unit="img", disable=not progress, file=sys.stderr)
    for start in range(0, count, batch_size):
        samples = [shapes.make_sample(0, split, i, objects, size) for i in range(start, min(count, start + batch_size))]
        images = pil_batch([s["image"] for s in samples])  # [B, 3, H, W] in [0, 1]
        captions = [s["caption"] for s in samples]
        ids = vae.encode(images)
        recon = vae.decode(ids)
        counts += torch.bincount(ids.flatten(), minlength=vae.config.codebook_size)
        psnrs.append(psnr(recon, images))
        rows.extend(judge.score(recon, captions)["per_image"])
        real_all += sum(r["all"] for r in judge.score(images, captions)["per_image"])
        bar.update(len(samples))
    bar.close()
    perplexity, used = code_usage(counts)
    return {
        **summarize(rows),
        "psnr": round(float(torch.cat(psnrs).mean()), 2),
        "codebook_used": round(used, 4),
        "perplexity": round(perplexity, 1),
        "originals_all": round(real_all / len(rows), 4),  # the judge on the real images: its own ceiling
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dalle.evaluate", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="DALL·E export directory or .ckpt")
    which.add_argument("--vae", help="score a dVAE's reconstructions instead (export directory or .ckpt)")
    p.add_argument("--judge", required=True, help="the shapes judge (export directory, e.g. runs/judge)")
    p.add_argument("--clip", default=None, help="CLIP for reranking (export dir / .ckpt, or open_clip weights)")
    p.add_argument("--clip-model", default=None, help="open_clip config name when --clip is a weights file")
    p.add_argument("--splits", nargs="+", default=["val", "heldout"], choices=["val", "heldout", "train"])
    p.add_argument("--prompts", type=int, default=64, help="captions (with --vae: images) per split (default 64)")
    p.add_argument("--candidates", type=int, default=16, help="images per caption (default 16)")
    p.add_argument("--objects", default="1", help="objects per image of the prompts: 1, 2 or mixed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None, help="default: the model's config `guidance`")
    p.add_argument("--batch-rows", type=int, default=128, help="sequences sampled per batch")
    add_device_flag(p)
    add_progress_flag(p)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.prompts < 1 or args.candidates < 1:
            raise UsageError("--prompts and --candidates must be >= 1")
        check_finite("--guidance", args.guidance)
        from data.judge import Judge

        if args.vae:
            return _main_vae(args)
        settings = SamplingSettings(args.temperature, args.top_k, args.top_p, args.seed)
        device = resolve_device(args.device)
        model = load_model(args.checkpoint, "dalle").to(device).eval()
        if model.vae is None:
            raise UsageError(f"{args.checkpoint}: carries no dVAE to decode images")
        judge = Judge.from_checkpoint(args.judge, device)
        guidance = model.config.guidance if args.guidance is None else args.guidance
        clip = None
        if args.clip:
            from clip.openclip import load_clip

            clip = load_clip(args.clip, args.clip_model).to(device).eval()
        settings_used = vars(args) | {"json": None, "guidance": guidance, "device": str(device)}
        result = {"checkpoint": args.checkpoint, "settings": settings_used, "splits": {}}
        for split in args.splits:
            t0 = time.time()
            prompts = shapes_prompts(split, args.prompts, 0, args.objects)
            r = evaluate_split(
                model, judge, prompts, args.candidates, settings, guidance, clip, args.batch_rows, not args.no_progress
            )
            r["seconds"] = round(time.time() - t0, 1)
            result["splits"][split] = r
    except (UsageError, CheckpointError, ValueError) as e:
        return fail(e)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for split, r in result["splits"].items():
        line = (
            f"{split:8s} all attributes right: {r['random']['accuracy']['all']:.1%} of {r['random']['images']} samples"
        )
        if "rerank" in r:
            line += f"; CLIP rerank {args.candidates}->1: {r['rerank']['accuracy']['all']:.1%} ({r['rerank_gain_points']:+.1f} points)"
        print(line)
        print("         " + ", ".join(f"{k} {v:.1%}" for k, v in r["random"]["accuracy"].items() if k != "all"))
    return 0


def _main_vae(args: argparse.Namespace) -> int:
    from data.judge import Judge

    device = resolve_device(args.device)
    vae = load_model(args.vae, "vae").to(device).eval()
    judge = Judge.from_checkpoint(args.judge, device)
    result = {"vae": args.vae, "splits": {}}
    for split in args.splits:
        result["splits"][split] = evaluate_reconstructions(
            vae, judge, split, args.prompts, args.objects, progress=not args.no_progress
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for split, r in result["splits"].items():
        print(
            f"{split:8s} PSNR {r['psnr']:.2f} dB, {r['codebook_used']:.0%} of codes used; judge on reconstructions: "
            f"all attributes right {r['accuracy']['all']:.1%} of {r['images']} (originals {r['originals_all']:.1%})"
        )
        print("         " + ", ".join(f"{k} {v:.1%}" for k, v in r["accuracy"].items() if k != "all"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
