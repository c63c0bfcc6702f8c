"""``python -m multimodal.gpt.scaling --sizes 32x1,64x2,128x4 --tokens 2e6 --out runs/scaling``: a scaling curve.

Trains GPTs of several sizes on the same data with the same token budget and schedule (Kaplan et al.
2020; GPT-3 §2.1), then writes ``scaling.csv`` (one row per size), ``scaling.png`` (validation loss
against non-embedding parameters, log-log, with the least-squares power law ``L = a · N^-α``) and
``scaling.json``. Sizes are ``WIDTHxLAYERS`` (heads = width / 32), ``WIDTHxLAYERSxHEADS`` or preset names
(``gpt2``, ``gpt3-small`` …, for a GPU). Data: a synthetic source of ``data.text`` or text files / shards.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from data.text import SYNTHETIC, TextDataModule
from multimodal.checkpoint import CheckpointError
from multimodal.cli import fail
from multimodal.gpt import GPT, PRESETS, GPTConfig, preset
from multimodal.gpt.lm import GPTModule
from multimodal.tokenizers import get_tokenizer

FILES = ("scaling.csv", "scaling.png", "scaling.json")


@dataclass
class Run:
    name: str
    width: int
    layers: int
    heads: int
    params: int  # non-embedding parameters (Kaplan et al.'s N)
    total_params: int
    tokens: int
    steps: int
    val_loss: float
    seconds: float


def parse_size(spec: str, context_length: int, vocab_size: int, tokenizer: str = "byte") -> tuple[str, GPTConfig]:
    spec = spec.strip()
    common = {"context_length": context_length, "vocab_size": vocab_size, "tokenizer": tokenizer}
    if spec in PRESETS:
        return spec, preset(spec, **common)
    parts = spec.lower().split("x")
    if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"size {spec!r}: expected WIDTHxLAYERS, WIDTHxLAYERSxHEADS or one of {', '.join(PRESETS)}")
    width, layers = int(parts[0]), int(parts[1])
    heads = int(parts[2]) if len(parts) == 3 else max(1, width // 32)
    if width % heads:
        raise ValueError(f"size {spec!r}: width {width} is not divisible by {heads} heads")
    return spec, GPTConfig(**common, backbone={"width": width, "layers": layers, "heads": heads})


def non_embedding_params(model: torch.nn.Module) -> int:
    """Kaplan et al.'s N: every parameter except the token and position embeddings (the head is tied)."""
    return sum(p.numel() for n, p in model.named_parameters() if "embedding" not in n)


def train_one(
    config: GPTConfig,
    data: TextDataModule,
    steps: int,
    lr: float,
    val_batches: int,
    device: str,
    seed: int,
    desc: str,
    progress: bool = True,
) -> tuple[float, float]:
    """Train a fresh GPT for ``steps`` with the suite's ``GPTModule`` optimiser and schedule; returns
    (validation loss, seconds)."""
    torch.manual_seed(seed)
    module = GPTModule(config, lr=lr, weight_decay=0.0, warmup_steps=max(1, steps // 20))
    model = module.model.to(device).train()
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    g = torch.Generator().manual_seed(seed)  # every size sees the same batches in the same order
    loader = torch.utils.data.DataLoader(
        data.train_set, data.hparams.batch_size, shuffle=True, drop_last=True, generator=g
    )
    start = time.time()
    it = iter(loader)
    for _ in tqdm(range(steps), desc=desc, disable=not progress, file=sys.stderr, leave=False):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        loss = model.loss(batch.to(device))  # [B, T+1] packed tokens
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    losses = []
    with torch.no_grad():
        val = torch.utils.data.DataLoader(data.val_set, data.hparams.batch_size)
        for i, batch in enumerate(val):
            if i == val_batches:
                break
            losses.append(float(model.loss(batch.to(device))))
    return sum(losses) / len(losses), time.time() - start


def measure_checkpoints(paths: list[str], data: TextDataModule, val_batches: int, device: str) -> list[Run]:
    """Runs of exports trained elsewhere (their steps and tokens from the export's record when it has one),
    with validation loss measured here on ``data``'s validation part."""
    from multimodal.checkpoint import load_model

    runs = []
    for path in (p.strip() for p in paths if p.strip()):
        model = load_model(path, "gpt").to(device).eval()
        cfg = model.config
        if (cfg.tokenizer, cfg.vocab_size) != (data.tokenizer.name, data.tokenizer.vocab_size):
            raise CheckpointError(
                f"{path}: its tokenizer ({cfg.tokenizer}, {cfg.vocab_size} tokens) is not the data's "
                f"({data.tokenizer.name}, {data.tokenizer.vocab_size}); pass its --tokenizer-dir"
            )
        if cfg.context_length < data.length - 1:
            raise CheckpointError(f"{path}: context {cfg.context_length} is shorter than --context {data.length - 1}")
        losses = []
        with torch.no_grad():
            for i, batch in enumerate(torch.utils.data.DataLoader(data.val_set, data.hparams.batch_size)):
                if i == val_batches:
                    break
                losses.append(float(model.loss(batch.to(device))))
        info = _export_info(Path(path))
        steps = int(info.get("trained_steps", 0))
        b = cfg.backbone
        name = f"{b.width}x{b.layers}"
        total = sum(p.numel() for p in model.parameters())
        tokens = steps * data.hparams.batch_size * (data.length - 1)  # at this --batch-size and --context
        runs.append(
            Run(
                name,
                b.width,
                b.layers,
                b.heads,
                non_embedding_params(model),
                total,
                tokens,
                steps,
                sum(losses) / len(losses),
                0.0,
            )
        )
    return runs


def _export_info(path: Path) -> dict:
    config = path / "config.json"
    if not config.is_file():
        return {}
    record = json.loads(config.read_text())
    return record if isinstance(record, dict) else {}


def fit_power_law(params: list[int], losses: list[float]) -> tuple[float, float] | None:
    """Least squares of log L = log a − α log N → (a, α); None with fewer than two distinct sizes."""
    if len(set(params)) < 2:
        return None
    xs, ys = [math.log(p) for p in params], [math.log(v) for v in losses]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - slope * mx), -slope


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values between 10**lo and 10**hi: 1-2-5 per decade (only the decades if the range is wide)."""
    mult = (1,) if hi - lo > 3 else (1, 2, 5)
    ticks = [m * 10.0**e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in mult]
    return [t for t in ticks if lo <= math.log10(t) <= hi]


def _fmt(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def plot_png(runs: list[Run], fit: tuple[float, float] | None, path: Path, title: str) -> None:
    """Log-log scatter + fitted line drawn with Pillow (no matplotlib in the suite's dependencies)."""
    from PIL import Image, ImageDraw

    from multimodal.images import font as make_font

    W, H, left, right, top, bottom = 800, 560, 90, 30, 64, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font, big = make_font(15), make_font(17)  # PIL's 10-px bitmap default is unreadable on a page
    xs = [math.log10(r.params) for r in runs]
    ys = [math.log10(r.val_loss) for r in runs]
    x_lo, x_hi = min(xs) - 0.15, max(xs) + 0.15
    y_pad = max(0.02, (max(ys) - min(ys)) * 0.15)
    y_lo, y_hi = min(ys) - y_pad, max(ys) + y_pad

    def px(lx: float, ly: float) -> tuple[float, float]:
        return (
            left + (lx - x_lo) / (x_hi - x_lo) * (W - left - right),
            top + (y_hi - ly) / (y_hi - y_lo) * (H - top - bottom),
        )

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for t in _log_ticks(x_lo, x_hi):
        x, _ = px(math.log10(t), y_lo)
        d.line([x, top, x, H - bottom], fill=(225, 225, 225))
        d.line([x, H - bottom, x, H - bottom + 5], fill="black")
        d.text((x - 14, H - bottom + 8), _fmt(t), fill="black", font=font)
    y_ticks = _log_ticks(y_lo, y_hi)
    if len(y_ticks) < 3:  # a narrow loss range: ticks at round linear values instead
        step = 10 ** math.floor(math.log10((10**y_hi - 10**y_lo) / 4))
        v = math.ceil(10**y_lo / step) * step
        y_ticks = []
        while v <= 10**y_hi:
            y_ticks.append(v)
            v += step
    for t in y_ticks:
        _, y = px(x_lo, math.log10(t))
        d.line([left, y, W - right, y], fill=(225, 225, 225))
        d.line([left - 5, y, left, y], fill="black")
        d.text((left - 50, y - 9), f"{t:.3g}", fill="black", font=font)
    if fit is not None:
        a, alpha = fit
        pts = [px(lx, math.log10(a) - alpha * lx) for lx in (x_lo, x_hi)]
        for i in range(0, 40, 2):  # dashed
            t0, t1 = i / 40, (i + 1) / 40
            d.line(
                [
                    pts[0][0] + (pts[1][0] - pts[0][0]) * t0,
                    pts[0][1] + (pts[1][1] - pts[0][1]) * t0,
                    pts[0][0] + (pts[1][0] - pts[0][0]) * t1,
                    pts[0][1] + (pts[1][1] - pts[0][1]) * t1,
                ],
                fill=(200, 60, 60),
                width=2,
            )
        d.text((left + 10, top + 8), f"L = {a:.3g} * N^-{alpha:.3f}", fill=(200, 60, 60), font=font)
    order = sorted(range(len(runs)), key=lambda i: xs[i])
    d.line([px(xs[i], ys[i]) for i in order], fill=(40, 90, 180), width=2)
    for i in order:
        x, y = px(xs[i], ys[i])
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(40, 90, 180))
        d.text((x + 8, y - 20), runs[i].name, fill="black", font=font)
    d.text((left, 10), title, fill="black", font=big)
    d.text(((W - left) // 2 - 40, H - 30), "non-embedding parameters N (log)", fill="black", font=font)
    d.text((8, top - 24), "validation loss (nats/token, log)", fill="black", font=font)
    img.save(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m multimodal.gpt.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="32x1,64x2,128x4", help="comma-separated WIDTHxLAYERS[xHEADS] or presets")
    p.add_argument("--synthetic", default="arithmetic", help=f"synthetic source ({', '.join(SYNTHETIC)})")
    p.add_argument("--synthetic-docs", type=int, default=20000, help="documents to generate")
    p.add_argument("--train", default=None, help="text files / directories / globs instead of a synthetic source")
    p.add_argument("--val", default=None, help="validation text (default: a held-out part of the synthetic data)")
    p.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of synthetic documents held out for validation"
    )
    p.add_argument(
        "--tokenizer-dir",
        default=None,
        help="a GPT-2 kind BPE (vocab.json + merges.txt, e.g. data/tokenizers/tasks) instead of bytes",
    )
    p.add_argument("--context", type=int, default=64, help="tokens per sequence (default 64)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tokens", type=float, default=2e5, help="training tokens per size (same for all; default 2e5)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--val-batches", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--checkpoints",
        default=None,
        help="comma-separated exports already trained on the same data with the same --batch-size and "
        "--context (e.g. one config per size): measure their validation loss instead of training --sizes",
    )
    p.add_argument("--out", default="runs/scaling", help="directory for scaling.csv / .png / .json")
    p.add_argument("--overwrite", action="store_true", help="replace scaling.* files already in --out")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.context < 2 or args.batch_size < 1 or args.val_batches < 1:
        return fail("--context must be >= 2, --batch-size and --val-batches >= 1")
    steps = int(args.tokens // (args.batch_size * args.context))
    if steps < 1:
        return fail(f"--tokens {args.tokens:g} is less than one batch ({args.batch_size} x {args.context})")
    try:
        tok = get_tokenizer("gpt2", args.tokenizer_dir) if args.tokenizer_dir else get_tokenizer("byte")
    except (OSError, ValueError) as e:
        return fail(f"--tokenizer-dir {args.tokenizer_dir}: {e}")
    try:
        sizes = [parse_size(s, args.context, tok.vocab_size, tok.name) for s in args.sizes.split(",") if s.strip()]
    except ValueError as e:
        return fail(str(e))
    if not sizes:
        return fail("--sizes is empty")
    if out.exists() and not out.is_dir():
        return fail(f"{out}: exists and is not a directory")
    clash = [f for f in FILES if (out / f).exists()]
    if clash and not args.overwrite:
        return fail(f"{out} already holds {', '.join(clash)}; pass --overwrite or another --out")
    if args.train is None and args.synthetic not in SYNTHETIC:
        return fail(f"unknown synthetic source {args.synthetic!r}; known: {', '.join(SYNTHETIC)}")
    try:
        data = TextDataModule(
            train=args.train,
            val=args.val,
            synthetic=None if args.train else args.synthetic,
            synthetic_docs=args.synthetic_docs,
            val_fraction=args.val_fraction,
            tokenizer=tok.name,
            tokenizer_dir=args.tokenizer_dir,
            context_length=args.context,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        data.setup("fit")
    except (FileNotFoundError, ValueError) as e:
        return fail(e)
    if not isinstance(data.train_set, torch.utils.data.Dataset) or data.val_set is None:
        return fail("scaling needs in-memory text with a validation part (synthetic, or --train and --val files)")
    if hasattr(data.train_set, "__len__") and len(data.train_set) < args.batch_size:
        return fail(f"only {len(data.train_set)} training sequences: fewer than one batch")
    runs: list[Run] = []
    if args.checkpoints:
        try:
            runs = measure_checkpoints(args.checkpoints.split(","), data, args.val_batches, args.device)
        except CheckpointError as e:
            return fail(e)
        sizes = []
    for name, cfg in sizes:
        with torch.device("meta"):
            n, total = non_embedding_params(GPT(cfg)), sum(p.numel() for p in GPT(cfg).parameters())
        val_loss, secs = train_one(
            cfg,
            data,
            steps,
            args.lr,
            args.val_batches,
            args.device,
            args.seed,
            f"{name} ({n:,} params)",
            not args.no_progress,
        )
        runs.append(
            Run(
                name,
                cfg.backbone.width,
                cfg.backbone.layers,
                cfg.backbone.heads,
                n,
                total,
                steps * args.batch_size * args.context,
                steps,
                val_loss,
                secs,
            )
        )
        print(f"{name:>12}  N={n:>10,}  val_loss={val_loss:.4f}  ({secs:.1f}s)", file=sys.stderr)
    fit = fit_power_law([r.params for r in runs], [r.val_loss for r in runs])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "scaling.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(Run.__dataclass_fields__))
        for r in runs:
            w.writerow([getattr(r, k) for k in Run.__dataclass_fields__])
    title = f"GPT scaling: {args.train or args.synthetic}, {runs[0].tokens:,} tokens per size"
    plot_png(runs, fit, out / "scaling.png", title)
    summary = {
        "runs": [r.__dict__ for r in runs],
        "power_law": None if fit is None else {"a": fit[0], "alpha": fit[1]},
        "csv": str(out / "scaling.csv"),
        "png": str(out / "scaling.png"),
    }
    (out / "scaling.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        for r in runs:
            print(f"{r.name}\t{r.params}\t{r.val_loss:.4f}")
        if fit is not None:
            print(f"power law: L = {fit[0]:.4g} * N^-{fit[1]:.4f}")
        print(f"wrote {out / 'scaling.csv'} and {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
