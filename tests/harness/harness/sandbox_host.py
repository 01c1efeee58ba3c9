"""Start sandbox-host (crate `sandbox-host`) for a test, from its shipped configuration plus overrides.

The harness starts from the shipped `sandbox-host/config/default.yaml` (its runtimes, pins and
datasets, with paths made absolute), applies the test's overrides, and gives it a free port.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from harness.envoy import free_port  # envoy-config/, on the path of every suite and the benchmark
from harness.gateway import REPO, built_binary, target_dir, wait_until_serving

DEFAULT_CONFIG = REPO / "sandbox-host" / "config" / "default.yaml"


def sandbox_binary() -> Path:
    """`$SANDBOX_HOST_BINARY`, else the `proxy` profile build."""
    return built_binary("sandbox-host", "SANDBOX_HOST_BINARY")


def base_config() -> dict[str, Any]:
    """The shipped configuration, with its relative paths resolved."""
    config: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text())
    base = DEFAULT_CONFIG.parent
    for runtime in config["runtimes"].values():
        runtime["module"] = str((base / runtime["module"]).resolve())
        if "stdlib" in runtime:
            runtime["stdlib"]["archive"] = str((base / runtime["stdlib"]["archive"]).resolve())
        assert Path(runtime["module"]).is_file(), f"{runtime['module']} missing: run `make sandbox-runtimes`"
    for dataset in config["datasets"]:
        dataset["path"] = str((base / dataset["path"]).resolve())
    return config


@dataclass
class SandboxHost:
    """A running sandbox-host."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything the service has logged so far."""
        return self.log_path.read_text(errors="replace")

    def execute(
        self, body: dict[str, Any], headers: dict[str, str] | None = None, timeout: float = 60
    ) -> requests.Response:
        """`POST /v1/executions`."""
        return requests.post(f"{self.url}/v1/executions", json=body, headers=headers, timeout=timeout)

    def session(
        self,
        method: str,
        path: str = "",
        headers: dict[str, str] | None = None,
        json: object = None,
        data: bytes | None = None,
    ) -> requests.Response:
        """`method /v1/sessions{path}` with a JSON body, or raw `data`."""
        return requests.request(
            method, f"{self.url}/v1/sessions{path}", headers=headers, json=json, data=data, timeout=60
        )

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then waits for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_sandbox(
    work_dir: Path, overrides: dict[str, Any] | None = None, timeout: float = 300, env: dict[str, str] | None = None
) -> SandboxHost:
    """Starts the service and waits for `/readyz` (the first start compiles CPython: up to minutes);
    `env` adds to the environment it inherits."""
    config = {**base_config(), **(overrides or {})}
    port = free_port()
    config_path = work_dir / f"sandbox-{port}.yaml"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = config_path.with_suffix(".log")
    cache_dir = os.environ.get("SANDBOX_CACHE_DIR", str(target_dir() / "sandbox-cache"))
    command = [
        str(sandbox_binary()),
        "--config",
        str(config_path),
        "--listen",
        f"127.0.0.1:{port}",
        "--cache-dir",
        cache_dir,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    host = SandboxHost(process, port, log_path)
    failure = wait_until_serving(process, f"{host.url}/readyz", timeout)
    if failure is None:
        return host
    host.stop()
    raise RuntimeError(f"sandbox-host {failure}:\n{host.log()}")


APPROVAL_KEY_ENV = "SANDBOX_APPROVAL_KEY"
# The approval key the suites give sandbox-host (an approver's key, not the gateway's).
TEST_APPROVAL_KEY = "e2e-approval-key-0123456789"


def approve(identity: str, dataset: str, code: bytes, expires_at: int, key: str = TEST_APPROVAL_KEY) -> str:
    """An `x-sandbox-approval` for writing `dataset` with exactly `code`, by `identity`, until
    `expires_at` (sandbox-host/src/capabilities.rs)."""
    message = f"v1\n{identity}\n{dataset}\n{hashlib.sha256(code).hexdigest()}\n{expires_at}".encode()
    return f"v1:{expires_at}:{hmac.new(key.encode(), message, hashlib.sha256).hexdigest()}"
