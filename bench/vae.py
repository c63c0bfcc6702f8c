"""Encoder throughput of our dVAE vs the ``dall-e`` package's encoder at the same geometry, in one run.

    python bench/vae.py                       # small geometry (CPU friendly): 64x64, n_hid 64, 1 block, 512 codes
    python bench/vae.py --paper --device cuda # OpenAI's released geometry: 256x256, n_hid 256, 2 blocks, 8192 codes
    python bench/vae.py --smoke               # 16x16 images, one batch: checks the comparison runs (CI)

Both encoders hold the same weights (ours converted from theirs, so the work is identical), see the
same images, and are timed interleaved (ABBA...) so that a busy machine slows both alike. On CUDA the
dall-e encoder runs its convolutions in fp16 (its own Conv2d does that); ours then runs under fp16
autocast, so the comparison stays like for like. Prints the load average first (a warning above 1.5),
images/s of each and ours / theirs, then our whole dVAE's train step (Gumbel relaxation, decoder,
logit-Laplace loss, backward, AdamW; ``dall-e`` ships no training code) as FLOP/s against ``torch.mm`` at
the step's largest matmul shape (a convolution as its im2col GEMM), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from _common import count_step, format_versus_mm, positive, report_load, smoke_check, versus_mm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dalle.vae.openai import convert_openai_state  # noqa: E402


def timed(fn, x: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--paper", action="store_true", help="OpenAI's released geometry (256px, n_hid 256, 2 blocks, 8192 codes)"
    )
    p.add_argument("--size", type=int, default=None, help="image size (default 64, or 256 with --paper)")
    p.add_argument("--n-hid", type=int, default=None)
    p.add_argument("--blocks", type=int, default=None)
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--reps", type=int, default=5, help="timed batches per model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--smoke", action="store_true", help="16x16 images, one batch: the comparison runs (for CI)")
    args = p.parse_args(argv)
    if args.smoke:  # dall-e's smallest encoder (n_hid >= 64, vocab >= 512) on tiny images
        args.size, args.batch_size, args.reps = 16, 2, 1
    try:
        from dall_e import Encoder, map_pixels
    except ImportError as e:
        print(
            f"error: the dall-e package is needed for the comparison ({e}); pip install --no-deps dall-e",
            file=sys.stderr,
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = args.size or (256 if args.paper else 64)
    n_hid = args.n_hid or (256 if args.paper else 64)
    blocks = args.blocks or (2 if args.paper else 1)
    vocab = args.vocab or (8192 if args.paper else 512)

    load = report_load()
    torch.manual_seed(0)
    theirs = Encoder(n_hid=n_hid, n_blk_per_group=blocks, vocab_size=vocab, device=device).eval()
    dec_state = _dummy_decoder_state(vocab, n_hid, blocks)
    ours = convert_openai_state(theirs.state_dict(), dec_state, image_size=size).to(device).eval()
    x = torch.rand(args.batch_size, 3, size, size, device=device)
    autocast = (
        torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )

    def run_theirs(x):
        return theirs(map_pixels(x))

    def run_ours(x):
        with autocast:
            return ours.encode_logits(x)

    with torch.inference_mode():
        diff = (run_ours(x).float() - run_theirs(x).float()).abs().max().item()  # also the warm-up
        t_ours, t_theirs = 0.0, 0.0
        for i in range(args.reps):  # alternate which goes first, so neither always follows the other
            if i % 2:
                t_ours += timed(run_ours, x, device)
                t_theirs += timed(run_theirs, x, device)
            else:
                t_theirs += timed(run_theirs, x, device)
                t_ours += timed(run_ours, x, device)
    n = args.reps * args.batch_size
    hardware = _train_step_vs_mm(ours, x, args.reps, autocast) if device.type == "cpu" else None
    result = {
        "load_average": load,
        "geometry": {"image_size": size, "n_hid": n_hid, "blocks_per_group": blocks, "vocab": vocab, "grid": size // 8},
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "batch_size": args.batch_size,
        "images": n,
        "ours_images_per_s": round(n / t_ours, 2),
        "dall_e_images_per_s": round(n / t_theirs, 2),
        "ratio_ours_over_dall_e": round(t_theirs / t_ours, 3),
        "max_abs_logit_diff": diff,
        "train_vs_mm": hardware,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        g = result["geometry"]
        print(
            f"encoder {size}x{size} -> {g['grid']}x{g['grid']} codes, n_hid {n_hid}, {blocks} blocks/group, vocab {vocab}, "
            f"{device}, {result['threads']} threads, batch {args.batch_size} x {args.reps}"
        )
        print(f"  ours    {result['ours_images_per_s']:9.2f} images/s")
        print(f"  dall-e  {result['dall_e_images_per_s']:9.2f} images/s")
        print(f"  ratio (ours / dall-e) {result['ratio_ours_over_dall_e']:.3f}; max |logit diff| {diff:.2e}")
        if hardware:
            print(format_versus_mm("our dVAE", hardware))
    if args.smoke:
        smoke_check(
            {
                "both encoders timed": positive(t_ours, t_theirs),
                f"same logits as dall-e at the same weights (max diff {diff:.1e})": diff < 1e-3,
                "FLOP/s vs torch.mm measured": hardware is not None and positive(hardware["fraction_of_mm"]),
            }
        )
    return 0


def _train_step_vs_mm(model, x: torch.Tensor, reps: int, autocast) -> dict:
    """Our dVAE's train step (Gumbel-softmax, decoder, loss, backward, AdamW) against ``torch.mm``."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with autocast:
            loss = model(x, temperature=1.0, kl_weight=1e-3)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (allocations, optimizer state)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return versus_mm(count_step(step), sorted(times)[len(times) // 2])


def _dummy_decoder_state(vocab: int, n_hid: int, blocks: int) -> dict[str, torch.Tensor]:
    # the converter builds a whole VAE; the benchmark only times the encoder
    from dall_e import Decoder

    return Decoder(n_init=128, n_hid=n_hid, n_blk_per_group=blocks, vocab_size=vocab).state_dict()


if __name__ == "__main__":
    sys.exit(main())
