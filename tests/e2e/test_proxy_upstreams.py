"""Our proxy over real sockets: load balancing, health checks, timeouts, retries, streaming."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from harness.echo_upstream import EchoServer, start_echo_upstream
from harness.gateway import Gateway, cluster, free_port, run_proxy, write_config


def served_by(proxy: Gateway, path: str = "/", **headers: str) -> str:
    response = requests.get(proxy.url + path, headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    return str(response.json()["upstream"])


def test_round_robin_spreads_across_two_upstreams(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    proxy = gateway(
        {
            "routes": [{"name": "all", "cluster": "pair"}],
            "clusters": [cluster("pair", upstreams("a"), upstreams("b"))],
        }
    )
    counts = Counter(served_by(proxy) for _ in range(20))
    assert counts == {"a": 10, "b": 10}


def test_consistent_hash_keeps_a_key_on_one_upstream(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    proxy = gateway(
        {
            "routes": [{"name": "all", "cluster": "pair"}],
            "clusters": [
                cluster(
                    "pair",
                    upstreams("a"),
                    upstreams("b"),
                    load_balancing={"consistent_hash": {"header": "x-user"}},
                )
            ],
        }
    )
    owners = {f"user-{i}": served_by(proxy, **{"x-user": f"user-{i}"}) for i in range(20)}
    assert set(owners.values()) == {"a", "b"}, "keys spread over both upstreams"
    for user, owner in owners.items():
        assert served_by(proxy, **{"x-user": user}) == owner


def test_least_connections_avoids_the_busy_upstream(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    proxy = gateway(
        {
            "routes": [{"name": "all", "cluster": "pair"}],
            "clusters": [cluster("pair", upstreams("a"), upstreams("b"), load_balancing="least_connections")],
        }
    )
    # Hold one request open on whichever upstream gets it, then check the others avoid it.
    with requests.Session() as slow_client:
        import threading

        busy: list[str] = []
        slow = threading.Thread(
            target=lambda: busy.append(slow_client.get(proxy.url + "/?delay_ms=1500", timeout=10).json()["upstream"])
        )
        slow.start()
        time.sleep(0.3)
        during = [served_by(proxy) for _ in range(6)]
        slow.join()
    assert len(set(during)) == 1, during
    assert busy and busy[0] not in during


def test_an_upstream_going_down_and_coming_back(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    stable = upstreams("stable")
    flaky_port = free_port()
    flaky = start_echo_upstream(flaky_port, "flaky")
    check = {"path": "/healthz", "interval": "100ms", "timeout": "200ms", "unhealthy_threshold": 2}
    proxy = gateway(
        {
            "routes": [{"name": "all", "cluster": "pair"}],
            "clusters": [
                {
                    "name": "pair",
                    "endpoints": [f"127.0.0.1:{stable.server_address[1]}", f"127.0.0.1:{flaky_port}"],
                    "health_check": check,
                }
            ],
        }
    )
    assert Counter(served_by(proxy) for _ in range(10)) == {"stable": 5, "flaky": 5}

    flaky.shutdown()
    flaky.server_close()
    deadline = time.monotonic() + 5
    while "0" not in health_of(proxy, "pair", flaky_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Counter(served_by(proxy) for _ in range(10)) == {"stable": 10}
    assert requests.get(proxy.admin_url + "/readyz", timeout=5).status_code == 200

    flaky = start_echo_upstream(flaky_port, "flaky")
    try:
        deadline = time.monotonic() + 5
        while "1" not in health_of(proxy, "pair", flaky_port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert Counter(served_by(proxy) for _ in range(10)) == {"stable": 5, "flaky": 5}
    finally:
        flaky.shutdown()
        flaky.server_close()


def health_of(proxy: Gateway, cluster_name: str, port: int) -> str:
    """The `gateway_upstream_healthy` sample for one endpoint ("1", "0" or "")."""
    metrics = requests.get(proxy.admin_url + "/metrics", timeout=5).text
    label = f'gateway_upstream_healthy{{cluster="{cluster_name}",endpoint="127.0.0.1:{port}"}}'
    for line in metrics.splitlines():
        if line.startswith(label):
            return line.split()[-1]
    return ""


def test_all_endpoints_down_is_a_json_503(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    dead_port = free_port()
    proxy = gateway(
        {
            "routes": [{"name": "all", "cluster": "dead"}],
            "clusters": [{"name": "dead", "endpoints": [f"127.0.0.1:{dead_port}"]}],
        }
    )
    response = requests.get(proxy.url + "/", timeout=5)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]


def test_connect_failure_is_retried_on_the_other_endpoint(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    alive = upstreams("alive")
    dead_port = free_port()
    proxy = gateway(
        {
            "routes": [{"name": "all", "cluster": "pair"}],
            "clusters": [
                {
                    "name": "pair",
                    "endpoints": [f"127.0.0.1:{dead_port}", f"127.0.0.1:{alive.server_address[1]}"],
                    "retries": {"attempts": 1, "min_retries_per_second": 100},
                }
            ],
        }
    )
    assert [served_by(proxy) for _ in range(6)] == ["alive"] * 6
    metrics = requests.get(proxy.admin_url + "/metrics", timeout=5).text
    assert 'gateway_upstream_retries_total{cluster="pair"} 3' in metrics


def test_route_timeout_is_a_json_504(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    proxy = gateway(
        {
            "routes": [{"name": "all", "cluster": "app", "timeout": "300ms"}],
            "clusters": [cluster("app", upstreams("app"), retries={"attempts": 0})],
        }
    )
    assert requests.get(proxy.url + "/?delay_ms=50", timeout=5).status_code == 200
    response = requests.get(proxy.url + "/?delay_ms=2000", timeout=5)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_server_sent_events_stream_through_as_they_arrive(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    app = upstreams("app")
    proxy = gateway({"routes": [{"name": "all", "cluster": "app"}], "clusters": [cluster("app", app)]})
    events = []
    sent_when_first_arrived = None
    with requests.get(proxy.url + "/sse?events=5&interval_ms=300", stream=True, timeout=10) as response:
        assert response.headers["content-type"] == "text/event-stream"
        for line in response.iter_lines():
            if line.startswith(b"data:"):
                if not events:
                    sent_when_first_arrived = app.stats["events_sent"]
                events.append(line)
    assert len(events) == 5
    # A buffering proxy would deliver the first event only after the upstream sent all five.
    assert sent_when_first_arrived is not None and sent_when_first_arrived < 5


def test_client_disconnect_cancels_the_upstream_request(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    app = upstreams("app")
    proxy = gateway({"routes": [{"name": "all", "cluster": "app"}], "clusters": [cluster("app", app)]})
    with socket.create_connection(("127.0.0.1", proxy.port)) as client:
        client.sendall(b"GET /sse?events=100&interval_ms=50 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200" in client.recv(4096)
    deadline = time.monotonic() + 5
    while app.stats["streams_cancelled"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.stats["streams_cancelled"] == 1, "the upstream stream was not torn down"


def test_http2_upstream_over_h2c(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    # The inner proxy accepts prior-knowledge HTTP/2 (as a gRPC backend would); the outer one
    # speaks HTTP/2 to it, so both directions of h2c are exercised.
    inner_port = free_port()
    gateway(
        {
            "listeners": [{"name": "h2c", "address": f"127.0.0.1:{inner_port}", "h2c": True}],
            "routes": [{"name": "all", "cluster": "app"}],
            "clusters": [cluster("app", upstreams("app"))],
        }
    )
    outer = gateway(
        {
            "routes": [{"name": "all", "cluster": "inner"}],
            "clusters": [{"name": "inner", "endpoints": [f"127.0.0.1:{inner_port}"], "protocol": "http2"}],
        }
    )
    response = requests.post(outer.url + "/v1/rpc", data=b"payload", timeout=5)
    assert response.status_code == 200, response.text
    assert response.json()["body"] == "payload"
    assert response.json()["upstream"] == "app"


def test_dns_name_endpoints_resolve_when_the_configuration_loads(
    tmp_path: Path, gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    app = upstreams("by-name")
    port = app.server_address[1]
    # "localhost." goes through the resolver (a bare "localhost" is read as 127.0.0.1 directly).
    answers = {info[4][0] for info in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)}
    proxy = gateway(
        {
            "routes": [{"name": "all", "cluster": "named"}],
            # Where the name also has ::1 (and the echo server only 127.0.0.1), a retry covers it.
            "clusters": [{"name": "named", "endpoints": [f"localhost.:{port}"], "retries": {"attempts": 2}}],
        }
    )
    ready = requests.get(proxy.admin_url + "/readyz", timeout=5).json()
    assert ready["clusters"]["named"]["endpoints"] == len(answers), "one endpoint per address of the name"
    for _ in range(4):
        assert served_by(proxy) == "by-name"

    unresolvable = {
        "listeners": [{"name": "public", "address": "127.0.0.1:1"}],
        "routes": [{"name": "all", "cluster": "named"}],
        "clusters": [{"name": "named", "endpoints": ["no-such-service.invalid:80"]}],
    }
    refused = run_proxy("validate", str(write_config(unresolvable, tmp_path)))
    assert refused.returncode == 1
    assert "clusters[0].endpoints[0]: cannot resolve no-such-service.invalid" in refused.stderr
