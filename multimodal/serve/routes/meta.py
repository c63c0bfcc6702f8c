"""The pages and the service's own state: ``GET /`` (the playground), ``/favicon.ico``, ``/health``,
``/metrics`` (Prometheus), and ``/v1/models``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from multimodal.serve.protocol import APIError
from multimodal.serve.service import service_of

STATIC = Path(__file__).resolve().parent.parent / "static"
# a one-colour square, so the browser's automatic request for the icon is not a 404 in the log
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#3c6ec8"/>'
    '<circle cx="8" cy="8" r="4" fill="#fff"/></svg>'
)

pages = APIRouter()
models = APIRouter()


@pages.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@pages.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


@pages.get("/health")
async def health(request: Request) -> dict:
    service = service_of(request)
    return {
        "status": "shutting down" if service.closing else "ok",
        "models": [s.name for s in service.served],
        "auth": bool(service.keys),
        "engines": {s.name: s.engine.stats() for s in service.served if s.engine is not None},
        "workers": {s.name: s.worker.stats() for s in service.served if s.worker is not None},
    }


@pages.get("/metrics")
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(service_of(request).metrics.text(), media_type=CONTENT_TYPE_LATEST)


@models.get("/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [s.card() for s in service_of(request).served]}


@models.get("/models/{name}")
async def get_model(name: str, request: Request) -> dict:
    service = service_of(request)
    if name not in service.by_name:
        raise APIError(404, f"the model '{name}' does not exist", "model", "model_not_found")
    return service.by_name[name].card()
