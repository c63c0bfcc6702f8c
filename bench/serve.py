"""``python -m multimodal.serve`` vs ``transformers serve --continuous-batching``: the same weights, loopback HTTP.

    python bench/serve.py [--clients 1,4,16] [--requests 2] [--max-tokens 32] [--threads 2]

Writes a random-init Hugging Face GPT-2 directory of the 124M shape (a synthetic 50257-token byte-level BPE, so
nothing is downloaded), starts both servers on it (same thread count), and at each concurrency runs that many
client threads, each a bounded loop of ``--requests`` non-streaming greedy completions of ``--max-tokens`` tokens.
The two servers are measured alternately, level by level, so background load hits both alike. Prints per server
and level: generated tokens/s, p50 / p95 request latency, and server CPU-seconds per generated token (the
server process's user + system time over the level: the figure least moved by other load), then the ratios
ours / peer (> 1 = we are faster; for CPU-seconds per token < 1 = we use less).
Needs ``pip install 'transformers[serving]'``.
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


def write_model(out: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(bos_token_id=50256, eos_token_id=50256)  # 124M: 12 × 768, context 1024
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(out)
    write_tokenizer(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds(server.proc.pid) - cpu0
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
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,4,16", help="concurrency levels (default 1,4,16)")
    ap.add_argument("--requests", type=int, default=2, help="requests per client per level (default 2)")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per completion (default 32)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for each server (default 2)")
    ap.add_argument("--model-dir", help="reuse this GPT-2 directory (written there if missing)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object too")
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    if shutil.which("transformers") is None:
        print("error: the peer needs `pip install 'transformers[serving]'` (the transformers CLI)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model_dir = Path(args.model_dir) if args.model_dir else work / "gpt2-124m-random"
    if not (model_dir / "config.json").is_file():
        model_dir.mkdir(parents=True, exist_ok=True)
        print(f"writing a random-init GPT-2 124M directory to {model_dir}", file=sys.stderr)
        write_model(model_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MULTIMODAL_API_KEYS", None)
    ours_port, peer_port = free_port(), free_port()
    ours = Server(
        "ours",
        [sys.executable, "-m", "multimodal.serve", "--gpt", str(model_dir), "--no-packaged", "--port", str(ours_port)]
        + ["--threads", str(args.threads), "--max-batch", str(max(levels))],
        ours_port,
        "gpt",
        env,
        work / "ours.log",
    )
    peer_cmd = [shutil.which("transformers"), "serve", "--continuous-batching", "--port", str(peer_port)]
    peer = Server("peer", peer_cmd + [str(model_dir)], peer_port, str(model_dir), env, work / "peer.log")
    results: dict[str, dict[int, dict]] = {"ours": {}, "peer": {}}
    try:
        ours.wait("/health")
        peer.wait("/health")
        for level in levels:
            for server in (ours, peer):
                r = run_level(server, level, args.requests, args.max_tokens)
                results[server.name][level] = r
                print(
                    f"{server.name:4s} {level:3d} clients: {r['tokens_per_s']:7.1f} tok/s  p50 {r['p50_s']:6.2f} s  "
                    f"p95 {r['p95_s']:6.2f} s  {1000 * r['cpu_s_per_token']:6.1f} CPU-ms/token  "
                    f"({r['tokens']} tokens, {r['short_requests']} short requests, {r['wall_s']:.1f} s)",
                    flush=True,
                )
    finally:
        ours.stop()
        peer.stop()
    print("\nratios ours / peer (tokens/s: > 1 faster; latency and CPU per token: < 1 better)")
    for level in levels:
        o, p = results["ours"][level], results["peer"][level]
        print(
            f"{level:3d} clients: tokens/s {o['tokens_per_s'] / p['tokens_per_s']:5.2f}x  "
            f"p50 {o['p50_s'] / p['p50_s']:5.2f}  p95 {o['p95_s'] / p['p95_s']:5.2f}  "
            f"CPU-s/token {o['cpu_s_per_token'] / p['cpu_s_per_token']:5.2f}"
        )
    if args.json:
        print(json.dumps(results))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
