"""The service's Prometheus metrics (prometheus_client, one registry per app)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ENDPOINTS = ("/v1/lines", "/v1/pages", "/health", "/ready", "/metrics", "/docs", "/openapi.json")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Requests by endpoint and status, lines decoded, batch sizes, decode seconds, queue depth."""

    def __init__(self, queue_depth: Callable[[], float], ready: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "trocr_tune_requests",
            "HTTP requests answered, by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "trocr_tune_request_seconds", "Time to answer a request, by endpoint", ["endpoint"], registry=r
        )
        self.lines = Counter("trocr_tune_lines_decoded", "Line images decoded by the model", registry=r)
        self.batch_size = Histogram(
            "trocr_tune_batch_size",
            "Lines per decoding call (across requests)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram("trocr_tune_decode_seconds", "Seconds per decoding call", registry=r)
        depth = Gauge("trocr_tune_queue_depth", "Lines waiting to be decoded", registry=r)
        depth.set_function(queue_depth)
        model_ready = Gauge("trocr_tune_model_ready", "1 once the model is loaded", registry=r)
        model_ready.set_function(ready)

    def on_batch(self, size: int, seconds: float) -> None:
        self.lines.inc(size)
        self.batch_size.observe(size)
        self.decode_seconds.observe(seconds)

    def on_request(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else ("/" if path == "/" else "other")
        self.requests.labels(endpoint, str(status)).inc()
        self.request_seconds.labels(endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
