"""The service's Prometheus metrics, in a registry of their own (one per application, so that
several applications in one process, as in the tests, keep separate counts)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: from a few milliseconds (a small image on a GPU) to minutes (a large one on a CPU).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Paths with a label of their own; any other is counted as "other" (bounded label values).
ROUTES = ("/", "/v1/denoise", "/healthz", "/readyz", "/metrics")


class Metrics:
    def __init__(self, queue_depth: Callable[[], float]):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ambsn_requests", "HTTP requests answered, by path, method and status", ["path", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "ambsn_denoise_seconds", "POST /v1/denoise: seconds from request to response", buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.errors = Counter("ambsn_errors", "refused or failed requests, by kind", ["kind"], registry=self.registry)
        self.batch_size = Histogram(
            "ambsn_batch_size", "images per network call", buckets=(1, 2, 4, 8, 16, 32), registry=self.registry
        )
        self.batch_seconds = Histogram(
            "ambsn_batch_seconds", "seconds per network call", buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        depth = Gauge("ambsn_queue_depth", "denoising jobs waiting for the network", registry=self.registry)
        depth.set_function(queue_depth)
        self.ready = Gauge("ambsn_ready", "1 once the model is loaded and compiled", registry=self.registry)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics as Prometheus text, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def count_requests(self, app: Callable) -> Callable:
        """`app` (ASGI) wrapped so that every HTTP response is counted with its status."""

        async def counted(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            path = scope["path"] if scope["path"] in ROUTES else "other"

            async def send_counting(message):
                if message["type"] == "http.response.start":
                    self.requests.labels(path, scope["method"], str(message["status"])).inc()
                await send(message)

            await app(scope, receive, send_counting)

        return counted
