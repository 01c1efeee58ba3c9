"""The ai-tokens filter in our proxy and in Envoy 1.40, with the same expectations: a request's
estimate is reserved before it goes upstream, the reported usage settles it (plain and streamed),
a streamed request is made to ask for its usage, a failed upstream refunds, a broken stream is
counted from its text, and a request over budget is a 429 with OpenAI's headers."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h2.connection
import h2.events
import pytest
import requests
from harness.chat_upstream import ChatUpstream, start_chat_upstream
from harness.envoy import free_port, start_envoy
from harness.gateway import built_filter, start_gateway

BUDGET = 1000
CONFIG = {
    "budgets": [{"name": "per-team", "key": {"header": "x-team"}, "tokens": BUDGET, "per": "day"}],
    "default_max_tokens": 300,
    # Below the hosts' own body limits (Envoy buffers 1 MiB by default), so the filter answers.
    "max_request_body_bytes": 65536,
    "stop_streams_over_budget": True,
    # The tests stand in for the auth filter's identity with the team header.
    "identity_header": "x-team",
}


@dataclass
class Proxy:
    kind: str
    url: str
    upstream: ChatUpstream
    metrics_url: str


@pytest.fixture(scope="module", params=["proxy", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    upstream = start_chat_upstream()
    wasm = built_filter("ai_tokens_filter")
    work = tmp_path_factory.mktemp(request.param)
    if request.param == "envoy":
        envoy = start_envoy(
            wasm=wasm,
            plugin_config=json.dumps(CONFIG),
            plugin_name="ai-tokens",
            upstream_port=upstream.port,
            work_dir=work,
        )
        metrics = f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus"
        yield Proxy("envoy", f"http://127.0.0.1:{envoy.listen_port}", upstream, metrics)
        envoy.stop()
    else:
        port = free_port()
        gateway = start_gateway(
            {
                # h2c too, for the trailers case.
                "listeners": [{"name": "public", "address": f"127.0.0.1:{port}", "h2c": True}],
                "filter_chains": [
                    {"name": "ai", "filters": [{"name": "ai-tokens", "wasm": str(wasm), "configuration": CONFIG}]}
                ],
                "routes": [
                    {"name": "chat", "match": {"path": {"prefix": "/"}}, "cluster": "llm", "filter_chain": "ai"}
                ],
                "clusters": [{"name": "llm", "endpoints": [f"127.0.0.1:{upstream.port}"]}],
            },
            work,
        )
        yield Proxy("proxy", gateway.url, upstream, f"{gateway.admin_url}/metrics")
        gateway.stop()
    upstream.shutdown()


@pytest.fixture(autouse=True)
def scripted_as_usual(proxy: Proxy) -> None:
    """Each test starts from the upstream's default script."""
    proxy.upstream.usage = (20, 10)
    proxy.upstream.fail_with = None
    proxy.upstream.cut_stream = False
    proxy.upstream.long_answer = 0


def chat(proxy: Proxy, team: str, **body: Any) -> requests.Response:  # noqa: ANN401 - request fields
    payload = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}], **body}
    return requests.post(f"{proxy.url}/v1/chat/completions", json=payload, headers={"x-team": team}, timeout=10)


def remaining(response: requests.Response) -> int:
    return int(response.headers["x-ratelimit-remaining-tokens"])


def remaining_once_settled(proxy: Proxy, team: str, expected: int) -> int:
    """The tokens a 114-token request sees left (reported after its reservation), asked until it
    is `expected` or 10 s pass: a request that ended abnormally settles after the client is done
    with it. Each probe's answer reports no usage spent, so the probes leave the budget as it was."""
    usage, proxy.upstream.usage = proxy.upstream.usage, (0, 0)
    try:
        deadline = time.monotonic() + 10
        while (seen := remaining(chat(proxy, team, max_tokens=100))) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return seen
    finally:
        proxy.upstream.usage = usage


def test_the_reported_usage_settles_the_reservation(proxy: Proxy) -> None:
    proxy.upstream.usage = (20, 10)
    first = chat(proxy, "settle", max_tokens=100)
    assert first.status_code == 200, first.text
    # Reserved: the prompt estimate (40 chars / 4 + 4 per message = 14) and max_tokens 100.
    assert remaining(first) == BUDGET - 114
    assert first.headers["x-ratelimit-limit-tokens"] == str(BUDGET)
    assert first.headers["x-ratelimit-reset-tokens"].endswith("s")
    # Settled at its usage, 30, before the client had the answer: 84 of its 114 came back.
    assert remaining(chat(proxy, "settle", max_tokens=100)) == BUDGET - 30 - 114


def test_a_stream_is_made_to_report_its_usage_and_settled_from_it(proxy: Proxy) -> None:
    proxy.upstream.usage = (50, 5)
    with requests.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers={"x-team": "stream"},
        stream=True,
        timeout=10,
    ) as streamed:
        assert streamed.status_code == 200
        events = [line for line in streamed.iter_lines(decode_unicode=True) if line.startswith("data:")]
    assert events[-1] == "data: [DONE]"
    assert '"usage"' in events[-2], "the usage chunk reached the client too"
    sent = proxy.upstream.received[-1]
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["max_completion_tokens"] == CONFIG["default_max_tokens"], "capped at what was reserved"
    assert remaining(chat(proxy, "stream", max_tokens=100)) == BUDGET - 55 - 114


def test_a_request_over_budget_is_refused_with_openais_headers(proxy: Proxy) -> None:
    proxy.upstream.usage = (20, 10)
    sent = len(proxy.upstream.received)
    refused = chat(proxy, "big", max_tokens=BUDGET)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "token_budget_exceeded" and "per-team" in error["message"]
    assert "retry-after" not in refused.headers, "more than a whole window never fits"
    assert refused.headers["x-ratelimit-remaining-tokens"] == str(BUDGET)
    # Its headers went on before its body was priced; its body never did.
    assert len(proxy.upstream.received) == sent, "a refused request's body never reached the model"
    # Nothing was reserved by the refusal: a request that fits still goes.
    assert chat(proxy, "big", max_tokens=100).status_code == 200
    proxy.upstream.usage = (0, 0)
    chat(proxy, "full", max_tokens=BUDGET - 14)  # reserves the whole window, then spends nothing...
    proxy.upstream.usage = (BUDGET - 100, 0)
    chat(proxy, "full", max_tokens=BUDGET - 14)  # ...then nearly all of it
    later = chat(proxy, "full", max_tokens=100)
    assert later.status_code == 429 and 0 < int(later.headers["retry-after"]) <= 86_400


@pytest.mark.parametrize("status", [503, 400, 429])
def test_an_unsuccessful_answer_refunds_the_reservation(proxy: Proxy, status: int) -> None:
    team = f"refund-{status}"
    proxy.upstream.fail_with = status
    try:
        failed = chat(proxy, team, max_tokens=500)
        assert failed.status_code == status
    finally:
        proxy.upstream.fail_with = None
    assert remaining_once_settled(proxy, team, BUDGET - 114) == BUDGET - 114, "the 514 came back"


def test_a_broken_stream_is_counted_from_its_text(proxy: Proxy) -> None:
    proxy.upstream.cut_stream = True
    try:
        with requests.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 500},
            headers={"x-team": "cut"},
            stream=True,
            timeout=10,
        ) as streamed:
            list(streamed.iter_lines())
    except requests.RequestException:
        pass  # the upstream closed mid-stream; what the client sees is the proxy's business
    finally:
        proxy.upstream.cut_stream = False
    # Settled at the prompt estimate (2 chars -> 1, +4) and "Hello" (5 chars -> 2), not 505.
    assert remaining_once_settled(proxy, "cut", BUDGET - 7 - 114) == BUDGET - 7 - 114


def test_a_stream_that_outgrows_its_budget_is_stopped_with_an_error_event(proxy: Proxy) -> None:
    """A model that ignores the limit: the stream grows its reservation while the budget covers
    it, then the client gets an error event and the end mark, and the stream ends cleanly."""
    proxy.upstream.long_answer = 2000  # " word" x 2000: about 2,500 estimated tokens
    proxy.upstream.usage = (5, 2500)
    with requests.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 10},
        headers={"x-team": "stop"},
        stream=True,
        timeout=30,
    ) as streamed:
        assert streamed.status_code == 200
        data = [line[5:].strip() for line in streamed.iter_lines(decode_unicode=True) if line.startswith("data:")]
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1, data[-3:]
    error = json.loads(data[-2])["error"]
    assert error["code"] == "token_budget_exceeded"
    words = sum(json.loads(d)["choices"][0]["delta"].get("content", "").count("word") for d in data[:-2])
    assert 0 < words < 2000, "some text came through, not all of it"
    # What the model really used was charged: the budget is spent.
    assert chat(proxy, "stop", max_tokens=10).status_code == 429


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "invalid_request"),
        (b"[1, 2]", 400, "invalid_request"),
        (b"x" * 100_000, 413, "body_too_large"),
    ],
)
def test_hostile_bodies_are_refused_and_traffic_goes_on(proxy: Proxy, body: bytes, status: int, code: str) -> None:
    response = requests.post(
        f"{proxy.url}/v1/chat/completions",
        data=body,
        headers={"x-team": "hostile", "content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert chat(proxy, "hostile", max_tokens=10).status_code == 200


def test_a_large_body_in_pieces_is_rewritten_and_reaches_the_upstream_whole(proxy: Proxy) -> None:
    """The filter holds the body until its end (it arrives in many reads) and rewrites it; the
    upstream gets all of it."""
    # Large in bytes (whitespace JSON allows), small in tokens, so it fits the budget.
    content = "x" * 40
    body = (
        '{"model": "m",' + " " * 50_000 + json.dumps({"messages": [{"role": "user", "content": content}]})[1:]
    ).encode()
    headers = {"x-team": "large", "content-type": "application/json"}
    url = f"{proxy.url}/v1/chat/completions"
    for data in (body, (body[i : i + 4096] for i in range(0, len(body), 4096))):
        response = requests.post(url, data=data, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        sent = proxy.upstream.received[-1]
        assert sent["messages"][0]["content"] == content
        assert sent["max_completion_tokens"] == CONFIG["default_max_tokens"]


def series(proxy: Proxy, name: str, **labels: str) -> float:
    """The value of counter `name` with `labels` in the proxy's Prometheus output (`wasm_…` in
    ours; Envoy drops its `wasmcustom` namespace there); 0 while absent."""
    pattern = re.compile(rf"^(?:wasm_)?{name}\{{(.*)\}} (\S+)$")
    for line in requests.get(proxy.metrics_url, timeout=5).text.splitlines():
        match = pattern.match(line)
        if match and all(f'{label}="{value}"' in match.group(1) for label, value in labels.items()):
            return float(match.group(2))
    return 0.0


def test_usage_is_counted_per_identity_and_model(proxy: Proxy) -> None:
    proxy.upstream.usage = (20, 10)
    for _ in range(2):
        assert chat(proxy, "metered", max_tokens=10, model="gpt-metered").status_code == 200
    assert series(proxy, "ai_tokens_prompt_tokens", identity="metered", model="gpt-metered") == 40
    assert series(proxy, "ai_tokens_completion_tokens", identity="metered", model="gpt-metered") == 20
    # A label value a client chose cannot break out of its label.
    assert chat(proxy, "metered", max_tokens=10, model='m"} 1\nforged{x="').status_code == 200
    assert series(proxy, "ai_tokens_prompt_tokens", identity="metered", model="m___1_forged_x__") == 20
    assert series(proxy, "forged") == 0


def h2_post_with_trailers(port: int, body: bytes) -> int:
    """An HTTP/2 (prior knowledge) POST whose body ends with trailers instead of an end-of-stream
    data frame; the response status."""
    connection = h2.connection.H2Connection()
    connection.initiate_connection()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stream = connection.get_next_available_stream_id()
        connection.send_headers(
            stream,
            [
                (":method", "POST"),
                (":path", "/v1/chat/completions"),
                (":scheme", "http"),
                (":authority", f"127.0.0.1:{port}"),
                ("content-type", "application/json"),
                ("x-team", "trailers"),
            ],
        )
        connection.send_data(stream, body)
        connection.send_headers(stream, [("x-checksum", "1")], end_stream=True)
        sock.sendall(connection.data_to_send())
        status = 0
        while True:
            data = sock.recv(65536)
            if not data:
                return status
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return status
            sock.sendall(connection.data_to_send())


def test_a_body_ending_in_trailers_is_not_let_through_unpriced(proxy: Proxy) -> None:
    sent = len(proxy.upstream.received)
    body = json.dumps({"model": "m", "max_tokens": BUDGET * 10, "messages": [{"role": "user", "content": "hi"}]})
    assert h2_post_with_trailers(int(proxy.url.rsplit(":", 1)[1]), body.encode()) in (400, 429)
    assert len(proxy.upstream.received) == sent
    assert chat(proxy, "trailers", max_tokens=10).status_code == 200
