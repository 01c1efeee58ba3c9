"""Hostile requests: chunking bombs, oversized metadata and bodies. Each is refused with 413 (or 422)
before it costs anything, and the service answers a benign ingest and query right after."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping

import httpx
import pytest
from conftest import RunningService
from python_ml.embedding import Embeddings
from test_api import assert_error

BENIGN = {"id": "benign", "text": "Sourdough bread rises because wild yeast makes gas."}


def assert_still_serves(client: httpx.Client) -> None:
    """A benign ingest and query work."""
    ingested = client.post("/v1/rag/documents", json={"documents": [BENIGN]})
    assert ingested.status_code == 200, ingested.text
    answer = client.post("/v1/rag/query", json={"question": "Why does sourdough rise?"})
    assert answer.status_code == 200, answer.text
    assert "wild yeast" in answer.json()["answer"]


def ingest(client: httpx.Client, *documents: Mapping[str, object], **extra: object) -> httpx.Response:
    return client.post("/v1/rag/documents", json={"documents": list(documents), **extra})


# --- chunking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "overlap"), [(50, 49), (50, 26), (1000, 501)])
def test_chunks_must_move_on_by_half_their_size(
    service_factory: Callable[..., RunningService], size: int, overlap: int
) -> None:
    with service_factory().client() as client:
        refused = ingest(client, {"id": "bomb", "text": "x " * 5000}, chunking={"size": size, "overlap": overlap})
        assert "at most half of size" in assert_error(refused, 422, "invalid_request")["message"]
        allowed = ingest(client, {"id": "ok", "text": "x " * 100}, chunking={"size": size, "overlap": size // 2})
        assert allowed.status_code == 200, allowed.text
        assert_still_serves(client)


@pytest.fixture
def model_calls(monkeypatch: pytest.MonkeyPatch) -> Callable[[RunningService], list[int]]:
    """Records the number of texts in every call a service makes to its (real) model."""

    def watch(service: RunningService) -> list[int]:
        calls: list[int] = []
        rag = service.state.rag
        assert rag is not None
        embedder, embed = rag.embedder, rag.embedder.embed

        def counted(texts: list[str]) -> Embeddings:
            calls.append(len(texts))
            return embed(texts)

        monkeypatch.setattr(embedder, "embed", counted)
        return calls

    return watch


def test_a_chunk_bomb_is_refused_before_any_work(
    service_factory: Callable[..., RunningService], model_calls: Callable[[RunningService], list[int]]
) -> None:
    # A megabyte at size 50, overlap 25: about 40,000 chunks, half an hour of model time here.
    bomb = {"id": "bomb", "text": "word " * 200_000}
    service = service_factory()
    calls = model_calls(service)
    with service.client() as client:
        refused = ingest(client, bomb, chunking={"size": 50, "overlap": 25})
        message = assert_error(refused, 413, "too_many_chunks")["message"]
        assert "about 39999 chunks" in message and "2000 per document" in message, message
        assert calls == []
        assert_error(client.get("/v1/rag/documents/bomb"), 404, "document_not_found")
        assert_still_serves(client)
        assert calls, "the benign ingest and query went through the watched model"


def test_the_chunks_of_all_documents_are_capped_together(service_factory: Callable[..., RunningService]) -> None:
    documents = [{"id": f"d{i}", "text": "Some words here. " * 30} for i in range(4)]
    with service_factory(max_chunks_per_document=20, max_chunks_per_request=30).client() as client:
        message = assert_error(
            ingest(client, *documents, chunking={"size": 100, "overlap": 50}), 413, "too_many_chunks"
        )["message"]
        assert "about 40 chunks" in message and "30 per request" in message, message
        for i in range(4):
            assert_error(client.get(f"/v1/rag/documents/d{i}"), 404, "document_not_found")
        # Split at sentences, each of these makes 14 chunks, not the 10 estimated: two fit.
        assert ingest(client, *documents[:2], chunking={"size": 100, "overlap": 50}).json()["chunks"] == 28
        assert_still_serves(client)


def test_the_exact_count_is_capped_when_sentences_make_more_chunks_than_estimated(
    service_factory: Callable[..., RunningService], model_calls: Callable[[RunningService], list[int]]
) -> None:
    # 15 sentences of 53 characters: 809 characters, 9 full chunks of 100, but a chunk holds one
    # sentence, so 15.
    text = " ".join(f"Sentence number {i:02d} is padded to be over half a chunk." for i in range(15))
    service = service_factory(max_chunks_per_document=10)
    calls = model_calls(service)
    with service.client() as client:
        refused = ingest(client, {"id": "long", "text": text}, chunking={"size": 100, "overlap": 0})
        message = assert_error(refused, 413, "too_many_chunks")["message"]
        assert "would make 15 chunks, more than 10 per document" in message, message
        assert calls == []
        assert_error(client.get("/v1/rag/documents/long"), 404, "document_not_found")
        assert_still_serves(client)


# --- metadata -----------------------------------------------------------------------------------


def nested(levels: int) -> dict[str, object]:
    """Metadata whose objects nest `levels` deep (the metadata object itself is level 1)."""
    value: dict[str, object] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"child": value}
    return value


def test_oversized_metadata_is_refused(service_factory: Callable[..., RunningService]) -> None:
    with service_factory().client() as client:
        # 8 KiB of JSON allowed, one more byte not: the caps count compact UTF-8 JSON.
        fits = {"blob": "é" * 4090 + "x"}
        over = {"blob": fits["blob"] + "x"}
        assert len(json.dumps(fits, ensure_ascii=False, separators=(",", ":")).encode()) == 8192
        assert ingest(client, {"id": "fits", "text": "Fine.", "metadata": fits}).status_code == 200
        message = assert_error(
            ingest(client, {"id": "over", "text": "Fine.", "metadata": over}), 413, "metadata_too_large"
        )["message"]
        assert "8193 bytes" in message and "8192 bytes" in message, message

        assert ingest(client, {"id": "deep", "text": "Fine.", "metadata": nested(4)}).status_code == 200
        for levels in (5, 900):
            message = assert_error(
                ingest(client, {"id": "deeper", "text": "Fine.", "metadata": nested(levels)}), 413, "metadata_too_large"
            )["message"]
            assert "deeper than 4 levels" in message, message
        deep_list = {"tags": [[[["x"]]]]}
        assert_error(ingest(client, {"id": "list", "text": "Fine.", "metadata": deep_list}), 413, "metadata_too_large")
        assert_error(client.get("/v1/rag/documents/over"), 404, "document_not_found")
        assert_still_serves(client)


# --- request bodies -----------------------------------------------------------------------------


CAP = 64 * 1024


def json_body(text_length: int) -> bytes:
    return json.dumps({"documents": [{"id": "big", "text": "a" * text_length}]}).encode()


def test_an_oversized_declared_body_is_refused_unread(service_factory: Callable[..., RunningService]) -> None:
    with service_factory(max_body_bytes=CAP).client() as client:
        headers = {"content-type": "application/json"}
        at_cap = json_body(CAP - len(json_body(0)))
        assert len(at_cap) == CAP
        assert client.post("/v1/rag/documents", content=at_cap, headers=headers).status_code == 200
        for path in ("/v1/rag/documents", "/v1/embeddings", "/v1/rag/query"):
            refused = client.post(path, content=at_cap + b" ", headers=headers)
            assert f"larger than {CAP} bytes" in assert_error(refused, 413, "body_too_large")["message"]
        # Far over the cap: the service answers without reading the rest.
        huge = client.post("/v1/rag/documents", content=b"x" * (64 * 1024 * 1024), headers=headers)
        assert_error(huge, 413, "body_too_large")
        assert_still_serves(client)


def test_an_oversized_chunked_body_is_refused_as_it_streams(service_factory: Callable[..., RunningService]) -> None:
    def chunks(body: bytes, endless: bool = False) -> Iterator[bytes]:
        # A generator has no length: httpx sends it with `transfer-encoding: chunked`.
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]
        while endless:
            yield b" " * 4096

    with service_factory(max_body_bytes=CAP).client() as client:
        headers = {"content-type": "application/json"}
        fits = client.post("/v1/rag/documents", content=chunks(json_body(CAP - 200)), headers=headers)
        assert fits.status_code == 200, fits.text
        refused = client.post("/v1/rag/documents", content=chunks(json_body(CAP)), headers=headers)
        assert f"larger than {CAP} bytes" in assert_error(refused, 413, "body_too_large")["message"]
        # A body that never ends is answered too: the service stops reading at the cap.
        endless = client.post("/v1/rag/documents", content=chunks(b"", endless=True), headers=headers)
        assert_error(endless, 413, "body_too_large")
        assert_still_serves(client)
