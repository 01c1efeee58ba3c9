"""Shared data in a real Redis Cluster: three primaries on loopback (`redis-server` in cluster mode,
joined by `redis-cli --cluster create`), two of our proxies given only seed nodes.

A limit holds across both proxies; when a primary is killed under load every request is still
answered (none hangs), and a limit whose bucket lives on a surviving primary stays exact."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from harness.echo_upstream import EchoServer
from harness.envoy import free_port
from harness.gateway import Gateway, built_filter, start_gateway
from harness.redis_server import RedisServer, start_redis

RATE_LIMIT = {"limits": [{"name": "global", "key": {"header": "x-caller"}, "requests": 50, "per": "hour"}]}


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Three primaries covering every slot, no replicas."""
    nodes = [
        start_redis(
            tmp_path,
            *("--cluster-enabled", "yes", "--cluster-node-timeout", "1000"),
            # The bus port defaults to the port + 10000, which a free high port cannot have.
            *("--cluster-port", str(free_port())),
            # Slots of a dead primary without a replica are lost; the others keep serving.
            *("--cluster-require-full-coverage", "no"),
        )
        for _ in range(3)
    ]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in nodes), "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    deadline = time.monotonic() + 20
    while not all("cluster_state:ok" in cluster_info(node) for node in nodes):
        assert time.monotonic() < deadline, [cluster_info(node) for node in nodes]
        time.sleep(0.1)
    yield nodes
    for node in nodes:
        node.kill()


def cluster_info(node: RedisServer) -> str:
    result = subprocess.run(
        ["redis-cli", "-p", str(node.port), "cluster", "info"], capture_output=True, text=True, timeout=5
    )
    return result.stdout


def keys_on(node: RedisServer) -> list[str]:
    result = subprocess.run(
        ["redis-cli", "-p", str(node.port), "--raw", "keys", "e2e:*"], capture_output=True, text=True, timeout=5
    )
    return result.stdout.split()


@pytest.fixture
def upstream(upstreams: Callable[..., EchoServer]) -> EchoServer:
    """The echo upstream the proxies front."""
    return upstreams("app")


@pytest.fixture
def proxies(tmp_path: Path, redis_cluster: list[RedisServer], upstream: EchoServer) -> Iterator[list[Gateway]]:
    """Two proxies that know the cluster only by its first node."""
    config = {
        "shared_data": {
            "backend": "redis",
            "redis": {
                "cluster_nodes": [f"redis://127.0.0.1:{redis_cluster[0].port}"],
                "key_prefix": "e2e:",
                "on_unavailable": "fail_open",
                "min_reconnect_backoff": "50ms",
                "max_reconnect_backoff": "500ms",
            },
        },
        "filter_chains": [
            {
                "name": "limited",
                "filters": [
                    {"name": "rate-limit", "wasm": str(built_filter("rate_limit_filter")), "configuration": RATE_LIMIT}
                ],
            }
        ],
        "routes": [{"name": "main", "cluster": "app", "filter_chain": "limited"}],
        "clusters": [{"name": "app", "endpoints": [f"127.0.0.1:{upstream.server_address[1]}"]}],
    }
    started = [start_gateway(config, tmp_path) for _ in range(2)]
    yield started
    for proxy in started:
        proxy.stop()


def burst(targets: list[Gateway], caller: str, count: int) -> list[int]:
    """`count` concurrent requests from `caller`, spread over `targets`; their statuses."""

    def call(i: int) -> int:
        target = targets[i % len(targets)]
        return requests.get(f"{target.url}/work", headers={"x-caller": caller}, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(call, range(count)))


def test_a_limit_holds_across_proxies_and_survives_a_primary_killed_under_load(
    redis_cluster: list[RedisServer], proxies: list[Gateway]
) -> None:
    # The first request creates the bucket (proxy-wasm has no create-if-absent); then every take
    # is a compare-and-swap on the node that owns the bucket's slot.
    assert burst(proxies[:1], "alice", 1) == [200]
    statuses = burst(proxies, "alice", 199)
    assert statuses.count(200) == 49, "one limit across both proxies, kept in the cluster"
    assert statuses.count(429) == 150

    owner = next(node for node in redis_cluster if any("alice" in key for key in keys_on(node)))
    victim = next(node for node in redis_cluster if node is not owner)

    # Load from another caller while a primary that does not hold alice's bucket dies.
    answered: list[int] = []
    failures: list[Exception] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                # A request stuck on the dead node would time out here, and count as a failure.
                response = requests.get(f"{proxies[0].url}/work", headers={"x-caller": "bob"}, timeout=10)
            except requests.RequestException as error:
                failures.append(error)
            else:
                answered.append(response.status_code)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    victim.kill()
    time.sleep(2)
    stop.set()
    for worker in workers:
        worker.join(timeout=30)
    assert not failures, failures[:3]
    # fail_open: calls for the dead node's slots use process-local state; nothing is refused.
    assert answered and set(answered) <= {200, 429}, answered[-20:]

    # alice's bucket lives on a surviving primary: her limit is still exact and still spent.
    assert burst(proxies, "alice", 20) == [429] * 20
