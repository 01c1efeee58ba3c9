"""`make run` as a newcomer meets it: the real command, its ports, and the README quick start's
calls through the gateway to python-ml (ingest, ask plain and streamed, embed with the official
`openai` client), to sandbox-host (run code), then the cache hit, the rate limit, and the metrics
of the three services that the Grafana dashboard (deploy/grafana) queries."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest
import requests
from harness.gateway import DEMO_KEY, REPO
from python_ml.v1 import embeddings_pb2, embeddings_pb2_grpc, rag_pb2, rag_pb2_grpc

GATEWAY = "http://127.0.0.1:10000"
ADMIN = "http://127.0.0.1:9901"
ML = "http://127.0.0.1:8100"
ML_GRPC = "http://127.0.0.1:8101"
SANDBOX = "http://127.0.0.1:8090"
KEY = {"x-api-key": DEMO_KEY}


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`make run` in its own process group, once python-ml answers through the gateway; its output
    goes to a log that a failure quotes."""
    for url in (GATEWAY, ADMIN, ML, ML_GRPC, SANDBOX):
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is in use: stop what holds it"
    log = tmp_path_factory.mktemp("make-run") / "make-run.log"
    # The offline answer writer, whatever provider key the environment holds: no network.
    env = {k: v for k, v in os.environ.items() if k not in {"ANTHROPIC_API_KEY", "OPENAI_API_KEY"}}
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=REPO,
            env={**env, "PYML_GENERATOR": "extractive"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # The first run may still build; then python-ml loads its model and sandbox-host its
        # interpreters. Ready means the gateway's health checks see both services up.
        deadline = time.monotonic() + 600
        while not services_healthy():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"make run did not become ready:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def services_healthy() -> bool:
    """Whether python-ml (its model loaded) and sandbox-host are ready, and the gateway's health
    checks see them up (an endpoint checked while it was still loading is out until checked
    again)."""
    try:
        if not all(requests.get(url + "/readyz", timeout=2).ok for url in (ML, SANDBOX)):
            return False
        clusters = requests.get(ADMIN + "/readyz", timeout=2).json()["clusters"]
    except (requests.RequestException, ValueError):
        return False
    return all(clusters.get(name, {}).get("healthy", 0) >= 1 for name in ("ml", "sandbox", "demo"))


def ask(question: str, **extra: object) -> requests.Response:
    return requests.post(GATEWAY + "/v1/rag/query", json={"question": question, **extra}, headers=KEY, timeout=60)


def test_make_run_prints_the_calls_to_try(make_run: Path) -> None:
    printed = make_run.read_text()
    calls = ("/v1/rag/documents", "/v1/rag/query", "/v1/chat/completions", "/v1/embeddings", "/v1/executions")
    for call in (*calls, "/metrics"):
        assert call in printed, printed


def test_the_quick_start_through_the_gateway(make_run: Path) -> None:
    assert requests.post(GATEWAY + "/v1/rag/query", json={"question": "hi"}, timeout=10).status_code == 401

    text = (REPO / "python-ml" / "corpus" / "espresso.md").read_text()
    ingested = requests.post(
        GATEWAY + "/v1/rag/documents", json={"documents": [{"id": "espresso", "text": text}]}, headers=KEY, timeout=60
    )
    assert ingested.status_code == 200, ingested.text
    assert ingested.json()["chunks"] >= 1

    answer = ask("How long does an espresso shot take to pull?")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["sources"] and body["sources"][0]["document_id"] == "espresso"
    assert body["answer"]

    with requests.post(
        GATEWAY + "/v1/rag/query",
        json={"question": "What pressure does espresso need?", "stream": True},
        headers=KEY,
        stream=True,
        timeout=60,
    ) as streamed:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = [
            line.split(": ", 1)[1] for line in streamed.iter_lines(decode_unicode=True) if line.startswith("event: ")
        ]
    assert events[0] == "token" and events[-1] == "done", events

    client = openai.OpenAI(base_url=GATEWAY + "/v1", api_key="unused", default_headers=KEY, max_retries=0)
    embedded = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a cappuccino", "a flat white"])
    assert [len(item.embedding) for item in embedded.data] == [384, 384]
    chat = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "How long does a shot take?"}]
    )
    assert chat.choices[0].message.content and "[1]" in chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens > 0
    # The README's paraphrase is answered from the semantic cache, and costs no tokens.
    similar = requests.post(
        GATEWAY + "/v1/chat/completions",
        json={"model": "any", "messages": [{"role": "user", "content": "How much time does a shot take?"}]},
        headers=KEY,
        timeout=30,
    )
    assert similar.headers["x-cache"] == "HIT", similar.text
    assert 0.9 <= float(similar.headers["x-cache-similarity"]) < 1
    assert similar.json()["choices"][0]["message"]["content"] == chat.choices[0].message.content
    over = requests.post(
        GATEWAY + "/v1/chat/completions",
        json={"model": "any", "max_tokens": 50000, "messages": [{"role": "user", "content": "Write a novel"}]},
        headers=KEY,
        timeout=30,
    )
    assert over.status_code == 429 and over.json()["error"]["code"] == "token_budget_exceeded", over.text
    assert "retry-after" not in over.headers, "more than a whole window never fits"
    # The refusal reserved nothing; what is gone is the first chat's usage, settled already.
    assert int(over.headers["x-ratelimit-remaining-tokens"]) == 20000 - chat.usage.total_tokens

    run = requests.post(
        GATEWAY + "/v1/executions", json={"language": "python", "code": "print(1+1)"}, headers=KEY, timeout=60
    )
    assert run.status_code == 200, run.text
    assert run.json()["stdout"] == "2\n"
    numpy = requests.post(
        GATEWAY + "/v1/executions",
        json={"language": "python", "code": "import pandas as pd\nprint(pd.Series([1, 2, 3]).sum())"},
        headers=KEY,
        timeout=60,
    )
    assert numpy.json()["stdout"] == "6\n", numpy.text
    # A session through the gateway: owned by the identity the auth filter verified.
    created = requests.post(GATEWAY + "/v1/sessions", headers=KEY, timeout=60)
    assert created.status_code == 201, created.text
    session = GATEWAY + created.headers["location"]
    first = requests.post(
        session + "/executions", json={"code": "import numpy as np\nx = np.arange(10)"}, headers=KEY, timeout=60
    )
    assert first.json()["outcome"] == "ok", first.text
    assert (
        requests.post(session + "/executions", json={"code": "print(x.mean())"}, headers=KEY, timeout=60).json()[
            "stdout"
        ]
        == "4.5\n"
    )
    assert requests.delete(session, headers=KEY, timeout=10).status_code == 204


def test_the_grpc_api_through_the_gateway(make_run: Path) -> None:
    with grpc.insecure_channel("127.0.0.1:10000") as channel:
        metadata = tuple(KEY.items())
        embedded = embeddings_pb2_grpc.EmbeddingsStub(channel).Embed(
            embeddings_pb2.EmbedRequest(inputs=["a cappuccino"]), metadata=metadata, timeout=60
        )
        assert len(embedded.embeddings[0].values) == 384
        rag = rag_pb2_grpc.RagStub(channel)
        document = rag_pb2.Document(id="grpc-espresso", text="Espresso is brewed at about 9 bar of pressure.")
        rag.Ingest(rag_pb2.IngestRequest(documents=[document]), metadata=metadata, timeout=60)
        events = list(rag.Query(rag_pb2.QueryRequest(question="What pressure?"), metadata=metadata, timeout=60))
        assert events[-1].WhichOneof("event") == "done"
        with pytest.raises(grpc.RpcError) as refused:
            rag.Ingest(rag_pb2.IngestRequest(documents=[document]), timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_repeated_question_is_answered_from_the_cache(make_run: Path) -> None:
    question = "Which grind does espresso use?"
    first = ask(question)
    again = ask(question)
    assert first.status_code == again.status_code == 200
    assert again.headers["x-cache"] == "HIT", dict(again.headers)
    assert again.json() == first.json()


def test_the_limit_per_identity_then_the_metrics_the_dashboard_reads(make_run: Path) -> None:
    # The traffic the dashboard's series need, so this test stands alone: a cached answer, a run.
    requests.post(
        GATEWAY + "/v1/rag/documents",
        json={"documents": [{"id": "tea", "text": "Green tea steeps at 80 C."}]},
        headers=KEY,
        timeout=60,
    )
    assert ask("At what temperature does green tea steep?").status_code == 200
    assert ask("At what temperature does green tea steep?").headers["x-cache"] == "HIT"
    requests.post(GATEWAY + "/v1/executions", json={"language": "python", "code": "print(2)"}, headers=KEY, timeout=60)
    responses = [requests.get(GATEWAY + "/hello", headers=KEY, timeout=10) for _ in range(40)]
    refused = [r for r in responses if r.status_code == 429]
    assert refused, [r.status_code for r in responses]
    assert json.loads(refused[0].text)["error"]["code"] == "rate_limited"

    exposed = "\n".join(requests.get(url + "/metrics", timeout=10).text for url in (ADMIN, ML, SANDBOX))
    served = {line.split("{")[0].split(" ")[0] for line in exposed.splitlines() if not line.startswith("#")}
    assert 'route="rag-query"' in exposed and 'route="sandbox-executions"' in exposed
    hits = next(line for line in exposed.splitlines() if line.startswith('wasm_cache_hits_total{plugin="cache"}'))
    assert float(hits.rsplit(" ", 1)[1]) >= 1, hits

    dashboard = json.loads((REPO / "deploy" / "grafana" / "gateway-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"([a-z][a-z0-9_]*)\s*[{\[]", target["expr"])
    }
    assert queried and queried <= served, sorted(queried - served)
