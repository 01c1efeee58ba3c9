"""gRPC through the gateway, with grpcio's own client: python-ml's gRPC API (real model, real
process) behind our proxy and behind Envoy with the same auth filter. A refusal is a gRPC status
(trailers-only, `grpc-status` and `grpc-message`), the same in both; answers stream through; the
tenant comes from the key the gateway verified; a call's `grpc-timeout` bounds the gateway's wait."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import h2.connection
import h2.events
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from harness.envoy import free_port, start_envoy_bootstrap
from harness.gateway import AUTH_CONFIG, DEMO_KEY, REPO, Gateway, auth_filter, built_filter, start_gateway
from harness.gateway_identity import SIGNING_KEY_ENV, TEST_SIGNING_KEY
from harness.python_ml_service import start_python_ml
from python_ml.v1 import embeddings_pb2, embeddings_pb2_grpc, rag_pb2, rag_pb2_grpc

KEY = (("x-api-key", DEMO_KEY),)


@dataclass
class GrpcBackend:
    """python-ml's HTTP and gRPC ports."""

    http_port: int
    grpc_port: int


@pytest.fixture(scope="module")
def python_ml(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcBackend]:
    backend = GrpcBackend(free_port(), free_port())
    log = tmp_path_factory.mktemp("python-ml") / "service.log"
    process = start_python_ml(backend.http_port, log, signing_key=TEST_SIGNING_KEY, grpc_port=backend.grpc_port)
    yield backend
    process.terminate()
    process.wait(timeout=15)


def grpc_gateway_config(port: int, upstream_port: int, *, signed: bool = True) -> dict[str, Any]:
    """Our proxy: an h2c listener, the auth filter, an HTTP/2 cluster (signing identities for it)."""
    cluster: dict[str, Any] = {"name": "ml", "endpoints": [f"127.0.0.1:{upstream_port}"], "protocol": "http2"}
    if signed:
        cluster["identity_signature"] = {"key_env": SIGNING_KEY_ENV}
    return {
        "listeners": [{"name": "public", "address": f"127.0.0.1:{port}", "h2c": True}],
        "filter_chains": [{"name": "grpc", "filters": [auth_filter()]}],
        "routes": [
            {"name": "grpc", "match": {"path": {"prefix": "/python_ml.v1."}}, "cluster": "ml", "filter_chain": "grpc"}
        ],
        "clusters": [cluster],
    }


@pytest.fixture(scope="module", params=["proxy", "envoy"])
def gateway_target(
    request: pytest.FixtureRequest, python_ml: GrpcBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`host:port` of our proxy or of Envoy, each with the auth filter in front of python-ml's gRPC API."""
    work = tmp_path_factory.mktemp(f"grpc-{request.param}")
    if request.param == "envoy":
        envoy = start_envoy_bootstrap(
            REPO / "envoy-config" / "grpc-auth-filter.yaml",
            {
                "UPSTREAM_PORT": str(python_ml.grpc_port),
                "WASM_PATH": json.dumps(str(built_filter("auth_filter"))),
                "PLUGIN_CONFIG": json.dumps(AUTH_CONFIG.read_text()),
                "PLUGIN_NAME": json.dumps("auth"),
            },
            work_dir=work,
        )
        yield f"127.0.0.1:{envoy.listen_port}"
        envoy.stop()
    else:
        port = free_port()
        proxy = start_gateway(grpc_gateway_config(port, python_ml.grpc_port), work)
        yield f"127.0.0.1:{port}"
        proxy.stop()


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: grpc.RpcError = caught.value
    return error


def embed(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = KEY) -> embeddings_pb2.EmbedResponse:
    stub = embeddings_pb2_grpc.EmbeddingsStub(channel)
    response: embeddings_pb2.EmbedResponse = stub.Embed(
        embeddings_pb2.EmbedRequest(inputs=["through the gateway"]), metadata=metadata, timeout=30
    )
    return response


def test_a_refused_call_is_a_grpc_status_in_both_gateways(gateway_target: str) -> None:
    with grpc.insecure_channel(gateway_target) as channel:
        for metadata, code, error_code in [
            ((), grpc.StatusCode.UNAUTHENTICATED, "missing_api_key"),
            ((("x-api-key", "wrong"),), grpc.StatusCode.UNAUTHENTICATED, "invalid_api_key"),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                embed(channel, metadata)
            error = caught.value
            assert error.code() == code, error.details()
            # The filter's JSON error, whole, as the status message.
            body = json.loads(error.details() or "")
            assert body["error"]["code"] == error_code, body
        # The refusal cost only itself: the same channel goes on working.
        assert len(embed(channel).embeddings[0].values) == 384


def start_grpc_gateway(gateway: Callable[[dict[str, Any]], Gateway], config: Callable[[int], dict[str, Any]]) -> int:
    """Our proxy with `config(port)` on a free port (stopped after the test); the port."""
    port = free_port()
    gateway(config(port))
    return port


def test_answers_stream_through_with_the_verified_tenant(
    gateway: Callable[[dict[str, Any]], Gateway], python_ml: GrpcBackend
) -> None:
    port = start_grpc_gateway(gateway, lambda port: grpc_gateway_config(port, python_ml.grpc_port))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        rag = rag_pb2_grpc.RagStub(channel)
        text = (REPO / "python-ml" / "corpus" / "espresso.md").read_text()
        ingested = rag.Ingest(
            rag_pb2.IngestRequest(documents=[rag_pb2.Document(id="espresso", text=text)]), metadata=KEY, timeout=60
        )
        assert ingested.chunks >= 1
        events = list(rag.Query(rag_pb2.QueryRequest(question="Why is my espresso sour?"), metadata=KEY, timeout=60))
        kinds = [event.WhichOneof("event") for event in events]
        assert kinds[0] == "token" and kinds[-2:] == ["sources", "done"]
        assert events[-2].sources.sources[0].document_id == "espresso"
        # A caller's own identity metadata is replaced by what the gateway verified: python-ml
        # accepts only the gateway's signature, and the tenant is the key's.
        forged = (*KEY, ("x-gateway-tenant", "someone-else"), ("x-gateway-signature", "v1;t=1;sig=00"))
        again = list(rag.Query(rag_pb2.QueryRequest(question="Why is my espresso sour?"), metadata=forged))
        assert again[-2].sources.sources[0].document_id == "espresso"


def test_upstream_errors_keep_their_grpc_status(
    gateway: Callable[[dict[str, Any]], Gateway], python_ml: GrpcBackend
) -> None:
    port = start_grpc_gateway(gateway, lambda port: grpc_gateway_config(port, python_ml.grpc_port))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        rag = rag_pb2_grpc.RagStub(channel)
        error = refusal(lambda: list(rag.Query(rag_pb2.QueryRequest(question=""), metadata=KEY)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(error.trailing_metadata() or ())["error-code"] == "invalid_request"
    # Without the gateway's signature python-ml refuses: the gateway must sign for it.
    unsigned = start_grpc_gateway(gateway, lambda port: grpc_gateway_config(port, python_ml.grpc_port, signed=False))
    with grpc.insecure_channel(f"127.0.0.1:{unsigned}") as channel:
        rag = rag_pb2_grpc.RagStub(channel)
        error = refusal(lambda: list(rag.Query(rag_pb2.QueryRequest(question="x"), metadata=KEY)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert dict(error.trailing_metadata() or ())["error-code"] == "untrusted_caller"


# --- deadlines and hostile calls, on the wire -------------------------------------------------------


class SlowServer:
    """A gRPC server whose one method (`/test.Slow/Wait`) answers after `delay` seconds, with the
    standard health service (SERVING until told otherwise)."""

    def __init__(self, delay: float) -> None:
        def wait(request: bytes, context: grpc.ServicerContext) -> bytes:
            time.sleep(delay)
            return request

        handler = grpc.method_handlers_generic_handler("test.Slow", {"Wait": grpc.unary_unary_rpc_method_handler(wait)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


@dataclass
class RawAnswer:
    """What came back on one HTTP/2 stream."""

    headers: dict[str, str]
    trailers: dict[str, str]
    data: bytes
    seconds: float


def raw_grpc_call(port: int, path: str, message: bytes, headers: list[tuple[str, str]]) -> RawAnswer:
    """One gRPC call written by hand over h2c, so the test sees what the gateway itself answers
    (grpcio would enforce the deadline on its own side)."""
    connection = h2.connection.H2Connection()
    connection.initiate_connection()
    started = time.monotonic()
    answer = RawAnswer({}, {}, b"", 0.0)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock, contextlib.suppress(ConnectionError):
        stream = connection.get_next_available_stream_id()
        request_headers = [
            (":method", "POST"),
            (":path", path),
            (":scheme", "http"),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *headers,
        ]
        connection.send_headers(stream, request_headers)
        connection.send_data(stream, b"\0" + struct.pack(">I", len(message)) + message, end_stream=True)
        sock.sendall(connection.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                break
            events = connection.receive_data(data)
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    answer.headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.TrailersReceived):
                    answer.trailers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    answer.data += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, stream)
            sock.sendall(connection.data_to_send())
            if any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in events):
                break
    answer.seconds = time.monotonic() - started
    return answer


def grpc_status(answer: RawAnswer) -> str:
    """`grpc-status` from the trailers, or from the headers of a trailers-only answer."""
    return answer.trailers.get("grpc-status") or answer.headers.get("grpc-status", "")


@pytest.fixture
def slow_upstream() -> Iterator[Callable[[float], SlowServer]]:
    """Starts `SlowServer`s (`slow_upstream(delay)`); all stop after the test."""
    started: list[SlowServer] = []

    def start(delay: float) -> SlowServer:
        started.append(SlowServer(delay))
        return started[-1]

    yield start
    for server in started:
        server.server.stop(0)


def slow_route_config(port: int, upstream: SlowServer) -> dict[str, Any]:
    """Our proxy in front of `upstream` (no identity signature: it checks none)."""
    config = grpc_gateway_config(port, upstream.port, signed=False)
    config["routes"][0]["match"] = {"path": {"prefix": "/test.Slow/"}}
    return config


def test_the_gateway_stops_waiting_at_the_calls_deadline(
    gateway: Callable[[dict[str, Any]], Gateway], slow_upstream: Callable[[float], SlowServer]
) -> None:
    slow = slow_upstream(3)
    port = start_grpc_gateway(gateway, lambda port: slow_route_config(port, slow))
    answer = raw_grpc_call(port, "/test.Slow/Wait", b"x", [("x-api-key", DEMO_KEY), ("grpc-timeout", "300m")])
    assert answer.headers[":status"] == "200" and grpc_status(answer) == "4", answer
    assert answer.headers["content-type"] == "application/grpc" and answer.headers["x-request-id"]
    assert answer.seconds < 2.5, "the gateway gave up at the deadline, not at the upstream's answer"
    # Without a deadline the same call is answered.
    answer = raw_grpc_call(port, "/test.Slow/Wait", b"x", [("x-api-key", DEMO_KEY)])
    assert grpc_status(answer) == "0" and answer.data.endswith(b"x"), answer
    # A deadline that is no deadline (garbage) is no deadline for the gateway: the call goes on,
    # and the service decides (grpcio's servers refuse it as INTERNAL).
    answer = raw_grpc_call(port, "/test.Slow/Wait", b"y", [("x-api-key", DEMO_KEY), ("grpc-timeout", "soon")])
    assert grpc_status(answer) == "13" and "grpc-timeout" in answer.headers["grpc-message"], answer


def test_hostile_grpc_calls_cost_only_themselves(
    gateway: Callable[[dict[str, Any]], Gateway], python_ml: GrpcBackend
) -> None:
    port = start_grpc_gateway(gateway, lambda port: grpc_gateway_config(port, python_ml.grpc_port))
    key = [("x-api-key", DEMO_KEY)]
    # A message that is no protobuf, a frame that says it is longer than it is, a route nobody serves.
    garbage = raw_grpc_call(port, "/python_ml.v1.Embeddings/Embed", b"\xff\xff\xff garbage", key)
    assert grpc_status(garbage) == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]), garbage
    unknown = raw_grpc_call(port, "/other.Service/Method", b"", key)
    assert grpc_status(unknown) == "12" and json.loads(unknown.headers["grpc-message"])["error"]["code"] == "no_route"
    oversized = raw_grpc_call(port, "/python_ml.v1.Embeddings/Embed", b"", [*key, ("x-big", "v" * 200_000)])
    assert grpc_status(oversized) not in ("", "0") or oversized.headers.get(":status") != "200", oversized
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert len(embed(channel).embeddings) == 1


def test_grpc_health_checks_take_a_not_serving_endpoint_out(
    gateway: Callable[[dict[str, Any]], Gateway], slow_upstream: Callable[[float], SlowServer]
) -> None:
    upstream = slow_upstream(0)

    def config(port: int) -> dict[str, Any]:
        checked = slow_route_config(port, upstream)
        checked["clusters"][0]["health_check"] = {"grpc": {}, "interval": "200ms", "unhealthy_threshold": 1}
        return checked

    port = start_grpc_gateway(gateway, config)
    key = [("x-api-key", DEMO_KEY)]

    def status_within(seconds: float, wanted: str) -> str:
        deadline = time.monotonic() + seconds
        while True:
            status = grpc_status(raw_grpc_call(port, "/test.Slow/Wait", b"h", key))
            if status == wanted or time.monotonic() > deadline:
                return status
            time.sleep(0.1)

    assert status_within(10, "0") == "0"
    upstream.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    # No endpoint left: `no_healthy_upstream` (503), which a gRPC caller reads as UNAVAILABLE.
    assert status_within(10, "14") == "14"
    upstream.health.set("", health_pb2.HealthCheckResponse.SERVING)
    assert status_within(10, "0") == "0"
