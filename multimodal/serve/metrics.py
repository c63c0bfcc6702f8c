"""``GET /metrics``: Prometheus' text format through ``prometheus_client``, named after vLLM's metrics with our
prefix (``vllm:num_requests_running`` → ``multimodal:num_requests_running``).

- ``multimodal:http_requests_total{route, method, status}``: every answered request (the route template, so
  unknown paths share ``route="unmatched"``);
- ``multimodal:num_requests_running{model}``, ``multimodal:num_requests_waiting{model}``: the GPT engine's rows
  and queue, and each DALL·E / CLIP worker's job and queue, read live at each scrape;
- ``multimodal:prompt_tokens_total{model}``, ``multimodal:generation_tokens_total{model}``;
- ``multimodal:request_success_total{model, finished_reason}`` (``stop`` | ``length`` | ``error`` | ``abort``);
- ``multimodal:time_to_first_token_seconds{model}`` and ``multimodal:e2e_request_latency_seconds{model, route}``
  histograms (vLLM's buckets, up to a minute).

Each app has its own registry, so several apps (tests) never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

PREFIX = "multimodal:"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 60.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)


class _Live:
    """Running / waiting requests per model, read from the engines and workers when scraped."""

    def __init__(self, served):
        self.served = served

    def collect(self):
        running = GaugeMetricFamily(PREFIX + "num_requests_running", "Requests being computed.", labels=["model"])
        waiting = GaugeMetricFamily(PREFIX + "num_requests_waiting", "Requests queued.", labels=["model"])
        for s in self.served:
            stats = s.stats()
            running.add_metric([s.name], stats["running"])
            waiting.add_metric([s.name], stats["waiting"])
        yield running
        yield waiting


class Metrics:
    def __init__(self, served: list):
        self.registry = CollectorRegistry()
        r = self.registry
        self.http = Counter(
            PREFIX + "http_requests", "HTTP requests answered.", ["route", "method", "status"], registry=r
        )
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated.", ["model"], registry=r)
        self.success = Counter(
            PREFIX + "request_success", "Finished choices by reason.", ["model", "finished_reason"], registry=r
        )
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time from a request's arrival to its first generated token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "Time from a request's arrival to its last byte of answer.",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_Live(served))

    def text(self) -> bytes:
        return generate_latest(self.registry)
