"""Cluster-wide state: two of our proxies share one real `redis-server` (issue 6).

A burst spread over both proxies gets exactly the limit; a response cached through one is a HIT
on the other; when Redis is killed mid-test, requests keep flowing under the configured
failure policy, and shared state resumes when Redis returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from harness.echo_upstream import EchoServer
from harness.gateway import Gateway, built_filter, start_gateway
from harness.redis_server import RedisServer, start_redis

API_KEY = "k-shared"
AUTH = {"api_key": {"keys": [{"identity": "svc-shared", "key": API_KEY}]}}
RATE_LIMIT = {
    "limits": [{"name": "global", "key": "identity", "requests": 100, "per": "hour", "path_prefix": "/limited"}]
}
# Identified callers' answers are stored only in their own partition (docs/filters/cache.md).
CACHE = {"rules": [{"path_prefix": "/cached", "ttl_seconds": 60}], "partition_headers": ["x-gateway-identity"]}
# Replicas sit behind one name: the cache key includes the authority, so every request carries it.
HEADERS = {"x-api-key": API_KEY, "host": "api.example.com"}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh `redis-server` for one test."""
    server = start_redis(tmp_path)
    yield server
    server.kill()


@pytest.fixture
def upstream(upstreams: Callable[..., EchoServer]) -> EchoServer:
    """The echo upstream the proxies front."""
    return upstreams("app")


@pytest.fixture
def proxies(tmp_path: Path, redis_server: RedisServer, upstream: EchoServer) -> Iterator[Callable[..., list[Gateway]]]:
    """Starts `count` proxies sharing `redis_server`: `proxies(2, on_unavailable="fail_open")`."""
    started: list[Gateway] = []

    def start(count: int = 2, on_unavailable: str = "fail_open") -> list[Gateway]:
        config = gateway_config(redis_server, upstream, on_unavailable)
        for _ in range(count):
            started.append(start_gateway(config, tmp_path))
        for proxy in started:
            proxy.wait_for_metric("shared_data_redis_connected", 1)
        return started

    yield start
    for proxy in started:
        proxy.stop()


def gateway_config(redis_server: RedisServer, upstream: EchoServer, on_unavailable: str) -> dict[str, Any]:
    filters = [
        ("auth", "auth_filter", AUTH),
        ("rate-limit", "rate_limit_filter", RATE_LIMIT),
        ("cache", "cache_filter", CACHE),
    ]
    return {
        "shared_data": {
            "backend": "redis",
            "redis": {
                "url": redis_server.url,
                "key_prefix": "e2e:",
                "on_unavailable": on_unavailable,
                "min_reconnect_backoff": "50ms",
                "max_reconnect_backoff": "500ms",
                "expiry": {"prefixes": [{"prefix": "cache|", "ttl": "1h"}]},
            },
        },
        "filter_chains": [
            {
                "name": "gateway",
                "filters": [
                    {"name": name, "wasm": str(built_filter(wasm)), "configuration": configuration}
                    for name, wasm, configuration in filters
                ],
            }
        ],
        "routes": [{"name": "main", "match": {"path": {"prefix": "/"}}, "cluster": "app", "filter_chain": "gateway"}],
        "clusters": [{"name": "app", "endpoints": [f"127.0.0.1:{upstream.server_address[1]}"]}],
    }


def burst(targets: list[Gateway], path: str, count: int) -> list[int]:
    """`count` concurrent requests spread round-robin over `targets`; their statuses."""

    def call(i: int) -> int:
        return requests.get(f"{targets[i % len(targets)].url}{path}", headers=HEADERS, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        return list(pool.map(call, range(count)))


def test_two_proxies_enforce_one_global_limit(proxies: Callable[..., list[Gateway]]) -> None:
    both = proxies(2)
    # The first request creates the bucket. proxy-wasm has no create-if-absent, so creators
    # racing on a missing key could each write a full bucket; after that every take is a CAS.
    assert burst(both[:1], "/limited/work", 1) == [200]
    statuses = burst(both, "/limited/work", 999)
    assert statuses.count(200) == 99, "the limit holds across both proxies, not per proxy"
    assert statuses.count(429) == 900
    for proxy in both:
        assert proxy.metric("shared_data_fallback_operations_total") == 0


def test_a_response_cached_by_one_proxy_is_a_hit_on_the_other(proxies: Callable[..., list[Gateway]]) -> None:
    first, second = proxies(2)
    miss = requests.get(f"{first.url}/cached/report", headers=HEADERS, timeout=10)
    hit = requests.get(f"{second.url}/cached/report", headers=HEADERS, timeout=10)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    assert hit.json()["count"] == miss.json()["count"], "the second proxy did not call the upstream"


class Load:
    """Requests in a loop against several proxies from a background thread, recording statuses."""

    def __init__(self, targets: list[Gateway], path: str) -> None:
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(targets, path), daemon=True)
        self._thread.start()

    def _run(self, targets: list[Gateway], path: str) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                response = requests.get(f"{targets[i % len(targets)].url}{path}", headers=HEADERS, timeout=5)
                self.statuses.append(response.status_code)
            except requests.RequestException as error:  # a hung or reset request fails the test
                self.errors.append(repr(error))
            i += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_fail_open_keeps_serving_through_a_redis_outage_and_resumes(
    proxies: Callable[..., list[Gateway]], redis_server: RedisServer
) -> None:
    both = proxies(2, on_unavailable="fail_open")
    load = Load(both, "/cached/live")  # cache lookups read shared data on every request
    time.sleep(0.5)
    redis_server.kill()
    time.sleep(1.5)
    served_during_outage = len(load.statuses)
    redis_server.start()
    for proxy in both:
        proxy.wait_for_metric("shared_data_redis_connected", 1)
    time.sleep(0.5)
    load.stop()
    assert load.errors == [], "no request hung or failed"
    assert set(load.statuses) == {200}, "fail-open: every request was served"
    assert served_during_outage > 0
    for proxy in both:
        assert proxy.metric("shared_data_fallback_operations_total") > 0, "local state was used"
        assert proxy.metric("shared_data_redis_reconnects_total") >= 1
    # State is shared again: Redis restarted empty, and one limit holds across both proxies.
    assert burst(both[:1], "/limited/again", 1) == [200]
    assert burst(both, "/limited/again", 199).count(200) == 99


def test_fail_closed_answers_503_during_a_redis_outage_and_recovers(
    proxies: Callable[..., list[Gateway]], redis_server: RedisServer
) -> None:
    (proxy,) = proxies(1, on_unavailable="fail_closed")
    assert requests.get(f"{proxy.url}/cached/fc", headers=HEADERS, timeout=10).status_code == 200
    redis_server.kill()
    refused = requests.get(f"{proxy.url}/cached/fc", headers={**HEADERS, "x-request-id": "outage-1"}, timeout=10)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "shared_data_unavailable"
    assert refused.json()["error"]["request_id"] == "outage-1"
    assert proxy.metric("shared_data_refused_operations_total") > 0
    redis_server.start()
    proxy.wait_for_metric("shared_data_redis_connected", 1)
    deadline = time.monotonic() + 10
    while requests.get(f"{proxy.url}/cached/fc", headers=HEADERS, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "never recovered after Redis returned"
        time.sleep(0.05)
