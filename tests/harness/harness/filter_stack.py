"""The three gateway filters chained in front of echo upstreams, in our proxy or in Envoy with the
same .wasm files and plugin configurations: what the per-gateway suites run against."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from harness.echo_upstream import EchoServer, start_echo_upstream
from harness.envoy import start_envoy_bootstrap
from harness.gateway import REPO, Gateway, start_gateway

ISSUER = "https://idp.test"
KID = "key-1"
BATCH_KEY = "k-batch"
BYPASS_KEY = "k-ops"

AUTH = {
    "api_key": {
        "keys": [
            {"identity": "svc-batch", "key": BATCH_KEY, "scopes": ["read"], "tenant": "batch"},
            {"identity": "svc-ops", "key": BYPASS_KEY, "scopes": ["read", "cache:bypass"], "tenant": "ops"},
        ]
    },
    "jwt": {
        "providers": [
            {
                "name": "test-idp",
                "issuer": ISSUER,
                "audiences": ["gateway"],
                "algorithms": ["RS256"],
                "keys": {"remote_jwks": {"cluster": "jwks", "path": "/jwks.json", "authority": "idp.test"}},
                "tenant_claim": "tenant",
            }
        ],
        "max_token_bytes": 4096,
    },
    "rules": [{"path_prefix": "/public", "allow_anonymous": True}, {"path_prefix": "/admin", "scopes": ["admin"]}],
}
RATE_LIMIT = {
    "limits": [
        {"name": "burst", "key": "identity", "requests": 100, "per": "hour", "path_prefix": "/limited"},
        {"name": "per-client", "key": "client_address", "requests": 100000, "per": "minute"},
    ]
}
CACHE = {
    "rules": [
        {"path_prefix": "/cached/rag", "methods": ["POST"], "ttl_seconds": 3600},
        {"path_prefix": "/cached", "ttl_seconds": 60},
        {"path_prefix": "/flaky", "ttl_seconds": 1, "stale_if_error_seconds": 3600},
    ],
    "partition_headers": ["x-gateway-tenant", "x-gateway-identity"],
    "bypass": {"scope": "cache:bypass"},
}


class JwksServer(ThreadingHTTPServer):
    """Serves a JWKS at /jwks.json and counts fetches."""

    daemon_threads = True

    def __init__(self, jwks: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), JwksHandler)
        self.jwks = jwks
        self.fetches = 0


class JwksHandler(BaseHTTPRequestHandler):
    """GET /jwks.json."""

    server: JwksServer

    def do_GET(self) -> None:  # noqa: N802 - name from the base class
        self.server.fetches += 1
        body = json.dumps(self.server.jwks).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature from the base class
        """Keep test output quiet."""


@dataclass
class Stack:
    """A gateway (ours or Envoy) with its upstreams."""

    kind: str
    url: str
    upstream: EchoServer
    flaky: EchoServer
    # Our proxy, for its admin API and process; None for Envoy.
    proxy: Gateway | None = None


def run_stack(kind: str, signing_key: rsa.RSAPrivateKey, wasm: dict[str, Path], work_dir: Path) -> Iterator[Stack]:
    """Runs the chain in `kind` ("proxy" or "envoy") until the generator is closed; `wasm` maps
    auth_filter, rate_limit_filter and cache_filter to their built modules."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    jwks = JwksServer({"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}]})
    threading.Thread(target=jwks.serve_forever, daemon=True).start()
    upstream, flaky = start_echo_upstream(name="app"), start_echo_upstream(name="flaky")
    stop: Any
    proxy: Gateway | None = None
    if kind == "envoy":
        envoy = start_envoy_bootstrap(
            REPO / "envoy-config" / "gateway-filters.yaml",
            {
                "UPSTREAM_PORT": str(upstream.server_address[1]),
                "FLAKY_PORT": str(flaky.server_address[1]),
                "JWKS_PORT": str(jwks.server_address[1]),
                "AUTH_WASM": json.dumps(str(wasm["auth_filter"])),
                "RATE_LIMIT_WASM": json.dumps(str(wasm["rate_limit_filter"])),
                "CACHE_WASM": json.dumps(str(wasm["cache_filter"])),
                "AUTH_CONFIG": json.dumps(json.dumps(AUTH)),
                "RATE_LIMIT_CONFIG": json.dumps(json.dumps(RATE_LIMIT)),
                "CACHE_CONFIG": json.dumps(json.dumps(CACHE)),
            },
            work_dir=work_dir,
        )
        url, stop = f"http://127.0.0.1:{envoy.listen_port}", envoy.stop
    else:

        def endpoint(server: ThreadingHTTPServer) -> str:
            return f"127.0.0.1:{server.server_address[1]}"

        proxy = start_gateway(
            {
                "filter_chains": [
                    {
                        "name": "gateway",
                        "filters": [
                            {"name": "auth", "wasm": str(wasm["auth_filter"]), "configuration": AUTH},
                            {"name": "rate-limit", "wasm": str(wasm["rate_limit_filter"]), "configuration": RATE_LIMIT},
                            {"name": "cache", "wasm": str(wasm["cache_filter"]), "configuration": CACHE},
                        ],
                    }
                ],
                "routes": [
                    {
                        "name": "flaky",
                        "match": {"path": {"prefix": "/flaky"}},
                        "cluster": "flaky",
                        "filter_chain": "gateway",
                    },
                    {
                        "name": "main",
                        "match": {"path": {"prefix": "/"}},
                        "cluster": "upstream",
                        "filter_chain": "gateway",
                    },
                ],
                "clusters": [
                    {"name": "upstream", "endpoints": [endpoint(upstream)]},
                    {"name": "flaky", "endpoints": [endpoint(flaky)]},
                    {"name": "jwks", "endpoints": [endpoint(jwks)]},
                ],
            },
            work_dir,
        )
        url, stop = proxy.url, proxy.stop
    yield Stack(kind, url, upstream, flaky, proxy)
    stop()
    for server in (jwks, upstream, flaky):
        server.shutdown()
        server.server_close()
