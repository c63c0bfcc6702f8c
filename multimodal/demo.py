"""``python -m multimodal.demo``: the whole suite at work on the shapes world, offline, on a CPU.

It loads the demo models shipped inside the package (CLIP, DALL·E with its dVAE, and the attribute
judge, all trained on the synthetic shapes world), then

1. draws images for captions of seen colour × shape pairs and of held-out pairs (never in training),
   several candidates per caption, and keeps the one CLIP prefers (reranking);
2. classifies rendered images zero-shot with CLIP among every colour × shape label;
3. completes image prompts (the top rows of a rendered image's codes are kept, the rest sampled);
4. scores every generated image with the judge against what its caption asked for;
5. when a GPT is packaged, shows it learning in context: held-out prompts at k = 0 and k = 4 with its
   answers, accuracy against k, and the size sweep's figures;

and writes ``demo/index.html`` (image grids and bar charts as PNG; opens in a browser with no server)
plus a table of scores on the terminal.

``python -m multimodal.demo build`` retrains the demo models with the shipped configs (each
fine-tuned model after the one it starts from) and packages them (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from clip.binding import binding_accuracy, binding_scenes
from clip.pipeline import classify
from dalle.evaluate import evaluate_image_prompts, shapes_prompts, summarize
from dalle.pipeline import generate_images
from multimodal.checkpoint import (
    PACKAGED,
    PACKAGED_DIR,
    WEIGHTS_FILE,
    CheckpointError,
    load_model,
    packaged_model_path,
    packaged_path,
)
from multimodal.cli import add_progress_flag, fail
from multimodal.images import bar_chart_png, gallery_png, grid_png, to_pil
from multimodal.sampling import SamplingSettings

DEMO_DIR = PACKAGED_DIR
Section = tuple[str, str, str]  # (title, png, caption) of a figure on the page
KINDS = ("clip", "dalle", "judge")
# What `build` trains, in order: (name, config, export directory the config writes).
RECIPES = [
    ("judge", "configs/judge/shapes.yaml", "runs/judge"),
    ("vae", "configs/vae/shapes.yaml", "runs/vae-shapes"),
    ("clip-one-object", "configs/clip/shapes.yaml", "runs/clip-shapes"),  # what the packaged CLIP starts from
    ("clip", "configs/clip/shapes-mixed.yaml", "runs/clip-shapes-mixed"),
    ("dalle-one-object", "configs/dalle/shapes.yaml", "runs/dalle-shapes"),  # what the packaged DALL·E starts from
    ("dalle", "configs/dalle/shapes-mixed.yaml", "runs/dalle-shapes-mixed"),
    ("gpt", "configs/gpt/tasks.yaml", "runs/gpt-tasks/export"),
]
# Timed on one thread: the dVAE's and CLIP's small convs / patches run slower on two threads of a 2-core CPU
# (DALL·E's transformer is faster on two: 1.45 vs 0.87 steps/s); the task GPT's steps were sized on one.
ONE_THREAD = ("vae", "clip-one-object", "clip", "gpt")
# Figures of the GPT size sweep (README "GPT"), shipped beside the packaged GPT when they were made.
GPT_FIGURES = {
    "runs/gpt-sweep/scaling.png": "scaling.png",
    "runs/gpt-sweep/fewshot-sizes-dictionary.png": "fewshot-sizes.png",
    "runs/gpt-sweep/fewshot-sizes-incontext.png": "fewshot-sizes-incontext.png",
}
# Few-shot tasks on the demo page: real translation of held-out words (inline, the seed's format), the
# in-context ones (answer only in the prompt), then the paper's 2-digit addition.
GPT_DEMO_TASKS = ("french", "lexicon", "affix", "add2")
INLINE_TASKS = ("french", "spanish", "german")
# The talk's example: the examples pick the task (English -> French), pre-training knows the word.
SEED_PROMPT = "sky = ciel; dog = chien; cat = chat; children ="


def load_demo_models(root: Path | None = None, device: str = "cpu") -> dict:
    from data.judge import Judge

    models = {kind: load_model(packaged_model_path(kind, root), kind).to(device).eval() for kind in KINDS}
    models["judge"] = Judge(models["judge"], device)
    return models


@torch.no_grad()
def generate_and_rerank(models: dict, prompts: Sequence[str], candidates: int, seed: int) -> dict:
    """``candidates`` images per prompt; judge every one; CLIP picks one per prompt."""
    samples = generate_images(
        models["dalle"], prompts, candidates, SamplingSettings(temperature=1.0, seed=seed), rerank=models["clip"]
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
    pred = classify(clip, images, labels, templates=["a {}"]).argmax(1)
    correct = (pred == torch.tensor(truth)).tolist()
    return {
        "accuracy": sum(correct) / count,
        "labels": len(labels),
        "images": images[:8],
        "pred": [labels[p] for p in pred[:8].tolist()],
        "truth": [labels[t] for t in truth[:8]],
    }


@torch.no_grad()
def language_section(gpt, out: Path, seed: int, queries: int = 20) -> tuple[str, dict[str, float]]:
    """The packaged GPT on held-out instances: one prompt per task at k = 0 and k = 4 with its answers,
    and accuracy against k (``queries`` per task). Returns the HTML and the mean accuracies."""
    import random

    from data import tasks
    from multimodal.gpt.fewshot import STOPS, build_prompt, evaluate, greedy, load_tasks, mean_accuracy, plot_accuracy

    tok = gpt.tokenizer
    seed_answer = greedy(gpt, [tok.eot_id, *tok.encode(SEED_PROMPT)], 4, STOPS["inline"]).strip()
    rows = []
    for name in GPT_DEMO_TASKS:
        style = "inline" if name in INLINE_TASKS else "lines"
        q = tasks.instances(name, 1, seed + 1, "test")[0]
        pool = q.get("examples") or [
            (r["prompt"], r["completion"]) for r in tasks.instances(name, 4, seed + 1, "train")
        ]
        for k in (0, 4):
            shown = [tuple(e) for e in pool[:k]]
            random.Random(seed).shuffle(shown)
            prompt = build_prompt(q["prompt"], shown, style=style)
            budget = len(tok.encode(q["completion"])) + 2
            answer = greedy(gpt, [tok.eot_id, *tok.encode(prompt)], budget, STOPS[style]).strip()
            rows.append((name, k, prompt, answer, q["completion"]))
    shots = [0, 1, 2, 4]
    inline = [t for t in GPT_DEMO_TASKS if t in INLINE_TASKS]
    lines = [t for t in GPT_DEMO_TASKS if t not in INLINE_TASKS]
    report = evaluate(gpt, load_tasks(",".join(inline), queries, seed), shots, progress=False, style="inline")
    other = evaluate(gpt, load_tasks(",".join(lines), queries, seed), shots, progress=False)
    for key in ("results", "correct", "n"):
        report[key].update(other[key])
    plot = plot_accuracy(report["results"], out / "gpt-fewshot.png", "packaged GPT: held-out accuracy vs k")
    means = {k: mean_accuracy(report, k) for k in shots}
    parts = [
        "<h2>GPT: in-context learning</h2><p>The packaged GPT (GPT-2's kind of BPE, trained by "
        "<code>configs/gpt/tasks.yaml</code> on the GPT-3 paper's synthetic tasks and on prose facts about "
        "English, French, Spanish and German words) answers held-out queries greedily, with no gradient step. "
        "<i>french</i> asks words that pre-training showed only in sentences such as <i>the French for children "
        "is enfants</i>, never in the prompt format: with no example (k = 0) the language is not known. The "
        "made-up words of <i>lexicon</i> and <i>affix</i> are drawn fresh for every prompt, so with no example "
        "the answer cannot be known.</p>",
        f"<p>The talk's prompt: <code>{html.escape(SEED_PROMPT)}</code> → <b>{html.escape(seed_answer)}</b></p>",
        "<table><tr><th>task</th><th>k</th><th>prompt</th><th>model's answer</th><th>expected</th></tr>",
    ]
    for name, k, prompt, answer, expected in rows:
        mark = "✓" if answer == expected else "✗"
        parts.append(
            f"<tr><td>{name}</td><td>{k}</td><td><pre>{html.escape(prompt)}</pre></td>"
            f"<td>{html.escape(answer)} {mark}</td><td>{html.escape(expected)}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        f"<h3>Accuracy vs k</h3><p>{queries} held-out queries per task; mean exact match "
        + ", ".join(f"k = {k}: {100 * v:.0f}%" for k, v in means.items())
        + f".</p><img src='{plot.name}' alt='accuracy vs k'>"
    )
    figures = (
        ("fewshot-sizes.png", "Few-shot gain by model size: real translation of held-out words"),
        ("fewshot-sizes-incontext.png", "Few-shot gain by model size: answers only in the prompt"),
        ("scaling.png", "Scaling"),
    )
    for png, title in figures:
        shipped = Path(gpt.source_dir) / png if getattr(gpt, "source_dir", None) else None
        if shipped is not None and shipped.is_file():
            shutil.copyfile(shipped, out / f"gpt-{png}")
            parts.append(f"<h3>{title}</h3><img src='gpt-{png}' alt='{title}'>")
    return "\n".join(parts), {f"GPT k={k}": v for k, v in means.items()}


def clip_panel(models: dict, split: str, out: Path, count: int, seed: int) -> tuple[Section, float]:
    """CLIP's zero-shot gallery of ``count`` rendered ``split`` images (each labelled with CLIP's pick, and the
    truth where it missed) and its accuracy."""
    z = zero_shot(models, split, count, seed)
    png = gallery_png(
        z["images"],
        [f"{p}\n{'✓' if p == t else 'was ' + t}" for p, t in zip(z["pred"], z["truth"])],
        out / f"clip-{split}.png",
        columns=4,
    )
    caption = (
        f"Among all {z['labels']} colour × shape labels: {100 * z['accuracy']:.0f}% right on {count} rendered images."
    )
    return (f"CLIP zero-shot, {split} images", png.name, caption), z["accuracy"]


DALLE_TITLES = {
    ("val", "1"): "DALL·E, seen colour-shape pairs",
    ("heldout", "1"): "DALL·E, held-out pairs (never in training)",
    ("heldout", "2"): "DALL·E, two objects of held-out pairs and where they are",
}


@torch.no_grad()
def dalle_section(
    models: dict, out: Path, split: str, objects: str, prompts: int, candidates: int, seed: int
) -> tuple[Section, dict[str, float]]:
    """A grid of ``candidates`` samples for ``prompts`` captions of ``split`` (``objects`` per image), CLIP's
    pick framed; its judge scores, and for two objects how often each asked-for relation was drawn."""
    ps = shapes_prompts(split, prompts, seed, objects)
    text_length = models["dalle"].config.text_length
    cut = sum(len(models["dalle"].caption_ids(p)) > text_length for p in ps)
    with warnings.catch_warnings():  # the cut captions are counted in the section's caption instead
        warnings.filterwarnings("ignore", "prompt of .* truncated", UserWarning)
        r = generate_and_rerank(models, ps, candidates, seed)
    rows = [[to_pil(im) for im in r["images"][i]] for i in range(len(ps))]
    name = f"dalle-{split}" if objects == "1" else f"dalle-{split}-{objects}-objects"
    # native 64-px cells, captions above the rows: 16 samples and a 16-px caption fit a 1280-px page unscaled
    png = grid_png(rows, ps, out / f"{name}.png", scale=1, highlight=r["best"], label_above=True)
    key = split if objects == "1" else f"{split} {objects} objects"
    scores = {
        f"DALL·E {key}: random sample": r["random_acc"],
        f"DALL·E {key}: CLIP rerank {candidates}→1": r["rerank_acc"],
    }
    caption = (
        f"{candidates} samples per caption; CLIP's pick framed in green. Judge: every attribute right on "
        f"{100 * r['random_acc']:.0f}% of samples, {100 * r['rerank_acc']:.0f}% after reranking."
    )
    if cut:
        caption += f" {cut} of {len(ps)} captions are longer than this model's {text_length} text tokens and were cut."
    relations = summarize(r["judged"])["by_relation"]
    if relations:
        caption += (
            " Relation drawn as asked: "
            + ", ".join(f"{rel} {100 * e['relation']:.0f}% of {e['images']}" for rel, e in relations.items())
            + "."
        )
    return (DALLE_TITLES[(split, objects)], png.name, caption), scores


@torch.no_grad()
def image_prompt_section(models: dict, out: Path, seed: int) -> tuple[Section, float]:
    """Image prompts: the top half of real images' code rows kept, the rest sampled; the judge's accuracy."""
    grid = models["dalle"].config.image_grid
    c = evaluate_image_prompts(
        models["dalle"], models["judge"], "val", 4, 4, SamplingSettings(temperature=1.0, seed=seed), None, grid // 2,
        data_seed=seed, progress=False,
    )  # fmt: skip
    rows = [[orig] + [to_pil(im) for im in c["samples"][i]] for i, orig in enumerate(c["originals"])]
    png = grid_png(rows, c["captions"], out / "image-prompts.png", header=["original", "completions →"])
    caption = (
        f"Top {grid // 2} of {grid} code rows kept, the rest sampled; judge: "
        f"{100 * c['accuracy']['all']:.0f}% of completions right."
    )
    return ("Image prompts", png.name, caption), c["accuracy"]["all"]


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
    steps = tqdm(total=8, desc="demo", unit="step", disable=not progress, file=sys.stderr)
    scores: dict[str, float] = {}
    sections: list[Section | list[Section]] = []  # a list of sections: shown side by side
    for split, objects in (("val", "1"), ("heldout", "1"), ("heldout", "2")):
        section, split_scores = dalle_section(models, out, split, objects, prompts, candidates, seed)
        sections.append(section)
        scores.update(split_scores)
        steps.update(1)
    panels = []  # the two CLIP splits side by side
    for split in ("val", "heldout"):
        panel, accuracy = clip_panel(models, split, out, zero_shot_images, seed)
        panels.append(panel)
        scores[f"CLIP zero-shot {split}"] = accuracy
        steps.update(1)
    sections.append(panels)
    binding = binding_accuracy(models["clip"], *binding_scenes("val", zero_shot_images, seed + 1))
    scores["CLIP binding val: caption vs its swaps"] = binding["top1"]
    section, scores["DALL·E image-prompt completion"] = image_prompt_section(models, out, seed)
    sections.append(section)
    steps.update(1)
    language, gpt_scores = "", {}
    gpt_dir = packaged_path("gpt", models_root)
    if gpt_dir is not None:  # the language half, when a GPT is packaged
        gpt = load_model(gpt_dir, "gpt").eval()
        gpt.source_dir = gpt_dir
        language, gpt_scores = language_section(gpt, out, seed)
    steps.update(1)
    steps.close()
    shown = {**scores, **gpt_scores}  # every score of the page in the top chart, the GPT's included
    chart = bar_chart_png(shown, "Accuracy: judge (DALL·E), zero-shot (CLIP), exact match (GPT)", out / "scores.png")
    write_html(out / "index.html", sections, chart.name, shown, time.perf_counter() - t0, language)
    return {
        "scores": {**scores, **gpt_scores},
        "seconds": round(time.perf_counter() - t0, 1),
        "html": str(out / "index.html"),
    }


# Page style: no horizontal scrolling from 390 px (a phone) up; figures never wider than the page, shown at their
# own size where they fit (the grids' captions stay at their drawn size on a 1280-px screen).
PAGE_CSS = (
    "*{box-sizing:border-box}"
    "body{font-family:sans-serif;max-width:1280px;margin:1.5em auto;padding:0 16px;line-height:1.4}"
    "img{max-width:100%;height:auto}"
    ".row{display:flex;flex-wrap:wrap;gap:8px 40px;align-items:flex-start}.row>section{min-width:0;flex:0 1 auto}"
    "table{border-collapse:collapse;max-width:100%}td,th{padding:3px 10px;text-align:left;vertical-align:top;"
    "border-bottom:1px solid #ddd;overflow-wrap:anywhere}th{overflow-wrap:normal}"
    "pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:0}"
    "@media (max-width:600px){body{padding:0 8px}td,th{padding:2px 4px}}"
)


def _section(title: str, png: str, caption: str, level: int = 2) -> str:
    return (
        f"<section><h{level}>{html.escape(title)}</h{level}><p>{html.escape(caption)}</p>"
        f"<img src='{png}' alt='{html.escape(title)}'></section>"
    )


def trained_table(trained: dict, megabytes: dict | None = None) -> str:
    """``demo.json``'s record of how each demo model was trained, as a table (one row per model: its config, the
    training run, its packaged size, the rest of the record as notes)."""
    rows = []
    for name, info in trained.items():
        run = []
        if "steps" in info:
            run.append(f"{info['steps']} steps")
        if isinstance(info.get("seconds"), (int, float)):
            run.append(f"{info['seconds'] / 60:.0f} min")
        if "threads" in info:
            run.append(f"{info['threads']} thread{'' if info['threads'] == 1 else 's'}")
        notes = [
            f"{k.replace('_', ' ')}: "
            + (", ".join(f"{s} {x}" for s, x in v.items()) if isinstance(v, dict) else str(v))
            for k, v in info.items()
            if k not in ("config", "steps", "seconds", "threads")
        ]
        cells = [
            html.escape(name),
            f"<code>{html.escape(str(info.get('config', '')))}</code>",
            html.escape(", ".join(run)),
            f"{megabytes[name]:g} MB" if name in (megabytes or {}) else "",
            html.escape("; ".join(notes)),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("model", "config", "training", "packaged", "notes"))
    return f"<table><tr>{head}</tr>" + "".join(rows) + "</table>"


def write_html(
    path: Path, sections: list[Section | list[Section]], chart: str, scores: dict, seconds: float, language: str = ""
) -> None:
    info = DEMO_DIR / "demo.json"
    record = json.loads(info.read_text()) if info.is_file() else {}
    trained = record.get("trained", {})
    parts = [
        "<!doctype html><meta charset='utf-8'><meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>multimodal demo: the shapes world</title><style>{PAGE_CSS}</style>",
        "<h1>GPT · DALL·E · CLIP on one backbone — the shapes world</h1>",
        "<p>Every model here was trained on a CPU on a synthetic world of coloured shapes, and is scored by an "
        "attribute judge against what each caption asked for. Held-out colour × shape pairs never appeared in "
        f"training. Made in {seconds:.0f} s.</p>",
        f"<h2>Scores</h2><div class='row'><section><img src='{chart}' alt='scores'></section><section>"
        "<table><tr><th>measure</th><th>accuracy</th></tr>",
        *(f"<tr><td>{html.escape(k)}</td><td>{100 * v:.1f}%</td></tr>" for k, v in scores.items()),
        "</table></section></div>",
    ]
    for section in sections:
        if isinstance(section, list):
            parts.append("<div class='row'>" + "".join(_section(*s) for s in section) + "</div>")
        else:
            parts.append(_section(*section))
    if language:
        parts.append(language)
    if trained:
        parts.append("<h2>How the demo models were trained</h2>" + trained_table(trained, record.get("megabytes")))
        if record.get("command"):
            parts.append(f"<p>Retrain and package them all with <code>{html.escape(record['command'])}</code>.</p>")
    path.write_text("\n".join(parts) + "\n")


def print_table(scores: dict[str, float]) -> None:
    width = max(len(k) for k in scores)
    print(f"{'measure'.ljust(width)}  accuracy")
    for k, v in scores.items():
        print(f"{k.ljust(width)}  {100 * v:6.1f}%")


# -- build: train and package the demo models -----------------------------------------------------


def package(exports: dict[str, Path], dest: Path = DEMO_DIR, half: bool = True, info: dict | None = None) -> dict:
    """Copy exports into ``dest/<kind>``, weights in fp16 when ``half`` (the loader casts back to fp32).

    ``dest/demo.json`` keeps what it said about the models not repackaged this time (sizes, how each was trained).
    """
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
    path = dest / "demo.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    info = dict(info or {})
    trained = {**old.get("trained", {}), **info.pop("trained", {})}
    sizes = {k: v for k, v in {**old.get("megabytes", {}), **sizes}.items() if (dest / k).is_dir()}
    record = {**old, **info, "trained": trained, "megabytes": sizes, "total_megabytes": round(sum(sizes.values()), 2)}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def build(root: Path, skip_training: bool = False, half: bool = True, only: Sequence[str] | None = None) -> dict:
    """Train the judge, dVAE, CLIP, DALL·E and the task GPT with the shipped configs (``only`` some of them:
    names of ``RECIPES``), then package the packaged kinds among them (the dVAE ships inside the DALL·E)."""
    names = [name for name, _, _ in RECIPES]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(f"unknown model {', '.join(unknown)} (one of {', '.join(names)})")
    trained = {}
    for name, config, export in RECIPES:
        if only and name not in only:
            continue
        if not skip_training:
            t = time.perf_counter()
            print(f"training {name}: python -m multimodal.train fit --config {config}", file=sys.stderr)
            env = dict(os.environ)
            if name in ONE_THREAD and "OMP_NUM_THREADS" not in env:
                env["OMP_NUM_THREADS"] = "1"
            cmd = [sys.executable, "-m", "multimodal.train", "fit", "--config", config]
            subprocess.run(cmd, cwd=root, check=True, env=env)
            trained[name] = {"config": config, "export": export, "seconds": round(time.perf_counter() - t, 1)}
        else:
            trained[name] = {"config": config, "export": export}
    exports = {name: root / export for name, _, export in RECIPES if name in trained and name in PACKAGED}
    record = package(exports, DEMO_DIR, half, {"trained": trained, "command": "python -m multimodal.demo build"})
    for src, name in GPT_FIGURES.items():  # the sweep's figures, when it was run (README "GPT")
        if "gpt" in exports and (root / src).is_file():
            shutil.copyfile(root / src, DEMO_DIR / "gpt" / name)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m multimodal.demo", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command")
    b = sub.add_parser("build", help="train the demo models with the shipped configs and package them")
    b.add_argument("--skip-training", action="store_true", help="package the existing runs/ exports only")
    b.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    b.add_argument(
        "--only",
        default=None,
        help="comma-separated models to rebuild (judge, vae, clip-one-object, clip, dalle-one-object, dalle, gpt)",
    )
    p.add_argument("--out", default="demo", help="output directory (default demo/)")
    p.add_argument("--models", default=None, help="directory with clip/, dalle/, judge/ exports (default: packaged)")
    p.add_argument("--prompts", type=int, default=16, help="captions per split")
    p.add_argument("--candidates", type=int, default=16, help="DALL·E samples per caption (CLIP keeps one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    add_progress_flag(p)
    args = p.parse_args(argv)
    if args.command == "build":
        try:
            only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only is not None else None
            if only == []:
                raise ValueError("--only names no model")
            record = build(Path.cwd(), args.skip_training, not args.fp32, only)
        except (ValueError, CheckpointError, OSError, subprocess.CalledProcessError) as e:
            return fail(e)
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
