"""The gRPC API with grpcio's own client on a real socket: the same answers as the HTTP API, errors
as gRPC statuses, tenants from the signed metadata, and garbage, oversized and expired calls."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from conftest import RunningService
from gateway_signature import signed_headers
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from python_ml.embedding import Embedder
from python_ml.v1 import embeddings_pb2, embeddings_pb2_grpc, rag_pb2, rag_pb2_grpc

KEY = "test-signing-key-0123456789abcdef"


@pytest.fixture
def channel(corpus_service: RunningService) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(corpus_service.grpc_target) as channel:
        yield channel


def error_of(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: grpc.RpcError = caught.value
    return error


def assert_status(error: grpc.RpcError, code: grpc.StatusCode, error_code: str) -> None:
    """The call ended with this gRPC code, the JSON errors' code and a request id in its trailers."""
    assert error.code() == code, error.details()
    trailers = dict(error.trailing_metadata() or ())
    assert trailers.get("error-code") == error_code, trailers
    assert trailers.get("x-request-id")
    assert "Traceback" not in (error.details() or "")


def query(channel: grpc.Channel, question: str, **kwargs: object) -> list[rag_pb2.QueryEvent]:
    stub = rag_pb2_grpc.RagStub(channel)
    return list(stub.Query(rag_pb2.QueryRequest(question=question), **kwargs))


def test_embed_gives_the_models_vectors(channel: grpc.Channel, embedder: Embedder) -> None:
    texts = ["The cat sat on the mat.", "Rate limits protect services."]
    stub = embeddings_pb2_grpc.EmbeddingsStub(channel)
    response = stub.Embed(embeddings_pb2.EmbedRequest(inputs=texts))
    expected = embedder.embed(texts)
    np.testing.assert_allclose([list(e.values) for e in response.embeddings], expected.vectors, atol=1e-6)
    assert response.model == "all-MiniLM-L6-v2"
    assert response.prompt_tokens == sum(expected.token_counts)


def test_query_streams_the_http_answer_then_sources_then_done(
    channel: grpc.Channel, corpus_service: RunningService
) -> None:
    question = "How is espresso brewed?"
    events = query(channel, question, metadata=(("x-request-id", "grpc-query-1"),))
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[-2:] == ["sources", "done"] and set(kinds[:-2]) == {"token"}, kinds
    with corpus_service.client() as client:
        http = client.post("/v1/rag/query", json={"question": question}).json()
    assert "".join(event.token.text for event in events[:-2]) == http["answer"]
    sources = events[-2].sources.sources
    assert [(s.document_id, s.chunk_index) for s in sources] == [
        (s["document_id"], s["chunk_index"]) for s in http["sources"]
    ]
    assert dict(sources[0].metadata) == http["sources"][0]["metadata"]
    assert events[-1].done.generator == "extractive" and events[-1].done.timing.total_ms > 0


def test_ingested_documents_read_back_over_http(service_factory: Callable[..., RunningService]) -> None:
    service = service_factory()
    metadata = struct_pb2.Struct()
    metadata.update({"year": 2024, "topic": "coffee", "tags": ["a", "b"]})
    document = rag_pb2.Document(id="grpc-doc", text="Espresso is brewed under about 9 bar.", metadata=metadata)
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = rag_pb2_grpc.RagStub(channel)
        result = stub.Ingest(rag_pb2.IngestRequest(documents=[document]))
        assert (result.chunks, result.embedded, result.reused) == (1, 1, 0)
        again = stub.Ingest(rag_pb2.IngestRequest(documents=[document]))
        assert (again.embedded, again.reused) == (0, 1)
        filtered = rag_pb2.QueryRequest(question="espresso", filters={"year": struct_pb2.Value(number_value=2024)})
        assert list(stub.Query(filtered))[-2].sources.sources[0].document_id == "grpc-doc"
    with service.client() as client:
        stored = client.get("/v1/rag/documents/grpc-doc").json()
    # Struct numbers are doubles; integral ones are stored as the JSON body would store them.
    assert stored["metadata"] == {"year": 2024, "topic": "coffee", "tags": ["a", "b"]}


@pytest.mark.parametrize(
    ("request_", "code", "error_code"),
    [
        (rag_pb2.QueryRequest(question=""), grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
        (rag_pb2.QueryRequest(question="x", top_k=500), grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
    ],
)
def test_invalid_queries_are_invalid_argument(
    channel: grpc.Channel, request_: rag_pb2.QueryRequest, code: grpc.StatusCode, error_code: str
) -> None:
    stub = rag_pb2_grpc.RagStub(channel)
    error = error_of(lambda: list(stub.Query(request_)))
    assert_status(error, code, error_code)
    assert "question" in (error.details() or "") or "top_k" in (error.details() or "")


def test_errors_carry_the_http_apis_codes(
    channel: grpc.Channel, service_factory: Callable[..., RunningService]
) -> None:
    embed = embeddings_pb2_grpc.EmbeddingsStub(channel)
    error = error_of(lambda: embed.Embed(embeddings_pb2.EmbedRequest(inputs=["x"], model="text-embedding-3-small")))
    assert_status(error, grpc.StatusCode.NOT_FOUND, "model_not_found")
    error = error_of(lambda: embed.Embed(embeddings_pb2.EmbedRequest()))
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request")
    duplicate = rag_pb2.IngestRequest(documents=[rag_pb2.Document(id="a", text="x")] * 2)
    error = error_of(lambda: rag_pb2_grpc.RagStub(channel).Ingest(duplicate))
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request")
    empty = service_factory()
    with grpc.insecure_channel(empty.grpc_target) as fresh:
        error = error_of(lambda: query(fresh, "anything"))
    assert_status(error, grpc.StatusCode.FAILED_PRECONDITION, "empty_corpus")


def test_the_request_id_is_echoed(channel: grpc.Channel) -> None:
    embed = embeddings_pb2_grpc.EmbeddingsStub(channel)
    _, call = embed.Embed.with_call(embeddings_pb2.EmbedRequest(inputs=["x"]), metadata=(("x-request-id", "rid-7"),))
    assert dict(call.trailing_metadata())["x-request-id"] == "rid-7"


def test_tenants_come_from_the_signed_metadata(service_factory: Callable[..., RunningService]) -> None:
    service = service_factory(gateway_signing_key=KEY)

    def metadata(tenant: str) -> tuple[tuple[str, str], ...]:
        return tuple(signed_headers(KEY, identity=f"{tenant}-user", tenant=tenant).items())

    secret = rag_pb2.Document(id="plan", text="The acme launch code is tangerine.")
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = rag_pb2_grpc.RagStub(channel)
        stub.Ingest(rag_pb2.IngestRequest(documents=[secret]), metadata=metadata("acme"))
        answer = query(channel, "What is the launch code?", metadata=metadata("acme"))
        assert "tangerine" in "".join(e.token.text for e in answer[:-2])
        # Another tenant has no documents at all; a forged or missing signature is refused.
        assert_status(
            error_of(lambda: query(channel, "What is the launch code?", metadata=metadata("globex"))),
            grpc.StatusCode.FAILED_PRECONDITION,
            "empty_corpus",
        )
        # globex's genuine signature over its own tenant, with the tenant changed to acme.
        forged = tuple(
            ("x-gateway-tenant", "acme") if k == "x-gateway-tenant" else (k, v) for k, v in metadata("globex")
        )
        for bad in ((), forged, (("x-gateway-tenant", "acme"),)):
            with pytest.raises(grpc.RpcError) as caught:
                query(channel, "What is the launch code?", metadata=bad)
            assert_status(caught.value, grpc.StatusCode.UNAUTHENTICATED, "untrusted_caller")


def test_values_json_cannot_hold_are_invalid_arguments(service_factory: Callable[..., RunningService]) -> None:
    service = service_factory(gateway_signing_key=KEY)
    tenant = tuple(signed_headers(KEY, identity="zoe", tenant="cafe").items())
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = rag_pb2_grpc.RagStub(channel)
        stub.Ingest(rag_pb2.IngestRequest(documents=[rag_pb2.Document(id="d", text="Crema is foam.")]), metadata=tenant)
        assert query(channel, "What is crema?", metadata=tenant)[-1].WhichOneof("event") == "done"
        nan = rag_pb2.QueryRequest(question="x", filters={"k": struct_pb2.Value(number_value=float("nan"))})
        assert_status(
            error_of(lambda: list(stub.Query(nan, metadata=tenant))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_request",
        )


def test_garbage_oversized_and_expired_calls_cost_only_themselves(
    service_factory: Callable[..., RunningService],
) -> None:
    service = service_factory(max_body_bytes=20_000)
    with grpc.insecure_channel(service.grpc_target) as channel:
        # Bytes that are no protobuf message.
        raw = channel.unary_unary("/python_ml.v1.Rag/Ingest")
        assert_status(
            error_of(lambda: raw(b"\xff\xff\xff\xff garbage")), grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"
        )
        # A message past the body limit is refused before it is parsed.
        huge = rag_pb2.IngestRequest(documents=[rag_pb2.Document(id="big", text="x" * 50_000)])
        stub = rag_pb2_grpc.RagStub(channel)
        assert error_of(lambda: stub.Ingest(huge)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Unknown methods, and a deadline that passes before the answer.
        assert error_of(lambda: channel.unary_unary("/python_ml.v1.Rag/Drop")(b"")).code() == (
            grpc.StatusCode.UNIMPLEMENTED
        )
        assert error_of(lambda: query(channel, "espresso", timeout=0.0001)).code() == (
            grpc.StatusCode.DEADLINE_EXCEEDED
        )
        document = rag_pb2.Document(id="ok", text="Espresso is brewed under about 9 bar.")
        assert stub.Ingest(rag_pb2.IngestRequest(documents=[document])).chunks == 1
        assert query(channel, "How is espresso brewed?")[-1].WhichOneof("event") == "done"


def test_health_says_serving_once_the_model_is_loaded(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "python_ml.v1.Rag", "python_ml.v1.Embeddings"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert error_of(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope"))).code() == (
        grpc.StatusCode.NOT_FOUND
    )
