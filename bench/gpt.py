"""Our GPT vs Hugging Face ``transformers`` GPT-2 at the 124M shape, measured in one run.

    python bench/gpt.py [--steps 3] [--gen-tokens 32] [--batch 4] [--seq 256] [--json]
    python bench/gpt.py --smoke   # tiny GPT, one step: checks the comparison runs (CI), measures nothing

Prints the load average first (a warning above 1.5), then: train-step time (AdamW, batch × seq tokens, fp32)
and greedy generation tokens/s for both, as ratios (ours / HF speed, > 1 means we are faster), and the
achieved FLOP/s of our train step (matmul, attention FLOPs counted on one step) as a fraction of this
machine's ``torch.mm`` FLOP/s at the step's largest matmul shape (the LM head), measured in the same run.
Both models get the same weights (checked: same loss, same greedy tokens); the two are measured
alternately so background load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _common import count_step, format_versus_mm, positive, report_load, smoke_check, versus_mm

from multimodal.gpt import GPT, GPTConfig, preset
from multimodal.gpt.hf import convert_hf_state
from multimodal.sampling import SamplingSettings


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
    ap.add_argument("--smoke", action="store_true", help="tiny model, one step: the comparison runs (for CI)")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.batch, args.seq, args.gen_tokens, args.prompt_tokens = 1, 2, 32, 4, 4

    import transformers

    load = report_load()
    torch.manual_seed(0)
    if args.smoke:
        cfg = GPTConfig(vocab_size=512, context_length=64, backbone={"width": 64, "layers": 2, "heads": 4})
    else:
        cfg = preset("gpt2")
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=cfg.vocab_size,
            n_positions=cfg.context_length,
            n_embd=cfg.backbone.width,
            n_layer=cfg.backbone.layers,
            n_head=cfg.backbone.heads,
            bos_token_id=cfg.vocab_size - 1,
            eos_token_id=cfg.vocab_size - 1,
            # like for like: HF's default dropout 0.1 would cost it three dropout passes per block
            resid_pdrop=cfg.backbone.dropout,
            embd_pdrop=cfg.backbone.dropout,
            attn_pdrop=cfg.backbone.dropout,
        )
    )
    ours = GPT(cfg)
    ours.load_state_dict(convert_hf_state(hf.state_dict(), cfg))
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_tokens))
    greedy = SamplingSettings(temperature=0)
    n = args.gen_tokens

    def gen_ours():
        return ours.generate_ids(prompt, n, greedy)

    def gen_hf():
        return hf.generate(
            prompt,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            attention_mask=torch.ones_like(prompt),
        )

    ours.eval(), hf.eval()
    with torch.inference_mode():  # same weights, same function: same loss, same greedy tokens
        loss_gap = abs(ours.loss(ids).item() - hf(ids, labels=ids).loss.item())  # HF shifts the labels itself
        same_tokens = torch.equal(gen_ours()[:, -n:], gen_hf()[:, -n:])

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
    hardware = versus_mm(count_step(ours_step), train_ours)

    ours.eval()
    hf.eval()
    with torch.inference_mode():
        g_ours = timed(gen_ours, 2)
        g_hf = timed(gen_hf, 2)
    result = {
        "load_average": load,
        "train_step_s": {"ours": round(train_ours, 3), "hf": round(train_hf, 3)},
        "train_speed_ratio": round(train_hf / train_ours, 3),
        "generate_tokens_per_s": {"ours": round(n / g_ours, 2), "hf": round(n / g_hf, 2)},
        "generate_speed_ratio": round(g_hf / g_ours, 3),
        "train_vs_mm": hardware,
        "parity": {"initial_loss_gap": loss_gap, "same_greedy_tokens": same_tokens},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"train step  {args.batch}x{args.seq}: ours {train_ours:.3f}s  HF {train_hf:.3f}s  -> {result['train_speed_ratio']}x HF"
        )
        print(
            f"greedy gen  {n} tokens: ours {n / g_ours:.1f} tok/s  HF {n / g_hf:.1f} tok/s  -> {result['generate_speed_ratio']}x HF"
        )
        print(format_versus_mm("ours", hardware))
    if args.smoke:
        smoke_check(
            {
                "both train steps timed": positive(train_ours, train_hf),
                "both generations timed": positive(g_ours, g_hf),
                "FLOP/s vs torch.mm measured": positive(hardware["fraction_of_mm"]),
                f"same loss as HF at the same weights (gap {loss_gap:.1e})": loss_gap < 1e-4,
                "same greedy tokens as HF": same_tokens,
            }
        )


if __name__ == "__main__":
    main()
