"""Traces and the access log: a request continues its caller's W3C trace as a server span, the
provider call is that span's child and receives it as `traceparent`, and every access-log line
carries the request id and the trace id. Spans go to an in-memory exporter installed once for the
test process (the SDK allows one global provider); in production `telemetry.configure_trace_export`
installs the OTLP one."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

import pytest
from conftest import RunningService
from fake_llm import FakeLLM, Reply
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from test_generation import QUESTION, ingested, provider_settings

EXPORTED = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def recording() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTED))
    trace.set_tracer_provider(provider)


def spans_of(trace_id: str) -> list[ReadableSpan]:
    """The trace's spans once its server span has ended (after the response was sent)."""
    deadline = time.monotonic() + 10
    while True:
        spans = [
            span
            for span in EXPORTED.get_finished_spans()
            if span.context is not None and format(span.context.trace_id, "032x") == trace_id
        ]
        if any(span.kind == SpanKind.SERVER for span in spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.02)


def descends_from(span: ReadableSpan, ancestor: ReadableSpan, spans: list[ReadableSpan]) -> bool:
    by_id = {other.context.span_id: other for other in spans if other.context is not None}
    while span.parent is not None:
        if span.parent.span_id == ancestor.context.span_id:
            return True
        if span.parent.span_id not in by_id:
            return False
        span = by_id[span.parent.span_id]
    return False


def only(spans: list[ReadableSpan], kind: SpanKind) -> ReadableSpan:
    found = [span for span in spans if span.kind == kind]
    for span in spans:
        print(
            "DBG",
            span.name,
            span.kind,
            hex(span.context.span_id),
            span.parent and hex(span.parent.span_id),
            dict(span.attributes or {}),
        )
    assert len(found) == 1, [(span.name, span.context, span.parent) for span in spans]
    return found[0]


def test_the_provider_call_is_a_child_span_and_receives_the_trace(
    service_factory: Callable[..., RunningService],
    fake_llm: Callable[[list[Reply]], FakeLLM],
    caplog: pytest.LogCaptureFixture,
) -> None:
    llm = fake_llm([Reply(text="Paris [1].")])
    service = ingested(service_factory(**provider_settings("openai", llm)))
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    caplog.set_level(logging.INFO, logger="python_ml.access")
    with service.client() as client:
        answer = client.post("/v1/rag/query", json=QUESTION, headers={"traceparent": f"00-{trace_id}-{caller_span}-01"})
    assert answer.status_code == 200, answer.text

    spans = spans_of(trace_id)
    server = only(spans, SpanKind.SERVER)
    provider_call = only(spans, SpanKind.CLIENT)
    assert server.parent is not None and format(server.parent.span_id, "016x") == caller_span
    assert server.name == "POST /v1/rag/query" and server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["request.id"] == answer.headers["x-request-id"]
    assert descends_from(provider_call, server, spans), "the provider call is within the request's span"
    assert provider_call.name.startswith("chat ") and provider_call.attributes is not None
    assert provider_call.attributes["gen_ai.system"] == "openai"

    sent = llm.recorded.requests[0]["headers"]["traceparent"]
    assert sent == f"00-{trace_id}-{format(provider_call.context.span_id, '016x')}-01"

    # The line is written once the response has gone out, so it may follow the client's read.
    request_id = answer.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while not (lines := [r.getMessage() for r in caplog.records if f"request_id={request_id}" in r.getMessage()]):
        assert time.monotonic() < deadline, "no access-log line"
        time.sleep(0.02)
    assert f"trace_id={trace_id}" in lines[0] and lines[0].startswith("request method=POST"), lines


@pytest.mark.parametrize("forged", ["garbage", "00-" + "f" * 32 + "-" + "0" * 16 + "-01", "00-zz-yy-01"])
def test_a_malformed_traceparent_starts_a_root_span(
    service_factory: Callable[..., RunningService], forged: str
) -> None:
    service = service_factory()
    with service.client() as client:
        response = client.get("/healthz", headers={"traceparent": forged})
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while not (
        served := [s for s in EXPORTED.get_finished_spans() if (s.attributes or {}).get("request.id") == request_id]
    ):
        assert time.monotonic() < deadline, "no span for the request"
        time.sleep(0.02)
    assert served[0].kind == SpanKind.SERVER and served[0].parent is None
