"""A real `redis-server` on a free loopback port, for tests and benchmarks (no persistence)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.envoy import free_port  # envoy-config/, on the path of every suite and the benchmark


def redis_binary() -> str:
    """`redis-server` from PATH; `make setup` installs it."""
    path = shutil.which("redis-server")
    assert path, "redis-server missing: run `make setup` (make test does)"
    return path


@dataclass
class RedisServer:
    """A running `redis-server`; `kill()` and `start()` simulate an outage on the same port."""

    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()
    """More `redis-server` options, such as `--cluster-enabled yes`."""

    @property
    def url(self) -> str:
        """The URL the proxy's `shared_data.redis.url` takes."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        """Starts the server and waits until it answers PING."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    redis_binary(),
                    *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                    # A cluster node's state file, beside the log rather than in the working directory.
                    *("--cluster-config-file", str(self.log_path.with_suffix(".nodes.conf"))),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.command("PING") == "+PONG":
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        """Kills the server at once (SIGKILL): connections drop, data is lost."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def command(self, *args: str) -> str | None:
        """Sends one inline command and returns the first reply line, or None if unreachable."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall((" ".join(args) + "\r\n").encode())
                return sock.recv(4096).decode(errors="replace").split("\r\n", 1)[0]
        except OSError:
            return None


def start_redis(work_dir: Path, *extra_args: str) -> RedisServer:
    """Starts a server on a free port with `extra_args`; logs go to `work_dir`."""
    port = free_port()
    server = RedisServer(port, work_dir / f"redis-{port}.log", extra_args=extra_args)
    server.start()
    return server
