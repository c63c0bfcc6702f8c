"""``python -m multimodal.serve``: an OpenAI-compatible service for the suite's models.

python -m multimodal.serve                                   # the packaged demo models on 127.0.0.1:8000
python -m multimodal.serve --gpt path/to/hf-gpt2 --port 8001 --no-packaged
MULTIMODAL_API_KEYS=secret python -m multimodal.serve --host 0.0.0.0
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

import torch

from multimodal.checkpoint import CheckpointError, packaged_path
from multimodal.cli import UsageError, add_device_flag, fail, resolve_device

DEFAULT_HOST = "127.0.0.1"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m multimodal.serve",
        description="Serve GPT completions, DALL·E images and CLIP embeddings / zero-shot classification over "
        "OpenAI's HTTP API, with a playground page at /.",
        epilog="With no model flags it serves the packaged demo models (shapes-world DALL·E and CLIP, and the "
        "packaged GPT when there is one). A kind given no flag falls back to its packaged model unless "
        "--no-packaged. API keys: --api-keys FILE (one per line) or MULTIMODAL_API_KEYS=key1,key2; without keys "
        "the service listens on loopback only unless --host is given.",
    )
    p.add_argument("--gpt", help="GPT checkpoint: export dir, Lightning .ckpt, or Hugging Face GPT-2 dir")
    p.add_argument("--dalle", help="DALL·E checkpoint: export dir or Lightning .ckpt (with its dVAE)")
    p.add_argument(
        "--clip", help="CLIP checkpoint: export dir, Lightning .ckpt, or open_clip weights with --clip-model"
    )
    p.add_argument("--clip-model", help="open_clip model name of --clip's weights (ViT-B-32, ...)")
    p.add_argument("--gpt-name", default="gpt", help="model name clients use for the GPT (default gpt)")
    p.add_argument("--dalle-name", default="dalle", help="model name for DALL·E (default dalle)")
    p.add_argument("--clip-name", default="clip", help="model name for CLIP (default clip)")
    p.add_argument("--no-packaged", action="store_true", help="serve only the models given by flags")
    p.add_argument("--host", default=None, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-keys", help="file with one API key per line (or MULTIMODAL_API_KEYS, comma-separated)")
    add_device_flag(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the models (default: torch's)")
    p.add_argument("--max-batch", type=int, default=16, help="completions decoded together (KV cache rows; 16)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="decode with dynamic int8 Linear layers (torch.ao): a quarter of the weight bytes per step on a CPU; "
        "log-probs move by about 1e-2 and greedy text may differ from fp32",
    )
    p.add_argument("--max-tokens", type=int, default=4096, help="largest max_tokens a request may ask (4096)")
    p.add_argument("--max-n", type=int, default=16, help="largest n per request (16)")
    p.add_argument("--max-body-mb", type=float, default=16, help="largest request body in MiB (16)")
    p.add_argument("--max-image-mb", type=float, default=8, help="largest uploaded image in MiB (8)")
    p.add_argument(
        "--max-queue", type=int, default=16, help="requests waiting for the DALL·E or CLIP worker before a 429 (16)"
    )
    p.add_argument(
        "--max-label-texts",
        type=int,
        default=4000,
        help="labels × templates one classification may embed (4000: 50 labels with the 80 ImageNet templates)",
    )
    p.add_argument(
        "--chat-template",
        help="Jinja chat template for /v1/chat/completions (default: the tokenizer's own from the GPT's "
        "tokenizer_config.json, else a plain 'Role: content' format)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request on stderr")
    return p


def read_keys(path: str | None) -> set[str]:
    keys: set[str] = set()
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--api-keys {path}: {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
        keys |= {x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")}
        if not keys:
            raise UsageError(f"--api-keys {path}: the file holds no keys")
    keys |= {x.strip() for x in os.environ.get("MULTIMODAL_API_KEYS", "").split(",") if x.strip()}
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_models(args: argparse.Namespace, device: torch.device) -> list:
    """Every model to serve, loaded once, each through ``multimodal.load``; a bad checkpoint is a
    ``CheckpointError`` naming its flag."""
    import multimodal
    from multimodal.gpt.model import require_tokenizer
    from multimodal.serve.engine import Engine
    from multimodal.serve.service import PACKAGED_GPT_EXAMPLES, Served

    names = {"gpt": args.gpt_name, "dalle": args.dalle_name, "clip": args.clip_name}
    if len(set(names.values())) != 3:
        raise UsageError(f"--gpt-name, --dalle-name and --clip-name must differ, got {', '.join(names.values())}")
    if args.clip_model and args.clip is None:
        raise UsageError("--clip-model names the architecture of --clip's weights; give --clip FILE too")
    served = []
    for kind, name in names.items():
        flag = getattr(args, kind)
        path = packaged_path(kind) if flag is None and not args.no_packaged else None
        source = flag if flag is not None else (str(path) if path is not None else None)
        if source is None:
            continue
        arch = args.clip_model if kind == "clip" else None  # open_clip weights name their architecture by flag
        try:
            model = multimodal.load(source, kind, device=device, arch=arch)
            if kind == "gpt":
                model = require_tokenizer(model, source)
        except (CheckpointError, OSError) as e:
            raise CheckpointError(f"--{kind}: {str(e).splitlines()[0]}") from None
        if kind != "gpt":
            served.append(Served(name, kind, model, source))
            continue
        if args.int8:
            model = int8_linears(model)
        examples = PACKAGED_GPT_EXAMPLES if flag is None else None  # the packaged GPT was trained on data.tasks
        served.append(Served(name, kind, model, source, Engine(model, max_batch=args.max_batch), examples=examples))
    return served


def int8_linears(gpt):
    """The GPT with every ``nn.Linear`` (the tied output layer included, as its own int8 copy) swapped for
    torch.ao's dynamically quantised one: weights in int8, activations quantised per call."""
    from torch import nn
    from torch.ao.quantization import quantize_dynamic

    if gpt.token_embedding.weight.device.type != "cpu":
        raise UsageError("--int8 is for CPU decoding (torch.ao's dynamic int8 kernels)")
    return quantize_dynamic(gpt, {nn.Linear}, dtype=torch.qint8)


def access_note(keys: set[str], host_flag: str | None, host: str) -> str:
    """The start-up line about who can use the service."""
    if keys:
        return f"API keys: {len(keys)} configured; every /v1 route needs one"
    if host_flag is None:
        return (
            f"no API keys configured: listening on loopback only ({host}); give --api-keys and --host to serve "
            "other machines"
        )
    if not is_loopback(host):
        return (
            f"warning: no API keys configured and --host {host}: anyone who can reach this address can use the models"
        )
    return f"no API keys configured: listening on {host} (loopback)"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP. With
    # proto 0, a keep-alive response's body waited behind Nagle for the client's delayed ACK: +40 ms a request
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def shutdown_server():
    """uvicorn's server, told on SIGTERM / SIGINT to end running streams with an error event first (they
    see ``service.closing`` within a quarter second) rather than be cut when the grace period ends."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            self.config.app.state.service.closing = True
            super().handle_exit(sig, frame)

    return Server


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn  # noqa: F401 - checked here, used below

        from multimodal.serve.app import Limits, create_app
        from multimodal.serve.chat import load_template
    except ImportError as e:
        return fail(
            f"the service needs FastAPI, uvicorn, jinja2 and prometheus_client: pip install 'multimodal-suite[serve]' "
            f"({e})"
        )
    try:
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port must be in [0, 65535], got {args.port}")
        for flag in ("max_batch", "max_tokens", "max_n", "max_queue", "max_label_texts"):
            if getattr(args, flag) < 1:
                raise UsageError(f"--{flag.replace('_', '-')} must be at least 1")
        if args.threads is not None:
            if args.threads < 1:
                raise UsageError("--threads must be at least 1")
            torch.set_num_threads(args.threads)
        keys = read_keys(args.api_keys)
        host = args.host or DEFAULT_HOST
        device = resolve_device(args.device)
        sock = bind(host, args.port)  # before loading: a busy port fails fast
    except (UsageError, CheckpointError, ValueError) as e:
        return fail(e)
    try:
        served = load_models(args, device)
        if not served:
            raise UsageError("no model to serve: give --gpt, --dalle or --clip (or drop --no-packaged)")
        templates = {s.name: load_template(args.chat_template, s.source) for s in served if s.kind == "gpt"}
    except (UsageError, CheckpointError, ValueError) as e:
        sock.close()
        return fail(e)
    limits = Limits(
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_tokens=args.max_tokens,
        max_n=args.max_n,
        max_image_bytes=int(args.max_image_mb * 2**20),
        max_queue=args.max_queue,
        max_label_texts=args.max_label_texts,
    )
    trusted = (host,) if host not in ("0.0.0.0", "::") else ()
    app = create_app(served, limits, keys, templates, trusted)
    port = sock.getsockname()[1]
    for s in served:
        extra = f", KV cache {s.engine.cache_megabytes():.0f} MiB for {s.engine.max_batch} slots" if s.engine else ""
        if s.kind == "gpt":
            extra += f", chat template: {templates[s.name].source}"
        print(f"serving {s.kind} '{s.name}' from {s.source}{extra}", file=sys.stderr)
    print(access_note(keys, args.host, host), file=sys.stderr)
    url_host = f"[{host}]" if ":" in host else host
    print(f"listening on http://{url_host}:{port} (playground at /, API at /v1)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=args.access_log, timeout_graceful_shutdown=5)
    server = shutdown_server()(config)
    try:
        server.run(sockets=[sock])
    finally:
        for s in served:
            if s.engine is not None:
                s.engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
