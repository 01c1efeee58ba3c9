"""Our proxy running proxy-wasm filter chains: the auth filter, chain order, body phases and
failure policies. The same `.wasm` files and plugin configuration run in Envoy (see
test_envoy_auth.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from harness.echo_upstream import EchoServer
from harness.gateway import (
    DEMO_KEY,
    Gateway,
    GatewayStartError,
    auth_filter,
    built_filter,
    cluster,
    start_gateway,
)


def probe_filter(mode: str, name: str = "probe") -> dict[str, Any]:
    """The host's ABI probe filter in one of its modes."""
    return {"name": name, "wasm": str(built_filter("abi_probe_filter")), "configuration": mode}


def with_chain(upstream: EchoServer, *filters: dict[str, Any]) -> dict[str, Any]:
    """One catch-all route through a chain of `filters` to `upstream`."""
    return {
        "filter_chains": [{"name": "chain", "filters": list(filters)}],
        "routes": [{"name": "all", "cluster": "app", "filter_chain": "chain"}],
        "clusters": [cluster("app", upstream)],
    }


def test_auth_filter_runs_unchanged_with_envoys_configuration(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    proxy = gateway(with_chain(upstreams("app"), auth_filter()))

    missing = requests.get(proxy.url + "/v1/x", headers={"x-request-id": "r-401"}, timeout=5)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert missing.json()["error"]["request_id"] == "r-401"
    assert missing.headers["www-authenticate"].startswith("ApiKey")

    forged = {"x-api-key": DEMO_KEY, "x-gateway-identity": "admin"}
    allowed = requests.get(proxy.url + "/v1/x", headers=forged, timeout=5)
    assert allowed.status_code == 200
    seen = allowed.json()["headers"]
    assert seen["x-gateway-identity"] == "demo-user"
    assert "x-api-key" not in seen, "hide_credentials strips the key"

    wrong = requests.get(proxy.url + "/v1/x", headers={"x-api-key": "nope"}, timeout=5)
    assert wrong.status_code == 401


def test_filters_run_in_chain_order(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    app = upstreams("app")
    auth_first = gateway(with_chain(app, auth_filter(), probe_filter("local-reply")))
    assert requests.get(auth_first.url + "/", timeout=5).status_code == 401
    with_key = requests.get(auth_first.url + "/", headers={"x-api-key": DEMO_KEY}, timeout=5)
    # As in Envoy, the local reply passes through the chain's response callbacks ("<…!").
    assert (with_key.status_code, with_key.text) == (418, "<short and stout!")

    probe_first = gateway(with_chain(app, probe_filter("local-reply"), auth_filter()))
    assert requests.get(probe_first.url + "/", timeout=5).status_code == 418


def test_filters_rewrite_headers_and_buffer_bodies(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    proxy = gateway(with_chain(upstreams("app"), probe_filter("headers")))
    response = requests.post(proxy.url + "/echo", data=b"quiet words", timeout=5)
    assert response.status_code == 200
    # The probe buffers the whole response body, then wraps it in "<" and "!".
    assert response.text.startswith("<{") and response.text.endswith("}!")
    echoed = json.loads(response.text[1:-1])
    assert echoed["path"] == "/probed/echo"
    assert echoed["headers"]["x-probe"] == "1"
    assert echoed["headers"]["x-prop-method"] == "POST"
    assert echoed["body"] == "QUIET WORDS", "the request body was buffered and rewritten"
    assert response.headers["x-prop-code"] == "200"


@pytest.mark.parametrize(
    ("policy", "panic_status", "after_status"),
    # `reload` is the older name of fail_closed; every policy replaces the broken VM.
    [("fail_closed", 503, 200), ("fail_open", 200, 200), ("reload", 503, 200)],
)
def test_failure_policies(
    gateway: Callable[[dict[str, Any]], Gateway],
    upstreams: Callable[..., EchoServer],
    policy: str,
    panic_status: int,
    after_status: int,
) -> None:
    misbehaving = {
        "name": "misbehaving",
        "wasm": str(built_filter("misbehaving_filter")),
        "failure_policy": policy,
    }
    # A failed VM is per worker thread, as in Envoy; one worker makes every request meet it.
    proxy = gateway({**with_chain(upstreams("app"), misbehaving), "server": {"threads": 1}})
    assert requests.get(proxy.url + "/fine", timeout=5).status_code == 200

    panic = requests.get(proxy.url + "/panic", timeout=5)
    assert panic.status_code == panic_status
    if panic_status == 503:
        assert panic.json()["error"]["code"] == "filter_failed"

    after = requests.get(proxy.url + "/fine", timeout=5)
    assert after.status_code == after_status, after.text
    assert "x-vm-id" in after.json()["headers"], "the filter ran again, on a fresh VM"
    metrics = requests.get(proxy.admin_url + "/metrics", timeout=5).text
    assert 'wasm_filter_traps_total{plugin="misbehaving"} 1' in metrics
    assert 'wasm_filter_vm_restarts_total{plugin="misbehaving"} 1' in metrics


def test_a_filter_refusing_its_configuration_stops_the_start(
    tmp_path: Path, upstreams: Callable[..., EchoServer]
) -> None:
    refusing = {
        "name": "misbehaving",
        "wasm": str(built_filter("misbehaving_filter")),
        "configuration": "refuse",
    }
    with pytest.raises(GatewayStartError) as refused:
        start_gateway(with_chain(upstreams("app"), refusing), tmp_path)
    assert "filter_chains[0].filters[0]" in refused.value.log
    assert "misbehaving" in refused.value.log


def test_filter_callouts_reach_the_proxys_clusters(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    app, authz = upstreams("app"), upstreams("authz")
    config = with_chain(app, probe_filter("callout"))
    config["clusters"].append(cluster("authz", authz))
    proxy = gateway(config)

    response = requests.get(proxy.url + "/check?user=7", timeout=5)
    assert response.status_code == 200, response.text
    # The probe paused the request, called cluster "authz" and put its answer in a header (and
    # wraps every response body in "<" and "!").
    echoed = json.loads(response.text[1:-1])
    callout = json.loads(echoed["headers"]["x-callout"])
    assert callout["upstream"] == "authz"
    assert callout["path"] == "/check?user=7"

    unknown = requests.get(proxy.url + "/unknown-cluster", timeout=5)
    assert unknown.status_code == 500
    assert unknown.headers["x-dispatch"] == "BadArgument"
