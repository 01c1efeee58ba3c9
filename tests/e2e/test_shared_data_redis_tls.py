"""Shared data over TLS to a real `redis-server` (`rediss://`) whose certificate a private CA
signed: with `tls.ca` the proxy connects and the limit is shared; without it the proxy refuses the
unknown certificate, never connects, and keeps serving under `on_unavailable`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from harness.certificates import Authority
from harness.echo_upstream import EchoServer
from harness.envoy import free_port
from harness.gateway import Gateway, built_filter, start_gateway
from harness.redis_server import start_redis

RATE_LIMIT = {"limits": [{"name": "global", "key": {"header": "x-caller"}, "requests": 5, "per": "hour"}]}


@pytest.fixture
def upstream(upstreams: Callable[..., EchoServer]) -> EchoServer:
    """The echo upstream the proxies front."""
    return upstreams("app")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Authority]]:
    """A `redis-server` with TLS on its own port (its plain port only answers the harness's PING)."""
    ca = Authority(tmp_path, "redis-ca")
    server_certificate = ca.issue("localhost", [x509.DNSName("localhost")])
    tls_port = free_port()
    server = start_redis(
        tmp_path,
        *("--tls-port", str(tls_port), "--tls-auth-clients", "no"),
        *("--tls-cert-file", str(server_certificate.certificate), "--tls-key-file", str(server_certificate.key)),
        *("--tls-ca-cert-file", str(ca.bundle)),
    )
    yield tls_port, ca
    server.kill()


def start_proxy(tmp_path: Path, upstream: EchoServer, tls_port: int, tls: dict[str, Any]) -> Gateway:
    return start_gateway(
        {
            "shared_data": {
                "backend": "redis",
                "redis": {
                    "url": f"rediss://localhost:{tls_port}/0",
                    "key_prefix": "tls:",
                    "on_unavailable": "fail_open",
                    "min_reconnect_backoff": "50ms",
                    "max_reconnect_backoff": "200ms",
                    "tls": tls,
                },
            },
            "filter_chains": [
                {
                    "name": "limited",
                    "filters": [
                        {
                            "name": "rate-limit",
                            "wasm": str(built_filter("rate_limit_filter")),
                            "configuration": RATE_LIMIT,
                        }
                    ],
                }
            ],
            "routes": [{"name": "main", "cluster": "app", "filter_chain": "limited"}],
            "clusters": [{"name": "app", "endpoints": [f"127.0.0.1:{upstream.server_address[1]}"]}],
        },
        tmp_path,
    )


def test_a_private_ca_verifies_redis_and_the_limit_is_shared(
    tmp_path: Path, upstream: EchoServer, tls_redis: tuple[int, Authority]
) -> None:
    tls_port, ca = tls_redis
    proxies = [start_proxy(tmp_path, upstream, tls_port, {"ca": str(ca.bundle)}) for _ in range(2)]
    try:
        for proxy in proxies:
            proxy.wait_for_metric("shared_data_redis_connected", 1)
        statuses = [
            requests.get(f"{proxies[i % 2].url}/work", headers={"x-caller": "carol"}, timeout=10).status_code
            for i in range(8)
        ]
        assert statuses == [200] * 5 + [429] * 3, "one limit over TLS, shared by both proxies"
        for proxy in proxies:
            assert proxy.metric("shared_data_fallback_operations_total") == 0
    finally:
        for proxy in proxies:
            proxy.stop()


def test_without_the_ca_the_certificate_is_refused_and_traffic_goes_on(
    tmp_path: Path, upstream: EchoServer, tls_redis: tuple[int, Authority]
) -> None:
    tls_port, _ = tls_redis
    proxy = start_proxy(tmp_path, upstream, tls_port, {})
    try:
        proxy.wait_for_metric("shared_data_redis_connection_errors_total", 1)
        assert proxy.metric("shared_data_redis_connected") == 0
        response = requests.get(f"{proxy.url}/work", headers={"x-caller": "dave"}, timeout=10)
        assert response.status_code == 200, "fail_open: process-local state while Redis is unverified"
    finally:
        proxy.stop()
