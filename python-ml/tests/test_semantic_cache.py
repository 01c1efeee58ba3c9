"""`POST /v1/semantic-cache/lookup`: the gateway's semantic cache index over the real model. A
paraphrase finds its predecessor in the same partition and nothing across partitions; an unmatched
question is indexed; entries expire; only the token holder may call; hostile bodies are refused."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import RunningService
from python_ml import semantic_index
from test_api import assert_error

TOKEN = "gateway-semantic-cache-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def digest(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
def index_service(service_factory: Callable[..., RunningService]) -> RunningService:
    return service_factory(semantic_cache_token=TOKEN)


def look_up(client: httpx.Client, partition: int, key: int, text: str, **extra: Any) -> httpx.Response:  # noqa: ANN401 - body fields
    body = {
        "partition": digest(partition),
        "key": digest(key),
        "text": text,
        "min_similarity": 0.9,
        "ttl_seconds": 60,
        **extra,
    }
    return client.post("/v1/semantic-cache/lookup", json=body, headers=AUTH)


def test_a_paraphrase_finds_its_predecessor_in_its_partition_only(index_service: RunningService) -> None:
    with index_service.client() as client:
        first = look_up(client, 1, 10, "What is the capital of France?")
        assert first.json() == {"matches": [], "indexed": True}
        paraphrase = look_up(client, 1, 11, "what is the capital city of France?").json()
        assert [m["key"] for m in paraphrase["matches"]] == [digest(10)]
        assert 0.9 <= paraphrase["matches"][0]["similarity"] <= 1 and paraphrase["indexed"] is False
        # The same question in another partition (another tenant) finds nothing, and is indexed there.
        assert look_up(client, 2, 12, "What is the capital of France?").json() == {"matches": [], "indexed": True}
        # A different question in the same partition is not similar enough.
        assert look_up(client, 1, 13, "What is the capital of Germany?").json()["matches"] == []


def test_entries_expire_with_their_ttl(index_service: RunningService, monkeypatch: pytest.MonkeyPatch) -> None:
    with index_service.client() as client:
        look_up(client, 3, 20, "How do I reset my password?", ttl_seconds=1)
        assert look_up(client, 3, 21, "How do I reset my password?").json()["matches"][0]["key"] == digest(20)
        time.sleep(1.1)
        monkeypatch.setattr(semantic_index, "PURGE_PERIOD_SECONDS", 0.0)
        assert look_up(client, 3, 22, "How do I reset my password?").json() == {"matches": [], "indexed": True}


def test_a_full_index_stops_indexing(service_factory: Callable[..., RunningService]) -> None:
    service = service_factory(semantic_cache_token=TOKEN, semantic_cache_max_entries=1)
    with service.client() as client:
        assert look_up(client, 4, 30, "first question about billing").json()["indexed"] is True
        assert look_up(client, 4, 31, "a completely unrelated thing about gardening").json() == {
            "matches": [],
            "indexed": False,
        }


def test_only_the_gateway_may_call(
    index_service: RunningService, service_factory: Callable[..., RunningService]
) -> None:
    body = {"partition": digest(1), "key": digest(1), "text": "q", "min_similarity": 0.9, "ttl_seconds": 60}
    with index_service.client() as client:
        for headers in ({}, {"authorization": "Bearer wrong-token-wrong-token"}, {"authorization": TOKEN}):
            assert_error(client.post("/v1/semantic-cache/lookup", json=body, headers=headers), 401, "invalid_token")
    with service_factory().client() as client:
        assert_error(client.post("/v1/semantic-cache/lookup", json=body, headers=AUTH), 404, "not_found")


def test_hostile_bodies_are_refused_and_the_index_keeps_serving(index_service: RunningService) -> None:
    good = {"partition": digest(5), "key": digest(5), "text": "q", "min_similarity": 0.9, "ttl_seconds": 60}
    with index_service.client() as client:
        for change in (
            {"partition": "tenant-a"},
            {"key": "../../etc"},
            {"text": ""},
            {"min_similarity": 0},
            {"min_similarity": 1.5},
            {"limit": 1000},
            {"ttl_seconds": 10**9},
            {"extra": 1},
        ):
            response = client.post("/v1/semantic-cache/lookup", json={**good, **change}, headers=AUTH)
            assert_error(response, 422, "invalid_request")
        huge = client.post("/v1/semantic-cache/lookup", json={**good, "text": "x" * 200_000}, headers=AUTH)
        assert_error(huge, 413, "input_too_long")
        garbage = client.post("/v1/semantic-cache/lookup", content=b"\xff\xfe{", headers=AUTH)
        assert_error(garbage, 422, "invalid_request")
        assert client.post("/v1/semantic-cache/lookup", json=good, headers=AUTH).status_code == 200
