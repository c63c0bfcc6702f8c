"""``POST /v1/chat/completions``: OpenAI's chat format over the same GPT engine as ``/v1/completions``; the
messages become one prompt through the model's chat template (``multimodal.serve.chat``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from multimodal.generation import SERVICE_START, prompt_ids
from multimodal.serve.chat import TemplateError, normalise
from multimodal.serve.generation import Generation, check_fits, check_params, stream_events
from multimodal.serve.protocol import APIError, ChatRequest
from multimodal.serve.service import in_range, service_of

router = APIRouter()


def check_unsupported(req: ChatRequest) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise APIError(400, f"{name} is not supported by this server (leave it at 0)", name)
    if req.logit_bias:
        raise APIError(400, "logit_bias is not supported by this server", "logit_bias")
    if req.tools:
        raise APIError(400, "tools (function calling) are not supported by this server", "tools")
    if req.response_format not in (None, {"type": "text"}):
        raise APIError(400, "response_format other than {'type': 'text'} is not supported", "response_format")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", "stream_options")
    if req.top_logprobs is not None:
        in_range(req.top_logprobs, 0, 20, "top_logprobs")
        if not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")


def render_prompt(template, messages: list[dict], tok, max_chars: int) -> list[int]:
    """Messages → the template's text → token ids (a 400 for a bad message or a template that refuses it)."""
    try:
        text = template.render(normalise(messages, max_chars))
    except (TemplateError, ValueError) as e:
        raise APIError(400, str(e), "messages") from None
    return prompt_ids(tok, text, SERVICE_START).ids


@router.post("/chat/completions")
async def chat_completions(request: Request):
    service = service_of(request)
    req: ChatRequest = await service.parse(request, ChatRequest)
    entry = service.pick(req.model, "gpt", "/v1/chat/completions")
    request.state.model = entry.name
    check_unsupported(req)
    engine, limits = entry.engine, service.limits
    template = service.chat_templates[entry.name]
    max_chars = limits.prompt_chars(engine.context_length)
    if len(req.messages) > 1000:
        raise APIError(400, f"{len(req.messages)} messages; at most 1000", "messages")
    ids = await service.offload(request, render_prompt, template, req.messages, engine.tokenizer, max_chars)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is None:  # OpenAI's default: as much as fits
        max_tokens = max(1, min(limits.max_tokens, engine.context_length - len(ids)))
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    params = check_params(
        service, max_tokens, req.n, req.temperature, req.top_p, req.top_k, req.seed, req.stop, logprobs
    )
    if params.n > limits.max_choices:
        raise APIError(400, f"n={params.n}; at most {limits.max_choices} choices per request", "n")
    params.stops = params.stops + [s for s in template.stops if s not in params.stops]
    check_fits([(ids, None)], max_tokens, engine.context_length)
    run = Generation(service, entry, [(ids, None)], params, "/v1/chat/completions")
    meta = {"id": f"chatcmpl-{run.id}", "created": run.created, "model": entry.name}
    k = req.top_logprobs or 0
    if req.stream:
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            stream(run, meta, logprobs is not None, k, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    results = await run.collect(request)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": r["text"]},
            "logprobs": {"content": content_logprobs(r["tokens"], k)} if logprobs is not None else None,
            "finish_reason": r["finish_reason"],
        }
        for i, r in enumerate(results)
    ]
    return {**meta, "object": "chat.completion", "choices": choices, "usage": run.usage()}


def content_logprobs(tokens, k: int) -> list[dict]:
    """``TokenInfo``s (``multimodal.generation``) in the chat format: token, logprob, UTF-8 bytes, ``k`` top
    alternatives."""

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", "replace"))}

    return [
        {**entry(t.token, t.logprob), "top_logprobs": [entry(s, lp) for s, lp in list((t.top or {}).items())[:k]]}
        for t in tokens
    ]


def stream(run: Generation, meta: dict, want_logprobs: bool, k: int, include_usage: bool) -> AsyncIterator[str]:
    """``chat.completion.chunk`` events: each choice opens with its role, then content deltas, then a delta
    with its ``finish_reason``; ``data: [DONE]`` last (``stream_events``). Errors and shutdown are an error chunk."""

    def choice_of(index: int, event) -> dict:
        return {
            "index": index,
            "delta": {"content": event.text} if event.text else {},
            "logprobs": {"content": content_logprobs(event.tokens, k)} if want_logprobs else None,
            "finish_reason": event.finish_reason,
        }

    opening = [
        {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        for i in range(len(run.choices))
    ]
    return stream_events(run, {**meta, "object": "chat.completion.chunk"}, choice_of, include_usage, opening)
