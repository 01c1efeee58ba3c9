"""Prometheus metrics: requests and their duration per route, counted by an ASGI middleware and
served at `GET /metrics`. Routes are labelled by their template (`/v1/rag/documents/{document_id}`)
and methods from a fixed set, so a caller cannot create series with what it sends."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

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


class MetricsMiddleware:
    """Counts every HTTP request once its response has ended (or failed: a 500)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # The router puts the matched route in the scope; its template bounds the label set.
            route = getattr(scope.get("route"), "path_format", UNMATCHED)
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.duration.labels(route).observe(time.perf_counter() - started)
