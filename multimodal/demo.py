"""``python -m multimodal.demo``: the whole suite at work on the shapes world, offline, on a CPU.

It loads the demo models shipped inside the package (CLIP, DALL·E with its dVAE, and the attribute
judge, all trained on the synthetic shapes world), then

1. draws images for captions of seen colour × shape pairs and of held-out pairs (never in training),
   several candidates per caption, and keeps the one CLIP prefers (reranking);
2. classifies rendered images zero-shot with CLIP among every colour × shape label;
3. completes image prompts (the top rows of a rendered image's codes are kept, the rest sampled);
4. scores every generated image with the judge against what its caption asked for;

and writes ``demo/index.html`` (image grids and bar charts as PNG; opens in a browser with no server)
plus a table of scores on the terminal.

``python -m multimodal.demo build`` retrains the four demo models with the shipped configs and
packages them (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from multimodal.checkpoint import PACKAGED_DIR, WEIGHTS_FILE, CheckpointError, load_model, packaged_model_path
from multimodal.cli import add_progress_flag, fail
from multimodal.images import bar_chart_png, grid_png, to_pil
from multimodal.sampling import SamplingSettings

DEMO_DIR = PACKAGED_DIR
KINDS = ("clip", "dalle", "judge")
# What `build` trains, in order: (name, config, export directory the config writes).
RECIPES = [
    ("judge", "configs/judge/shapes.yaml", "runs/judge"),
    ("vae", "configs/vae/shapes.yaml", "runs/vae-shapes"),
    ("clip", "configs/clip/shapes.yaml", "runs/clip-shapes"),
    ("dalle", "configs/dalle/shapes.yaml", "runs/dalle-shapes"),
]


def load_demo_models(root: Path | None = None, device: str = "cpu") -> dict:
    from data.judge import Judge

    models = {kind: load_model(packaged_model_path(kind, root), kind).to(device).eval() for kind in KINDS}
    models["judge"] = Judge(models["judge"], device)
    return models


def prompts_for(split: str, count: int, seed: int) -> list[str]:
    from dalle.evaluate import shapes_prompts

    return shapes_prompts(split, count, seed)


@torch.no_grad()
def generate_and_rerank(models: dict, prompts: Sequence[str], candidates: int, seed: int) -> dict:
    """``candidates`` images per prompt; judge every one; CLIP picks one per prompt."""
    samples = models["dalle"].generate_images(
        prompts, candidates, SamplingSettings(temperature=1.0, seed=seed), rerank=models["clip"]
    )
    images = torch.stack([s.all_images for s in samples])  # [P, N, 3, H, W]
    rep = [p for p in prompts for _ in range(candidates)]
    judged = models["judge"].score(images.flatten(0, 1), rep)["per_image"]
    best = [s.best for s in samples]
    right = [bool(r["all"]) for r in judged]
    return {
        "images": images,
        "best": best,
        "random_acc": sum(right) / len(right),
        "rerank_acc": sum(right[i * candidates + b] for i, b in enumerate(best)) / len(prompts),
        "judged": judged,
    }


@torch.no_grad()
def zero_shot(models: dict, split: str, count: int, seed: int) -> dict:
    """CLIP zero-shot accuracy among all colour × shape labels on rendered 1-object images."""
    from data import shapes

    clip = models["clip"]
    labels = [f"{c} {s}" for c in shapes.COLORS for s in shapes.SHAPES]
    images, truth = [], []
    for i in range(count):
        rng = shapes.sample_rng(seed, split, i)
        objects = shapes.sample(rng, split, "1")
        images.append(shapes.render(objects, clip.config.vision.image_size))
        truth.append(labels.index(f"{objects[0]['color']} {objects[0]['shape']}"))
    pred = clip.classify(images, labels, templates=["a {}"]).argmax(1)
    correct = (pred == torch.tensor(truth)).tolist()
    return {
        "accuracy": sum(correct) / count,
        "labels": len(labels),
        "images": images[:8],
        "pred": [labels[p] for p in pred[:8].tolist()],
        "truth": [labels[t] for t in truth[:8]],
    }


@torch.no_grad()
def complete_image_prompts(models: dict, count: int, rows: int, seed: int, candidates: int = 4) -> dict:
    """Keep the top ``rows`` code rows of rendered images and sample the rest; judge the results."""
    from data import shapes

    dalle = models["dalle"]
    size = dalle.vae.config.image_size
    originals, prompts = [], []
    for i in range(count):
        rng = shapes.sample_rng(seed, "val", i)
        objects = shapes.sample(rng, "val", "1")
        originals.append(shapes.render(objects, size))
        prompts.append(shapes.caption_for(objects, rng))
    samples = dalle.generate_images(
        prompts, candidates, SamplingSettings(temperature=1.0, seed=seed), image_prompt=originals, prompt_rows=rows
    )
    images = torch.stack([s.all_images for s in samples])  # [P, N, 3, H, W]
    judged = models["judge"].score(images.flatten(0, 1), [p for p in prompts for _ in range(candidates)])["per_image"]
    return {
        "accuracy": sum(r["all"] for r in judged) / len(judged),
        "originals": originals,
        "prompts": prompts,
        "images": images,
    }


def run_demo(
    out: Path,
    models_root: Path | None = None,
    prompts: int = 6,
    candidates: int = 8,
    seed: int = 0,
    zero_shot_images: int = 96,
    progress: bool = True,
) -> dict:
    from tqdm import tqdm

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    models = load_demo_models(models_root)
    steps = tqdm(total=5, desc="demo", unit="step", disable=not progress, file=sys.stderr)
    scores: dict[str, float] = {}
    sections: list[tuple[str, str, str]] = []  # (title, png, caption)
    for split, title in (("val", "seen colour-shape pairs"), ("heldout", "held-out pairs (never in training)")):
        ps = prompts_for(split, prompts, seed)
        r = generate_and_rerank(models, ps, candidates, seed)
        rows = [[to_pil(im) for im in r["images"][i]] for i in range(len(ps))]
        png = grid_png(rows, ps, out / f"dalle-{split}.png", highlight=r["best"])
        scores[f"DALL·E {split}: random sample"] = r["random_acc"]
        scores[f"DALL·E {split}: CLIP rerank {candidates}→1"] = r["rerank_acc"]
        sections.append(
            (
                f"DALL·E, {title}",
                png.name,
                f"{candidates} samples per caption; CLIP's pick framed in green. Judge: every attribute right on "
                f"{100 * r['random_acc']:.0f}% of samples, {100 * r['rerank_acc']:.0f}% after reranking.",
            )
        )
        steps.update(1)
    for split in ("val", "heldout"):
        z = zero_shot(models, split, zero_shot_images, seed)
        scores[f"CLIP zero-shot {split}"] = z["accuracy"]
        png = grid_png(
            [[im] for im in z["images"]],
            [f"{p} ({'ok' if p == t else 'was ' + t})" for p, t in zip(z["pred"], z["truth"])],
            out / f"clip-{split}.png",
        )
        sections.append(
            (
                f"CLIP zero-shot, {split} images",
                png.name,
                f"Among all {z['labels']} colour × shape labels: {100 * z['accuracy']:.0f}% right "
                f"on {zero_shot_images} rendered images.",
            )
        )
        steps.update(1)
    grid = models["dalle"].config.image_grid
    c = complete_image_prompts(models, 4, grid // 2, seed)
    rows = [[orig] + [to_pil(im) for im in c["images"][i]] for i, orig in enumerate(c["originals"])]
    png = grid_png(rows, c["prompts"], out / "image-prompts.png", header=["original", "completions →"])
    scores["DALL·E image-prompt completion"] = c["accuracy"]
    sections.append(
        (
            "Image prompts",
            png.name,
            f"Top {grid // 2} of {grid} code rows kept, the rest sampled; judge: "
            f"{100 * c['accuracy']:.0f}% of completions right.",
        )
    )
    steps.update(1)
    steps.close()
    chart = bar_chart_png(scores, "Shapes world: judge / zero-shot accuracy", out / "scores.png")
    write_html(out / "index.html", sections, chart.name, scores, time.perf_counter() - t0)
    return {"scores": scores, "seconds": round(time.perf_counter() - t0, 1), "html": str(out / "index.html")}


def write_html(path: Path, sections: list[tuple[str, str, str]], chart: str, scores: dict, seconds: float) -> None:
    info = DEMO_DIR / "demo.json"
    trained = json.loads(info.read_text()) if info.is_file() else {}
    parts = [
        "<!doctype html><meta charset='utf-8'><title>multimodal demo: the shapes world</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
        "td,th{padding:2px 10px;text-align:left}</style>",
        "<h1>GPT · DALL·E · CLIP on one backbone — the shapes world</h1>",
        "<p>Every model here was trained on a CPU on a synthetic world of coloured shapes, and is scored by an "
        "attribute judge against what each caption asked for. Held-out colour × shape pairs never appeared in "
        f"training. Made in {seconds:.0f} s.</p>",
        f"<h2>Scores</h2><img src='{chart}' alt='scores'><table><tr><th>measure</th><th>accuracy</th></tr>",
        *(f"<tr><td>{html.escape(k)}</td><td>{100 * v:.1f}%</td></tr>" for k, v in scores.items()),
        "</table>",
    ]
    for title, png, caption in sections:
        parts.append(
            f"<h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p><img src='{png}' alt='{html.escape(title)}'>"
        )
    if trained:
        parts.append(
            "<h2>How the demo models were trained</h2><pre>" + html.escape(json.dumps(trained, indent=2)) + "</pre>"
        )
    path.write_text("\n".join(parts) + "\n")


def print_table(scores: dict[str, float]) -> None:
    width = max(len(k) for k in scores)
    print(f"{'measure'.ljust(width)}  accuracy")
    for k, v in scores.items():
        print(f"{k.ljust(width)}  {100 * v:6.1f}%")


# -- build: train and package the demo models -----------------------------------------------------


def package(exports: dict[str, Path], dest: Path = DEMO_DIR, half: bool = True, info: dict | None = None) -> dict:
    """Copy exports into ``dest/<kind>``, weights in fp16 when ``half`` (the loader casts back to fp32)."""
    from safetensors.torch import load_file, save_file

    sizes = {}
    for kind, src in exports.items():
        target = dest / kind
        tmp = dest / f".{kind}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        if half:
            state = load_file(str(tmp / WEIGHTS_FILE))
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"kind": kind, "dtype": "float16"})
        shutil.rmtree(target, ignore_errors=True)
        tmp.replace(target)
        sizes[kind] = round(sum(f.stat().st_size for f in target.iterdir()) / 1e6, 2)
    record = {**(info or {}), "megabytes": sizes, "total_megabytes": round(sum(sizes.values()), 2)}
    (dest / "demo.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def build(root: Path, skip_training: bool = False, half: bool = True) -> dict:
    """Train the judge, dVAE, CLIP and DALL·E with the shipped configs, then package them."""
    trained = {}
    for name, config, export in RECIPES:
        if not skip_training:
            t = time.perf_counter()
            print(f"training {name}: python -m multimodal.train fit --config {config}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "multimodal.train", "fit", "--config", config], cwd=root, check=True)
            trained[name] = {"config": config, "export": export, "seconds": round(time.perf_counter() - t, 1)}
        else:
            trained[name] = {"config": config, "export": export}
    exports = {"clip": root / "runs/clip-shapes", "dalle": root / "runs/dalle-shapes", "judge": root / "runs/judge"}
    return package(exports, DEMO_DIR, half, {"trained": trained, "command": "python -m multimodal.demo build"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m multimodal.demo", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command")
    b = sub.add_parser("build", help="train the four demo models with the shipped configs and package them")
    b.add_argument("--skip-training", action="store_true", help="package the existing runs/ exports only")
    b.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    p.add_argument("--out", default="demo", help="output directory (default demo/)")
    p.add_argument("--models", default=None, help="directory with clip/, dalle/, judge/ exports (default: packaged)")
    p.add_argument("--prompts", type=int, default=16, help="captions per split")
    p.add_argument("--candidates", type=int, default=16, help="DALL·E samples per caption (CLIP keeps one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    add_progress_flag(p)
    args = p.parse_args(argv)
    if args.command == "build":
        record = build(Path.cwd(), args.skip_training, not args.fp32)
        print(json.dumps(record, indent=2))
        return 0
    torch.manual_seed(args.seed)
    try:
        result = run_demo(
            Path(args.out),
            Path(args.models) if args.models else None,
            args.prompts,
            args.candidates,
            args.seed,
            progress=not args.no_progress,
        )
    except CheckpointError as e:
        return fail(e)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result["scores"])
        print(f"\nwrote {result['html']} in {result['seconds']} s (open it in a browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
