"""``POST /v1/completions``: OpenAI's legacy completions over the GPT engine (streaming, log-probs, echo scoring
for lm-evaluation-harness's ``local-completions``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from multimodal.generation import SERVICE_START, prompt_ids
from multimodal.serve.generation import Generation, check_fits, check_params, stream_events
from multimodal.serve.protocol import APIError, CompletionRequest
from multimodal.serve.service import Limits, service_of

router = APIRouter()


def tokenize_prompts(prompt, tok, vocab_size: int, max_chars: int) -> list[tuple[list[int], str | None]]:
    """The request's prompt(s) → (token ids, text as sent or None for token prompts), read as given
    (``multimodal.generation.SERVICE_START``): an empty prompt is the end-of-text token, as ``GPT.generate``.
    Text longer than ``max_chars`` is refused before it is tokenised."""
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
    for item in items:
        if isinstance(item, str) and len(item) > max_chars:
            raise APIError(400, f"a prompt of {len(item)} characters; at most {max_chars} per prompt", "prompt")
    out = []
    for item in items:
        if isinstance(item, str):
            ids = tok.encode(item)
            out.append((prompt_ids(tok, ids, SERVICE_START).ids, item if ids else ""))
        else:
            bad = [t for t in item if not 0 <= t < vocab_size]
            if bad:
                raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})", "prompt")
            out.append((prompt_ids(tok, item, SERVICE_START).ids, None))
    return out


def check_unsupported(req: CompletionRequest, n: int) -> None:
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


def count_prompts(prompt, limits: Limits, n: int) -> None:
    """Prompts × n within ``limits.max_choices``, known before any tokenising."""
    count = 1 if prompt is None or isinstance(prompt, str) or all(isinstance(x, int) for x in prompt) else len(prompt)
    if count * n > limits.max_choices:
        raise APIError(400, f"{count} prompts × n={n} choices; at most {limits.max_choices} per request")


@router.post("/completions")
async def completions(request: Request):
    service = service_of(request)
    req: CompletionRequest = await service.parse(request, CompletionRequest)
    entry = service.pick(req.model, "gpt", "/v1/completions")
    request.state.model = entry.name
    max_tokens = 16 if req.max_tokens is None else req.max_tokens
    params = check_params(
        service,
        max_tokens,
        req.n,
        req.temperature,
        req.top_p,
        req.top_k,
        req.seed,
        req.stop,
        req.logprobs,
        bool(req.echo),
    )
    check_unsupported(req, params.n)
    count_prompts(req.prompt, service.limits, params.n)
    engine = entry.engine
    max_chars = service.limits.prompt_chars(engine.context_length)
    tok, vocab = engine.tokenizer, entry.model.config.vocab_size
    prompts = await service.offload(request, tokenize_prompts, req.prompt, tok, vocab, max_chars)
    check_fits(prompts, max_tokens, engine.context_length)
    run = Generation(service, entry, prompts, params, "/v1/completions")
    meta = {"id": f"cmpl-{run.id}", "object": "text_completion", "created": run.created, "model": entry.name}
    want_logprobs = req.logprobs is not None
    if req.stream:
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            stream(run, meta, want_logprobs, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    results = await run.collect(request)
    choices = [
        {
            "text": r["text"],
            "index": i,
            "logprobs": logprobs_of(r["tokens"]) if want_logprobs else None,
            "finish_reason": r["finish_reason"],
        }
        for i, r in enumerate(results)
    ]
    return {**meta, "choices": choices, "usage": run.usage()}


def logprobs_of(tokens) -> dict:
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [t.top for t in tokens],
        "text_offset": [t.offset for t in tokens],
    }


def stream(run: Generation, meta: dict, want_logprobs: bool, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events (``text_completion`` chunks): ``stream_events`` with a completion's choice shape."""

    def choice_of(index: int, event) -> dict:
        return {
            "text": event.text,
            "index": index,
            "logprobs": logprobs_of(event.tokens) if want_logprobs else None,
            "finish_reason": event.finish_reason,
        }

    return stream_events(run, meta, choice_of, include_usage)
