"""sandbox-host behind our proxy: the auth and rate-limit filters apply to code execution (issue 8)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from harness.gateway import Gateway, built_filter, start_gateway
from harness.gateway_identity import SIGNING_KEY_ENV
from harness.sandbox_host import SandboxHost, start_sandbox

AUTH = {
    "api_key": {
        "keys": [
            {"identity": "analyst", "key": "k-analyst", "scopes": ["sandbox:dataset:demo"]},
            {"identity": "intern", "key": "k-intern"},
        ]
    }
}
RATE_LIMIT = {"limits": [{"name": "executions", "key": "identity", "requests": 5, "per": "minute"}]}
READ_DATASET = {
    "language": "python",
    "code": "print(open('/data/demo/cities.csv').read().splitlines()[2])",
    "capabilities": {"datasets": [{"name": "demo"}]},
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxHost]:
    """The service, reachable directly only by the gateway."""
    host = start_sandbox(tmp_path_factory.mktemp("sandbox"))
    yield host
    host.stop()


@pytest.fixture
def gateway(tmp_path: Path, sandbox: SandboxHost) -> Iterator[Gateway]:
    """Our proxy with auth and rate-limit in front of the sandbox (a fresh limit per test)."""
    filters = [
        {"name": "auth", "wasm": str(built_filter("auth_filter")), "configuration": AUTH},
        {"name": "rate-limit", "wasm": str(built_filter("rate_limit_filter")), "configuration": RATE_LIMIT},
    ]
    config = {
        "filter_chains": [{"name": "sandbox", "filters": filters}],
        "routes": [
            {"name": "sandbox", "match": {"path": {"prefix": "/v1/"}}, "cluster": "sandbox", "filter_chain": "sandbox"}
        ],
        "clusters": [
            {
                "name": "sandbox",
                "endpoints": [f"127.0.0.1:{sandbox.port}"],
                "timeouts": {"read": "60s"},
                "identity_signature": {"key_env": SIGNING_KEY_ENV},
            }
        ],
    }
    proxy = start_gateway(config, tmp_path)
    yield proxy
    proxy.stop()


def execute(gateway: Gateway, body: dict[str, object], headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{gateway.url}/v1/executions", json=body, headers=headers, timeout=60)


def test_code_runs_through_the_gateway_with_a_key_and_not_without(gateway: Gateway) -> None:
    body = {"language": "python", "code": "print('via gateway')"}
    refused = execute(gateway, body, {})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "missing_api_key"
    response = execute(gateway, body, {"x-api-key": "k-intern"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["outcome"], result["stdout"]) == ("ok", "via gateway\n")
    assert result["request_id"] == response.headers["x-request-id"], "one request id end to end"


def test_dataset_access_follows_the_scopes_the_auth_filter_verified(gateway: Gateway) -> None:
    assert execute(gateway, READ_DATASET, {"x-api-key": "k-analyst"}).json()["stdout"] == "Porto,232000\n"
    # A client cannot grant itself a scope: the auth filter strips client-sent identity headers.
    forged = {"x-api-key": "k-intern", "x-gateway-scopes": "sandbox:dataset:demo", "x-gateway-identity": "analyst"}
    refused = execute(gateway, READ_DATASET, forged)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"


def test_the_rate_limit_applies_to_executions(gateway: Gateway) -> None:
    body = {"language": "javascript", "code": "console.log(1)"}
    statuses = [execute(gateway, body, {"x-api-key": "k-intern"}).status_code for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2
    assert execute(gateway, body, {"x-api-key": "k-analyst"}).status_code == 200, "limits are per identity"
