"""Our GPT vs Hugging Face ``transformers`` GPT-2 at the 124M shape, measured in one run.

    python bench/gpt.py [--steps 3] [--gen-tokens 32] [--batch 4] [--seq 256]

Prints: train-step time (AdamW, batch × seq tokens, fp32) and greedy generation tokens/s for both, as
ratios (ours / HF speed, > 1 means we are faster), and the achieved FLOP/s of our train step divided by
this machine's ``torch.mm`` FLOP/s. Both models get the same weights; the two are measured alternately so
background load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from multimodal.gpt import GPT, preset
from multimodal.gpt.hf import convert_hf_state
from multimodal.sampling import SamplingSettings


def mm_flops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def train_flops(model: GPT, batch: int, seq: int) -> float:
    """6·N·tokens for the weights (N without position table) + the attention score/value matmuls."""
    c = model.config.backbone
    n = model.num_params(non_embedding=True)
    attn = 12 * c.layers * c.width * seq  # per token: 2 matmuls × 2 FLOPs × 3 (fwd + bwd) × seq × width
    return (6 * n + attn) * batch * seq


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import transformers

    torch.manual_seed(0)
    cfg = preset("gpt2")
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_positions=cfg.context_length,
            n_embd=cfg.backbone.width,
            n_layer=cfg.backbone.layers,
            n_head=cfg.backbone.heads,
        )
    )
    ours = GPT(cfg)
    ours.load_state_dict(convert_hf_state(hf.state_dict(), cfg))
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))

    def step_fn(model, hf_style: bool):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            if hf_style:
                loss = model(ids[:, :-1], labels=ids[:, :-1]).loss
            else:
                loss = model.loss(ids)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    ours.train()
    hf.train()
    ours_step, hf_step = step_fn(ours, False), step_fn(hf, True)
    t_ours, t_hf = [], []
    for _ in range(args.steps):  # alternate so background load is shared fairly
        t_ours.append(timed(ours_step, 1))
        t_hf.append(timed(hf_step, 1))
    train_ours, train_hf = statistics.median(t_ours), statistics.median(t_hf)

    ours.eval()
    hf.eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_tokens))
    greedy = SamplingSettings(temperature=0)
    n = args.gen_tokens
    with torch.inference_mode():
        g_ours = timed(lambda: ours.generate_ids(prompt, n, greedy), 2)
        g_hf = timed(
            lambda: hf.generate(
                prompt,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                attention_mask=torch.ones_like(prompt),
            ),
            2,
        )
    peak = mm_flops()
    achieved = train_flops(ours, args.batch, args.seq) / train_ours
    result = {
        "train_step_s": {"ours": round(train_ours, 3), "hf": round(train_hf, 3)},
        "train_speed_ratio": round(train_hf / train_ours, 3),
        "generate_tokens_per_s": {"ours": round(n / g_ours, 2), "hf": round(n / g_hf, 2)},
        "generate_speed_ratio": round(g_hf / g_ours, 3),
        "achieved_train_gflops": round(achieved / 1e9, 1),
        "torch_mm_gflops": round(peak / 1e9, 1),
        "flops_ratio": round(achieved / peak, 3),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"train step  {args.batch}x{args.seq}: ours {train_ours:.3f}s  HF {train_hf:.3f}s  -> {result['train_speed_ratio']}x HF"
    )
    print(
        f"greedy gen  {n} tokens: ours {n / g_ours:.1f} tok/s  HF {n / g_hf:.1f} tok/s  -> {result['generate_speed_ratio']}x HF"
    )
    print(f"train FLOP/s {achieved / 1e9:.1f} G / torch.mm {peak / 1e9:.1f} G -> {result['flops_ratio']}")


if __name__ == "__main__":
    main()
