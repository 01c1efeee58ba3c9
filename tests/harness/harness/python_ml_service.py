"""Start python-ml (`python -m python_ml`) as its own process, as it is deployed behind the gateway:
an in-memory vector store and the offline generator, so nothing outside the machine is needed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests


def start_python_ml(
    port: int,
    log_path: Path | None = None,
    timeout: float = 60,
    signing_key: str | None = None,
    env: dict[str, str] | None = None,
    grpc_port: int = 0,
) -> subprocess.Popen[bytes]:
    """The service on `127.0.0.1:port`, returned once `/readyz` says the model is loaded; with
    `signing_key`, it scopes documents to the tenant the gateway signed for; with `grpc_port`, it
    serves its gRPC API there too; `env` adds to its environment.

    Its output goes to `log_path` (quoted if it fails to start), or nowhere."""
    service_env = {
        **os.environ,
        "PYML_PORT": str(port),
        "PYML_GRPC_PORT": str(grpc_port),
        "PYML_QDRANT_PATH": ":memory:",
        "PYML_GENERATOR": "extractive",
        **(env or {}),
    }
    if signing_key is not None:
        service_env["PYML_GATEWAY_SIGNING_KEY"] = signing_key
    with (log_path or Path(os.devnull)).open("wb") as out:
        command = [sys.executable, "-m", "python_ml"]
        process = subprocess.Popen(command, env=service_env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    process.kill()
    process.wait()
    log = log_path.read_text() if log_path else "(no log kept)"
    raise RuntimeError(f"python-ml did not become ready on port {port}:\n{log}")
