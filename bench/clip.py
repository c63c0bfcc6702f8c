"""CLIP against open_clip with the same weights (a randomly initialised open_clip ViT-B-32, imported).

    python bench/clip.py [--steps 3] [--json]
    python bench/clip.py --smoke   # a tiny CLIP, one step: checks the comparison runs (CI), measures nothing

1. train step: ViT-B-32, batch 16, fp32, forward + contrastive loss + backward + AdamW → speed ratio
   (open_clip time / ours; > 1 means we are faster);
2. image encoding throughput (batch 16, inference) → ratio ours / open_clip;
3. the zero-shot CLI end to end (1 image, 2 labels, 80 templates, local weights) as a fresh process
   against an equivalent open_clip script → wall-time and peak-memory ratios (ours / open_clip; < 1 is
   better).
Measurements alternate between the two implementations and report medians, so a machine shared with
other jobs disturbs both alike. The load average is printed first (a warning above 1.5); our train step's
FLOP/s is also given as a fraction of ``torch.mm`` at the step's largest matmul shape, measured in the same
run. Both sides are checked to compute the same thing (image embeddings, zero-shot probabilities).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from _common import count_step, format_versus_mm, positive, report_load, smoke_check, versus_mm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAPTIONS = [
    "a photo of a cat sitting on a sofa",
    "a red car parked in front of a house",
    "two dogs playing in the snow",
    "a bowl of fruit on a wooden table",
]

OPENCLIP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, open_clip
    from pathlib import Path
    from PIL import Image
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    name, weights, image, labels = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    if name.endswith(".json"):  # a config file (--smoke's tiny CLIP): registered under its file name
        open_clip.add_model_config(name)
        name = Path(name).stem
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    with torch.no_grad():
        classes = []
        for label in labels:
            f = model.encode_text(tokenizer([t(label) for t in OPENAI_IMAGENET_TEMPLATES]), normalize=True)
            classes.append(torch.nn.functional.normalize(f.mean(0), dim=-1))
        classes = torch.stack(classes)
        img = model.encode_image(preprocess(Image.open(image).convert("RGB"))[None], normalize=True)
        # the model's own temperature, as our CLI (100 for released weights, ~14 at random init)
        probs = (model.logit_scale.exp() * img @ classes.t()).softmax(-1)[0]
    print(image + ": " + ", ".join(f"{labels[i]} {float(probs[i]):.3f}" for i in probs.argsort(descending=True)))
    """
)

RSS_WRAPPER = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode); "
    "sys.stderr.write(r.stdout + r.stderr)"
)


def _time(fn, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# --smoke's CLIP: ViT-B-32's layout at a few percent of its size (open_clip's config format)
SMOKE_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PROBS = re.compile(r"(cat|dog) ([0-9.]+)")  # both zero-shot scripts print "image: label p, label p"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="CLIP vs open_clip (same weights): train step, encoding, zero-shot CLI")
    p.add_argument("--steps", type=int, default=3, help="timed repetitions of each measurement (after one warm-up)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--smoke", action="store_true", help="a tiny CLIP, one step: the comparison runs (for CI)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps = 1

    import open_clip

    from clip.loss import ClipLoss
    from clip.openclip import load_openclip

    load = report_load()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="clip-bench-"))
    model = "ViT-B-32"
    batch = 16
    if args.smoke:
        model = str(tmp / "clip-smoke.json")
        Path(model).write_text(json.dumps(SMOKE_CONFIG))
        open_clip.add_model_config(model)
        batch = 2
    ref = open_clip.create_model(Path(model).stem, pretrained=None)
    weights = tmp / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), weights)
    ours = load_openclip(model, weights)
    results: dict = {"load_average": load, "model": Path(model).stem, "threads": torch.get_num_threads()}
    size = ref.visual.image_size
    size = size[0] if isinstance(size, tuple) else size

    # 0. same weights, same function: image embeddings agree before any step
    images = torch.randn(batch, 3, size, size)
    ours.eval()
    ref.eval()
    with torch.inference_mode():
        embed_gap = (ours.encode_image(images) - ref.encode_image(images, normalize=True)).abs().max().item()
    results["parity"] = {"max_image_embedding_gap": embed_gap}

    # 1. train step, batch 16 (2 in --smoke), fp32
    ids = open_clip.tokenize([CAPTIONS[i % len(CAPTIONS)] for i in range(batch)])
    loss_ours, loss_ref = ClipLoss(), open_clip.ClipLoss()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-5)
    ours.train()
    ref.train()

    def step_ours():
        img, txt, scale = ours(images, ids)
        loss = loss_ours(img, txt, scale)
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def step_ref():
        img = ref.encode_image(images, normalize=True)
        txt = ref.encode_text(ids, normalize=True)
        loss = loss_ref(img, txt, ref.logit_scale.exp())
        opt_ref.zero_grad(set_to_none=True)
        loss.backward()
        opt_ref.step()

    step_ours(), step_ref()  # warm-up
    t_ours, t_ref = [], []
    for _ in range(args.steps):
        t_ours += _time(step_ours, 1)
        t_ref += _time(step_ref, 1)
    results["train_step_s"] = {"ours": statistics.median(t_ours), "open_clip": statistics.median(t_ref)}
    results["train_step_speed_ratio"] = results["train_step_s"]["open_clip"] / results["train_step_s"]["ours"]
    results["train_vs_mm"] = versus_mm(count_step(step_ours), results["train_step_s"]["ours"])

    # 2. image encoding throughput (inference)
    ours.eval()
    ref.eval()
    with torch.inference_mode():
        ours.encode_image(images), ref.encode_image(images)
        e_ours, e_ref = [], []
        for _ in range(args.steps):
            e_ours += _time(lambda: ours.encode_image(images), 1)
            e_ref += _time(lambda: ref.encode_image(images, normalize=True), 1)
    results["encode_images_per_s"] = {
        "ours": batch / statistics.median(e_ours),
        "open_clip": batch / statistics.median(e_ref),
    }
    results["encode_throughput_ratio"] = (
        results["encode_images_per_s"]["ours"] / results["encode_images_per_s"]["open_clip"]
    )

    # 3. zero-shot CLI end to end, fresh processes
    from PIL import Image

    image = tmp / "cat.png"
    Image.new("RGB", (640, 480), (200, 120, 40)).save(image)
    script = tmp / "openclip_zeroshot.py"
    script.write_text(OPENCLIP_SCRIPT)
    cmd_ours = [
        sys.executable,
        "-m",
        "clip.zeroshot",
        "--model",
        model,
        "--checkpoint",
        str(weights),
        "--labels",
        "cat,dog",
        str(image),
    ]
    cmd_ref = [sys.executable, str(script), model, str(weights), str(image), "cat,dog"]
    runs: dict[str, list[tuple[float, int]]] = {"ours": [], "open_clip": []}
    probs: dict[str, dict[str, float]] = {}
    for _ in range(max(1, args.steps - 1)):
        for name, cmd in (("ours", cmd_ours), ("open_clip", cmd_ref)):
            r = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True, cwd=ROOT)
            wall, rss, code = r.stdout.split()
            if int(code) != 0:
                print(f"error: {name} zero-shot run failed:\n{r.stderr}", file=sys.stderr)
                return 1
            runs[name].append((float(wall), int(rss)))
            probs[name] = {label: float(p) for label, p in PROBS.findall(r.stderr)}
    cli = {
        k: {"wall_s": statistics.median(w for w, _ in v), "peak_rss_mb": max(m for _, m in v) / 1024}
        for k, v in runs.items()
    }
    results["zeroshot_cli"] = cli
    results["zeroshot_wall_ratio"] = cli["ours"]["wall_s"] / cli["open_clip"]["wall_s"]
    results["zeroshot_peak_memory_ratio"] = cli["ours"]["peak_rss_mb"] / cli["open_clip"]["peak_rss_mb"]
    # the two CLIs agree: both load the weights file written before the train steps
    if set(probs["ours"]) == set(probs["open_clip"]) == {"cat", "dog"}:
        prob_gap = max(abs(probs["ours"][k] - probs["open_clip"][k]) for k in ("cat", "dog"))
    else:
        prob_gap = 1.0  # a CLI printed no probabilities
    results["parity"]["zeroshot_prob_gap"] = prob_gap

    if args.json:
        print(json.dumps(results))
    else:
        ts = results["train_step_s"]
        print(f"torch threads: {results['threads']}")
        print(
            f"train step ({results['model']}, batch {batch}, fp32): ours {ts['ours']:.2f}s, open_clip {ts['open_clip']:.2f}s "
            f"-> speed ratio {results['train_step_speed_ratio']:.2f}x (target >= 1.2)"
        )
        ei = results["encode_images_per_s"]
        print(
            f"image encoding: ours {ei['ours']:.1f} img/s, open_clip {ei['open_clip']:.1f} img/s "
            f"-> ratio {results['encode_throughput_ratio']:.2f}x (target >= 1.0)"
        )
        print(
            f"zero-shot CLI: ours {cli['ours']['wall_s']:.1f}s / {cli['ours']['peak_rss_mb']:.0f} MB, open_clip "
            f"{cli['open_clip']['wall_s']:.1f}s / {cli['open_clip']['peak_rss_mb']:.0f} MB -> wall ratio "
            f"{results['zeroshot_wall_ratio']:.2f}, memory ratio {results['zeroshot_peak_memory_ratio']:.2f} (targets <= 1.0)"
        )
        print(format_versus_mm("ours", results["train_vs_mm"]))
    if args.smoke:
        smoke_check(
            {
                "both train steps timed": positive(*results["train_step_s"].values()),
                "both encoders timed": positive(*results["encode_images_per_s"].values()),
                "both zero-shot CLIs timed": positive(*(v for c in cli.values() for v in c.values())),
                "FLOP/s vs torch.mm measured": positive(results["train_vs_mm"]["fraction_of_mm"]),
                f"same image embeddings as open_clip (max gap {embed_gap:.1e})": embed_gap < 1e-4,
                f"same zero-shot probabilities as open_clip (max gap {prob_gap:.3f})": prob_gap <= 2e-3,
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
