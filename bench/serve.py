"""``python -m multimodal.serve`` vs ``transformers serve --continuous-batching``: the same weights, loopback HTTP.

    python bench/serve.py [--clients 1,4,16] [--requests 3] [--max-tokens 64] [--threads 2] [--ours-flags "--int8"]
    python bench/serve.py --smoke        # a tiny model, one level: checks that the comparison runs (no figures)

Writes a random-init Hugging Face GPT-2 directory of the 124M shape (a synthetic 50257-token byte-level BPE, so
nothing is downloaded), starts both servers on it (same thread count), and at each concurrency runs that many
client threads, each a bounded loop of ``--requests`` (at least 3) non-streaming greedy completions of
``--max-tokens`` (at least 64) tokens. The two servers are measured alternately, level by level, so background
load hits both alike; the load average is printed before each level, with a warning above 1.5 (figures from a
busy machine are not comparisons). Prints per server and level: generated tokens/s, p50 / p95 request latency,
and server CPU-seconds per generated token (user + system time of the server's whole process tree over the
level: the peer computes in a child of its launcher), then the ratios ours / peer (> 1 = we are faster; for
CPU-seconds per token < 1 = we use less). For ours it also prints how close decoding runs to the machine's
limit: the weight bytes streamed per decode step × steps per second, against a measured memory bandwidth.
Needs ``pip install 'transformers[serving]'`` for the peer (``--smoke`` runs ours alone without it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

WORDS = "the quick brown fox jumps over a lazy dog while seven red circles sit in the top left corner".split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer(out: Path, merges_count: int = 50000) -> None:
    """A byte-level BPE of GPT-2's size (256 bytes + 50000 merges + <|endoftext|> = 50257) without GPT-2's files:
    merges are pairs of characters, common English letters first. Both servers read the same files."""
    from tokenizers import ByteLevelBPETokenizer

    table = bytes_to_unicode()
    first = [table[b] for b in b" etaoinshrdlucmfwypvbgkjqxzETAOINSHRDLUCMFWYPVBGKJQXZ0123456789.,;:'\"!?-()\n"]
    order = first + [c for c in table.values() if c not in first]
    vocab = {c: i for i, c in enumerate(order)}
    merges = []
    for a in order:
        for b in order:
            if len(merges) == merges_count:
                break
            merges.append((a, b))
            vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tok = ByteLevelBPETokenizer(str(out / "vocab.json"), str(out / "merges.txt"), add_prefix_space=False)
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(out / "tokenizer.json"))
    special = "<|endoftext|>"
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": special, "eos_token": special, "unk_token": special}
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 1024}))


def write_model(out: Path, tiny: bool = False) -> None:
    """GPT-2 124M (12 × 768, context 1024), or with ``tiny`` a 2 × 64 model on a 1257-token BPE (smoke runs)."""
    import torch
    import transformers

    torch.manual_seed(0)
    merges = 1000 if tiny else 50000
    eot = 256 + merges
    shape = dict(n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=eot + 1) if tiny else {}
    config = transformers.GPT2Config(bos_token_id=eot, eos_token_id=eot, **shape)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(out)
    write_tokenizer(out, merges)


def weight_bytes_per_step(model_dir: Path) -> int:
    """Bytes of weights one decode step reads: every tensor of the checkpoint (the tied embedding once, as the
    output layer) but the position table, of which a step reads one row."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for name in f.keys():
            if "wpe" not in name:
                t = f.get_slice(name)
                numel = 1
                for d in t.get_shape():
                    numel *= d
                total += numel * {"F32": 4, "BF16": 2, "F16": 2}.get(t.get_dtype(), 4)
    return total


def memory_bandwidth(threads: int, megabytes: int = 512) -> float:
    """Bytes/s of reading a buffer much larger than the caches with ``threads`` threads (best of 5 sums)."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and every process below it (threads included): a launcher that
    computes in a child is counted whole. Children that have exited and been waited for count in their
    parent's ``children_*`` times."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + (t.children_user + t.children_system if p is root else 0.0)
    return total


def load_note() -> str:
    load = os.getloadavg()[0]
    warn = "  WARNING: the machine is busy (> 1.5); these figures are not a comparison" if load > 1.5 else ""
    return f"load average {load:.2f} on {os.cpu_count()} cores{warn}"


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, model: str, env: dict, log: Path):
        self.name, self.port, self.model = name, port, model
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)

    def wait(self, path: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def prompt(i: int, words: int = 8) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(words))


def engine_steps(server: Server) -> int | None:
    """Our engine's decode steps so far (``/health``); None for the peer."""
    if server.name != "ours":
        return None
    return httpx.get(server.url + "/health", timeout=10).json()["engines"]["gpt"]["steps"]


def run_level(server: Server, clients: int, requests: int, max_tokens: int) -> dict:
    """``clients`` threads, each ``requests`` completions in a row; returns tokens/s, latencies, CPU per token."""
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(timeout=600) as http:
            for r in range(requests):
                body = {"model": server.model, "prompt": prompt(c * requests + r), "max_tokens": max_tokens}
                body["temperature"] = 0
                t = time.perf_counter()
                resp = http.post(server.url + "/v1/completions", json=body)
                dt = time.perf_counter() - t
                with lock:
                    if resp.status_code != 200:
                        errors.append(resp.text[:200])
                        continue
                    latencies.append(dt)
                    tokens.append(resp.json()["usage"]["completion_tokens"])

    warm = threading.Thread(target=client, args=(10_000,))  # one request through the whole path first
    warm.start()
    warm.join()
    latencies.clear()
    tokens.clear()
    steps0 = engine_steps(server)
    cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds(server.proc.pid) - cpu0
    steps = None if steps0 is None else engine_steps(server) - steps0
    if errors:
        raise RuntimeError(f"{server.name}: {len(errors)} failed requests, e.g. {errors[0]}")
    total = sum(tokens)
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    return {
        "tokens_per_s": total / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": q[18],
        "cpu_s_per_token": cpu / max(total, 1),
        "tokens": total,
        "short_requests": sum(t < max_tokens for t in tokens),
        "wall_s": wall,
        "steps": steps,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,4,16", help="concurrency levels (default 1,4,16)")
    ap.add_argument("--requests", type=int, default=3, help="requests per client per level (default and least: 3)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per completion (default and least: 64)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for each server (default 2)")
    ap.add_argument("--model-dir", help="reuse this GPT-2 directory (written there if missing)")
    ap.add_argument("--ours-flags", default="", help='extra flags for our server, e.g. "--int8"')
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object too")
    ap.add_argument(
        "--smoke", action="store_true", help="a tiny model, 2 clients × 1 request × 8 tokens: checks the bench runs"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.clients, args.requests, args.max_tokens = "2", 1, 8
    elif args.requests < 3 or args.max_tokens < 64:
        ap.error(
            "--requests must be at least 3 and --max-tokens at least 64 (shorter runs measure start-up, not decoding)"
        )
    return args


def limit_note(r: dict, weight_bytes: int, bandwidth: float) -> str:
    """How close our decoding ran to the memory-bandwidth limit: every decode step streams the weights once."""
    steps = r["steps"] or 0
    achieved = steps * weight_bytes / r["wall_s"]
    per_step = r["tokens"] / max(steps, 1)
    return (
        f"     {steps} decode steps ({per_step:.1f} tokens each) × {weight_bytes / 2**20:.0f} MiB of weights = "
        f"{achieved / 1e9:.2f} GB/s of {bandwidth / 1e9:.2f} GB/s measured: {achieved / bandwidth:.0%} of the "
        f"machine's limit (at most {bandwidth / weight_bytes:.0f} steps/s)"
    )


def start_servers(args, model_dir: Path, work: Path, peer_ok: bool, max_batch: int) -> list[Server]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MULTIMODAL_API_KEYS", None)
    ours_port, peer_port = free_port(), free_port()
    ours_cmd = [sys.executable, "-m", "multimodal.serve", "--gpt", str(model_dir), "--no-packaged"]
    ours_cmd += ["--port", str(ours_port), "--threads", str(args.threads), "--max-batch", str(max_batch)]
    servers = [Server("ours", ours_cmd + args.ours_flags.split(), ours_port, "gpt", env, work / "ours.log")]
    if peer_ok:
        peer_cmd = [shutil.which("transformers"), "serve", "--continuous-batching", "--port", str(peer_port)]
        servers.append(Server("peer", peer_cmd + [str(model_dir)], peer_port, str(model_dir), env, work / "peer.log"))
    for server in servers:
        server.wait("/health")
    return servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    levels = [int(x) for x in args.clients.split(",")]
    peer_ok = shutil.which("transformers") is not None
    if not peer_ok and not args.smoke:
        print("error: the peer needs `pip install 'transformers[serving]'` (the transformers CLI)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model_dir = Path(args.model_dir) if args.model_dir else work / ("gpt2-tiny" if args.smoke else "gpt2-124m-random")
    if not (model_dir / "config.json").is_file():
        model_dir.mkdir(parents=True, exist_ok=True)
        print(f"writing a random-init GPT-2 directory to {model_dir}", file=sys.stderr)
        write_model(model_dir, tiny=args.smoke)
    weight_bytes = weight_bytes_per_step(model_dir)
    bandwidth = memory_bandwidth(args.threads, 64 if args.smoke else 512)
    print(f"memory bandwidth (read, {args.threads} threads): {bandwidth / 1e9:.2f} GB/s", flush=True)
    results: dict[str, dict[int, dict]] = {"ours": {}, "peer": {}}
    servers = start_servers(args, model_dir, work, peer_ok, max(levels))
    try:
        for level in levels:
            print(f"-- {level} clients, {load_note()}", flush=True)
            for server in servers:
                r = run_level(server, level, args.requests, args.max_tokens)
                results[server.name][level] = r
                print(
                    f"{server.name:4s} {level:3d} clients: {r['tokens_per_s']:7.1f} tok/s  p50 {r['p50_s']:6.2f} s  "
                    f"p95 {r['p95_s']:6.2f} s  {1000 * r['cpu_s_per_token']:6.1f} CPU-ms/token  "
                    f"({r['tokens']} tokens, {r['short_requests']} short requests, {r['wall_s']:.1f} s)",
                    flush=True,
                )
                if r["steps"] is not None:
                    print(limit_note(r, weight_bytes, bandwidth), flush=True)
    finally:
        for server in servers:
            server.stop()
    if results["peer"]:
        print("\nratios ours / peer (tokens/s: > 1 faster; latency and CPU per token: < 1 better)")
        for level in levels:
            o, p = results["ours"][level], results["peer"][level]
            print(
                f"{level:3d} clients: tokens/s {o['tokens_per_s'] / p['tokens_per_s']:5.2f}x  "
                f"p50 {o['p50_s'] / p['p50_s']:5.2f}  p95 {o['p95_s'] / p['p95_s']:5.2f}  "
                f"CPU-s/token {o['cpu_s_per_token'] / p['cpu_s_per_token']:5.2f}"
            )
    else:
        print("\nthe peer is not installed (pip install 'transformers[serving]'): ours only")
    if args.json:
        print(json.dumps(results))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
