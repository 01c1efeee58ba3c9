"""The HTTP API on a real socket: embeddings (with the OpenAI client), ingest, query, errors."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from conftest import RunningService
from python_ml.embedding import Embedder


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the stable error shape with this status and code, and carries a request id."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["status"] == status and error["code"] == code, error
    assert error["message"] and "Traceback" not in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


# --- embeddings ---------------------------------------------------------------------------------


def test_openai_client_gets_the_models_vectors(corpus_service: RunningService, embedder: Embedder) -> None:
    client = openai.OpenAI(base_url=f"{corpus_service.url}/v1", api_key="unused", max_retries=0)
    texts = ["The cat sat on the mat.", "Rate limits protect services."]
    expected = embedder.embed(texts).vectors
    # The client asks for base64 by default and decodes it; ask for floats explicitly too.
    for response in (
        client.embeddings.create(model="all-MiniLM-L6-v2", input=texts),
        client.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="float"),
    ):
        got = np.array([item.embedding for item in response.data])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert [item.index for item in response.data] == [0, 1]
        assert response.usage.prompt_tokens == sum(embedder.embed(texts).token_counts)


def test_base64_is_little_endian_float32(corpus_service: RunningService, embedder: Embedder) -> None:
    with corpus_service.client() as client:
        body = client.post("/v1/embeddings", json={"input": "hello", "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, embedder.embed(["hello"]).vectors[0], atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "model_not_found"),
        ({"input": [101, 7592, 102]}, 422, "invalid_request"),
        ({"input": []}, 422, "invalid_request"),
        ({"model": "all-MiniLM-L6-v2"}, 422, "invalid_request"),
        ({"input": "x", "dimensions": 256}, 422, "invalid_request"),
        ({"input": "x", "encoding_format": "int8"}, 422, "invalid_request"),
    ],
)
def test_bad_embedding_requests(
    corpus_service: RunningService, body: dict[str, object], status: int, code: str
) -> None:
    with corpus_service.client() as client:
        assert_error(client.post("/v1/embeddings", json=body), status, code)


def test_input_limits(service_factory: Callable[..., RunningService]) -> None:
    service = service_factory(max_inputs_per_request=2, max_input_chars=10)
    with service.client() as client:
        assert_error(client.post("/v1/embeddings", json={"input": ["a", "b", "c"]}), 413, "too_many_inputs")
        assert_error(client.post("/v1/embeddings", json={"input": "x" * 11}), 413, "input_too_long")
        assert client.post("/v1/embeddings", json={"input": ["a", "b"]}).status_code == 200


# --- errors, health, OpenAPI --------------------------------------------------------------------


def test_errors_have_one_shape_and_keep_the_gateways_request_id(corpus_service: RunningService) -> None:
    with corpus_service.client() as client:
        assert_error(client.get("/nope"), 404, "not_found")
        assert_error(client.get("/v1/embeddings"), 405, "method_not_allowed")
        malformed = client.post("/v1/rag/query", content=b"{not json", headers={"content-type": "application/json"})
        assert_error(malformed, 422, "invalid_request")
        kept = client.post("/v1/rag/query", json={}, headers={"x-request-id": "req-abc-123"})
        assert assert_error(kept, 422, "invalid_request")["request_id"] == "req-abc-123"
        replaced = client.post("/v1/rag/query", json={}, headers={"x-request-id": "bad\x7fid"})
        assert assert_error(replaced, 422, "invalid_request")["request_id"] != "bad\x7fid"


def test_health_readiness_and_openapi(corpus_service: RunningService) -> None:
    with corpus_service.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["dimensions"] == 384
        paths = client.get("/openapi.json").json()["paths"]
        assert {
            "/v1/embeddings",
            "/v1/rag/documents",
            "/v1/rag/documents/{document_id}",
            "/v1/rag/query",
            "/healthz",
            "/readyz",
        } <= set(paths)
        assert "401" in paths["/v1/rag/query"]["post"]["responses"]


def test_metrics_count_requests_by_route_template_not_by_path(corpus_service: RunningService) -> None:
    with corpus_service.client() as client:
        for name in ("one", "two", "three"):
            assert client.get(f"/v1/rag/documents/{name}").status_code in (401, 404)
        assert client.get("/no/such/path").status_code == 404
        assert client.request("BREW", "/healthz").status_code == 405
        text = client.get("/metrics").text
    route = "/v1/rag/documents/{document_id}"
    counted = [line for line in text.splitlines() if line.startswith("python_ml_requests_total{")]
    assert any(f'route="{route}"' in line and 'method="GET"' in line for line in counted), counted
    assert not any("one" in line or "/no/such/path" in line for line in counted), counted
    assert any('route="unmatched"' in line and 'status="404"' in line for line in counted), counted
    assert f'python_ml_request_duration_seconds_count{{route="{route}"}}' in text
    assert not any("BREW" in line for line in counted) and any('method="OTHER"' in line for line in counted)


def test_not_ready_when_the_model_cannot_load(service_factory: Callable[..., RunningService], tmp_path: object) -> None:
    service = service_factory(wait_ready=False, model_dir=str(tmp_path))
    with service.client() as client:
        for _ in range(100):
            response = client.get("/readyz")
            if response.json()["error"]["code"] == "model_unavailable":
                break
        assert_error(response, 503, "model_unavailable")
        assert_error(client.post("/v1/embeddings", json={"input": "x"}), 503, "model_unavailable")
        assert client.get("/healthz").status_code == 200


# --- RAG ----------------------------------------------------------------------------------------


def test_query_answers_with_cited_sources(corpus_service: RunningService) -> None:
    with corpus_service.client() as client:
        body = client.post("/v1/rag/query", json={"question": "What is the tallest volcano on Mars?"}).json()
    assert body["generator"] == "extractive"
    assert "Olympus Mons" in body["answer"] and "[1]" in body["answer"]
    top = body["sources"][0]
    assert top["number"] == 1 and top["document_id"] == "solar-system"
    assert top["metadata"] == {"title": "The planets of the solar system", "category": "science", "year": 2019}
    assert [s["score"] for s in body["sources"]] == sorted((s["score"] for s in body["sources"]), reverse=True)
    assert len(body["sources"]) == 5
    assert body["timing"]["total_ms"] >= body["timing"]["retrieval_ms"] > 0


def test_metadata_filters_restrict_the_search(corpus_service: RunningService) -> None:
    with corpus_service.client() as client:
        food = client.post(
            "/v1/rag/query", json={"question": "How does caching work?", "filters": {"category": "food"}, "top_k": 10}
        ).json()
        assert food["sources"] and {s["metadata"]["category"] for s in food["sources"]} == {"food"}
        either = client.post(
            "/v1/rag/query",
            json={"question": "temperature", "filters": {"category": ["food", "science"]}, "top_k": 50},
        ).json()
        assert {s["metadata"]["category"] for s in either["sources"]} == {"food", "science"}
        nothing = client.post("/v1/rag/query", json={"question": "x", "filters": {"category": "poetry"}}).json()
        assert nothing["sources"] == [] and "do not contain" in nothing["answer"]


def test_streaming_sends_tokens_then_sources_then_done(corpus_service: RunningService) -> None:
    question = {"question": "Why do leaves look green?"}
    with corpus_service.client() as client:
        plain = client.post("/v1/rag/query", json=question).json()
        with client.stream("POST", "/v1/rag/query", json={**question, "stream": True}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = parse_events(response.iter_lines())
    names = [name for name, _ in events]
    assert names[-2:] == ["sources", "done"] and set(names[:-2]) == {"token"}
    assert "".join(data["text"] for name, data in events if name == "token") == plain["answer"]
    assert events[-2][1]["sources"] == plain["sources"]
    assert events[-1][1]["generator"] == "extractive"


def parse_events(lines: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """Server-sent events as (event name, JSON data) pairs."""
    events: list[tuple[str, dict[str, Any]]] = []
    name = "message"
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line[5:])))
    return events


def test_empty_corpus_is_a_clear_error(service_factory: Callable[..., RunningService]) -> None:
    with service_factory().client() as client:
        assert_error(client.post("/v1/rag/query", json={"question": "anything?"}), 409, "empty_corpus")


def test_reingesting_unchanged_text_does_not_embed_again(service_factory: Callable[..., RunningService]) -> None:
    paragraphs = [f"Paragraph {i} talks about topic number {i} in some detail. " * 6 for i in range(6)]
    document = {"id": "doc", "text": "\n\n".join(paragraphs), "metadata": {"v": 1}}
    with service_factory().client() as client:
        first = client.post("/v1/rag/documents", json={"documents": [document]}).json()
        assert first["chunks"] >= 3 and first["embedded"] == first["chunks"] and first["reused"] == 0

        again = client.post("/v1/rag/documents", json={"documents": [document]}).json()
        assert again["embedded"] == 0 and again["reused"] == first["chunks"]

        # Edit the last paragraph: only the chunks holding it are embedded again.
        edited = {**document, "text": "\n\n".join(paragraphs[:-1] + ["A completely new ending about sourdough."])}
        third = client.post("/v1/rag/documents", json={"documents": [edited]}).json()
        assert 0 < third["embedded"] < third["chunks"]

        # Shrinking the document removes the chunks it no longer has.
        short = {**document, "text": "Only one short paragraph remains.", "metadata": {"v": 2}}
        assert client.post("/v1/rag/documents", json={"documents": [short]}).json()["chunks"] == 1
        result = client.post("/v1/rag/query", json={"question": "topic number 5", "top_k": 10}).json()
        assert [(s["document_id"], s["chunk_index"], s["metadata"]) for s in result["sources"]] == [
            ("doc", 0, {"v": 2})
        ]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"documents": []}, "invalid_request"),
        ({"documents": [{"id": "", "text": "x"}]}, "invalid_request"),
        ({"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, "invalid_request"),
        ({"documents": [{"id": "a", "text": "x"}], "chunking": {"size": 100, "overlap": 100}}, "invalid_request"),
        ({"documents": [{"id": "a", "text": "x", "extra": 1}]}, "invalid_request"),
    ],
)
def test_bad_ingest_requests(corpus_service: RunningService, body: dict[str, object], code: str) -> None:
    with corpus_service.client() as client:
        assert_error(client.post("/v1/rag/documents", json=body), 422, code)


def test_per_request_chunking(service_factory: Callable[..., RunningService]) -> None:
    text = "One sentence here. " * 40
    with service_factory().client() as client:
        body = {"documents": [{"id": "d", "text": text}], "chunking": {"size": 100, "overlap": 20}}
        assert client.post("/v1/rag/documents", json=body).json()["chunks"] >= 8


def test_documents_can_be_read_and_deleted(service_factory: Callable[..., RunningService]) -> None:
    text = "First sentence of the handbook. " * 10 + "\n\n" + "Second part of it. " * 10
    document = {"id": "team/handbook 7", "text": text, "metadata": {"team": "infra"}}
    with service_factory().client() as client:
        stored = client.post("/v1/rag/documents", json={"documents": [document]}).json()
        # Ids may hold slashes and spaces; the path takes them percent-encoded or not.
        got = client.get("/v1/rag/documents/team/handbook%207").json()
        assert got["id"] == "team/handbook 7" and got["metadata"] == {"team": "infra"}
        assert [c["chunk_index"] for c in got["chunks"]] == list(range(stored["chunks"]))
        assert all(text[c["start"] : c["end"]] == c["text"] for c in got["chunks"])

        assert client.delete("/v1/rag/documents/team%2Fhandbook%207").json() == {
            "id": "team/handbook 7",
            "chunks": stored["chunks"],
        }
        assert_error(client.get("/v1/rag/documents/team/handbook%207"), 404, "document_not_found")
        assert_error(client.delete("/v1/rag/documents/team/handbook%207"), 404, "document_not_found")
        assert_error(client.get("/v1/rag/documents/" + "x" * 257), 422, "invalid_request")
