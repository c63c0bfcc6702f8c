"""The FastAPI application: OpenAI's routes over the suite's models, plus the playground page.

- ``POST /v1/completions``, ``POST /v1/chat/completions``: GPT, through the continuously batched ``Engine``.
- ``POST /v1/images/generations``: ``DALLE.generate_images(..., rerank=clip)``, PNGs as base64.
- ``POST /v1/embeddings``, ``POST /v1/classifications`` (ours): CLIP embeddings and zero-shot probabilities.
- ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /`` (the playground).

Each route family is an ``APIRouter`` in ``multimodal/serve/routes/``, its request parsing beside it. ``Guard``
runs before any routing: with API keys every ``/v1`` path needs one (so unknown paths are 401, not 404); without
keys only requests naming a local host (``localhost`` or an IP address, not a DNS name: no DNS rebinding) with
JSON bodies (which a cross-site form cannot send) are served. Every error is OpenAI's error JSON.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from multimodal.serve.metrics import Metrics
from multimodal.serve.protocol import APIError
from multimodal.serve.routes import chat, clip, completions, images, meta
from multimodal.serve.service import Limits, Served, Service

__all__ = ["Limits", "Served", "create_app"]

MISSING_KEY = (
    "missing API key: send 'Authorization: Bearer KEY', or HTTP Basic with the key as the password "
    "(curl -u :KEY or curl -u user:KEY)"
)


def create_app(
    served: list[Served],
    limits: Limits | None = None,
    api_keys: set[str] | None = None,
    chat_templates: dict | None = None,
    trusted_hosts: tuple[str, ...] = (),
) -> FastAPI:
    """The service over ``served`` models; with ``api_keys`` every ``/v1`` path needs one of them. Without keys,
    ``trusted_hosts`` are host names accepted in the Host header besides ``localhost`` and IP addresses."""
    from multimodal.serve.chat import load_template

    templates = dict(chat_templates or {})
    for s in served:
        if s.kind == "gpt" and s.name not in templates:
            templates[s.name] = load_template(None, s.source)
    service = Service(served, limits or Limits(), set(api_keys or ()), templates, Metrics(served))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="multimodal", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    add_error_handlers(app)
    app.include_router(meta.pages)
    for family in (meta.models, completions.router, chat.router, images.router, clip.router):
        app.include_router(family, prefix="/v1")
    app.add_middleware(Guard, service=service, trusted_hosts=trusted_hosts)
    app.state.service = service
    app.state.served = served
    return app


def add_error_handlers(app: FastAPI) -> None:
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


def is_local_host(host: str, trusted: tuple[str, ...]) -> bool:
    """A Host header's name: ``localhost``, an IP address, or one of ``trusted`` (never another DNS name)."""
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:8000
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if name in ("localhost", *trusted):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def key_of(authorization: str) -> str | None:
    """The key in ``Authorization``: a Bearer token, or HTTP Basic's password (or its user, with no password)."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return password or user or None
    return None


class Guard:
    """ASGI middleware in front of routing: host, content type and key checks, then the request's metrics."""

    def __init__(self, app, service: Service, trusted_hosts: tuple[str, ...] = ()):
        self.app, self.service, self.trusted = app, service, tuple(h.lower() for h in trusted_hosts)

    def refuse(self, scope) -> APIError | None:
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        api = path == "/v1" or path.startswith("/v1/")
        if not self.service.keys:
            if not is_local_host(headers.get("host", ""), self.trusted):
                return APIError(400, "invalid Host header: without API keys only localhost or an IP address is served")
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if api and method in ("POST", "PUT", "PATCH") and kind != "application/json":
                return APIError(415, f"Content-Type must be application/json, got '{kind or 'none'}'")
            return None
        if not api:
            return None
        given = key_of(headers.get("authorization", ""))
        if not given:
            return APIError(401, MISSING_KEY, code="invalid_api_key")
        if not any(hmac.compare_digest(given.encode(), k.encode()) for k in self.service.keys):
            return APIError(401, "incorrect API key provided", code="invalid_api_key")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        error = self.refuse(scope)
        try:
            if error is None:
                await self.app(scope, receive, send_counted)
            else:
                await answer(error, send_counted)
        finally:
            # the matched route's template (FastAPI gives it without the router's /v1 prefix), never the raw path:
            # unknown paths must not grow the metric's label set
            template = getattr(scope.get("route"), "path", None)
            path = "unmatched" if template is None else ("/v1" if scope["path"].startswith("/v1/") else "") + template
            metrics = self.service.metrics
            metrics.http.labels(path, scope["method"], str(status[0])).inc()
            model = scope.get("state", {}).get("model")
            if model is not None and status[0] == 200:
                metrics.latency.labels(model, path).observe(time.perf_counter() - start)


async def answer(error: APIError, send) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="multimodal"'))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
