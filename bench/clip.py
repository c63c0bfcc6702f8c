"""CLIP against open_clip with the same weights (a randomly initialised open_clip ViT-B-32, imported).

    python bench/clip.py [--steps 3] [--json]

1. train step: ViT-B-32, batch 16, fp32, forward + contrastive loss + backward + AdamW → speed ratio
   (open_clip time / ours; > 1 means we are faster);
2. image encoding throughput (batch 16, inference) → ratio ours / open_clip;
3. the zero-shot CLI end to end (1 image, 2 labels, 80 templates, local weights) as a fresh process
   against an equivalent open_clip script → wall-time and peak-memory ratios (ours / open_clip; < 1 is
   better).
Measurements alternate between the two implementations and report medians, so a machine shared with
other jobs disturbs both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

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
    from PIL import Image
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    weights, image, labels = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=weights)
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        classes = []
        for label in labels:
            f = model.encode_text(tokenizer([t(label) for t in OPENAI_IMAGENET_TEMPLATES]), normalize=True)
            classes.append(torch.nn.functional.normalize(f.mean(0), dim=-1))
        classes = torch.stack(classes)
        img = model.encode_image(preprocess(Image.open(image).convert("RGB"))[None], normalize=True)
        probs = (100.0 * img @ classes.t()).softmax(-1)[0]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="CLIP vs open_clip (same weights): train step, encoding, zero-shot CLI")
    p.add_argument("--steps", type=int, default=3, help="timed repetitions of each measurement (after one warm-up)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import open_clip

    from clip.loss import ClipLoss
    from clip.openclip import load_openclip

    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32", pretrained=None)
    tmp = Path(tempfile.mkdtemp(prefix="clip-bench-"))
    weights = tmp / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), weights)
    ours = load_openclip("ViT-B-32", weights)
    results: dict = {"threads": torch.get_num_threads()}

    # 1. train step, batch 16, fp32
    images = torch.randn(16, 3, 224, 224)
    ids = open_clip.tokenize([CAPTIONS[i % len(CAPTIONS)] for i in range(16)])
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
        "ours": 16 / statistics.median(e_ours),
        "open_clip": 16 / statistics.median(e_ref),
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
        "ViT-B-32",
        "--checkpoint",
        str(weights),
        "--labels",
        "cat,dog",
        str(image),
    ]
    cmd_ref = [sys.executable, str(script), str(weights), str(image), "cat,dog"]
    runs: dict[str, list[tuple[float, int]]] = {"ours": [], "open_clip": []}
    for _ in range(max(1, args.steps - 1)):
        for name, cmd in (("ours", cmd_ours), ("open_clip", cmd_ref)):
            r = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True, cwd=ROOT)
            wall, rss, code = r.stdout.split()
            if int(code) != 0:
                print(f"error: {name} zero-shot run failed:\n{r.stderr}", file=sys.stderr)
                return 1
            runs[name].append((float(wall), int(rss)))
    cli = {
        k: {"wall_s": statistics.median(w for w, _ in v), "peak_rss_mb": max(m for _, m in v) / 1024}
        for k, v in runs.items()
    }
    results["zeroshot_cli"] = cli
    results["zeroshot_wall_ratio"] = cli["ours"]["wall_s"] / cli["open_clip"]["wall_s"]
    results["zeroshot_peak_memory_ratio"] = cli["ours"]["peak_rss_mb"] / cli["open_clip"]["peak_rss_mb"]

    if args.json:
        print(json.dumps(results))
    else:
        ts = results["train_step_s"]
        print(f"torch threads: {results['threads']}")
        print(
            f"train step (ViT-B-32, batch 16, fp32): ours {ts['ours']:.2f}s, open_clip {ts['open_clip']:.2f}s "
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
