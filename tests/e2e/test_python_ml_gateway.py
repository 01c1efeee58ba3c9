"""python-ml behind our proxy, as it is deployed: the auth and rate-limit filters in front, the
service (a real uvicorn process with the real model) behind. The service authenticates nobody
itself; it scopes documents to the tenant the gateway signed for (`identity_signature`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import requests
from harness.envoy import free_port
from harness.gateway import DEMO_KEY, REPO, Gateway, auth_filter, built_filter
from harness.gateway_identity import SIGNING_KEY_ENV, TEST_SIGNING_KEY
from harness.python_ml_service import start_python_ml

KEY = {"x-api-key": DEMO_KEY}


@pytest.fixture(scope="module")
def python_ml(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """python-ml on a free port, with an in-memory store and the offline generator."""
    port = free_port()
    log = tmp_path_factory.mktemp("python-ml") / "service.log"
    process = start_python_ml(port, log, signing_key=TEST_SIGNING_KEY)
    yield port
    process.terminate()
    process.wait(timeout=15)


@pytest.fixture
def ml_gateway(gateway: Callable[[dict[str, Any]], Gateway], python_ml: int) -> Gateway:
    rate_limit = {
        "name": "rate-limit",
        "wasm": str(built_filter("rate_limit_filter")),
        "configuration": json.dumps(
            {"limits": [{"name": "per-identity", "key": "identity", "requests": 50, "per": "second"}]}
        ),
    }
    return gateway(
        {
            "filter_chains": [{"name": "ml", "filters": [auth_filter(), rate_limit]}],
            "routes": [{"name": "ml", "match": {"path": {"prefix": "/v1/"}}, "cluster": "ml", "filter_chain": "ml"}],
            "clusters": [ml_cluster(python_ml)],
        }
    )


def ml_cluster(port: int) -> dict[str, Any]:
    """python-ml, with the identity headers signed for it."""
    return {"name": "ml", "endpoints": [f"127.0.0.1:{port}"], "identity_signature": {"key_env": SIGNING_KEY_ENV}}


def test_the_gateway_authenticates_before_the_model_is_reached(ml_gateway: Gateway) -> None:
    refused = requests.post(ml_gateway.url + "/v1/embeddings", json={"input": "hi"}, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"

    client = openai.OpenAI(base_url=ml_gateway.url + "/v1", api_key="unused", default_headers=KEY, max_retries=0)
    response = client.embeddings.create(model="all-MiniLM-L6-v2", input=["through the gateway", "second"])
    assert [len(item.embedding) for item in response.data] == [384, 384]


def test_ingest_and_query_through_the_gateway(ml_gateway: Gateway) -> None:
    documents = [
        {
            "id": "espresso",
            "text": (REPO / "python-ml" / "corpus" / "espresso.md").read_text(),
            "metadata": {"k": "food"},
        },
        {"id": "tcp", "text": (REPO / "python-ml" / "corpus" / "tcp.md").read_text(), "metadata": {"k": "net"}},
    ]
    ingested = requests.post(
        ml_gateway.url + "/v1/rag/documents", json={"documents": documents}, headers=KEY, timeout=30
    )
    assert ingested.status_code == 200, ingested.text
    assert ingested.json()["chunks"] >= 4

    answer = requests.post(
        ml_gateway.url + "/v1/rag/query", json={"question": "Why is my espresso sour?"}, headers=KEY, timeout=30
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["sources"][0]["document_id"] == "espresso" and "[1]" in body["answer"]
    assert answer.headers["x-ratelimit-limit"] == "50"

    # The service's errors carry the request id the gateway assigned.
    bad = requests.post(
        ml_gateway.url + "/v1/rag/query", json={"top_k": 0}, headers={**KEY, "x-request-id": "e2e-ml-1"}, timeout=10
    )
    assert bad.status_code == 422
    error = bad.json()["error"]
    assert (error["code"], error["request_id"]) == ("invalid_request", "e2e-ml-1")


def test_streamed_answers_pass_through_the_gateway(ml_gateway: Gateway) -> None:
    documents = [{"id": "tcp", "text": (REPO / "python-ml" / "corpus" / "tcp.md").read_text()}]
    requests.post(ml_gateway.url + "/v1/rag/documents", json={"documents": documents}, headers=KEY, timeout=30)
    with requests.post(
        ml_gateway.url + "/v1/rag/query",
        json={"question": "How does a TCP connection begin?", "stream": True},
        headers=KEY,
        stream=True,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        names = [line[6:].strip() for line in response.iter_lines(decode_unicode=True) if line.startswith("event:")]
    assert names[0] == "token" and names[-2:] == ["sources", "done"]


def test_chat_completions_through_the_gateway_with_openais_client(ml_gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=ml_gateway.url + "/v1", api_key="unused", default_headers=KEY, max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "How long does an espresso shot take?"}]
    plain = client.chat.completions.create(model="any", messages=messages)
    assert plain.choices[0].message.content and plain.usage is not None and plain.usage.total_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="any", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content, "the stream passes through whole"
    assert chunks[-1].usage == plain.usage


def test_tenants_see_only_their_own_documents(gateway: Callable[[dict[str, Any]], Gateway], python_ml: int) -> None:
    keys = [
        {"identity": "ann", "key": "k-acme", "tenant": "acme"},
        {"identity": "bob", "key": "k-globex", "tenant": "globex"},
        # Not ASCII: signed as the bytes sent, as python-ml verifies them.
        {"identity": "zoë", "key": "k-zurich", "tenant": "zürich"},
    ]
    auth = {"name": "auth", "wasm": str(built_filter("auth_filter")), "configuration": {"api_key": {"keys": keys}}}
    proxy = gateway(
        {
            "filter_chains": [{"name": "ml", "filters": [auth]}],
            "routes": [{"name": "ml", "match": {"path": {"prefix": "/v1/"}}, "cluster": "ml", "filter_chain": "ml"}],
            "clusters": [ml_cluster(python_ml)],
        }
    )
    acme, globex = {"x-api-key": "k-acme"}, {"x-api-key": "k-globex"}
    document = {"id": "plan", "text": "Acme's secret plan is to sell espresso machines on the moon."}
    stored = requests.post(proxy.url + "/v1/rag/documents", json={"documents": [document]}, headers=acme, timeout=30)
    assert stored.status_code == 200, stored.text
    assert requests.get(proxy.url + "/v1/rag/documents/plan", headers=acme, timeout=10).status_code == 200
    other = requests.get(proxy.url + "/v1/rag/documents/plan", headers=globex, timeout=10)
    assert other.status_code == 404, other.text
    assert requests.delete(proxy.url + "/v1/rag/documents/plan", headers=globex, timeout=10).status_code == 404
    # Forged identity headers are stripped by the gateway; sent directly, they carry no signature.
    forged = {**globex, "x-gateway-tenant": "acme"}
    assert requests.get(proxy.url + "/v1/rag/documents/plan", headers=forged, timeout=10).status_code == 404
    direct = requests.get(
        f"http://127.0.0.1:{python_ml}/v1/rag/documents/plan", headers={"x-gateway-tenant": "acme"}, timeout=10
    )
    assert (direct.status_code, direct.json()["error"]["code"]) == (401, "untrusted_caller")
    assert requests.get(proxy.url + "/v1/rag/documents/plan", headers=acme, timeout=10).status_code == 200
    zurich = {"x-api-key": "k-zurich"}
    own = requests.post(proxy.url + "/v1/rag/documents", json={"documents": [document]}, headers=zurich, timeout=30)
    assert own.status_code == 200, own.text
    assert requests.get(proxy.url + "/v1/rag/documents/plan", headers=zurich, timeout=10).status_code == 200
