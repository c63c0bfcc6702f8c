"""Our DALL·E vs ``dalle-pytorch`` (lucidrains) at one configuration, measured in one run.

    .venv/bin/pip install --no-deps dalle-pytorch einops axial_positional_embedding rotary-embedding-torch
    python bench/dalle.py [--batch 8] [--train-batch 16] [--reps 3] [--threads 1] [--json]
    python bench/dalle.py --smoke   # tiny shapes, one rep: checks the comparison runs (CI), measures nothing

Configuration (both): 64 text tokens (257-id byte vocabulary), an 8×8 grid of 512 image codes, width 256,
depth 4, 8 heads of 32, full causal attention, fp32 on the CPU. dalle-pytorch keeps its defaults
otherwise (rotary embeddings, token shift). ``bench/shims`` stands in for modules it imports but this
benchmark never uses (pkg_resources, omegaconf, taming); it is put on ``sys.path`` here only.

Prints the load average first (a warning above 1.5), then, alternating ours / theirs so background load
hits both alike (median of ``--reps``):

- sampling the 64 image codes of ``--batch`` captions (top half of the codes kept at each step, as
  their ``filter_thres=0.5``; their dVAE decode is skipped so only the transformer is timed): theirs
  with ``use_cache=True`` and with ``use_cache=False``, ours with the KV cache;
- one training step (forward, loss, backward, AdamW) on ``--train-batch`` caption + code pairs, and our
  step's FLOP/s as a fraction of ``torch.mm`` at its largest matmul shape, measured in the same run.

Printed as speed ratios (theirs time / ours time; > 1 means we are faster). Targets: ≥ 2× vs their
cached sampling, ≥ 10× vs uncached, ≥ 1.2× train step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import count_step, format_versus_mm, positive, report_load, smoke_check, versus_mm

# this file is bench/dalle.py: run as a script, its folder would shadow the `dalle` package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from dalle.model import DALLE, DALLEConfig  # noqa: E402
from multimodal.sampling import SamplingSettings  # noqa: E402

# text tokens, code grid side, codebook size, width, depth, heads: the benchmark's shape, and --smoke's
FULL = dict(text=64, grid=8, codes=512, width=256, depth=4, heads=8)
SMOKE = dict(text=16, grid=4, codes=64, width=64, depth=2, heads=2)  # their rotary needs heads of 32


def theirs(text: int, grid: int, codes: int, width: int, depth: int, heads: int):
    import dalle_pytorch

    # their dVAE halves the image num_layers times: image_size = grid * 2**3
    vae = dalle_pytorch.DiscreteVAE(image_size=grid * 8, num_layers=3, num_tokens=codes, codebook_dim=64, hidden_dim=16)
    model = dalle_pytorch.DALLE(
        dim=width, vae=vae, num_text_tokens=257, text_seq_len=text, depth=depth, heads=heads, dim_head=width // heads
    )
    vae.decode = lambda codes: codes  # time the transformer only
    return model


def ours(text: int, grid: int, codes: int, width: int, depth: int, heads: int) -> DALLE:
    config = DALLEConfig(
        text_length=text, text_vocab_size=257, tokenizer="byte", image_grid=grid, image_vocab_size=codes,
        backbone={"width": width, "layers": depth, "heads": heads},
    )  # fmt: skip
    return DALLE(config)


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8, help="captions sampled at once")
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, one rep: the comparison runs (for CI)")
    args = ap.parse_args()
    shape = SMOKE if args.smoke else FULL
    if args.smoke:
        args.batch, args.train_batch, args.reps = 2, 2, 1
    sys.path.insert(0, str(_HERE / "shims"))
    try:
        import dalle_pytorch  # noqa: F401
    except ImportError as e:
        print(f"error: dalle-pytorch is needed for the comparison ({e}); see this file's docstring", file=sys.stderr)
        return 2
    TEXT, GRID, CODES = shape["text"], shape["grid"], shape["codes"]  # noqa: N806
    torch.set_num_threads(args.threads)
    load = report_load()
    torch.manual_seed(0)
    a, b = ours(**shape).eval(), theirs(**shape).eval()
    caption = "a red circle" if args.smoke else "a large red circle in the top left"  # fits the text length
    text_a = a.tokenize([caption] * args.batch)
    text_b = torch.randint(1, 257, (args.batch, TEXT))
    settings = SamplingSettings(temperature=1.0, top_k=CODES // 2, seed=0)

    @torch.no_grad()
    def sample_ours():
        return a.generate_codes(text_a, settings)

    @torch.no_grad()
    def sample_theirs(cache: bool):
        return b.generate_images(text_b, filter_thres=0.5, use_cache=cache)

    shapes_ok = {  # both sample a whole grid of codes (also the warm-up)
        "ours samples [B, grid, grid] codes": sample_ours().shape == (args.batch, GRID, GRID),
        "theirs samples [B, grid * grid] codes": sample_theirs(True).shape == (args.batch, GRID * GRID),
    }
    t = {
        "ours_sample": [],
        "theirs_sample_cached": [],
        "theirs_sample_uncached": [],
        "ours_train": [],
        "theirs_train": [],
    }
    for _ in range(args.reps):  # alternate so load changes hit both
        t["ours_sample"] += timed(sample_ours, 1)
        t["theirs_sample_cached"] += timed(lambda: sample_theirs(True), 1)
        t["theirs_sample_uncached"] += timed(lambda: sample_theirs(False), 1)

    a.train(), b.train()
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-4)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-4)
    tt_a = a.tokenize([caption] * args.train_batch)
    tt_b = torch.randint(1, 257, (args.train_batch, TEXT))
    codes = torch.randint(0, CODES, (args.train_batch, GRID * GRID))

    def train_ours():
        opt_a.zero_grad(set_to_none=True)
        a.loss(tt_a, codes)["loss"].backward()
        opt_a.step()

    def train_theirs():
        opt_b.zero_grad(set_to_none=True)
        b(tt_b, codes, return_loss=True).backward()
        opt_b.step()

    train_ours(), train_theirs()  # warm-up (allocations, optimizer state)
    for _ in range(args.reps):
        t["ours_train"] += timed(train_ours, 1)
        t["theirs_train"] += timed(train_theirs, 1)

    med = {k: statistics.median(v) for k, v in t.items()}
    hardware = versus_mm(count_step(train_ours), med["ours_train"])
    result = {
        "load_average": load,
        "config": {**shape, "grid": f"{GRID}x{GRID}"},
        "batch": args.batch,
        "train_batch": args.train_batch,
        "threads": args.threads,
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "params": {
            "ours": a.num_params(),
            "theirs": sum(p.numel() for n, p in b.named_parameters() if not n.startswith("vae.")),
        },
        "speedup": {
            "sample_vs_cached": round(med["theirs_sample_cached"] / med["ours_sample"], 2),
            "sample_vs_uncached": round(med["theirs_sample_uncached"] / med["ours_sample"], 2),
            "train_step": round(med["theirs_train"] / med["ours_train"], 2),
        },
        "targets": {"sample_vs_cached": 2.0, "sample_vs_uncached": 10.0, "train_step": 1.2},
        "train_vs_mm": hardware,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        s = result["speedup"]
        print(
            f"config: {result['config']}, sampling batch {args.batch}, train batch {args.train_batch}, "
            f"{args.threads} thread(s)"
        )
        for k, v in result["seconds"].items():
            print(f"  {k:24s} {v:8.3f} s")
        for k, target in result["targets"].items():
            print(f"  {k:24s} {s[k]:6.2f}x  (target >= {target}x: {'met' if s[k] >= target else 'NOT met'})")
        print(format_versus_mm("ours", hardware))
    if args.smoke:
        smoke_check(
            {
                **shapes_ok,
                "every sampling and train step timed": positive(*med.values()),
                "FLOP/s vs torch.mm measured": positive(hardware["fraction_of_mm"]),
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
