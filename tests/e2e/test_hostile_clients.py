"""Hostile clients on raw sockets against the real gateway and filters (auth, rate limit, cache), in
our proxy and in Envoy 1.40 with the same .wasm files where a case applies to both.

After every case: valid requests keep succeeding on new connections (so on every worker), the
process is alive, and (ours) no filter trapped and memory did not run away. Where the two
gateways differ, the test says so and docs/proxy.md explains why.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from harness.echo_upstream import EchoServer
from harness.envoy import start_envoy
from harness.filter_stack import BATCH_KEY, Stack
from harness.gateway import Gateway, built_filter, cluster, free_port

VALID = {"x-api-key": BATCH_KEY}
# Obs-text bytes: legal on the wire (RFC 9110 §5.5), not UTF-8.
NOT_UTF8 = b"\xff\xfe"


def address(stack: Stack) -> tuple[str, int]:
    """Host and port of the gateway's listener."""
    url = urlsplit(stack.url)
    return url.hostname or "127.0.0.1", url.port or 80


def exchange(stack: Stack, raw: bytes, timeout: float = 5) -> bytes:
    """Sends `raw` on a new connection and returns everything read until the gateway closes it
    or goes quiet for `timeout` seconds."""
    with socket.create_connection(address(stack), timeout=timeout) as conn:
        conn.sendall(raw)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def statuses(response: bytes) -> list[int]:
    """The status codes of every response in a raw exchange."""
    return [int(line.split()[1]) for line in response.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def request(path: bytes, *headers: tuple[bytes, bytes], method: bytes = b"GET", body: bytes = b"") -> bytes:
    """An HTTP/1.1 request that closes its connection after the response."""
    lines = [method + b" " + path + b" HTTP/1.1", b"host: gateway.test", b"connection: close"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def rss_kib(stack: Stack) -> int:
    """Resident memory of our proxy's process."""
    assert stack.proxy is not None
    status = open(f"/proc/{stack.proxy.process.pid}/status").read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def assert_still_serving(stack: Stack) -> None:
    """Valid requests succeed on 20 new connections; ours is alive, no filter trapped, and its
    memory is bounded."""
    for _ in range(20):
        response = requests.get(stack.url + "/v1/data", headers=VALID, timeout=5)
        assert response.status_code == 200, response.text
    if stack.proxy is not None:
        assert stack.proxy.process.poll() is None, "the proxy is alive"
        metrics = requests.get(stack.proxy.admin_url + "/metrics", timeout=5).text
        assert "wasm_filter_traps_total" not in metrics, "no filter trapped"
        # Three filters on two workers settle near 100 MiB; a leak per case would show.
        assert rss_kib(stack) < 256 * 1024, f"RSS {rss_kib(stack)} KiB"


def test_invalid_bytes_in_every_header_a_filter_reads(stack: Stack) -> None:
    auth_cases = [
        ((b"x-api-key", NOT_UTF8), "invalid_api_key"),
        ((b"authorization", b"Bearer " + NOT_UTF8), "malformed_token"),
        # Invalid bytes where the "Bearer " prefix should be still count as a presented token.
        ((b"authorization", NOT_UTF8), "malformed_token"),
    ]
    for header, code in auth_cases:
        raw = exchange(stack, request(b"/v1/data", header, (b"x-request-id", b"hostile-1")))
        assert statuses(raw) == [401], (header, raw[:300])
        assert code.encode() in raw, (header, raw[:400])
    # Headers the rate limit and cache read, with a valid key: a malformed value is ignored.
    for name in (b"cache-control", b"pragma", b"x-cache-bypass", b"x-request-id", b"accept", b"cookie"):
        raw = exchange(stack, request(b"/cached/invalid-bytes", (b"x-api-key", BATCH_KEY.encode()), (name, NOT_UTF8)))
        assert statuses(raw) == [200], (name, raw[:300])
    assert_still_serving(stack)


def test_invalid_bytes_in_response_headers_are_passed_on_not_cached(stack: Stack) -> None:
    for name in ("cache-control", "vary", "set-cookie", "content-type", "x-note"):
        url = f"{stack.url}/cached/response-{name}?invalid_header={name}"
        answers = [requests.get(url, headers=VALID, timeout=5) for _ in range(2)]
        for answer in answers:
            assert answer.status_code == 200, (name, answer.text)
            assert answer.headers[name].endswith("\xff\xfe"), name
        assert answers[1].headers.get("x-cache") != "HIT", name
    assert_still_serving(stack)


def test_invalid_bytes_in_the_path_are_a_400(stack: Stack) -> None:
    raw = exchange(stack, request(b"/v1/\xff\xfe", (b"x-api-key", BATCH_KEY.encode())))
    assert statuses(raw) == [400], raw[:300]
    assert_still_serving(stack)


def test_content_length_with_transfer_encoding_smuggles_nothing(stack: Stack) -> None:
    smuggled = b"GET /smuggled HTTP/1.1\r\nhost: gateway.test\r\nx-api-key: " + BATCH_KEY.encode() + b"\r\n\r\n"
    raw = exchange(
        stack,
        request(
            b"/v1/data",
            (b"x-api-key", BATCH_KEY.encode()),
            (b"content-length", b"5"),
            (b"transfer-encoding", b"chunked"),
            method=b"POST",
            body=b"0\r\n\r\n" + smuggled,
        ),
    )
    assert len(statuses(raw)) <= 1, raw[:600]
    time.sleep(0.2)
    assert not [p for p in stack.upstream.paths_seen if "smuggled" in p]
    assert_still_serving(stack)


def test_two_different_content_lengths_are_refused(stack: Stack) -> None:
    raw = exchange(
        stack,
        request(
            b"/v1/data",
            (b"x-api-key", BATCH_KEY.encode()),
            (b"content-length", b"3"),
            (b"content-length", b"5"),
            method=b"POST",
            body=b"abcde",
        ),
    )
    assert statuses(raw) == [400], raw[:300]
    assert_still_serving(stack)


def test_two_thousand_headers_are_refused(stack: Stack) -> None:
    headers = [(b"x-h%d" % i, b"v") for i in range(2000)]
    raw = exchange(stack, request(b"/v1/data", (b"x-api-key", BATCH_KEY.encode()), *headers))
    assert statuses(raw) in ([], [400], [431]), raw[:300]
    assert_still_serving(stack)


def test_too_many_or_too_large_headers_get_431(stack: Stack) -> None:
    many = [(b"x-h%d" % i, b"v") for i in range(150)]
    large = [(b"x-big-%d" % i, b"v" * 8000) for i in range(10)]
    for headers in (many, large):
        raw = exchange(stack, request(b"/v1/data", (b"x-api-key", BATCH_KEY.encode()), *headers))
        assert statuses(raw) == [431], raw[:300]
    assert_still_serving(stack)


def test_hundreds_of_slow_half_sent_requests_do_not_block_others(stack: Stack) -> None:
    before = rss_kib(stack) if stack.proxy else 0
    slow = []
    for _ in range(300):
        conn = socket.create_connection(address(stack), timeout=5)
        conn.sendall(b"GET /v1/data HTTP/1.1\r\nhost: gateway.test\r\nx-api-")
        slow.append(conn)
    try:
        started = time.monotonic()
        assert_still_serving(stack)
        assert time.monotonic() - started < 10
        if stack.proxy:
            assert rss_kib(stack) - before < 64 * 1024, "300 idle connections cost < 64 MiB"
    finally:
        for conn in slow:
            conn.close()
    assert_still_serving(stack)


def test_encoded_paths_cannot_step_around_a_scoped_rule(stack: Stack) -> None:
    # /admin needs scope "admin"; the batch key has only "read". Envoy holds here only because
    # its bootstrap sets normalize_path, merge_slashes and path_with_escaped_slashes_action
    # (off in Envoy by default); ours does this by default.
    for path in [b"/%61dmin/users", b"//admin/users", b"/./admin/users", b"/x/../admin/users", b"/%2e/admin/users"]:
        raw = exchange(stack, request(path, (b"x-api-key", BATCH_KEY.encode())))
        assert statuses(raw) == [403], (path, raw[:300])
    raw = exchange(stack, request(b"/admin%2Fusers", (b"x-api-key", BATCH_KEY.encode())))
    assert statuses(raw) == [400], raw[:300]
    assert_still_serving(stack)


def test_normalised_path_is_what_the_upstream_receives(stack: Stack) -> None:
    response = requests.get(stack.url + "/v1//x/../data/%7Eme?q=/../a", headers=VALID, timeout=5)
    assert response.status_code == 200, response.text
    assert response.json()["path"] == "/v1/data/~me?q=/../a"


def test_forged_identity_look_alikes_never_reach_upstream(stack: Stack) -> None:
    forged = {"x_gateway_scopes": "admin", "X-Gateway_Identity": "root", "x-gateway-tenant": "victim"}
    seen = requests.get(stack.url + "/v1/data", headers={**VALID, **forged}, timeout=5).json()["headers"]
    assert seen["x-gateway-identity"] == "svc-batch"
    assert seen["x-gateway-tenant"] == "batch"
    assert not {"x_gateway_scopes", "x-gateway_identity"} & seen.keys()


# --- our proxy only: routes without filters, X-Forwarded-*, hop-by-hop, connection cap ----------


@pytest.fixture
def unfiltered(gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]) -> Iterator[Gateway]:
    """Our proxy with one route without any filter (where identity used to pass as sent)."""
    yield gateway({"routes": [{"name": "open", "cluster": "app"}], "clusters": [cluster("app", upstreams("app"))]})


def test_reserved_headers_are_removed_on_routes_without_filters(unfiltered: Gateway) -> None:
    forged = {
        "x-gateway-identity": "admin",
        "x-gateway-scopes": "admin",
        "X_Gateway_Tenant": "victim",
        "x-gateway-approval": "yes",
    }
    seen = requests.get(unfiltered.url + "/", headers=forged, timeout=5).json()["headers"]
    assert not [name for name in seen if name.replace("_", "-").startswith("x-gateway-")], seen


def test_forwarded_headers_from_an_untrusted_client_are_replaced(unfiltered: Gateway) -> None:
    sent = {"x-forwarded-for": "6.6.6.6", "x-forwarded-host": "evil.test", "forwarded": "for=6.6.6.6"}
    seen = requests.get(unfiltered.url + "/", headers=sent, timeout=5).json()["headers"]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert "x-forwarded-host" not in seen and "forwarded" not in seen


def test_hop_by_hop_headers_are_not_forwarded(unfiltered: Gateway) -> None:
    sent = {
        "connection": "keep-alive, x-internal-hop",
        "x-internal-hop": "1",
        "keep-alive": "timeout=5",
        "proxy-authorization": "Basic eDp4",
        "upgrade": "websocket",
        "te": "gzip",
    }
    seen = requests.get(unfiltered.url + "/", headers=sent, timeout=5).json()["headers"]
    assert not {"x-internal-hop", "keep-alive", "proxy-authorization", "upgrade", "te"} & seen.keys(), seen


def test_a_trapping_filter_costs_only_its_own_requests(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    misbehaving = {"name": "misbehaving", "wasm": str(built_filter("misbehaving_filter"))}
    proxy = gateway(
        {
            "server": {"threads": 2},
            "filter_chains": [{"name": "chain", "filters": [misbehaving]}],
            "routes": [{"name": "all", "cluster": "app", "filter_chain": "chain"}],
            "clusters": [cluster("app", upstreams("app"))],
        }
    )
    with requests.Session() as panics, requests.Session() as valid:
        for _ in range(150):
            assert panics.get(proxy.url + "/panic", timeout=5).status_code == 503
            response = valid.get(proxy.url + "/fine", timeout=5)
            assert response.status_code == 200, response.text
            assert "x-vm-id" in response.json()["headers"]
    metrics = requests.get(proxy.admin_url + "/metrics", timeout=5).text
    assert 'wasm_filter_traps_total{plugin="misbehaving"} 150' in metrics


def test_a_listener_keeps_at_most_max_connections_open(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    port = free_port()
    proxy = gateway(
        {
            "listeners": [{"name": "public", "address": f"127.0.0.1:{port}", "max_connections": 3}],
            "routes": [{"name": "open", "cluster": "app"}],
            "clusters": [cluster("app", upstreams("app"))],
        }
    )

    def metric(name: str) -> str:
        text = requests.get(proxy.admin_url + "/metrics", timeout=5).text
        (line,) = [line for line in text.splitlines() if line.startswith(f'{name}{{listener="public"}}')]
        return line.rsplit(" ", 1)[1]

    def open_connections_become(count: int) -> None:
        deadline = time.monotonic() + 5
        while metric("gateway_downstream_connections") != str(count):
            assert time.monotonic() < deadline, metric("gateway_downstream_connections")
            time.sleep(0.05)

    keep_alive = b"GET / HTTP/1.1\r\nhost: gateway.test\r\n\r\n"
    open_connections_become(0)  # the harness's readiness probe has gone
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        for conn in held:
            conn.sendall(keep_alive)
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        # Idle keep-alive connections hold their places: a fourth is closed unanswered.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            extra.sendall(keep_alive)
            try:
                assert extra.recv(65536) == b""
            except ConnectionResetError:
                pass
        assert metric("gateway_downstream_connections_refused_total") == "1"
        held.pop().close()
        open_connections_become(2)
        assert requests.get(proxy.url + "/", timeout=5).status_code == 200
    finally:
        for conn in held:
            conn.close()


def test_in_envoy_one_trap_under_fail_closed_takes_the_worker_out(upstream_port: int, tmp_path: Path) -> None:
    """The difference docs/proxy.md states: Envoy keeps a FAIL_CLOSED VM dead after a trap, so every
    later request on that worker fails until the configuration is reloaded (our proxy replaces the
    VM: `test_a_trapping_filter_costs_only_its_own_requests`)."""
    envoy = start_envoy(
        wasm=built_filter("misbehaving_filter"),
        plugin_config="",
        plugin_name="misbehaving",
        upstream_port=upstream_port,
        work_dir=tmp_path,
        concurrency=1,
    )
    try:
        url = f"http://127.0.0.1:{envoy.listen_port}"
        assert requests.get(url + "/fine", timeout=5).status_code == 200
        assert requests.get(url + "/panic", timeout=5).status_code >= 500
        later = [requests.get(url + "/fine", timeout=5).status_code for _ in range(5)]
        assert all(status >= 500 for status in later), later
    finally:
        envoy.stop()
