"""Shared fixtures for the end-to-end suites: real sockets, real Envoy, built filters."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "envoy-config"))
sys.path.insert(0, str(REPO / "tests" / "support"))

from echo_upstream import start_echo_upstream  # noqa: E402


def wasm_dir() -> Path:
    """Where `make filters` puts the release .wasm files."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "wasm32-wasip1" / "release"


def built_filter(name: str) -> Path:
    """A filter built by `make filters`; the suite fails (not skips) when it is missing."""
    path = wasm_dir() / f"{name}.wasm"
    assert path.is_file(), f"{path} missing: run `make filters` (make test does)"
    return path


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
