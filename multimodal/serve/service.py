"""What every route shares: the served models, the limits on what a request may cost, the bounded worker that
runs DALL·E and CLIP, and the flag that says the server is shutting down.

Routes reach the ``Service`` as ``request.app.state.service``. Work that grows with the request's body (parsing
JSON, tokenising, base64) goes through ``Service.offload``: on a small thread pool for a body over 32 KiB, so a
large one never stalls the event loop, inline below that; model work goes to the GPT engine (completions, chat)
or to the model's ``Worker`` (images, embeddings, classification).
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect
from torch import nn

from multimodal.serve.engine import Engine
from multimodal.serve.protocol import APIError, Strict, parse_body

INLINE_BYTES = 32 * 2**10  # request bodies up to this size are parsed and tokenised on the event loop


@dataclass
class Limits:
    """What one request may ask for, checked before any heavy work; over a limit is a 400 (413 for sizes in
    bytes, 429 when a queue is full) that says the limit."""

    max_body_bytes: int = 16 * 2**20
    max_json_values: int = 2**18  # values in one JSON body (token ids included)
    max_tokens: int = 4096  # per choice, and never past the model's context
    max_n: int = 16
    max_choices: int = 64  # prompts × n in one request
    max_text_chars: int = 65536  # one prompt or chat message (GPT: at least 16 × the context)
    max_clip_text_chars: int = 2000  # one CLIP text (CLIP reads 77 tokens)
    max_image_bytes: int = 8 * 2**20  # one uploaded image, decoded
    max_inputs: int = 256  # embeddings inputs / classified images per request
    max_labels: int = 1000
    max_label_chars: int = 300  # one label or template
    max_templates: int = 100
    max_label_texts: int = 4000  # labels × templates embedded for one classification
    max_images: int = 16  # generated images returned per request
    max_candidates: int = 64  # drawn per request before CLIP keeps the best
    max_queue: int = 16  # requests waiting for one DALL·E / CLIP worker; beyond: 429

    def prompt_chars(self, context: int) -> int:
        return max(self.max_text_chars, 16 * context)


class Worker:
    """One thread that runs one model's jobs in order, from a bounded queue: a full queue is a 429, and a job
    whose client has gone is dropped before it starts."""

    def __init__(self, name: str, max_queue: int):
        self.name = name
        self.jobs: queue.Queue = queue.Queue(maxsize=max_queue)
        self.busy = False
        self.dropped = 0  # jobs whose client left before they started
        self._thread = threading.Thread(target=self._loop, name=f"worker-{name}", daemon=True)
        self._thread.start()

    def stats(self) -> dict:
        return {"running": int(self.busy), "waiting": self.jobs.qsize(), "dropped": self.dropped}

    async def run(self, fn: Callable[[Callable[[], bool]], Any], request: Request) -> Any:
        """``fn(cancelled)`` on the worker thread; a 499 if the client leaves: a job still queued is dropped, and
        a running one may poll ``cancelled()`` to stop early."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        job = {"fn": fn, "future": future, "loop": loop, "cancelled": False}
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise APIError(429, f"the server is busy ({self.name} has {self.jobs.maxsize} requests waiting)") from None
        while True:
            done, _ = await asyncio.wait({future}, timeout=0.5)
            if done:
                return future.result()
            if await request.is_disconnected():
                job["cancelled"] = True
                raise APIError(499, "client closed the request")

    def close(self) -> None:
        self.jobs.put(None)

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            if job["cancelled"]:
                self.dropped += 1
                continue
            self.busy = True
            try:
                result, error = job["fn"](lambda: job["cancelled"]), None
            except APIError as e:
                result, error = None, e
            except Exception as e:  # noqa: BLE001 - a model error is this request's 500, not the worker's end
                traceback.print_exc(file=sys.stderr)
                message = f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                result, error = None, APIError(500, message)
            finally:
                self.busy = False
            job["loop"].call_soon_threadsafe(_settle, job["future"], result, error)


def _settle(future: asyncio.Future, result: Any, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# prompts the playground offers for a GPT: the packaged one knows data.tasks' formats ("input => output")
GPT_EXAMPLES = ["Once upon a time", "The capital of France is", "Q: What is 2 + 2?\nA:"]
PACKAGED_GPT_EXAMPLES = [
    "48 + 76 =>",
    "12 - 30 =>",
    "pleap =>",
    "dog => dogzu\ncat => catzu\ntree =>",
    "37 vs 52 =>",
]


@dataclass
class Served:
    """One model the service answers for, under ``name``."""

    name: str
    kind: str  # gpt | dalle | clip
    model: nn.Module
    source: str
    engine: Engine | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    worker: Worker | None = None  # DALL·E and CLIP: set by the Service
    examples: list[str] | None = None  # GPT prompts the playground offers (None: GPT_EXAMPLES)

    def card(self) -> dict:
        extra: dict[str, Any] = {}
        if self.kind == "gpt":
            extra["context_length"] = self.model.config.context_length
            extra["examples"] = self.examples if self.examples is not None else GPT_EXAMPLES
        elif self.kind == "dalle" and self.model.vae is not None:
            size = self.model.vae.config.image_size
            extra["size"] = f"{size}x{size}"
        elif self.kind == "clip":
            extra["embedding_dimensions"] = self.model.config.embed_dim
            extra["image_size"] = self.model.config.vision.image_size
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "multimodal",
            "kind": self.kind,
            "source": self.source,
            **extra,
        }

    def stats(self) -> dict:
        if self.engine is not None:
            return self.engine.stats()
        return self.worker.stats() if self.worker is not None else {"running": 0, "waiting": 0}


class Service:
    """The served models, limits, keys, chat templates and metrics of one app."""

    def __init__(self, served: list[Served], limits: Limits, keys: set[str], chat_templates: dict, metrics):
        self.served = served
        self.by_name = {s.name: s for s in served}
        self.limits = limits
        self.keys = sorted(keys)
        self.chat_templates = chat_templates  # GPT name → multimodal.serve.chat.ChatTemplate
        self.metrics = metrics
        self.closing = False  # set on SIGTERM: streams end with an error event, new work is refused
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="parse")
        for s in served:
            if s.kind != "gpt":
                s.worker = Worker(s.name, limits.max_queue)

    def pick(self, name: str | None, kind: str, route: str) -> Served:
        if name is None or name == "":
            of_kind = [s for s in self.served if s.kind == kind]
            if not of_kind:
                raise APIError(404, f"no {kind} model is served here, so {route} is unavailable", "model")
            return of_kind[0]
        if name not in self.by_name:
            known = ", ".join(self.by_name) or "none"
            raise APIError(404, f"the model '{name}' does not exist (served: {known})", "model", "model_not_found")
        entry = self.by_name[name]
        if entry.kind != kind:
            raise APIError(400, f"'{name}' is a {entry.kind} model; {route} needs a {kind} model", "model")
        return entry

    async def offload(self, request: Request, fn: Callable, *args) -> Any:
        """``fn(*args)`` on the parse pool: CPU work that must not hold the event loop (``/health`` answers).
        The work is bounded by the request's body; for a small body it runs here, where a round trip through
        the pool (and the GIL) would cost more than the work."""
        if getattr(request.state, "body_bytes", INLINE_BYTES + 1) <= INLINE_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise APIError(413, f"request body of {int(length)} bytes; the limit is {limit}")
        chunks, total = [], 0
        try:
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise APIError(413, f"request body over the limit of {limit} bytes")
                chunks.append(chunk)
        except ClientDisconnect:  # the upload was dropped: nothing to answer, nothing to log
            raise APIError(499, "client closed the request") from None
        return b"".join(chunks)

    async def parse(self, request: Request, model: type[Strict]) -> Any:
        """The request's JSON body as ``model``, parsed off the event loop; refused while shutting down."""
        if self.closing:
            raise APIError(503, "the server is shutting down", code="server_shutdown")
        raw = await self.body(request)
        request.state.body_bytes = len(raw)
        return await self.offload(request, parse_body, raw, model, self.limits.max_json_values)

    def close(self) -> None:
        for s in self.served:
            if s.worker is not None:
                s.worker.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def in_range(value: float | int, low: float, high: float, param: str) -> None:
    if not low <= value <= high:
        raise APIError(400, f"{param} must be in [{low}, {high}], got {value}", param)


def service_of(request: Request) -> Service:
    return request.app.state.service
