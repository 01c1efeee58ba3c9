"""Our proxy over real sockets: routing, forwarding headers, and the JSON errors it produces."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
from harness.echo_upstream import EchoServer
from harness.gateway import Gateway, cluster, free_port


def test_routes_match_on_path_host_method_and_headers(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    names = ["exact", "regex", "host", "method", "header", "fallback"]
    servers = {name: upstreams(name) for name in names}
    proxy = gateway(
        {
            "routes": [
                {"name": "exact", "match": {"path": {"exact": "/v1/embeddings"}}, "cluster": "exact"},
                {"name": "regex", "match": {"path": {"regex": r"/users/\d+"}}, "cluster": "regex"},
                {"name": "host", "match": {"hosts": ["api.example.com"]}, "cluster": "host"},
                {"name": "method", "match": {"methods": ["DELETE"]}, "cluster": "method"},
                {
                    "name": "header",
                    "match": {"headers": [{"name": "x-tenant", "exact": "acme"}]},
                    "cluster": "header",
                },
                {"name": "fallback", "match": {"path": {"prefix": "/"}}, "cluster": "fallback"},
            ],
            "clusters": [cluster(name, server) for name, server in servers.items()],
        }
    )

    def served_by(method: str, path: str, **headers: str) -> str:
        response = requests.request(method, proxy.url + path, headers=headers, timeout=5)
        assert response.status_code == 200, response.text
        return str(response.json()["upstream"])

    assert served_by("POST", "/v1/embeddings") == "exact"
    assert served_by("POST", "/v1/embeddings/extra") == "fallback"
    assert served_by("GET", "/users/42") == "regex"
    assert served_by("GET", "/users/42/posts") == "fallback"
    assert served_by("GET", "/anything", Host="api.example.com:8080") == "host"
    assert served_by("DELETE", "/anything") == "method"
    assert served_by("GET", "/anything", **{"X-Tenant": "acme"}) == "header"
    assert served_by("GET", "/anything", **{"X-Tenant": "other"}) == "fallback"


def test_no_route_is_a_json_404_with_the_request_id(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    proxy = gateway(
        {
            "routes": [{"name": "api", "match": {"path": {"prefix": "/api/"}}, "cluster": "app"}],
            "clusters": [cluster("app", upstreams("app"))],
        }
    )
    response = requests.get(proxy.url + "/elsewhere", headers={"x-request-id": "req-404"}, timeout=5)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "req-404"
    assert response.json() == {
        "error": {
            "status": 404,
            "code": "no_route",
            "message": "no route matches this request",
            "request_id": "req-404",
        }
    }


def test_request_id_traceparent_and_forwarded_headers(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    proxy = gateway({"routes": [{"name": "all", "cluster": "app"}], "clusters": [cluster("app", upstreams("app"))]})
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    sent = {
        "x-request-id": "client-chosen-id",
        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
        "x-forwarded-for": "203.0.113.9",
    }
    response = requests.get(proxy.url + "/", headers=sent, timeout=5)
    seen = response.json()["headers"]
    assert seen["x-request-id"] == "client-chosen-id"
    assert response.headers["x-request-id"] == "client-chosen-id"
    version, upstream_trace, parent, flags = seen["traceparent"].split("-")
    assert (version, upstream_trace, flags) == ("00", trace_id, "01")
    assert parent != "00f067aa0ba902b7", "the proxy is a new hop in the trace"
    # Not a trusted proxy (the default): the client's list is replaced by the address we saw.
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"

    generated = requests.get(proxy.url + "/", timeout=5)
    generated_id = generated.json()["headers"]["x-request-id"]
    assert len(generated_id) == 36 and generated.headers["x-request-id"] == generated_id
    assert len(generated.json()["headers"]["traceparent"].split("-")[1]) == 32


def test_upstream_5xx_is_passed_through_or_replaced_per_route(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    proxy = gateway(
        {
            "routes": [
                {"name": "raw", "match": {"path": {"prefix": "/raw"}}, "cluster": "app"},
                {"name": "safe", "cluster": "app", "upstream_errors": "json"},
            ],
            "clusters": [cluster("app", upstreams("app"))],
        }
    )
    raw = requests.get(proxy.url + "/raw?status=500", timeout=5)
    assert raw.status_code == 500 and "Traceback" in raw.text

    safe = requests.get(proxy.url + "/safe?status=503", headers={"x-request-id": "r5"}, timeout=5)
    assert safe.status_code == 503
    assert "Traceback" not in safe.text
    assert safe.json()["error"] == {
        "status": 503,
        "code": "upstream_error",
        "message": "the upstream service failed",
        "request_id": "r5",
    }


def test_body_over_the_limit_is_a_json_413(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    proxy = gateway(
        {
            "server": {"max_request_body_bytes": 1024},
            "routes": [{"name": "all", "cluster": "app"}],
            "clusters": [cluster("app", upstreams("app"))],
        }
    )
    assert requests.post(proxy.url + "/", data=b"x" * 1024, timeout=5).status_code == 200
    too_big = requests.post(proxy.url + "/", data=b"x" * 4096, timeout=5)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "request_body_too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * 512

    chunked = requests.post(proxy.url + "/", data=chunks(), timeout=5)
    assert chunked.status_code == 413
    assert chunked.json()["error"]["code"] == "request_body_too_large"


def test_tls_listener(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer], tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proxy = gateway(
        {
            "listeners": [
                {"name": "tls", "address": f"127.0.0.1:{port}", "tls": {"certificate": str(cert), "key": str(key)}}
            ],
            "routes": [{"name": "all", "cluster": "app"}],
            "clusters": [cluster("app", upstreams("app"))],
        }
    )
    response = requests.get(f"https://127.0.0.1:{proxy.port}/secure", verify=str(cert), timeout=5)
    assert response.status_code == 200
    assert response.json()["headers"]["x-forwarded-proto"] == "https"


def test_forwarded_headers_from_a_trusted_proxy_are_appended_to(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    proxy = gateway(
        {
            "server": {"trusted_proxies": ["127.0.0.0/8"]},
            "routes": [{"name": "all", "cluster": "app"}],
            "clusters": [cluster("app", upstreams("app"))],
        }
    )
    sent = {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https", "x-forwarded-host": "api.test"}
    seen = requests.get(proxy.url + "/", headers=sent, timeout=5).json()["headers"]
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "api.test"
