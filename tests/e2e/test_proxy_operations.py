"""Operating our proxy: `proxy validate`, start-up refusal, admin endpoints, access log, and
graceful shutdown."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from harness.echo_upstream import EchoServer
from harness.gateway import Gateway, GatewayStartError, cluster, run_proxy, start_gateway, write_config


def minimal(upstream: EchoServer) -> dict[str, Any]:
    """One route to one upstream."""
    return {"routes": [{"name": "all", "cluster": "app"}], "clusters": [cluster("app", upstream)]}


def test_validate_accepts_a_good_file_and_names_the_bad_field(
    tmp_path: Path, upstreams: Callable[..., EchoServer]
) -> None:
    config = {"listeners": [{"name": "public", "address": "127.0.0.1:1"}], **minimal(upstreams("app"))}
    good = run_proxy("validate", str(write_config(config, tmp_path)))
    assert good.returncode == 0, good.stderr
    assert "configuration is valid" in good.stdout

    config["clusters"][0]["load_balancing"] = "fastest"
    bad = run_proxy("validate", str(write_config(config, tmp_path)))
    assert bad.returncode == 1
    assert 'clusters[0].load_balancing: unknown policy "fastest"' in bad.stderr

    config["clusters"][0]["load_balancing"] = "round_robin"
    config["routes"][0]["cluster"] = "ghost"
    ghost = run_proxy("validate", str(write_config(config, tmp_path)))
    assert 'routes[0].cluster: no cluster is named "ghost"' in ghost.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"listeners": [{"name": "p", "address": "nowhere"}]}, "listeners[0].address"),
        ({"routes": [{"name": "r", "cluster": "app", "timeout": "soon"}]}, "routes[0].timeout"),
        ({"surprise": True}, "unknown field `surprise`"),
    ],
)
def test_an_invalid_file_is_refused_at_start(
    tmp_path: Path, upstreams: Callable[..., EchoServer], change: dict[str, Any], message: str
) -> None:
    with pytest.raises(GatewayStartError) as refused:
        start_gateway({**minimal(upstreams("app")), **change}, tmp_path)
    assert message in refused.value.log


def test_admin_endpoints_and_access_log(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    proxy = gateway(minimal(upstreams("app")))
    assert requests.get(proxy.admin_url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(proxy.admin_url + "/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["clusters"]["app"] == {"healthy": 1, "endpoints": 1}

    for _ in range(3):
        requests.get(proxy.url + "/x", headers={"x-request-id": "logged-id"}, timeout=5)
    # Metrics are recorded in the logging phase, after the client has its response.
    proxy.wait_for_metric('gateway_requests_total{cluster="app",route="all",status="200"}', 3)
    proxy.wait_for_metric('gateway_request_duration_seconds_count{cluster="app",route="all"}', 3)
    assert proxy.metric('gateway_requests_total{cluster="app",route="all",status="200"}') == 3

    lines = [json.loads(line) for line in proxy.log().splitlines() if '"access_log"' in line]
    entry = next(line for line in lines if line.get("request_id") == "logged-id")
    assert entry["route"] == "all" and entry["cluster"] == "app" and entry["status"] == 200
    assert entry["filters"] == "none" and entry["duration_ms"] > 0


def test_graceful_shutdown_finishes_in_flight_requests(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    config = {**minimal(upstreams("app")), "server": {"shutdown_grace_period": "3s"}}
    proxy = gateway(config)
    results: list[int] = []
    slow = threading.Thread(
        target=lambda: results.append(requests.get(proxy.url + "/?delay_ms=1000", timeout=10).status_code)
    )
    slow.start()
    time.sleep(0.3)
    proxy.process.send_signal(signal.SIGTERM)
    slow.join()
    assert results == [200]
    assert proxy.stop(timeout=15) == 0


def test_admin_metrics_and_config_need_the_bearer_token_when_one_is_set(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "admin-token-0123456789")
    proxy = gateway(
        {
            "admin": {"bearer_token_env": "ADMIN_TOKEN"},
            "routes": [{"name": "all", "cluster": "app"}],
            "clusters": [cluster("app", upstreams("app"))],
        }
    )
    for path in ("/metrics", "/config"):
        for headers in (
            {},
            {"authorization": "Bearer wrong-token-0123456789"},
            {"authorization": "admin-token-0123456789"},
        ):
            refused = requests.get(proxy.admin_url + path, headers=headers, timeout=5)
            assert refused.status_code == 401, (path, headers)
            assert refused.json()["error"]["code"] == "unauthorized"
            assert refused.headers["www-authenticate"].startswith("Bearer")
        granted = requests.get(
            proxy.admin_url + path, headers={"authorization": "Bearer admin-token-0123456789"}, timeout=5
        )
        assert granted.status_code == 200
    for probe in ("/healthz", "/readyz"):
        assert requests.get(proxy.admin_url + probe, timeout=5).status_code == 200


def test_the_upgrade_socket_directory_must_be_private(tmp_path: Path, upstreams: Callable[..., EchoServer]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    config = {
        "server": {"upgrade_socket": str(shared / "upgrade.sock")},
        "routes": [{"name": "all", "cluster": "app"}],
        "clusters": [cluster("app", upstreams("app"))],
    }
    with pytest.raises(GatewayStartError) as refused:
        start_gateway(config, tmp_path)
    assert "server.upgrade_socket" in refused.value.log
    assert "writable by other users" in refused.value.log
