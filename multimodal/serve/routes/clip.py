"""``POST /v1/embeddings`` (CLIP text and image embeddings) and ``POST /v1/classifications`` (ours: CLIP
zero-shot label probabilities, the numbers ``python -m clip.zeroshot --json`` prints), on CLIP's worker.

Every count and length is checked before any tokenising or decoding; tokenising and base64 run off the event
loop, the model on the worker."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request

from multimodal.images import ImageError
from multimodal.serve.protocol import APIError, ClassificationRequest, EmbeddingRequest, decode_image, is_image_url
from multimodal.serve.service import Limits, service_of

router = APIRouter()


def bounded_list(value: str | list, field: str, noun: str, limits: Limits) -> list:
    """A request field that is one item or a list of them: non-empty, at most ``limits.max_inputs``."""
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise APIError(400, f"{field} must not be empty", field)
    if len(items) > limits.max_inputs:
        raise APIError(400, f"{len(items)} {noun}; at most {limits.max_inputs} per request", field)
    return items


def read_inputs(clip, name: str, inputs: list[str], limits: Limits) -> tuple[list, list, int]:
    """Embedding inputs → (index, text) pairs, (index, image bytes) pairs and the texts' token count; a 400 for
    an empty or over-long text (its characters checked before tokenising), a 413 for an image over the limit."""
    texts, images, tokens = [], [], 0
    context = clip.config.text.context_length
    for i, item in enumerate(inputs):
        if is_image_url(item):
            images.append((i, decode_image(item, limits.max_image_bytes, f"input[{i}]")))
            continue
        if not item:
            raise APIError(400, f"input[{i}] is empty", "input")
        if len(item) > limits.max_clip_text_chars:
            raise APIError(400, f"input[{i}] is {len(item)} characters; at most {limits.max_clip_text_chars}", "input")
        n_tokens = len(clip.tokenizer.encode(item)) + 2
        if n_tokens > context:
            raise APIError(
                400,
                f"input[{i}] is {n_tokens} tokens; '{name}' reads at most {context}",
                "input",
                "context_length_exceeded",
            )
        texts.append((i, item))
        tokens += n_tokens
    return texts, images, tokens


def embed_images(clip, blobs: list[tuple[int, bytes]], param: str, out: torch.Tensor, cancelled) -> None:
    """One image at a time, so an unreadable image is named by its index."""
    for i, data in blobs:
        if cancelled():
            return
        try:
            out[i] = clip.embed_images([data])[0].cpu()
        except ImageError as e:
            raise APIError(400, f"{param}[{i}]: {str(e).split(': ', 1)[-1]}", param) from None


@router.post("/embeddings")
async def embeddings(request: Request):
    service = service_of(request)
    req: EmbeddingRequest = await service.parse(request, EmbeddingRequest)
    entry = service.pick(req.model, "clip", "/v1/embeddings")
    request.state.model = entry.name
    clip = entry.model
    inputs = bounded_list(req.input, "input", "inputs", service.limits)
    fmt = req.encoding_format or "float"
    if fmt not in ("float", "base64"):
        raise APIError(400, f"encoding_format must be 'float' or 'base64', got '{fmt}'", "encoding_format")
    if req.dimensions not in (None, clip.config.embed_dim):
        raise APIError(400, f"'{entry.name}' gives {clip.config.embed_dim} dimensions", "dimensions")
    texts, images, tokens = await service.offload(request, read_inputs, clip, entry.name, inputs, service.limits)

    def run(cancelled) -> torch.Tensor:
        out = torch.empty(len(inputs), clip.config.embed_dim)
        with torch.inference_mode():
            if texts:
                out[[i for i, _ in texts]] = clip.embed_texts([t for _, t in texts]).cpu()
            embed_images(clip, images, "input", out, cancelled)
        return out

    vectors = await entry.worker.run(run, request)
    data = []
    for i, v in enumerate(vectors):
        value: Any = v.tolist()
        if fmt == "base64":
            value = base64.b64encode(v.numpy().astype(np.float32).tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": entry.name, "usage": usage}


def check_labels_and_templates(req: ClassificationRequest, limits: Limits) -> tuple[list[str], list[str] | None]:
    """Labels and templates within their limits (count, characters, labels × templates), before any work."""
    from clip.pipeline import check_labels, check_templates

    try:
        if len(req.labels) > limits.max_labels:
            raise ValueError(f"{len(req.labels)} labels; at most {limits.max_labels}")
        long = [x for x in req.labels if len(x) > limits.max_label_chars]
        if long:
            raise ValueError(f"a label of {len(long[0])} characters; at most {limits.max_label_chars}")
        labels = check_labels(req.labels, relative=True)
    except ValueError as e:
        raise APIError(400, str(e), "labels") from None
    try:
        if req.templates is not None:
            if not req.templates:
                raise ValueError("templates must not be an empty list (leave it out for the 80 ImageNet templates)")
            if len(req.templates) > limits.max_templates:
                raise ValueError(f"{len(req.templates)} templates; at most {limits.max_templates}")
            if any(len(t) > limits.max_label_chars for t in req.templates):
                raise ValueError(f"a template of more than {limits.max_label_chars} characters")
        check_templates(req.templates)
    except ValueError as e:
        raise APIError(400, str(e), "templates") from None
    texts = len(labels) * (80 if req.templates is None else len(req.templates))
    if texts > limits.max_label_texts:
        raise APIError(
            400,
            f"{len(labels)} labels × {texts // len(labels)} templates = {texts} texts to embed; at most "
            f"{limits.max_label_texts} per request (fewer labels, or fewer templates)",
            "labels",
        )
    return labels, req.templates


@router.post("/classifications")
async def classifications(request: Request):
    service = service_of(request)
    req: ClassificationRequest = await service.parse(request, ClassificationRequest)
    entry = service.pick(req.model, "clip", "/v1/classifications")
    request.state.model = entry.name
    clip = entry.model
    sources = bounded_list(req.image, "image", "images", service.limits)
    labels, templates = check_labels_and_templates(req, service.limits)
    limit = service.limits.max_image_bytes
    blobs = await service.offload(
        request, lambda: [(i, decode_image(s, limit, f"image[{i}]")) for i, s in enumerate(sources)]
    )

    def run(cancelled) -> torch.Tensor:
        from clip.pipeline import label_probs, zero_shot_classifier

        with torch.inference_mode():
            classifier = zero_shot_classifier(clip, labels, templates)
            rows = torch.empty(len(blobs), clip.config.embed_dim)
            embed_images(clip, blobs, "image", rows, cancelled)
            return label_probs(clip, rows, classifier)

    probs = await entry.worker.run(run, request)
    data = []
    for i, row in enumerate(probs):
        values = [float(p) for p in row]
        best = max(range(len(labels)), key=lambda k: values[k])
        probs_of = {label: values[k] for k, label in enumerate(labels)}
        data.append({"object": "classification", "index": i, "label": labels[best], "probs": probs_of})
    return {"object": "list", "model": entry.name, "labels": labels, "data": data}
