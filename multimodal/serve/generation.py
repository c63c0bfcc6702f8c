"""What ``/v1/completions`` and ``/v1/chat/completions`` share: checking the sampling fields, turning prompts into
engine ``Choice``s, and following their events (collected, or streamed) with metrics, client departures and
shutdown handled once."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from fastapi import Request

from multimodal.sampling import SamplingSettings
from multimodal.serve.engine import Choice, Event
from multimodal.serve.protocol import APIError
from multimodal.serve.service import Served, Service, in_range

SHUTDOWN = "the server is shutting down"


@dataclass
class Params:
    """A request's checked generation settings."""

    max_tokens: int
    n: int
    settings: SamplingSettings
    stops: list[str]
    logprobs: int | None = None  # top alternatives per token; None: no logprobs
    echo: bool = False


def check_params(
    service: Service,
    max_tokens: int,
    n: int | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    seed: int | None,
    stop: str | list[str] | None,
    logprobs: int | None = None,
    echo: bool = False,
) -> Params:
    """OpenAI's sampling fields → ``Params``, or a 400 naming the field."""
    limits = service.limits
    n = 1 if n is None else n
    in_range(max_tokens, 0, limits.max_tokens, "max_tokens")
    in_range(n, 1, limits.max_n, "n")
    temperature = 1.0 if temperature is None else temperature
    in_range(temperature, 0, 2, "temperature")
    top_p = 1.0 if top_p is None else top_p
    if not 0 < top_p <= 1:
        raise APIError(400, f"top_p must be in (0, 1], got {top_p}", "top_p")
    if top_k is not None and top_k < 0:
        raise APIError(400, f"top_k must be >= 0, got {top_k}", "top_k")
    if logprobs is not None:
        in_range(logprobs, 0, 20, "logprobs")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 16:
        raise APIError(400, f"{len(stops)} stop sequences; at most 16", "stop")
    if any(len(s) > 1000 for s in stops):
        raise APIError(400, "a stop sequence of more than 1000 characters", "stop")
    settings = SamplingSettings(temperature, top_k or None, top_p if top_p < 1 else None, seed)
    return Params(max_tokens, n, settings, stops, logprobs, echo)


def check_fits(prompts: Sequence[tuple[list[int], str | None]], max_tokens: int, context: int) -> None:
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


class Generation:
    """One request's choices in the engine (``len(prompts) × n``, choice ``p * n + j`` drawn with seed + j),
    and the events they send back."""

    def __init__(self, service: Service, entry: Served, prompts: list, params: Params, route: str):
        self.service, self.entry, self.route = service, entry, route
        self.start = time.perf_counter()
        self.first: float | None = None
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        def sink(index: int):
            def emit(event: Event) -> None:
                try:
                    loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))
                except RuntimeError:  # the event loop is gone (shutting down)
                    pass

            return emit

        engine = entry.engine
        st = params.settings
        self.choices: list[Choice] = []
        for p, (ids, text) in enumerate(prompts):
            for j in range(params.n):
                generator = st.row_generator(j, engine.device)  # seed + j, or fresh entropy; None when greedy
                emit = sink(p * params.n + j)
                self.choices.append(
                    Choice(
                        ids, params.max_tokens, st, emit, generator, params.stops, params.logprobs, params.echo, text
                    )
                )
        try:
            accepted = engine.submit(self.choices)
        except ValueError as e:
            raise APIError(400, str(e), "prompt") from None
        if not accepted:
            raise APIError(429, "the server is busy (too many waiting requests); retry shortly")
        self.prompt_tokens = sum(len(ids) for ids, _ in prompts)
        self.completion_tokens = 0
        service.metrics.prompt_tokens.labels(entry.name).inc(self.prompt_tokens)
        self.id = secrets.token_hex(12)
        self.created = int(time.time())

    def cancel(self) -> None:
        for c in self.choices:
            c.cancel()

    async def events(self, request: Request | None = None) -> AsyncIterator[tuple[int, Event]]:
        """Events until every choice has finished. Polls a few times a second for shutdown (then yields one
        error event with index -1) and, given ``request``, for the client's departure (a 499)."""
        done, polls = 0, 0
        metrics, model = self.service.metrics, self.entry.name
        while done < len(self.choices):
            if self.service.closing:
                self.cancel()
                yield -1, Event("", [], "error", error=SHUTDOWN)
                return
            try:
                index, event = await asyncio.wait_for(self.queue.get(), timeout=0.25)
            except asyncio.TimeoutError:
                polls += 1
                if request is not None and polls % 4 == 0 and await request.is_disconnected():
                    self.cancel()
                    raise APIError(499, "client closed the request") from None
                continue
            if self.first is None:
                self.first = time.perf_counter()
                metrics.ttft.labels(model).observe(self.first - self.start)
            if event.finish_reason is not None:
                done += 1
                self.completion_tokens += event.completion_tokens
                metrics.generation_tokens.labels(model).inc(event.completion_tokens)
                metrics.success.labels(model, event.finish_reason).inc()
            yield index, event

    async def collect(self, request: Request) -> list[dict]:
        """Every choice's text, tokens and finish reason; an engine error is a 500, shutdown a 503."""
        results = [{"text": [], "tokens": [], "finish_reason": None} for _ in self.choices]
        try:
            async for index, event in self.events(request):
                if event.error == SHUTDOWN and index < 0:
                    raise APIError(503, SHUTDOWN, code="server_shutdown")
                if event.error:
                    raise APIError(500, event.error)
                r = results[index]
                r["text"].append(event.text)
                r["tokens"].extend(event.tokens)
                if event.finish_reason is not None:
                    r["finish_reason"] = event.finish_reason
        finally:
            self.cancel()
        return [{**r, "text": "".join(r["text"])} for r in results]

    def usage(self) -> dict:
        return usage(self.prompt_tokens, self.completion_tokens)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def error_chunk(event: Event) -> str:
    code = "server_shutdown" if event.error == SHUTDOWN else None
    return sse(APIError(503 if code else 500, event.error, code=code).body())


async def stream_events(
    run: Generation,
    meta: dict,
    choice_of: Callable[[int, Event], dict],
    include_usage: bool,
    opening: Sequence[dict] = (),
) -> AsyncIterator[str]:
    """Server-sent events of a run, shared by completions and chat: the ``opening`` choices, then one chunk per
    released piece of a choice (``choice_of`` gives its route's shape), the last with ``finish_reason``, the usage
    when asked, then ``data: [DONE]``. An engine error or shutdown is an error chunk. Leaving early (the client
    went away) cancels every choice, freeing their slots."""
    try:
        for choice in opening:
            yield sse({**meta, "choices": [choice]})
        async for index, event in run.events():
            if event.error:
                yield error_chunk(event)
                continue
            if not event.text and not event.tokens and event.finish_reason is None:
                continue
            yield sse({**meta, "choices": [choice_of(index, event)]})
        if include_usage:
            yield sse({**meta, "choices": [], "usage": run.usage()})
        yield sse("[DONE]")
    finally:
        run.cancel()
