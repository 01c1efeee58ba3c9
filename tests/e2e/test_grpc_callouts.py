"""gRPC callouts from a filter (`proxy_grpc_call`, `proxy_grpc_stream`): the grpc-probe test
filter calls a real grpcio service from our proxy and from stock Envoy, and answers what it saw
as JSON; the same requests get the same answers in both. Then what an upstream controls (huge
messages, malformed frames, a dead endpoint) costs only the call that met it."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
import requests
from harness.envoy import free_port, start_envoy_bootstrap
from harness.gateway import REPO, Gateway, built_filter, start_gateway

CLUSTER = "grpc_backend"


class EchoService:
    """`probe.Echo` on grpcio, messages as raw bytes: `Unary` echoes, `Fail` refuses, `Slow`
    waits for cancellation (up to 5 s), `Chat` answers each message upper-cased, `Big` answers
    5 MiB. It records the calls it saw end while still waiting (`cancelled`)."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.slow_running = 0
        self.lock = threading.Lock()

        def meta(context: grpc.ServicerContext) -> str:
            return dict(context.invocation_metadata()).get("x-probe-meta", "")

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            return b"echo:" + request + b" meta:" + meta(context).encode()

        def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied by test")
            raise AssertionError("abort raises")

        def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self.lock:
                self.slow_running += 1
            try:
                deadline = time.monotonic() + 5
                while context.is_active() and time.monotonic() < deadline:
                    time.sleep(0.02)
                if not context.is_active():
                    with self.lock:
                        self.cancelled.append(meta(context))
                return b"late"
            finally:
                with self.lock:
                    self.slow_running -= 1

        def chat(requests_: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            context.send_initial_metadata((("x-echo-meta", meta(context)),))
            count = 0
            for message in requests_:
                count += 1
                yield message.upper()
            context.set_trailing_metadata((("x-count", str(count)),))

        def big(request: bytes, context: grpc.ServicerContext) -> bytes:
            return b"x" * (5 << 20)

        handler = grpc.method_handlers_generic_handler(
            "probe.Echo",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "Fail": grpc.unary_unary_rpc_method_handler(fail),
                "Slow": grpc.unary_unary_rpc_method_handler(slow),
                "Chat": grpc.stream_stream_rpc_method_handler(chat),
                "Big": grpc.unary_unary_rpc_method_handler(big),
            },
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.max_send_message_length", 8 << 20)]
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


@pytest.fixture(scope="module")
def echo_service() -> Iterator[EchoService]:
    service = EchoService()
    yield service
    service.server.stop(0)


def probe_filter(cluster: str = CLUSTER) -> dict[str, Any]:
    return {"name": "grpc_probe", "wasm": str(built_filter("grpc_probe_filter")), "configuration": cluster}


def callout_config(grpc_port: int, upstream_port: int) -> dict[str, Any]:
    """Our proxy: the probe on every request, the gRPC service as an HTTP/2 cluster."""
    return {
        "filter_chains": [{"name": "probe", "filters": [probe_filter()]}],
        "routes": [{"name": "all", "cluster": "app", "filter_chain": "probe"}],
        "clusters": [
            {"name": "app", "endpoints": [f"127.0.0.1:{upstream_port}"]},
            {"name": CLUSTER, "endpoints": [f"127.0.0.1:{grpc_port}"], "protocol": "http2"},
        ],
    }


@dataclass
class CalloutGateway:
    """Our proxy or Envoy, with the probe filter."""

    kind: str
    url: str


@pytest.fixture(scope="module", params=["proxy", "envoy"])
def target(
    request: pytest.FixtureRequest,
    echo_service: EchoService,
    upstream_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CalloutGateway]:
    """Our proxy or Envoy with the probe filter, calling `echo_service`."""
    work = tmp_path_factory.mktemp(f"callouts-{request.param}")
    if request.param == "envoy":
        envoy = start_envoy_bootstrap(
            REPO / "envoy-config" / "grpc-callout-filter.yaml",
            {
                "UPSTREAM_PORT": str(upstream_port),
                "GRPC_PORT": str(echo_service.port),
                "WASM_PATH": json.dumps(str(built_filter("grpc_probe_filter"))),
                "PLUGIN_CONFIG": json.dumps(CLUSTER),
                "PLUGIN_NAME": json.dumps("grpc_probe"),
            },
            work_dir=work,
        )
        yield CalloutGateway("envoy", f"http://127.0.0.1:{envoy.listen_port}")
        envoy.stop()
    else:
        proxy = start_gateway(callout_config(echo_service.port, upstream_port), work)
        yield CalloutGateway("proxy", proxy.url)
        proxy.stop()


def probe(url: str, case: str, message: str = "") -> dict[str, Any]:
    response = requests.get(url + "/", headers={"x-grpc-case": case, "x-message": message}, timeout=15)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_a_unary_call_answers_with_the_services_response(target: CalloutGateway) -> None:
    answer = probe(target.url, "unary", "hello")
    assert answer["status_code"] == 0, answer
    assert answer["response"] == "echo:hello meta:m1"
    assert answer["status"]["code"] == 0


def test_a_refused_call_reports_the_services_status_and_message(target: CalloutGateway) -> None:
    answer = probe(target.url, "Fail")
    assert answer["status_code"] == 7, answer
    assert answer["status"]["code"] == 7
    # Envoy appends its response-code details (`{via_upstream}`) to the service's message.
    assert answer["status"]["message"] in ("denied by test", "denied by test{via_upstream}")
    assert answer["response"] is None


def test_a_calls_deadline_ends_it_with_deadline_exceeded(target: CalloutGateway) -> None:
    started = time.monotonic()
    answer = probe(target.url, "deadline")
    # The service also sees the deadline (grpc-timeout) and answers DEADLINE_EXCEEDED. When
    # Envoy's own timer fires first it reports its 504 mapped to UNAVAILABLE; ours reports
    # DEADLINE_EXCEEDED whichever side ends the call, as a gRPC client does.
    expected = (4, 14) if target.kind == "envoy" else (4,)
    assert answer["status_code"] in expected, answer
    assert time.monotonic() - started < 4, "ended by the 300 ms deadline, not the service"


def test_a_stream_delivers_metadata_messages_trailers_and_status_in_order(target: CalloutGateway) -> None:
    answer = probe(target.url, "stream")
    assert answer["status_code"] == 0, answer
    assert answer["transcript"] == [
        {"initial_metadata": "m1"},
        {"message": "A"},
        {"message": "B"},
        {"message": "C"},
        {"trailing_metadata": "3"},
    ]


def test_a_cancelled_call_does_not_keep_running_upstream(target: CalloutGateway, echo_service: EchoService) -> None:
    assert probe(target.url, "cancel") == {"cancelled": True}
    # Cancelled before it left (ours) or reset on the wire (Envoy): nothing waits on it.
    deadline = time.monotonic() + 3
    while echo_service.slow_running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert echo_service.slow_running == 0


def test_a_call_to_an_unknown_cluster_is_refused_at_dispatch(target: CalloutGateway) -> None:
    assert probe(target.url, "unknown-cluster") == {"dispatch_error": "ParseFailure"}
    assert probe(target.url, "unary", "after")["response"] == "echo:after meta:m1"


# --- What an upstream controls (our proxy) --------------------------------------------------------


def test_an_oversized_answer_fails_only_its_call(
    gateway: Callable[[dict[str, Any]], Gateway], echo_service: EchoService, upstream_port: int
) -> None:
    proxy = gateway(callout_config(echo_service.port, upstream_port))
    answer = probe(proxy.url, "Big")
    assert answer["status_code"] == 8, answer  # RESOURCE_EXHAUSTED, past the 4 MiB limit
    assert probe(proxy.url, "unary", "still")["response"] == "echo:still meta:m1"


def test_a_dead_endpoint_is_unavailable(gateway: Callable[[dict[str, Any]], Gateway], upstream_port: int) -> None:
    proxy = gateway(callout_config(free_port(), upstream_port))
    assert probe(proxy.url, "unary", "x")["status_code"] == 14


class RawH2Server:
    """An HTTP/2 server on loopback that answers every call with `frames` (bytes of the response
    body after 200 and `content-type: application/grpc`) and then the `trailers`."""

    def __init__(self, body: bytes, trailers: list[tuple[str, str]]) -> None:
        self.body, self.trailers = body, trailers
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2c.initiate_connection()
        conn.sendall(h2c.data_to_send())
        with conn:
            while data := conn.recv(65535):
                for event in h2c.receive_data(data):
                    if isinstance(event, h2.events.StreamEnded):
                        sid = event.stream_id
                        h2c.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
                        if self.body:
                            h2c.send_data(sid, self.body)
                        h2c.send_headers(sid, self.trailers, end_stream=True)
                conn.sendall(h2c.data_to_send())

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize(
    ("body", "trailers", "code"),
    [
        (b"\x01" + struct.pack(">I", 2) + b"zz", [("grpc-status", "0")], 13),  # compressed, not asked for
        (b"\x00" + struct.pack(">I", 1 << 31), [("grpc-status", "0")], 8),  # announces 2 GiB
        (b"\x00" + struct.pack(">I", 10) + b"short", [("grpc-status", "0")], 13),  # truncated
        (b"\x00" + struct.pack(">I", 2) + b"ok", [("x-other", "1")], 13),  # no grpc-status
        (b"", [("grpc-status", "99"), ("grpc-message", "%FF%zz")], 2),  # not a gRPC code
    ],
    ids=["compressed", "huge-prefix", "truncated", "no-status", "bad-status"],
)
def test_malformed_answers_fail_only_their_call(
    gateway: Callable[[dict[str, Any]], Gateway],
    echo_service: EchoService,
    upstream_port: int,
    body: bytes,
    trailers: list[tuple[str, str]],
    code: int,
) -> None:
    hostile = RawH2Server(body, trailers)
    try:
        config = callout_config(echo_service.port, upstream_port)
        config["clusters"].append({"name": "hostile", "endpoints": [f"127.0.0.1:{hostile.port}"], "protocol": "http2"})
        config["filter_chains"].append({"name": "hostile", "filters": [probe_filter("hostile")]})
        config["routes"].insert(
            0,
            {"name": "hostile", "match": {"path": {"prefix": "/hostile"}}, "cluster": "app", "filter_chain": "hostile"},
        )
        proxy = gateway(config)
        response = requests.get(proxy.url + "/hostile", headers={"x-grpc-case": "unary"}, timeout=15)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["status_code"] == code, answer
        assert probe(proxy.url, "unary", "fine")["response"] == "echo:fine meta:m1"
        assert proxy.process.poll() is None
    finally:
        hostile.close()
