"""Score a DALL·E model on the shapes world with the attribute judge, with and without CLIP reranking.

    python -m dalle.evaluate                      # the packaged DALL·E, judge and CLIP: the README's table
    python -m dalle.evaluate --checkpoint runs/dalle-shapes --judge runs/judge --clip runs/clip-shapes

For each split (``val``: colour × shape pairs seen in training; ``heldout``: the held-out pairs) it takes
the captions of the first ``--prompts`` samples of that split, draws ``--candidates`` images per
caption, and reports

- ``random``: the fraction of *all* candidates whose every requested attribute the judge finds right
  (a random sample's accuracy), per attribute, and per requested shape (which shapes fail);
- ``rerank``: the same for the one candidate per caption CLIP scores highest (``--candidates`` → 1);
- ``image_prompt``: completions of the split's own images when the top ``--prompt-rows`` code rows
  (default half the grid) are given, ``--candidates`` per image.

``--markdown`` prints the tables as they appear in the README.

``--vae DIR`` (instead of ``--checkpoint``) scores the dVAE alone (a dVAE export, or a DALL·E whose
tokenizer to score, e.g. ``--vae dalle``): it encodes and decodes the split's own images and reports
PSNR, code usage and the judge's accuracy on the reconstructions, the ceiling of any DALL·E that draws
through that tokenizer (a shape the dVAE cannot redraw, DALL·E cannot draw either).

    python -m dalle.evaluate --vae runs/vae-shapes --judge runs/judge
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch

from dalle.pipeline import generate_images
from data.shapes import RELATIONS
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
    """The judge's per-image rows -> ``{"images": n, "accuracy": {attribute: rate, "all": rate},
    "by_shape": {shape: {"images", "all", "shape", "drawn_as"}}}``.

    ``by_shape`` groups the rows by each requested object's shape: how often everything was right, how
    often that shape was, and what the judge saw instead when it was not (``drawn_as``: shape -> count).
    """
    attrs = sorted({a for r in rows for a in r["correct"]})
    acc = {
        a: sum(r["correct"][a] for r in rows if a in r["correct"]) / max(1, sum(a in r["correct"] for r in rows))
        for a in attrs
    }
    acc["all"] = sum(r["all"] for r in rows) / max(1, len(rows))
    by_shape: dict[str, dict] = {}
    for r in rows:
        for k, want in enumerate(r["requested"]):
            if "shape" not in want:
                continue
            got = r["predicted"][k]["shape"] if k < len(r["predicted"]) and r["predicted"][k] else None
            entry = by_shape.setdefault(want["shape"], {"images": 0, "all": 0, "shape": 0, "drawn_as": {}})
            entry["images"] += 1
            entry["all"] += bool(r["all"])
            if got == want["shape"]:
                entry["shape"] += 1
            else:
                entry["drawn_as"][str(got)] = entry["drawn_as"].get(str(got), 0) + 1
    by_relation: dict[str, dict] = {}
    for r in rows:  # two-object captions that name where one object is: how often each relation is drawn
        rel = r["requested"][0].get("relation") if r["requested"] else None
        if rel is not None:
            entry = by_relation.setdefault(rel, {"images": 0, "all": 0, "relation": 0})
            entry["images"] += 1
            entry["all"] += bool(r["all"])
            entry["relation"] += bool(r["correct"].get("relation"))
    for entry in by_relation.values():
        entry["all"] = round(entry["all"] / entry["images"], 4)
        entry["relation"] = round(entry["relation"] / entry["images"], 4)
    for entry in by_shape.values():
        entry["all"] = round(entry["all"] / entry["images"], 4)
        entry["shape"] = round(entry["shape"] / entry["images"], 4)
        entry["drawn_as"] = dict(sorted(entry["drawn_as"].items(), key=lambda kv: -kv[1]))
    return {
        "images": len(rows),
        "accuracy": {k: round(v, 4) for k, v in acc.items()},
        "by_shape": dict(sorted(by_shape.items())),
        "by_relation": {k: by_relation[k] for k in RELATIONS if k in by_relation},
    }


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
    samples = generate_images(
        model, prompts, candidates, settings, guidance, rerank=clip, batch_size=batch_rows, progress=progress
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


def shapes_images(split: str, count: int, size: int, seed: int = 0, objects: str = "1") -> tuple[list, list[str]]:
    """Images (PIL) and captions of samples ``0 .. count-1`` of a shapes-world split."""
    from data import shapes

    samples = [shapes.make_sample(seed, split, i, objects, size) for i in range(count)]
    return [s["image"] for s in samples], [s["caption"] for s in samples]


@torch.no_grad()
def evaluate_image_prompts(
    model,
    judge,
    split: str,
    count: int,
    candidates: int,
    settings: SamplingSettings,
    guidance: float | None = None,
    rows: int | None = None,
    objects: str = "1",
    batch_rows: int = 128,
    progress: bool = True,
    data_seed: int = 0,
) -> dict:
    """Completions of the split's first ``count`` images (world seed ``data_seed``) from their top ``rows``
    code rows (default half the grid)."""
    rows = model.config.image_grid // 2 if rows is None else rows
    originals, captions = shapes_images(split, count, model.vae.config.image_size, data_seed, objects)
    samples = generate_images(
        model,
        captions,
        candidates,
        settings,
        guidance,
        image_prompt=originals,
        prompt_rows=rows,
        batch_size=batch_rows,
        progress=progress,
    )
    images = torch.stack([s.all_images for s in samples])  # [P, N, 3, H, W]
    judged = judge.score(images.flatten(0, 1), [c for c in captions for _ in range(candidates)])["per_image"]
    return {
        "prompts": count,
        "candidates": candidates,
        "rows_given": rows,
        "rows": model.config.image_grid,
        **summarize(judged),
        "originals": originals,
        "captions": captions,
        "samples": images,
    }


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


SPLIT_NAMES = {"val": "seen pairs (val)", "heldout": "held-out pairs", "train": "train"}


def markdown(result: dict) -> str:
    """The README's tables: one row per split, then the per-shape breakdown."""
    splits = result["splits"]
    first = next(iter(splits.values()))
    attrs = [a for a in ("color", "shape", "size", "position", "relation") if a in first["random"]["accuracy"]]
    head = ["split", "random sample"]
    if "rerank" in first:
        head.append(f"CLIP rerank {first['candidates']}→1")
    if "image_prompt" in first:
        head.append(f"image prompt ({first['image_prompt']['rows_given']} of {first['image_prompt']['rows']} rows)")
    head += [f"{a} (random)" for a in attrs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for split, r in splits.items():
        row = [SPLIT_NAMES.get(split, split), f"{r['random']['accuracy']['all']:.1%}"]
        if "rerank" in r:
            row.append(f"{r['rerank']['accuracy']['all']:.1%} ({r['rerank_gain_points']:+.1f})")
        if "image_prompt" in r:
            row.append(f"{r['image_prompt']['accuracy']['all']:.1%}")
        row += [f"{r['random']['accuracy'].get(a, 0):.1%}" for a in attrs]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "| requested shape | "
        + " | ".join(f"{SPLIT_NAMES.get(s, s)}: all right | shape right | drawn as instead" for s in splits)
        + " |",
        "|---|" + "---|---|---|" * len(splits),
    ]
    shapes = sorted({k for r in splits.values() for k in r["random"]["by_shape"]})
    for shape in shapes:
        row = [shape]
        for r in splits.values():
            e = r["random"]["by_shape"].get(shape)
            if e is None:
                row += ["–", "–", ""]
                continue
            wrong = ", ".join(f"{k} {v}" for k, v in list(e["drawn_as"].items())[:3])
            row += [f"{e['all']:.1%} of {e['images']}", f"{e['shape']:.1%}", wrong]
        lines.append("| " + " | ".join(row) + " |")
    relations = [k for k in RELATIONS if any(k in r["random"].get("by_relation", {}) for r in splits.values())]
    if relations:
        lines += [
            "",
            "| relation | " + " | ".join(f"{SPLIT_NAMES.get(s, s)}: all right | relation right" for s in splits) + " |",
            "|---|" + "---|---|" * len(splits),
        ]
        for rel in relations:
            row = [rel]
            for r in splits.values():
                e = r["random"].get("by_relation", {}).get(rel)
                row += ["–", "–"] if e is None else [f"{e['all']:.1%} of {e['images']}", f"{e['relation']:.1%}"]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dalle.evaluate", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", default="dalle", help="DALL·E export directory or .ckpt (default: packaged)")
    which.add_argument("--vae", help="score a dVAE's reconstructions instead (dVAE or DALL·E export, or .ckpt)")
    p.add_argument("--judge", default="judge", help="the shapes judge (export directory; default: packaged)")
    p.add_argument(
        "--clip", default="clip", help="CLIP for reranking (export dir / .ckpt / open_clip weights; default: packaged)"
    )
    p.add_argument("--clip-model", default=None, help="open_clip config name when --clip is a weights file")
    p.add_argument("--no-rerank", action="store_true", help="skip CLIP reranking")
    p.add_argument("--splits", nargs="+", default=["val", "heldout"], choices=["val", "heldout", "train"])
    p.add_argument("--prompts", type=int, default=128, help="captions (with --vae: images) per split (default 128)")
    p.add_argument("--candidates", type=int, default=16, help="images per caption (default 16)")
    p.add_argument(
        "--image-prompts", type=int, default=None, help="images completed per split (default: --prompts; 0: skip)"
    )
    p.add_argument("--prompt-rows", type=int, default=None, help="code rows given of each image prompt (default: half)")
    p.add_argument("--objects", default="1", help="objects per image of the prompts: 1, 2 or mixed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None, help="default: the model's config `guidance`")
    p.add_argument("--batch-rows", type=int, default=128, help="sequences sampled per batch")
    add_device_flag(p)
    add_progress_flag(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--markdown", action="store_true", help="print the README's tables")
    args = p.parse_args(argv)
    try:
        if args.prompts < 1 or args.candidates < 1:
            raise UsageError("--prompts and --candidates must be >= 1")
        if args.image_prompts is not None and args.image_prompts < 0:
            raise UsageError("--image-prompts must be >= 0")
        check_finite("--guidance", args.guidance)
        from data.judge import Judge

        if args.vae:
            return _main_vae(args)
        settings = SamplingSettings(args.temperature, args.top_k, args.top_p, args.seed)
        device = resolve_device(args.device)
        model = load_model(args.checkpoint, "dalle").to(device).eval()
        if model.vae is None:
            raise UsageError(f"{args.checkpoint}: carries no dVAE to decode images")
        grid = model.config.image_grid
        if args.prompt_rows is not None and not 0 < args.prompt_rows < grid:
            raise UsageError(f"--prompt-rows must be in [1, {grid - 1}] for this {grid}x{grid} grid")
        judge = Judge.from_checkpoint(args.judge, device)
        guidance = model.config.guidance if args.guidance is None else args.guidance
        clip = None
        if not args.no_rerank:
            from clip.openclip import load_clip

            clip = load_clip(args.clip, args.clip_model).to(device).eval()
        image_prompts = args.prompts if args.image_prompts is None else args.image_prompts
        settings_used = vars(args) | {"json": None, "markdown": None, "guidance": guidance, "device": str(device)}
        result = {"checkpoint": args.checkpoint, "settings": settings_used, "splits": {}}
        for split in args.splits:
            t0 = time.time()
            prompts = shapes_prompts(split, args.prompts, 0, args.objects)
            progress = not args.no_progress
            r = evaluate_split(
                model, judge, prompts, args.candidates, settings, guidance, clip, args.batch_rows, progress
            )
            if image_prompts:
                ip = evaluate_image_prompts(
                    model, judge, split, image_prompts, args.candidates, settings, guidance, args.prompt_rows,
                    args.objects, args.batch_rows, progress,
                )  # fmt: skip
                r["image_prompt"] = {k: v for k, v in ip.items() if k not in ("originals", "captions", "samples")}
            r["seconds"] = round(time.time() - t0, 1)
            result["splits"][split] = r
    except (UsageError, CheckpointError, ValueError) as e:
        return fail(e)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if args.markdown:
        print(markdown(result))
        return 0
    for split, r in result["splits"].items():
        line = (
            f"{split:8s} all attributes right: {r['random']['accuracy']['all']:.1%} of {r['random']['images']} samples"
        )
        if "rerank" in r:
            line += f"; CLIP rerank {args.candidates}->1: {r['rerank']['accuracy']['all']:.1%} ({r['rerank_gain_points']:+.1f} points)"
        if "image_prompt" in r:
            ip = r["image_prompt"]
            line += f"; image prompt ({ip['rows_given']}/{ip['rows']} rows): {ip['accuracy']['all']:.1%}"
        print(line)
        print("         " + ", ".join(f"{k} {v:.1%}" for k, v in r["random"]["accuracy"].items() if k != "all"))
        print("         by shape: " + ", ".join(f"{k} {e['all']:.0%}" for k, e in r["random"]["by_shape"].items()))
    return 0


def _main_vae(args: argparse.Namespace) -> int:
    from dalle.vae.model import load_image_tokenizer
    from data.judge import Judge

    device = resolve_device(args.device)
    vae = load_image_tokenizer(args.vae).to(device).eval()  # a DALL·E: the tokenizer it draws through
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
        print("         by shape: " + ", ".join(f"{k} {e['all']:.0%}" for k, e in r["by_shape"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
