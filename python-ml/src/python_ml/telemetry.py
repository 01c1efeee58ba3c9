"""What each request leaves behind: its Prometheus counts (`metrics.py`), one access-log line with
its request id and trace id (logger `python_ml.access`), and its OpenTelemetry spans.

FastAPI's native telemetry makes the server span, continuing the caller's W3C `traceparent` (the
gateway's span), and the spans of the endpoint and its dependencies; the provider call the generator
makes is a child of those (`generation.py`). `configure_trace_export` installs the SDK that exports
them over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set; without it
FastAPI's telemetry stays off, nothing is recorded, and the trace id in the log is the caller's."""

from __future__ import annotations

import logging
import os
import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import METHODS, UNMATCHED, ServiceMetrics

access_log = logging.getLogger("python_ml.access")
_propagator = TraceContextTextMapPropagator()
_TRACE_HEADERS = (b"traceparent", b"tracestate")


def _set(name: str) -> bool:
    return bool(os.environ.get(name, "").strip())


def configure_trace_export(service_name: str = "python-ml") -> TracerProvider | None:
    """Installs the OpenTelemetry SDK with an OTLP/HTTP exporter when the standard environment names
    an endpoint (and `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` does not say
    otherwise); `OTEL_SERVICE_NAME` wins over `service_name`. Spans still queued leave at exit."""
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip() == "true"
    disabled = disabled or os.environ.get("OTEL_TRACES_EXPORTER", "").strip() == "none"
    if disabled or not (_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _set("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    attributes = {} if _set("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


class RequestTelemetry:
    """Counts and logs every HTTP request once its response has ended (or failed: a 500)."""

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
            self._finish(scope, status, time.perf_counter() - started)

    def _finish(self, scope: Scope, status: int, elapsed: float) -> None:
        # The router puts the matched route in the scope; its template bounds the label set.
        route = getattr(scope.get("route"), "path_format", UNMATCHED)
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        self.metrics.requests.labels(route, method, str(status)).inc()
        self.metrics.duration.labels(route).observe(elapsed)
        request_id = scope.get("state", {}).get("request_id")
        access_log.info(
            "request method=%s path=%s route=%s status=%d duration_ms=%.1f request_id=%s trace_id=%s",
            method,
            scope["path"],
            route,
            status,
            elapsed * 1000,
            request_id,
            _trace_id(scope),
        )


def _trace_id(scope: Scope) -> str | None:
    """The request's trace id: its server span's (FastAPI's, current here even once ended), or
    without export the one the caller sent."""
    ids = trace.get_current_span().get_span_context()
    if not ids.is_valid:
        carrier = {
            key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"] if key in _TRACE_HEADERS
        }
        ids = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
    return format(ids.trace_id, "032x") if ids.is_valid else None
