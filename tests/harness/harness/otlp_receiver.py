"""A local OTLP/HTTP trace receiver for the tests: what an OpenTelemetry Collector's `otlphttp`
receiver accepts (`POST /v1/traces`, protobuf), kept in memory as flat spans."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

MAX_EXPORT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as exported: ids in lowercase hex (`parent_id` empty for a root span)."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]
    failed: bool


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class _Handler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:  # noqa: N802 - name from the base class
        length = int(self.headers.get("content-length", "0"))
        if self.path != "/v1/traces" or not 0 < length <= MAX_EXPORT_BYTES:
            self.send_error(404 if self.path != "/v1/traces" else 413)
            return
        request = ExportTraceServiceRequest.FromString(self.rfile.read(length))
        self.server.add(request)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature from the base class
        """Keep test output quiet."""


class OtlpReceiver(ThreadingHTTPServer):
    """The receiver; `url` is what `OTEL_EXPORTER_OTLP_ENDPOINT` takes."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            name=span.name,
                            kind=ProtoSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            failed=span.status.code == span.status.STATUS_CODE_ERROR,
                        )
                    )
        with self._lock:
            self._spans.extend(spans)

    def spans(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans received so far in trace `trace_id`."""
        with self._lock:
            return [span for span in self._spans if span.trace_id == trace_id]

    def wait_for(self, trace_id: str, services: set[str], timeout: float = 15) -> list[ReceivedSpan]:
        """The spans of `trace_id` once every service in `services` has sent its SERVER span (a
        service's inner spans may come in an earlier batch than the span that ends last); fails
        on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.spans(trace_id)
            if services <= {span.service for span in spans if span.kind == "SERVER"}:
                return spans
            time.sleep(0.05)
        raise AssertionError(f"spans of {trace_id} from {services} not received: {self.spans(trace_id)}")


def start_otlp_receiver() -> OtlpReceiver:
    """The receiver on a free loopback port, serving in a daemon thread."""
    receiver = OtlpReceiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    return receiver
