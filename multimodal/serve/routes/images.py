"""``POST /v1/images/generations``: ``dalle.pipeline.generate_images(..., rerank=clip)`` on DALL·E's worker, PNGs
as base64 or data URLs."""

from __future__ import annotations

import base64
import time
from typing import Any

import torch
from fastapi import APIRouter, Request

from multimodal.images import png_bytes
from multimodal.sampling import SamplingSettings
from multimodal.serve.protocol import APIError, ImageRequest
from multimodal.serve.service import Service, in_range, service_of

router = APIRouter()


class Gone(Exception):
    """The client left while its images were drawn."""


def check_request(service: Service, req: ImageRequest) -> dict:
    """Everything but the prompt's length: the answer format, counts, sampling settings and the reranker."""
    limits = service.limits
    fmt = req.response_format or "b64_json"
    if fmt not in ("b64_json", "url"):
        raise APIError(400, f"response_format must be 'b64_json' or 'url' (a data URL), got '{fmt}'", "response_format")
    n = 1 if req.n is None else req.n
    in_range(n, 1, limits.max_images, "n")
    candidates = n if req.candidates is None else req.candidates
    in_range(candidates, n, limits.max_candidates, "candidates")
    if not req.prompt.strip():
        raise APIError(400, "prompt must not be empty", "prompt")
    if len(req.prompt) > limits.max_clip_text_chars:
        raise APIError(400, f"a prompt of {len(req.prompt)} characters; at most {limits.max_clip_text_chars}", "prompt")
    if req.guidance is not None:
        in_range(req.guidance, 0, 100, "guidance")
    temperature = 1.0 if req.temperature is None else req.temperature
    in_range(temperature, 0, 10, "temperature")
    if req.top_p is not None and not 0 < req.top_p <= 1:
        raise APIError(400, f"top_p must be in (0, 1], got {req.top_p}", "top_p")
    if req.top_k is not None and req.top_k < 0:
        raise APIError(400, f"top_k must be >= 0, got {req.top_k}", "top_k")
    clip = None
    if req.rerank is None or req.rerank is True:
        clips = [s for s in service.served if s.kind == "clip"]
        if req.rerank is True and not clips:
            raise APIError(400, "rerank needs a CLIP model and none is served", "rerank")
        clip = clips[0].model if clips else None
    elif isinstance(req.rerank, str):
        clip = service.pick(req.rerank, "clip", "rerank").model
    settings = SamplingSettings(temperature, req.top_k or None, req.top_p, req.seed)
    return {"fmt": fmt, "n": n, "candidates": candidates, "clip": clip, "settings": settings}


def prompt_length(dalle, prompt: str) -> int:
    return len(dalle.caption_ids(prompt))


@router.post("/images/generations")
async def images(request: Request):
    service = service_of(request)
    req: ImageRequest = await service.parse(request, ImageRequest)
    entry = service.pick(req.model, "dalle", "/v1/images/generations")
    request.state.model = entry.name
    dalle = entry.model
    if dalle.vae is None:
        raise APIError(400, f"'{entry.name}' carries no dVAE: it cannot draw images", "model")
    side = dalle.vae.config.image_size
    if req.size not in (None, f"{side}x{side}"):
        raise APIError(400, f"size '{req.size}' is not available: '{entry.name}' draws {side}x{side} images", "size")
    opts = check_request(service, req)
    length = await service.offload(request, prompt_length, dalle, req.prompt)
    if length > dalle.config.text_length:
        raise APIError(
            400,
            f"prompt of {length} tokens; '{entry.name}' reads at most {dalle.config.text_length}",
            "prompt",
            "context_length_exceeded",
        )

    def run(cancelled):
        from dalle.pipeline import generate_images

        def progress(_):
            if cancelled():
                raise Gone

        with torch.inference_mode():
            try:
                samples = generate_images(
                    dalle,
                    req.prompt,
                    opts["candidates"],
                    opts["settings"],
                    req.guidance,
                    rerank=opts["clip"],
                    keep=opts["n"],
                    progress=progress,
                )[0]
            except Gone:
                return None
        return samples, [base64.b64encode(png_bytes(image)).decode() for image in samples.images]

    result = await entry.worker.run(run, request)
    if result is None:
        raise APIError(499, "client closed the request")
    samples, pngs = result
    data = []
    for i, b64 in enumerate(pngs):
        item: dict[str, Any] = (
            {"b64_json": b64} if opts["fmt"] == "b64_json" else {"url": f"data:image/png;base64,{b64}"}
        )
        item["revised_prompt"] = req.prompt
        item["candidate"] = samples.candidates[i]
        if samples.scores is not None:
            item["clip_score"] = round(float(samples.scores[i]), 6)
        data.append(item)
    return {"created": int(time.time()), "model": entry.name, "reranked": opts["clip"] is not None, "data": data}
