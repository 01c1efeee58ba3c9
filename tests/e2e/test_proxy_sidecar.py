"""Our proxy as a sidecar: mutual TLS on a listener with the verified peer identity visible to
filters, mutual TLS from one sidecar to another with a mesh CA, and inbound/outbound listeners with
routes scoped to each, a Python service in between."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from harness.certificates import Authority, Issued
from harness.echo_upstream import EchoServer
from harness.gateway import Gateway, built_filter, free_port, start_gateway

PRINCIPAL = "spiffe://cluster.local/ns/default/sa/svc-a"


def mtls_listener(port: int, server: Issued, ca: Authority) -> dict[str, Any]:
    """A listener named `inbound` with `server`'s certificate, requiring client certificates `ca` verifies."""
    tls = {"certificate": str(server.certificate), "key": str(server.key), "client_ca": str(ca.bundle)}
    return {"name": "inbound", "address": f"127.0.0.1:{port}", "tls": tls}


@pytest.fixture
def mtls_gateway(tmp_path: Path, upstream_port: int) -> Iterator[tuple[str, Authority]]:
    """A TLS listener requiring client certificates from `ca`, through the ABI probe filter."""
    ca = Authority(tmp_path, "mesh-ca")
    server = ca.issue("localhost", [x509.DNSName("localhost")])
    port = free_port()
    config = {
        "listeners": [mtls_listener(port, server, ca)],
        "filter_chains": [
            {
                "name": "probe",
                "filters": [
                    {"name": "probe", "wasm": str(built_filter("abi_probe_filter")), "configuration": "headers"}
                ],
            }
        ],
        "routes": [{"name": "app", "cluster": "app", "filter_chain": "probe"}],
        "clusters": [{"name": "app", "endpoints": [f"127.0.0.1:{upstream_port}"]}],
    }
    proxy = start_gateway(config, tmp_path)
    yield f"https://localhost:{port}", ca
    proxy.stop()


def test_mtls_accepts_a_client_certificate_and_filters_see_its_identity(
    mtls_gateway: tuple[str, Authority],
) -> None:
    url, ca = mtls_gateway
    client = ca.issue("svc-a", [x509.UniformResourceIdentifier(PRINCIPAL)])
    response = requests.get(
        f"{url}/x", cert=(str(client.certificate), str(client.key)), verify=str(ca.bundle), timeout=10
    )
    assert response.status_code == 200
    headers = json.loads(response.text[1:-1])["headers"]  # the probe wraps the body in "<...!"
    assert headers["x-prop-principal"] == PRINCIPAL, "source.principal is the URI SAN"
    assert headers["x-prop-peer-subject"] == "O=example,CN=svc-a"


def test_mtls_refuses_a_client_without_a_certificate_or_with_a_foreign_one(
    mtls_gateway: tuple[str, Authority], tmp_path: Path
) -> None:
    url, ca = mtls_gateway
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"{url}/x", verify=str(ca.bundle), timeout=10)
    stranger = Authority(tmp_path / "..", "other-ca").issue("intruder", [x509.UniformResourceIdentifier(PRINCIPAL)])
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"{url}/x", cert=(str(stranger.certificate), str(stranger.key)), verify=str(ca.bundle), timeout=10)


class LocalService(ThreadingHTTPServer):
    """The Python service beside the sidecar: `/call` calls service `billing` through the sidecar's
    outbound listener, by name, without knowing where billing runs."""

    def __init__(self, outbound_port: int) -> None:
        self.outbound_port = outbound_port
        super().__init__(("127.0.0.1", 0), LocalHandler)


class LocalHandler(BaseHTTPRequestHandler):
    server: LocalService

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.server.outbound_port}/invoices", headers={"Host": "billing"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            remote = json.loads(reply.read())
        body = json.dumps({"local": "orders", "identity": self.headers.get("x-gateway-identity"), "remote": remote})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
        """Quiet."""


def test_sidecar_inbound_and_outbound_with_a_python_service_between(
    tmp_path: Path, upstreams: Callable[[str], EchoServer]
) -> None:
    billing = upstreams("billing")
    inbound_port, outbound_port = free_port(), free_port()
    service = LocalService(outbound_port)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    auth = {"api_key": {"keys": [{"identity": "frontend", "key": "k-frontend"}]}}
    config = {
        "listeners": [
            {"name": "inbound", "address": f"127.0.0.1:{inbound_port}"},
            {"name": "outbound", "address": f"127.0.0.1:{outbound_port}"},
        ],
        "filter_chains": [
            {
                "name": "inbound",
                "filters": [{"name": "auth", "wasm": str(built_filter("auth_filter")), "configuration": auth}],
            }
        ],
        "routes": [
            {"name": "to-local", "match": {"listeners": ["inbound"]}, "cluster": "local", "filter_chain": "inbound"},
            {"name": "to-billing", "match": {"listeners": ["outbound"], "hosts": ["billing"]}, "cluster": "billing"},
        ],
        "clusters": [
            {"name": "local", "endpoints": [f"127.0.0.1:{service.server_address[1]}"]},
            {
                "name": "billing",
                "endpoints": [f"127.0.0.1:{billing.server_address[1]}"],
                "timeouts": {"connect": "1s", "read": "5s"},
                "retries": {"attempts": 2},
            },
        ],
    }
    proxy = start_gateway(config, tmp_path)
    try:
        assert requests.get(f"http://127.0.0.1:{inbound_port}/orders", timeout=10).status_code == 401
        response = requests.get(
            f"http://127.0.0.1:{inbound_port}/orders", headers={"x-api-key": "k-frontend"}, timeout=10
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["identity"] == "frontend", "inbound filters ran before the local service"
        assert body["remote"]["upstream"] == "billing" and body["remote"]["path"] == "/invoices"
        # The outbound listener only routes outbound names; inbound routes are not reachable there.
        other = requests.get(f"http://127.0.0.1:{outbound_port}/orders", headers={"Host": "orders"}, timeout=10)
        assert other.status_code == 404
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=10).text
        assert 'route="to-billing"' in metrics and 'route="to-local"' in metrics
    finally:
        proxy.stop()
        service.shutdown()


def test_sidecar_to_sidecar_mutual_tls_with_a_mesh_ca(
    tmp_path: Path, gateway: Callable[[dict[str, Any]], Gateway], upstream_port: int
) -> None:
    ca = Authority(tmp_path, "mesh-ca")
    server = ca.issue("svc-b.mesh", [x509.DNSName("svc-b.mesh")])
    client = ca.issue("svc-a", [x509.UniformResourceIdentifier(PRINCIPAL)])
    foreign = Authority(tmp_path, "other-ca")
    inbound_port = free_port()
    probe = {"name": "probe", "wasm": str(built_filter("abi_probe_filter")), "configuration": "headers"}
    gateway(
        {
            "listeners": [mtls_listener(inbound_port, server, ca)],
            "filter_chains": [{"name": "probe", "filters": [probe]}],
            "routes": [{"name": "app", "cluster": "app", "filter_chain": "probe"}],
            "clusters": [{"name": "app", "endpoints": [f"127.0.0.1:{upstream_port}"]}],
        }
    )

    # The calling side's outbound clusters: full mTLS, no client certificate, and the wrong CA.
    def svc_b(name: str, **tls: str) -> dict[str, Any]:
        return {"name": name, "endpoints": [f"127.0.0.1:{inbound_port}"], "tls": {"sni": "svc-b.mesh", **tls}}

    mesh = {"ca": str(ca.bundle), "client_certificate": str(client.certificate), "client_key": str(client.key)}
    caller = gateway(
        {
            "routes": [
                {"name": f"to-{name}", "match": {"path": {"prefix": f"/{name}"}}, "cluster": name}
                for name in ["mtls", "anonymous", "untrusted"]
            ],
            "clusters": [
                svc_b("mtls", **mesh),
                svc_b("anonymous", ca=str(ca.bundle)),
                svc_b("untrusted", **{**mesh, "ca": str(foreign.bundle)}),
            ],
        }
    )

    response = requests.get(f"{caller.url}/mtls", timeout=10)
    assert response.status_code == 200, response.text
    headers = json.loads(response.text[1:-1])["headers"]
    assert headers["x-prop-principal"] == PRINCIPAL, "the callee's filters see the caller's identity"
    # The callee requires a client certificate; the caller must verify the callee against the mesh CA.
    for name in ["anonymous", "untrusted"]:
        refused = requests.get(f"{caller.url}/{name}", headers={"x-request-id": f"r-{name}"}, timeout=10)
        assert refused.status_code == 502, (name, refused.text)
        assert refused.json()["error"]["request_id"] == f"r-{name}"
