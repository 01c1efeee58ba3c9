"""The semantic-cache filter in our proxy and in Envoy 1.40, with the same expectations, against a
scripted chat upstream and python-ml's real index (the real model): an exact repeat and a paraphrase
are answered from cache, a near-identical question from another tenant and a follow-up in another
conversation are not, a streamed miss is assembled, stored and replayed as SSE, errors and partial
streams are never stored, clients can opt out, and hostile requests cost nothing but themselves."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from harness.chat_upstream import ANSWER, ChatUpstream, start_chat_upstream
from harness.envoy import CONFIG_DIR, free_port, start_envoy_bootstrap
from harness.gateway import built_filter, start_gateway
from harness.python_ml_service import start_python_ml

TOKEN = "semantic-cache-test-token"
CONFIG: dict[str, Any] = {
    # The tests stand in for the auth filter with this header.
    "tenant_header": "x-team",
    "index": {"cluster": "index", "token": TOKEN, "timeout_ms": 5000, "min_similarity": 0.9},
}
CAPITAL = "What is the capital of France?"
PARAPHRASE = "what is the capital city of France?"


@dataclass
class Proxy:
    kind: str
    url: str
    upstream: ChatUpstream


@pytest.fixture(scope="module")
def index_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """python-ml serving the index, shared by both proxies (each test's tenants are the proxy's own)."""
    port = free_port()
    log = tmp_path_factory.mktemp("python-ml") / "python-ml.log"
    process = start_python_ml(port, log, env={"PYML_SEMANTIC_CACHE_TOKEN": TOKEN})
    yield port
    process.terminate()
    process.wait(timeout=15)


def start_proxy(kind: str, config: dict[str, Any], upstream: ChatUpstream, index_port: int, work: Path) -> Any:  # noqa: ANN401 - Envoy or our gateway
    wasm = built_filter("semantic_cache_filter")
    if kind == "envoy":
        values = {
            "UPSTREAM_PORT": str(upstream.port),
            "INDEX_PORT": str(index_port),
            "WASM_PATH": json.dumps(str(wasm.resolve())),
            "PLUGIN_CONFIG": json.dumps(json.dumps(config)),
            "PLUGIN_NAME": json.dumps("semantic-cache"),
        }
        envoy = start_envoy_bootstrap(CONFIG_DIR / "semantic-cache.yaml", values, work_dir=work)
        return envoy, f"http://127.0.0.1:{envoy.listen_port}"
    gateway = start_gateway(
        {
            "filter_chains": [
                {"name": "ai", "filters": [{"name": "semantic-cache", "wasm": str(wasm), "configuration": config}]}
            ],
            "routes": [{"name": "chat", "match": {"path": {"prefix": "/"}}, "cluster": "llm", "filter_chain": "ai"}],
            "clusters": [
                {"name": "llm", "endpoints": [f"127.0.0.1:{upstream.port}"]},
                {"name": "index", "endpoints": [f"127.0.0.1:{index_port}"]},
            ],
        },
        work,
    )
    return gateway, gateway.url


@pytest.fixture(scope="module", params=["proxy", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, index_port: int) -> Iterator[Proxy]:
    upstream = start_chat_upstream()
    server, url = start_proxy(request.param, CONFIG, upstream, index_port, tmp_path_factory.mktemp(request.param))
    yield Proxy(request.param, url, upstream)
    server.stop()
    upstream.shutdown()


@pytest.fixture(autouse=True)
def scripted_as_usual(proxy: Proxy) -> None:
    proxy.upstream.fail_with = None
    proxy.upstream.cut_stream = False


def ask(
    proxy: Proxy,
    team: str | None,
    *messages: str,
    stream: bool = False,
    headers: dict[str, str] | None = None,
    **body: Any,  # noqa: ANN401 - request fields
) -> requests.Response:
    """Asks `messages` (alternately user and assistant turns, the last the user's) as `team` (a
    tenant of this proxy's own)."""
    roles = ["user", "assistant"]
    turns = [{"role": roles[n % 2], "content": text} for n, text in enumerate(messages)]
    payload = {"model": "m", "messages": turns, "stream": stream, **body}
    sent = {**(headers or {})}
    if team is not None:
        sent["x-team"] = f"{proxy.kind}-{team}"
    return requests.post(f"{proxy.url}/v1/chat/completions", json=payload, headers=sent, timeout=15)


def upstream_calls(proxy: Proxy) -> int:
    return len(proxy.upstream.received)


def content(response: requests.Response) -> str:
    """The answer's text, from JSON or from the events of a stream."""
    if response.headers["content-type"].startswith("text/event-stream"):
        text = ""
        for line in response.text.splitlines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["delta"].get("content") or ""
        return text
    return str(response.json()["choices"][0]["message"]["content"])


def test_an_exact_repeat_is_answered_from_cache(proxy: Proxy) -> None:
    first = ask(proxy, "exact", "How many legs does a spider have?")
    assert (first.status_code, first.headers["x-cache"]) == (200, "MISS"), first.text
    calls = upstream_calls(proxy)
    again = ask(proxy, "exact", "How many legs does a spider have?")
    assert (again.status_code, again.headers["x-cache"]) == (200, "HIT")
    assert again.headers["x-cache-similarity"] == "1.0000"
    assert content(again) == "".join(ANSWER)
    assert again.json()["usage"]["total_tokens"] == 30, "the original answer's usage"
    assert upstream_calls(proxy) == calls, "a hit never reaches the upstream"


def test_a_paraphrase_is_a_semantic_hit_and_another_tenant_never_shares_it(proxy: Proxy) -> None:
    assert ask(proxy, "acme", CAPITAL).headers["x-cache"] == "MISS"
    calls = upstream_calls(proxy)
    similar = ask(proxy, "acme", PARAPHRASE)
    assert similar.headers["x-cache"] == "HIT", similar.text
    assert 0.9 <= float(similar.headers["x-cache-similarity"]) < 1
    assert upstream_calls(proxy) == calls
    # The paraphrase, and the question itself, from other tenants: misses answered by the upstream.
    assert ask(proxy, "globex", PARAPHRASE).headers["x-cache"] == "MISS"
    assert ask(proxy, "initech", CAPITAL).headers["x-cache"] == "MISS"
    assert upstream_calls(proxy) == calls + 2
    # A different model is another partition too.
    assert ask(proxy, "acme", CAPITAL, model="other-model").headers["x-cache"] == "MISS"


def test_a_follow_up_only_hits_in_its_own_conversation(proxy: Proxy) -> None:
    revenue = ("What was the revenue in 2020?", "Revenue in 2020 was 5 million.", "and in 2021?")
    staff = ("How many employees were there in 2020?", "There were 300 employees.", "and in 2021?")
    assert ask(proxy, "follow", *revenue).headers["x-cache"] == "MISS"
    assert ask(proxy, "follow", *staff).headers["x-cache"] == "MISS"
    assert ask(proxy, "follow", *revenue).headers["x-cache"] == "HIT"


def test_a_streamed_miss_is_stored_whole_and_replayed_as_events(proxy: Proxy) -> None:
    miss = ask(proxy, "stream", "Name a primary colour.", stream=True, stream_options={"include_usage": True})
    assert miss.headers["x-cache"] == "MISS" and content(miss) == "".join(ANSWER)
    calls = upstream_calls(proxy)
    replay = ask(proxy, "stream", "Name a primary colour.", stream=True, stream_options={"include_usage": True})
    assert replay.headers["x-cache"] == "HIT"
    assert replay.headers["content-type"].startswith("text/event-stream")
    events = [line for line in replay.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and '"usage"' in events[-2]
    assert content(replay) == "".join(ANSWER)
    assert json.loads(events[0][6:])["model"] == "m", "the request's model when the stream named none"
    # The stored answer serves a plain request too.
    plain = ask(proxy, "stream", "Name a primary colour.")
    assert plain.headers["x-cache"] == "HIT" and content(plain) == "".join(ANSWER)
    assert upstream_calls(proxy) == calls


def test_a_body_that_arrives_in_pieces_reaches_the_upstream_whole(proxy: Proxy) -> None:
    """The filter holds the body until its end; the upstream still gets all of it, framed by
    content-length or chunked."""
    question = "Summarise this: " + "lorem ipsum " * 12_000
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": question}]}).encode()
    headers = {"x-team": f"{proxy.kind}-pieces", "content-type": "application/json"}
    url = f"{proxy.url}/v1/chat/completions"
    sized = requests.post(url, data=body, headers=headers, timeout=15)
    assert (sized.status_code, sized.headers["x-cache"]) == (200, "MISS"), sized.text
    assert proxy.upstream.received[-1]["messages"][0]["content"] == question
    pieces = (body[i : i + 4096] for i in range(0, len(body), 4096))
    chunked = requests.post(url, data=pieces, headers=headers, timeout=15)
    assert (chunked.status_code, chunked.headers["x-cache"]) == (200, "HIT"), chunked.text


def read_response(sock: socket.socket) -> dict[str, str]:
    """One HTTP/1.1 response with a content-length from `sock`: its status and lowercase headers."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    return {"status": status_line.split()[1], **headers}


def test_a_hit_keeps_the_clients_connection_open(proxy: Proxy) -> None:
    """A hit is decided from the whole body; the client's next request still goes on the same
    connection (as in Envoy), so a cache hit costs no new connection."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Is this connection kept?"}]})
    host = proxy.url.removeprefix("http://")
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\nx-team: {proxy.kind}-keepalive\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()
    address, port = host.rsplit(":", 1)
    with socket.create_connection((address, int(port)), timeout=10) as sock:
        for expected in ("MISS", "HIT", "HIT"):
            sock.sendall(request)
            response = read_response(sock)
            assert (response["status"], response["x-cache"]) == ("200", expected)
            assert response.get("connection", "keep-alive").lower() != "close"


def test_a_client_waiting_for_100_continue_is_answered(proxy: Proxy) -> None:
    """A client that holds its body back until `100 Continue` is not left waiting for it."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Do you continue?"}]})
    host = proxy.url.removeprefix("http://")
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\nx-team: {proxy.kind}-continue\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nexpect: 100-continue\r\n\r\n"
    )
    address, port = host.rsplit(":", 1)
    with socket.create_connection((address, int(port)), timeout=3) as sock:
        sock.sendall(head.encode())
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body.encode())
        response = read_response(sock)
    assert (response["status"], response.get("x-cache")) == ("200", "MISS"), response


def test_errors_and_partial_streams_are_never_stored(proxy: Proxy) -> None:
    proxy.upstream.fail_with = 503
    assert ask(proxy, "errors", "Is the service up?").status_code == 503
    proxy.upstream.fail_with = None
    proxy.upstream.cut_stream = True
    cut = ask(proxy, "errors", "Tell me a long story.", stream=True)
    assert cut.headers["x-cache"] == "MISS"
    proxy.upstream.cut_stream = False
    for question, stream in (("Is the service up?", False), ("Tell me a long story.", True)):
        fresh = ask(proxy, "errors", question, stream=stream)
        assert fresh.headers["x-cache"] == "MISS", question
        assert content(fresh) == "".join(ANSWER)


def test_clients_can_opt_out(proxy: Proxy) -> None:
    question = "What colour is the sky?"
    assert ask(proxy, "optout", question).headers["x-cache"] == "MISS"
    calls = upstream_calls(proxy)
    fresh = ask(proxy, "optout", question, headers={"cache-control": "no-cache"})
    assert fresh.headers["x-cache"] == "BYPASS" and upstream_calls(proxy) == calls + 1
    unstored = ask(proxy, "optout", "A question nobody keeps?", headers={"cache-control": "no-store"})
    assert unstored.headers["x-cache"] == "BYPASS"
    assert ask(proxy, "optout", "A question nobody keeps?").headers["x-cache"] == "MISS"


def test_hostile_requests_bypass_the_cache_and_traffic_keeps_flowing(proxy: Proxy) -> None:
    url = f"{proxy.url}/v1/chat/completions"
    team = {"x-team": f"{proxy.kind}-hostile"}
    for body in (
        b"not json",
        b"[]",
        b'{"messages": 7}',
        b'{"messages": [{"role": "user", "content": [1]}]}',
        b"\xff\xfe",
    ):
        response = requests.post(url, data=body, headers=team, timeout=15)
        assert response.headers["x-cache"] == "BYPASS", body
    deep = b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert requests.post(url, data=deep, headers=team, timeout=15).headers["x-cache"] == "BYPASS"
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * 300_000}]})
    assert requests.post(url, data=huge, headers=team, timeout=15).headers["x-cache"] == "BYPASS"
    # No verified caller: nothing to partition by, so nothing is shared.
    assert ask(proxy, None, CAPITAL).headers["x-cache"] == "BYPASS"
    assert ask(proxy, "hostile", "Still serving?").headers["x-cache"] == "MISS"
    assert ask(proxy, "hostile", "Still serving?").headers["x-cache"] == "HIT"


def test_an_index_that_fails_costs_only_the_semantic_look_up(proxy: Proxy, tmp_path: Path) -> None:
    """With the index unreachable, questions go upstream as misses and exact repeats still hit."""
    config = {**CONFIG, "index": {**CONFIG["index"], "timeout_ms": 500}}
    server, url = start_proxy(proxy.kind, config, proxy.upstream, free_port(), tmp_path)
    try:
        broken = Proxy(proxy.kind, url, proxy.upstream)
        assert ask(broken, "noindex", CAPITAL).headers["x-cache"] == "MISS"
        assert ask(broken, "noindex", PARAPHRASE).headers["x-cache"] == "MISS"
        assert ask(broken, "noindex", CAPITAL).headers["x-cache"] == "HIT"
    finally:
        server.stop()
