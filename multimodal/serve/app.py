"""The FastAPI application: OpenAI's routes over the suite's models, plus the playground page.

- ``POST /v1/completions``: GPT, through the continuously batched ``Engine`` (streaming, log-probs, echo scoring).
- ``POST /v1/images/generations``: ``DALLE.generate_images(..., rerank=clip)``, PNGs as base64.
- ``POST /v1/embeddings``: CLIP text (and image data URLs) embeddings, normalised.
- ``POST /v1/classifications`` (ours): CLIP zero-shot label probabilities, as ``python -m clip.zeroshot``.
- ``GET /v1/models``, ``GET /health``, ``GET /`` (the playground).

DALL·E and CLIP calls run one at a time on a worker thread (they batch internally); GPT work runs on the engine's
thread. Every error is OpenAI's error JSON; see ``protocol.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from multimodal.images import ImageError, png_bytes
from multimodal.sampling import SamplingSettings
from multimodal.serve.engine import Choice, Engine, Event, new_generator
from multimodal.serve.protocol import (
    APIError,
    ClassificationRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageRequest,
    decode_image,
    is_image_url,
    parse_body,
)

STATIC = Path(__file__).parent / "static"


@dataclass
class Limits:
    """What one request may ask for; over a limit is a 400 (413 for sizes in bytes) that says the limit."""

    max_body_bytes: int = 16 * 2**20
    max_tokens: int = 4096  # per choice, and never past the model's context
    max_n: int = 16
    max_choices: int = 64  # prompts × n in one request
    max_image_bytes: int = 8 * 2**20  # one uploaded image, decoded
    max_inputs: int = 256  # embeddings inputs / classified images per request
    max_labels: int = 1000
    max_images: int = 16  # generated images returned per request
    max_candidates: int = 64  # drawn per request before CLIP keeps the best


@dataclass
class Served:
    """One model the service answers for, under ``name``."""

    name: str
    kind: str  # gpt | dalle | clip
    model: nn.Module
    source: str
    engine: Engine | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def card(self) -> dict:
        extra: dict[str, Any] = {}
        if self.kind == "gpt":
            extra["context_length"] = self.model.config.context_length
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


def create_app(served: list[Served], limits: Limits | None = None, api_keys: set[str] | None = None) -> FastAPI:
    """The service over ``served`` models; with ``api_keys`` every ``/v1`` route needs one of them."""
    limits = limits or Limits()
    keys = sorted(api_keys or ())
    by_name = {s.name: s for s in served}
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-models")
    app = FastAPI(title="multimodal", docs_url=None, redoc_url=None, openapi_url=None)

    # -- errors: always OpenAI's JSON ------------------------------------------------------------
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="multimodal"'} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return JSONResponse(APIError(e.status_code, message).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(APIError(400, f"invalid request: {e.errors()[0].get('msg')}").body(), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        message = f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return JSONResponse(APIError(500, message).body(), status_code=500)

    # -- auth --------------------------------------------------------------------------------------
    async def check_key(request: Request) -> None:
        if not keys:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        given = None
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":  # curl -u :KEY (an empty user name, the key as password)
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "?", ""
            given = password if not user else None
        if not given:
            raise APIError(
                401,
                "missing API key: send 'Authorization: Bearer KEY' (or HTTP Basic with an empty user, curl -u :KEY)",
                code="invalid_api_key",
            )
        if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    def pick(name: str | None, kind: str, route: str) -> Served:
        if name is None or name == "":
            of_kind = [s for s in served if s.kind == kind]
            if not of_kind:
                raise APIError(404, f"no {kind} model is served here, so {route} is unavailable", "model")
            return of_kind[0]
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            raise APIError(404, f"the model '{name}' does not exist (served: {known})", "model", "model_not_found")
        entry = by_name[name]
        if entry.kind != kind:
            raise APIError(400, f"'{name}' is a {entry.kind} model; {route} needs a {kind} model", "model")
        return entry

    async def body_of(request: Request) -> bytes:
        limit = limits.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise APIError(413, f"request body of {int(length)} bytes; the limit is {limit}")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise APIError(413, f"request body over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def in_pool(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def in_range(value: float | int, low: float, high: float, param: str) -> None:
        if not low <= value <= high:
            raise APIError(400, f"{param} must be in [{low}, {high}], got {value}", param)

    # -- pages and health --------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "models": [s.name for s in served],
            "auth": bool(keys),
            "engines": {s.name: s.engine.stats() for s in served if s.engine is not None},
        }

    @v1.get("/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [s.card() for s in served]}

    @v1.get("/models/{name}")
    async def get_model(name: str) -> dict:
        if name not in by_name:
            raise APIError(404, f"the model '{name}' does not exist", "model", "model_not_found")
        return by_name[name].card()

    # -- completions -------------------------------------------------------------------------------
    @v1.post("/completions")
    async def completions(request: Request):
        req: CompletionRequest = parse_body(await body_of(request), CompletionRequest)
        entry = pick(req.model, "gpt", "/v1/completions")
        engine = entry.engine
        tok = engine.tokenizer
        prompts = _prompts(req.prompt, tok, entry.model.config.vocab_size)
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        n = 1 if req.n is None else req.n
        in_range(max_tokens, 0, limits.max_tokens, "max_tokens")
        in_range(n, 1, limits.max_n, "n")
        if len(prompts) * n > limits.max_choices:
            raise APIError(400, f"{len(prompts)} prompts × n={n} choices; at most {limits.max_choices} per request")
        temperature = 1.0 if req.temperature is None else req.temperature
        in_range(temperature, 0, 2, "temperature")
        top_p = 1.0 if req.top_p is None else req.top_p
        if not 0 < top_p <= 1:
            raise APIError(400, f"top_p must be in (0, 1], got {top_p}", "top_p")
        if req.top_k is not None and req.top_k < 0:
            raise APIError(400, f"top_k must be >= 0, got {req.top_k}", "top_k")
        if req.logprobs is not None:
            in_range(req.logprobs, 0, 20, "logprobs")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 16:
            raise APIError(400, f"{len(stops)} stop sequences; at most 16", "stop")
        _unsupported(req, n)
        context = engine.context_length
        for i, (ids, _) in enumerate(prompts):
            if len(ids) + max_tokens > context:
                which = f"prompt {i}" if len(prompts) > 1 else "your prompt"
                raise APIError(
                    400,
                    f"This model's maximum context length is {context} tokens, however you requested "
                    f"{len(ids) + max_tokens} tokens ({len(ids)} in {which}; {max_tokens} for the completion). "
                    "Please reduce your prompt or completion length.",
                    "prompt",
                    "context_length_exceeded",
                )
        settings = SamplingSettings(temperature, req.top_k or None, top_p if top_p < 1 else None, req.seed)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        def sink(index: int):
            def emit(event: Event) -> None:
                try:
                    loop.call_soon_threadsafe(events.put_nowait, (index, event))
                except RuntimeError:  # the event loop is gone (shutting down)
                    pass

            return emit

        choices: list[Choice] = []
        for p, (ids, text) in enumerate(prompts):
            for j in range(n):
                seed = None if req.seed is None else req.seed + j
                choices.append(
                    Choice(
                        ids,
                        max_tokens,
                        settings,
                        sink(p * n + j),
                        new_generator(seed, engine.device) if temperature > 0 else None,
                        stops,
                        req.logprobs,
                        bool(req.echo),
                        text,
                    )
                )
        if not engine.submit(choices):
            raise APIError(429, "the server is busy (too many waiting requests); retry shortly")
        meta = {
            "id": f"cmpl-{secrets.token_hex(12)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": entry.name,
        }
        prompt_tokens = sum(len(ids) for ids, _ in prompts)
        want_logprobs = req.logprobs is not None

        def cancel_all() -> None:
            for c in choices:
                c.cancel()

        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                _stream(events, len(choices), meta, want_logprobs, include_usage, prompt_tokens, cancel_all),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        results = [{"text": [], "tokens": [], "finish_reason": None, "completion_tokens": 0} for _ in choices]
        done = 0
        try:
            while done < len(choices):
                try:
                    index, event = await asyncio.wait_for(events.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        cancel_all()
                        return JSONResponse(APIError(499, "client closed the request").body(), status_code=499)
                    continue
                if event.error:
                    raise APIError(500, event.error)
                r = results[index]
                r["text"].append(event.text)
                r["tokens"].extend(event.tokens)
                if event.finish_reason is not None:
                    r["finish_reason"] = event.finish_reason
                    r["completion_tokens"] = event.completion_tokens
                    done += 1
        finally:
            cancel_all()
        completion_tokens = sum(r["completion_tokens"] for r in results)
        return {
            **meta,
            "choices": [
                {
                    "text": "".join(r["text"]),
                    "index": i,
                    "logprobs": _logprobs(r["tokens"]) if want_logprobs else None,
                    "finish_reason": r["finish_reason"],
                }
                for i, r in enumerate(results)
            ],
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    # -- images ------------------------------------------------------------------------------------
    @v1.post("/images/generations")
    async def images(request: Request):
        req: ImageRequest = parse_body(await body_of(request), ImageRequest)
        entry = pick(req.model, "dalle", "/v1/images/generations")
        dalle = entry.model
        if dalle.vae is None:
            raise APIError(400, f"'{entry.name}' carries no dVAE: it cannot draw images", "model")
        side = dalle.vae.config.image_size
        if req.size not in (None, f"{side}x{side}"):
            raise APIError(
                400, f"size '{req.size}' is not available: '{entry.name}' draws {side}x{side} images", "size"
            )
        fmt = req.response_format or "b64_json"
        if fmt not in ("b64_json", "url"):
            raise APIError(
                400, f"response_format must be 'b64_json' or 'url' (a data URL), got '{fmt}'", "response_format"
            )
        n = 1 if req.n is None else req.n
        in_range(n, 1, limits.max_images, "n")
        candidates = n if req.candidates is None else req.candidates
        in_range(candidates, n, limits.max_candidates, "candidates")
        if not req.prompt.strip():
            raise APIError(400, "prompt must not be empty", "prompt")
        tok = dalle.tokenizer
        length = len(tok.encode(req.prompt)) + 1 + (1 if hasattr(tok, "sot_id") else 0)
        if length > dalle.config.text_length:
            raise APIError(
                400,
                f"prompt of {length} tokens; '{entry.name}' reads at most {dalle.config.text_length}",
                "prompt",
                "context_length_exceeded",
            )
        guidance = req.guidance
        if guidance is not None:
            in_range(guidance, 0, 100, "guidance")
        temperature = 1.0 if req.temperature is None else req.temperature
        in_range(temperature, 0, 10, "temperature")
        if req.top_p is not None and not 0 < req.top_p <= 1:
            raise APIError(400, f"top_p must be in (0, 1], got {req.top_p}", "top_p")
        clip = None
        if req.rerank is None or req.rerank is True:
            clips = [s for s in served if s.kind == "clip"]
            if req.rerank is True and not clips:
                raise APIError(400, "rerank needs a CLIP model and none is served", "rerank")
            clip = clips[0].model if clips else None
        elif isinstance(req.rerank, str):
            clip = pick(req.rerank, "clip", "rerank").model
        settings = SamplingSettings(temperature, req.top_k or None, req.top_p, req.seed)

        def run():
            with torch.inference_mode():
                return dalle.generate_images(req.prompt, candidates, settings, guidance, rerank=clip, keep=n)[0]

        samples = await in_pool(run)
        data = []
        for i, image in enumerate(samples.images):
            b64 = base64.b64encode(png_bytes(image)).decode()
            item: dict[str, Any] = {"b64_json": b64} if fmt == "b64_json" else {"url": f"data:image/png;base64,{b64}"}
            item["revised_prompt"] = req.prompt
            item["candidate"] = samples.candidates[i]
            if samples.scores is not None:
                item["clip_score"] = round(float(samples.scores[i]), 6)
            data.append(item)
        return {"created": int(time.time()), "model": entry.name, "reranked": clip is not None, "data": data}

    def bounded_list(value: str | list, field: str, noun: str) -> list:
        """A request field that is one item or a list of them: non-empty, at most ``limits.max_inputs``."""
        items = [value] if isinstance(value, str) else list(value)
        if not items:
            raise APIError(400, f"{field} must not be empty", field)
        if len(items) > limits.max_inputs:
            raise APIError(400, f"{len(items)} {noun}; at most {limits.max_inputs} per request", field)
        return items

    # -- embeddings --------------------------------------------------------------------------------
    @v1.post("/embeddings")
    async def embeddings(request: Request):
        req: EmbeddingRequest = parse_body(await body_of(request), EmbeddingRequest)
        entry = pick(req.model, "clip", "/v1/embeddings")
        clip = entry.model
        inputs = bounded_list(req.input, "input", "inputs")
        fmt = req.encoding_format or "float"
        if fmt not in ("float", "base64"):
            raise APIError(400, f"encoding_format must be 'float' or 'base64', got '{fmt}'", "encoding_format")
        if req.dimensions not in (None, clip.config.embed_dim):
            raise APIError(400, f"'{entry.name}' gives {clip.config.embed_dim} dimensions", "dimensions")
        texts, images, tokens = [], [], 0
        context = clip.config.text.context_length
        for i, item in enumerate(inputs):
            if is_image_url(item):
                images.append((i, decode_image(item, limits.max_image_bytes, f"input[{i}]")))
                continue
            if not item:
                raise APIError(400, f"input[{i}] is empty", "input")
            n_tokens = len(clip.tokenizer.encode(item)) + 2
            if n_tokens > context:
                raise APIError(
                    400,
                    f"input[{i}] is {n_tokens} tokens; '{entry.name}' reads at most {context}",
                    "input",
                    "context_length_exceeded",
                )
            texts.append((i, item))
            tokens += n_tokens

        def run() -> torch.Tensor:
            out = torch.empty(len(inputs), clip.config.embed_dim)
            with torch.inference_mode():
                if texts:
                    out[[i for i, _ in texts]] = clip.embed_texts([t for _, t in texts]).cpu()
                for i, data in images:  # one at a time, so an unreadable image is named by its index
                    try:
                        out[i] = clip.embed_images([data])[0].cpu()
                    except ImageError as e:
                        raise APIError(400, f"input[{i}]: {str(e).split(': ', 1)[-1]}", "input") from None
            return out

        vectors = await in_pool(run)
        data = []
        for i, v in enumerate(vectors):
            value: Any = v.tolist()
            if fmt == "base64":
                value = base64.b64encode(v.numpy().astype(np.float32).tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {"object": "list", "data": data, "model": entry.name, "usage": _usage(tokens, 0, embeddings=True)}

    # -- zero-shot classification (ours) -----------------------------------------------------------
    @v1.post("/classifications")
    async def classifications(request: Request):
        from clip.model import check_labels
        from clip.zeroshot import check_templates

        req: ClassificationRequest = parse_body(await body_of(request), ClassificationRequest)
        entry = pick(req.model, "clip", "/v1/classifications")
        clip = entry.model
        sources = bounded_list(req.image, "image", "images")
        try:
            labels = check_labels(req.labels, relative=True)
            if len(labels) > limits.max_labels:
                raise ValueError(f"{len(labels)} labels; at most {limits.max_labels}")
        except ValueError as e:
            raise APIError(400, str(e), "labels") from None
        try:
            check_templates(req.templates)
            if req.templates is not None and not req.templates:
                raise ValueError("templates must not be an empty list (leave it out for the 80 ImageNet templates)")
        except ValueError as e:
            raise APIError(400, str(e), "templates") from None
        blobs = [decode_image(s, limits.max_image_bytes, f"image[{i}]") for i, s in enumerate(sources)]

        def run() -> torch.Tensor:
            with torch.inference_mode():
                weights = clip.embed_labels(labels, req.templates)
                rows = []
                for i, data in enumerate(blobs):
                    try:
                        rows.append(clip.embed_images([data]))
                    except ImageError as e:
                        raise APIError(400, f"image[{i}]: {str(e).split(': ', 1)[-1]}", "image") from None
                return clip.label_probs(torch.cat(rows), weights)

        probs = await in_pool(run)
        data = []
        for i, row in enumerate(probs):
            values = [float(p) for p in row]
            best = max(range(len(labels)), key=lambda k: values[k])
            data.append(
                {
                    "object": "classification",
                    "index": i,
                    "label": labels[best],
                    "probs": {label: values[k] for k, label in enumerate(labels)},
                }
            )
        return {"object": "list", "model": entry.name, "labels": labels, "data": data}

    app.include_router(v1)
    app.state.served = served
    app.state.pool = pool
    return app


# -- helpers ---------------------------------------------------------------------------------------
def _prompts(prompt, tok, vocab_size: int) -> list[tuple[list[int], str | None]]:
    """The request's prompt(s) → (token ids, text as sent or None for token prompts). An empty prompt is the
    end-of-text token (the start of a document), as ``GPT.generate``."""
    if prompt is None:
        prompt = ""
    if isinstance(prompt, str):
        items: list = [prompt]
    elif prompt and all(isinstance(x, int) for x in prompt):
        items = [prompt]  # one prompt as token ids
    else:
        items = list(prompt)
    if not items:
        raise APIError(400, "prompt must not be an empty list", "prompt")
    out = []
    for item in items:
        if isinstance(item, str):
            ids = tok.encode(item)
            out.append((ids or [tok.eot_id], item if ids else ""))
        else:
            bad = [t for t in item if not 0 <= t < vocab_size]
            if bad:
                raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})", "prompt")
            out.append((list(item) or [tok.eot_id], None))
    return out


def _unsupported(req: CompletionRequest, n: int) -> None:
    if req.suffix:
        raise APIError(400, "suffix (insertion) is not supported by this server", "suffix")
    if req.best_of not in (None, n):
        raise APIError(400, "best_of other than n is not supported by this server", "best_of")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise APIError(400, f"{name} is not supported by this server (leave it at 0)", name)
    if req.logit_bias:
        raise APIError(400, "logit_bias is not supported by this server", "logit_bias")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", "stream_options")


def _logprobs(tokens) -> dict:
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [t.top for t in tokens],
        "text_offset": [t.offset for t in tokens],
    }


def _usage(prompt_tokens: int, completion_tokens: int, embeddings: bool = False) -> dict:
    if embeddings:
        return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _stream(
    events: asyncio.Queue,
    count: int,
    meta: dict,
    want_logprobs: bool,
    include_usage: bool,
    prompt_tokens: int,
    cancel_all,
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per released piece of a choice, its last with ``finish_reason``, then
    ``data: [DONE]``. Leaving early (the client went away) cancels every choice, freeing their slots."""
    done, completion_tokens = 0, 0
    try:
        while done < count:
            index, event = await events.get()
            if event.error:
                yield f"data: {json.dumps(APIError(500, event.error).body())}\n\n"
                done += 1
                continue
            if not event.text and not event.tokens and event.finish_reason is None:
                continue
            choice = {
                "text": event.text,
                "index": index,
                "logprobs": _logprobs(event.tokens) if want_logprobs else None,
                "finish_reason": event.finish_reason,
            }
            if event.finish_reason is not None:
                done += 1
                completion_tokens += event.completion_tokens
            yield f"data: {json.dumps({**meta, 'choices': [choice]})}\n\n"
        if include_usage:
            usage = _usage(prompt_tokens, completion_tokens)
            yield f"data: {json.dumps({**meta, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        cancel_all()
