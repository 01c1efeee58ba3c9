"""The ai-tokens filter in our proxy and in Envoy 1.40, with the same expectations: a request's
estimate is reserved before it goes upstream, the reported usage settles it (plain and streamed),
a streamed request is made to ask for its usage, a failed upstream refunds, a broken stream is
counted from its text, and a request over budget is a 429 with OpenAI's headers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from harness.chat_upstream import ChatUpstream, start_chat_upstream
from harness.envoy import start_envoy
from harness.gateway import built_filter, start_gateway

BUDGET = 1000
CONFIG = {
    "budgets": [{"name": "per-team", "key": {"header": "x-team"}, "tokens": BUDGET, "per": "day"}],
    "default_max_tokens": 300,
    # Below the hosts' own body limits (Envoy buffers 1 MiB by default), so the filter answers.
    "max_request_body_bytes": 65536,
}


@dataclass
class Proxy:
    kind: str
    url: str
    upstream: ChatUpstream


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
        yield Proxy("envoy", f"http://127.0.0.1:{envoy.listen_port}", upstream)
        envoy.stop()
    else:
        gateway = start_gateway(
            {
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
        yield Proxy("proxy", gateway.url, upstream)
        gateway.stop()
    upstream.shutdown()


def chat(proxy: Proxy, team: str, **body: Any) -> requests.Response:  # noqa: ANN401 - request fields
    payload = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}], **body}
    return requests.post(f"{proxy.url}/v1/chat/completions", json=payload, headers={"x-team": team}, timeout=10)


def remaining(response: requests.Response) -> int:
    return int(response.headers["x-ratelimit-remaining-tokens"])


def test_the_reported_usage_settles_the_reservation(proxy: Proxy) -> None:
    proxy.upstream.usage = (20, 10)
    first = chat(proxy, "settle", max_tokens=100)
    assert first.status_code == 200, first.text
    # Reserved: the prompt estimate (40 chars / 4 + 4 per message = 14) and max_tokens 100.
    assert remaining(first) == BUDGET - 114
    assert first.headers["x-ratelimit-limit-tokens"] == str(BUDGET)
    assert first.headers["x-ratelimit-reset-tokens"].endswith("s")
    second = chat(proxy, "settle", max_tokens=100)
    # The first was settled at its usage, 30: 84 of its 114 came back before the second reserved.
    assert remaining(second) == BUDGET - 30 - 114


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
    assert proxy.upstream.received[-1]["stream_options"] == {"include_usage": True}
    after = chat(proxy, "stream", max_tokens=100)
    assert remaining(after) == BUDGET - 55 - 114


def test_a_request_over_budget_is_refused_with_openais_headers(proxy: Proxy) -> None:
    proxy.upstream.usage = (20, 10)
    sent = len(proxy.upstream.received)
    refused = chat(proxy, "big", max_tokens=BUDGET)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "token_budget_exceeded" and "per-team" in error["message"]
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["x-ratelimit-remaining-tokens"] == str(BUDGET)
    # Its headers went on before its body was priced; its body never did.
    assert len(proxy.upstream.received) == sent, "a refused request's body never reached the model"
    # Nothing was reserved by the refusal: a request that fits still goes.
    assert chat(proxy, "big", max_tokens=100).status_code == 200


def test_a_failed_upstream_refunds_the_reservation(proxy: Proxy) -> None:
    proxy.upstream.fail_with = 503
    try:
        failed = chat(proxy, "refund", max_tokens=500)
        assert failed.status_code == 503
    finally:
        proxy.upstream.fail_with = None
    proxy.upstream.usage = (20, 10)
    after = chat(proxy, "refund", max_tokens=100)
    assert remaining(after) == BUDGET - 114, "the failed request's 514 came back"


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
    after = chat(proxy, "cut", max_tokens=100)
    # Settled at the prompt estimate (2 chars -> 1, +4) and "Hello" (5 chars -> 2), not 505.
    assert remaining(after) == BUDGET - 7 - 114


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
