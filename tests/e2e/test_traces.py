"""One W3C trace per request across the gateway, python-ml and sandbox-host, exported with
OpenTelemetry over OTLP/HTTP to a local receiver: the parent/child links, the service names, the
trace id in every service's access log, and what a forged `traceparent` or a dead collector costs."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from harness.envoy import free_port
from harness.gateway import DEMO_KEY, REPO, Gateway, auth_filter, start_gateway
from harness.gateway_identity import SIGNING_KEY_ENV, TEST_SIGNING_KEY
from harness.otlp_receiver import OtlpReceiver, ReceivedSpan, start_otlp_receiver
from harness.python_ml_service import start_python_ml
from harness.sandbox_host import SandboxHost, start_sandbox

KEY = {"x-api-key": DEMO_KEY}


@dataclass
class System:
    """The gateway in front of python-ml and sandbox-host, all three exporting to `receiver`."""

    gateway: Gateway
    sandbox: SandboxHost
    python_ml_log: Path
    receiver: OtlpReceiver


def export_to(endpoint: str) -> dict[str, str]:
    """The standard OpenTelemetry environment, with a short batch delay so tests wait less."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}


def gateway_config(ml_port: int, sandbox_port: int) -> dict[str, object]:
    signed = {"identity_signature": {"key_env": SIGNING_KEY_ENV}}
    return {
        "filter_chains": [{"name": "keyed", "filters": [auth_filter()]}],
        "routes": [
            {"name": "rag", "match": {"path": {"prefix": "/v1/rag/"}}, "cluster": "ml", "filter_chain": "keyed"},
            {
                "name": "executions",
                "match": {"path": {"exact": "/v1/executions"}},
                "cluster": "sandbox",
                "filter_chain": "keyed",
            },
        ],
        "clusters": [
            {"name": "ml", "endpoints": [f"127.0.0.1:{ml_port}"], **signed},
            {"name": "sandbox", "endpoints": [f"127.0.0.1:{sandbox_port}"], "timeouts": {"read": "60s"}, **signed},
        ],
    }


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    receiver = start_otlp_receiver()
    env = export_to(receiver.url)
    work = tmp_path_factory.mktemp("traces")
    ml_port = free_port()
    ml_log = work / "python-ml.log"
    python_ml = start_python_ml(ml_port, ml_log, signing_key=TEST_SIGNING_KEY, env=env)
    sandbox = start_sandbox(work, env=env)
    gateway = start_gateway(gateway_config(ml_port, sandbox.port), work, env=env)
    document = {"id": "rate-limiting", "text": (REPO / "python-ml" / "corpus" / "rate-limiting.md").read_text()}
    ingested = requests.post(gateway.url + "/v1/rag/documents", json={"documents": [document]}, headers=KEY, timeout=60)
    assert ingested.status_code == 200, ingested.text
    yield System(gateway, sandbox, ml_log, receiver)
    gateway.stop()
    sandbox.stop()
    python_ml.terminate()
    python_ml.wait(timeout=15)
    receiver.shutdown()


def new_traceparent() -> tuple[str, str, str]:
    """A caller's trace id, span id and the `traceparent` naming them (sampled)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def one(spans: list[ReceivedSpan], service: str, kind: str) -> ReceivedSpan:
    found = [span for span in spans if span.service == service and span.kind == kind]
    assert len(found) == 1, f"one {kind} span from {service} expected: {spans}"
    return found[0]


def access_line(read_log: Callable[[], str], *needles: str) -> str:
    """The first log line holding every one of `needles`, waited for: a line follows its response."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in read_log().splitlines():
            if all(needle in line for needle in needles):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line with {needles}")


def access_log_entry(read_log: Callable[[], str], request_id: str) -> dict[str, object]:
    """The gateway's or sandbox-host's access-log line (JSON) for `request_id`."""
    entry: dict[str, object] = json.loads(access_line(read_log, '"access_log"', f'"request_id":"{request_id}"'))
    return entry


def gateway_trace_id(gateway: Gateway, request_id: str) -> str:
    """The trace id the gateway logged for `request_id`."""
    return str(access_log_entry(gateway.log, request_id)["trace_id"])


def test_a_rag_query_is_one_trace_from_the_caller_through_python_ml(system: System) -> None:
    trace_id, caller_span, traceparent = new_traceparent()
    answer = requests.post(
        system.gateway.url + "/v1/rag/query",
        json={"question": "How does a token bucket refill?"},
        headers={**KEY, "traceparent": traceparent},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text

    spans = system.receiver.wait_for(trace_id, {"gateway", "python-ml"})
    gateway = one(spans, "gateway", "SERVER")
    python_ml = one(spans, "python-ml", "SERVER")
    assert gateway.parent_id == caller_span, "the gateway continues the caller's trace"
    assert python_ml.parent_id == gateway.span_id, "python-ml is the gateway's child"
    assert gateway.name == "POST rag" and gateway.attributes["gateway.cluster"] == "ml"
    assert gateway.attributes["http.response.status_code"] == 200
    assert python_ml.name == "POST /v1/rag/query" and python_ml.attributes["http.route"] == "/v1/rag/query"
    request_id = answer.headers["x-request-id"]
    assert gateway.attributes["request.id"] == python_ml.attributes["request.id"] == request_id

    assert gateway_trace_id(system.gateway, request_id) == trace_id
    ml_line = access_line(system.python_ml_log.read_text, "python_ml.access", f"request_id={request_id}")
    assert f"trace_id={trace_id}" in ml_line, ml_line


def test_an_execution_is_one_trace_through_sandbox_host(system: System) -> None:
    trace_id, caller_span, traceparent = new_traceparent()
    ran = requests.post(
        system.gateway.url + "/v1/executions",
        json={"language": "python", "code": "print(6 * 7)"},
        headers={**KEY, "traceparent": traceparent},
        timeout=60,
    )
    assert ran.status_code == 200 and ran.json()["stdout"] == "42\n", ran.text

    spans = system.receiver.wait_for(trace_id, {"gateway", "sandbox-host"})
    gateway = one(spans, "gateway", "SERVER")
    sandbox = one(spans, "sandbox-host", "SERVER")
    assert gateway.parent_id == caller_span
    assert sandbox.parent_id == gateway.span_id
    assert sandbox.name == "POST /v1/executions"
    assert sandbox.attributes["sandbox.language"] == "python"
    assert sandbox.attributes["sandbox.outcome"] == "ok"
    logged = access_log_entry(system.sandbox.log, ran.headers["x-request-id"])
    assert logged["trace_id"] == trace_id and logged["status"] == 200


def test_without_a_traceparent_the_gateway_starts_the_trace(system: System) -> None:
    answer = requests.post(
        system.gateway.url + "/v1/rag/query", json={"question": "What is a sandbox?"}, headers=KEY, timeout=30
    )
    assert answer.status_code == 200, answer.text
    trace_id = gateway_trace_id(system.gateway, answer.headers["x-request-id"])

    spans = system.receiver.wait_for(trace_id, {"gateway", "python-ml"})
    gateway = one(spans, "gateway", "SERVER")
    assert gateway.parent_id == "", "a root span"
    assert one(spans, "python-ml", "SERVER").parent_id == gateway.span_id


@pytest.mark.parametrize(
    "forged",
    [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-" + "a" * 4000,
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace_and_the_request_goes_on(system: System, forged: str) -> None:
    answer = requests.post(
        system.gateway.url + "/v1/executions",
        json={"language": "javascript", "code": "console.log(1)"},
        headers={**KEY, "traceparent": forged},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    trace_id = gateway_trace_id(system.gateway, answer.headers["x-request-id"])
    assert trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
    spans = system.receiver.wait_for(trace_id, {"gateway", "sandbox-host"})
    assert one(spans, "gateway", "SERVER").parent_id == ""


@pytest.mark.parametrize("collector", ["refuses connections", "never answers"])
def test_an_unreachable_collector_costs_requests_nothing(tmp_path: Path, system: System, collector: str) -> None:
    """A gateway exporting to a dead collector, or to one that accepts and never answers (each
    export then waits out its 10 s timeout), still answers every request at once."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the backlog; nothing is ever read
    port = silent.getsockname()[1] if collector == "never answers" else free_port()
    gateway = start_gateway(
        gateway_config(1, system.sandbox.port), tmp_path, env={**export_to(f"http://127.0.0.1:{port}")}
    )
    try:
        for _ in range(20):
            ran = requests.post(
                gateway.url + "/v1/executions",
                json={"language": "javascript", "code": "console.log(2)"},
                headers=KEY,
                timeout=5,
            )
            assert ran.status_code == 200, ran.text
    finally:
        gateway.stop()
        silent.close()
