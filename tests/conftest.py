"""Shared fixtures for the end-to-end suites: real sockets, real Envoy, built filters."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from harness.echo_upstream import EchoServer, start_echo_upstream
from harness.filter_stack import Stack, run_stack
from harness.gateway import Gateway, built_filter, start_gateway
from harness.gateway_identity import SIGNING_KEY_ENV, TEST_SIGNING_KEY

# Every proxy and sandbox-host the suites start inherits the key their identity signatures use
# (read when they start, so setting it here, before any fixture runs, is enough).
os.environ[SIGNING_KEY_ENV] = TEST_SIGNING_KEY


@pytest.fixture(scope="session")
def auth_wasm() -> Path:
    """The built auth filter."""
    return built_filter("auth_filter")


@pytest.fixture(scope="session")
def probe_wasm() -> Path:
    """The host's ABI probe test filter (proxy/wasm-host/test-filters/abi-probe)."""
    return built_filter("abi_probe_filter")


@pytest.fixture(scope="session")
def upstream_port() -> Iterator[int]:
    """A real HTTP upstream on loopback that echoes each request as JSON."""
    server = start_echo_upstream()
    yield int(server.server_address[1])
    server.shutdown()


@pytest.fixture
def upstreams() -> Iterator[Callable[[str], EchoServer]]:
    """Starts named echo upstreams for one test: `upstreams("a")`; all stop afterwards."""
    started: list[EchoServer] = []

    def start(name: str = "echo", port: int = 0) -> EchoServer:
        server = start_echo_upstream(port, name)
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Gateway]]:
    """Starts our proxy with a configuration dict: `gateway({...})`; all stop afterwards."""
    started: list[Gateway] = []

    def start(config: dict[str, Any]) -> Gateway:
        proxy = start_gateway(config, tmp_path)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    """The test identity provider's RSA key (gateways know only its JWKS)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module", params=["proxy", "envoy"])
def stack(
    request: pytest.FixtureRequest, signing_key: rsa.RSAPrivateKey, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The three filters chained in front of an echo upstream, in our proxy or in Envoy: every
    test that uses it runs once per gateway."""
    wasm = {name: built_filter(name) for name in ("auth_filter", "rate_limit_filter", "cache_filter")}
    yield from run_stack(request.param, signing_key, wasm, tmp_path_factory.mktemp(request.param))
