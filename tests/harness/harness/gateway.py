"""Start our proxy (the `proxy` binary of crate `gateway`) for a test, with a configuration dict.

The dict is written as JSON, which is valid YAML, so tests need no YAML library.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from harness.echo_upstream import EchoServer
from harness.envoy import free_port

# tests/harness/harness/gateway.py
REPO = Path(__file__).resolve().parents[3]
# The auth filter's plugin configuration, shared with Envoy's bootstraps, and its demo key.
AUTH_CONFIG = REPO / "envoy-config" / "plugins" / "auth.json"
DEMO_KEY = "demo-key-change-me"


def target_dir() -> Path:
    """Cargo's target directory: `$CARGO_TARGET_DIR`, else `target/` in the clone (as in the Makefile)."""
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


def built_binary(name: str, override: str) -> Path:
    """`$override` when set, else binary `name` as production runs it: the `proxy` profile build
    (`make binaries`, which `make test` runs)."""
    if override in os.environ:
        return Path(os.environ[override])
    path = target_dir() / "proxy" / name
    assert path.is_file(), f"{path} missing: run `make binaries` (make test does)"
    return path


def wasm_dir() -> Path:
    """Where `make filters` puts the release .wasm files."""
    return target_dir() / "wasm32-wasip1" / "release"


def built_filter(name: str) -> Path:
    """A filter built by `make filters`; a suite fails (not skips) when it is missing."""
    path = wasm_dir() / f"{name}.wasm"
    assert path.is_file(), f"{path} missing: run `make filters` (make test does)"
    return path


def proxy_binary() -> Path:
    """`$GATEWAY_PROXY_BINARY`, else the `proxy` profile build of the proxy."""
    return built_binary("proxy", "GATEWAY_PROXY_BINARY")


class GatewayStartError(RuntimeError):
    """The proxy exited or did not become healthy; `log` holds its output."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n--- proxy log ---\n{log}")
        self.log = log


@dataclass
class Gateway:
    """A running proxy."""

    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log_path: Path
    config_path: Path
    extra_ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL of the first listener."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """Base URL of the admin listener."""
        return f"http://127.0.0.1:{self.admin_port}"

    def metric(self, name: str) -> float:
        """A metric's value from the admin `/metrics`, `name` with its labels as printed (0 while absent)."""
        for line in requests.get(f"{self.admin_url}/metrics", timeout=5).text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return 0.0

    def wait_for_metric(self, name: str, at_least: float, timeout: float = 15) -> None:
        """Waits until metric `name` reaches `at_least`; fails with the proxy's log if it does not."""
        deadline = time.monotonic() + timeout
        while self.metric(name) < at_least:
            assert time.monotonic() < deadline, f"{name} stayed below {at_least}:\n{self.log()[-3000:]}"
            time.sleep(0.05)

    def log(self) -> str:
        """Everything the proxy has logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15) -> int:
        """Signals the proxy and waits for it to exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def run_proxy(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs the proxy CLI to completion (e.g. `validate <file>`)."""
    return subprocess.run([str(proxy_binary()), *args], capture_output=True, text=True, timeout=60)


def write_config(config: dict[str, Any], work_dir: Path) -> Path:
    """Writes a configuration file and returns its path."""
    path = work_dir / f"gateway-{time.monotonic_ns()}.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


def port_of(address: str, default: int) -> int:
    """The port of `host:port`, or `default` for an address a test made invalid on purpose."""
    port = address.rsplit(":", 1)[-1]
    return int(port) if port.isdigit() else default


def start_gateway(
    config: dict[str, Any], work_dir: Path, timeout: float = 60, env: dict[str, str] | None = None
) -> Gateway:
    """Starts the proxy with `config`, filling in free ports for the listener and admin when unset;
    `env` adds to the environment it inherits.

    Returns once `/healthz` answers; raises `GatewayStartError` with the log if it exits first.
    """
    config = json.loads(json.dumps(config))
    port = free_port()
    admin_port = free_port()
    config.setdefault("listeners", [{"name": "public", "address": f"127.0.0.1:{port}"}])
    config.setdefault("admin", {}).setdefault("address", f"127.0.0.1:{admin_port}")
    config.setdefault("logging", {"format": "json", "level": "info"})
    port = port_of(config["listeners"][0]["address"], port)
    admin_port = port_of(config["admin"]["address"], admin_port)
    config_path = write_config(config, work_dir)
    log_path = config_path.with_suffix(".log")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(proxy_binary()), "run", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    gateway = Gateway(process, port, admin_port, log_path, config_path)
    failure = wait_until_serving(process, f"{gateway.admin_url}/healthz", timeout)
    # Pingora binds each listener on its service's own thread, so the admin can answer before the
    # first listener accepts.
    if failure is None and wait_until_accepting(process, port, timeout):
        return gateway
    failure = failure or f"did not accept connections on port {port} within {timeout:.0f} s"
    gateway.stop()
    raise GatewayStartError(f"proxy {failure}", gateway.log())


def wait_until_accepting(process: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """Polls until something accepts TCP connections on `port`; False if the process exits or
    time runs out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def wait_until_serving(process: subprocess.Popen[bytes], url: str, timeout: float) -> str | None:
    """Polls `url` until it answers 2xx; None then, else why not (the process exited, or time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with {process.returncode}"
        try:
            if requests.get(url, timeout=1).ok:
                return None
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    return f"did not answer {url} within {timeout:.0f} s"


def auth_filter() -> dict[str, Any]:
    """The auth filter with the same configuration file Envoy's bootstrap uses."""
    return {"name": "auth", "wasm": str(built_filter("auth_filter")), "configuration_file": str(AUTH_CONFIG)}


def cluster(name: str, *servers: EchoServer, **extra: object) -> dict[str, Any]:
    """A cluster config for echo upstreams."""
    endpoints = [f"127.0.0.1:{s.server_address[1]}" for s in servers]
    return {"name": name, "endpoints": endpoints, **extra}
