"""Prometheus metrics: requests and their duration per route, counted by `telemetry.RequestTelemetry`
and served at `GET /metrics`. Routes are labelled by their template (`/v1/rag/documents/{document_id}`)
and methods from a fixed set, so a caller cannot create series with what it sends."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

UNMATCHED = "unmatched"
"""The route label of a request no route took: a 404, or one refused before routing (a 413)."""

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Method labels kept as sent; any other method a caller invents is counted as `OTHER`."""


class ServiceMetrics:
    """The service's metrics, in a registry of their own (one per app, so tests can make many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "python_ml_requests_total",
            "Requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "python_ml_request_duration_seconds",
            "Time from a request's arrival to the end of its response (a stream's last event), by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
