"""Changing a running proxy: reloading its configuration (SIGHUP, or a watched file changing) and
handing its listeners to a new process (`proxy run --upgrade`, then SIGQUIT to the old one). Each
runs under load, and not one request may fail."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from harness.echo_upstream import EchoServer
from harness.gateway import (
    AUTH_CONFIG,
    DEMO_KEY,
    Gateway,
    built_filter,
    cluster,
    free_port,
    proxy_binary,
    wait_until_serving,
    write_config,
)

CACHE_CONFIG = AUTH_CONFIG.parent / "cache.json"


class Load:
    """Sends requests from several threads until stopped, recording every outcome.

    Each thread holds at most one connection (kept alive unless `keep_alive` is false or the
    server says `Connection: close`). A request whose connection was *just opened* and closed
    before any response is sent again once, and counted in `fresh_retries`: a server that stops
    may close a connection it accepted before the request reached it, which HTTP clients retry
    (RFC 9112, 9.3.1). A closed *reused* connection is a failure.
    """

    def __init__(self, url: str, headers: dict[str, str], threads: int = 4, keep_alive: bool = True) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.address = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.path = parsed.path or "/"
        self.headers = headers if keep_alive else {**headers, "connection": "close"}
        self.keep_alive = keep_alive
        self.threads = threads
        self.outcomes: list[tuple[int, str, str]] = []
        self.errors: list[str] = []
        self.fresh_retries = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        retrying = False
        while not self._stop.is_set():
            fresh = connection is None
            if connection is None:
                connection = http.client.HTTPConnection(*self.address, timeout=10)
            try:
                connection.request("GET", self.path, headers=self.headers)
                response = connection.getresponse()
                body = response.read()
                if response.will_close:
                    connection.close()
                    connection = None
                seen = json.loads(body) if response.status == 200 else {}
                outcome = (response.status, seen.get("upstream", ""), seen["headers"].get("x-gateway-identity", ""))
                retrying = False
                with self._lock:
                    self.outcomes.append(outcome)
            except (OSError, http.client.HTTPException, ValueError) as error:
                connection.close()
                connection = None
                with self._lock:
                    if fresh and not retrying and isinstance(error, ConnectionError | http.client.RemoteDisconnected):
                        self.fresh_retries += 1
                        retrying = True
                    else:
                        self.errors.append(f"{'new' if fresh else 'reused'} connection: {error!r}")
                        retrying = False

    def failures(self) -> list[str]:
        """Every request that did not get a 200, as text."""
        with self._lock:
            return self.errors + [str(o) for o in self.outcomes if o[0] != 200]

    def wait_for(self, predicate: Callable[[tuple[int, str, str]], bool], timeout: float = 30) -> None:
        """Waits until the last 20 responses all satisfy `predicate`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                recent = self.outcomes[-20:]
            if len(recent) == 20 and all(predicate(o) for o in recent):
                return
            time.sleep(0.05)
        raise AssertionError(f"not seen within {timeout} s; last responses: {recent}")


def write_atomically(path: Path, text: str | bytes) -> None:
    """Replaces `path` in one rename, as deployment tools (and Kubernetes ConfigMaps) do."""
    temporary = path.with_name(path.name + ".new")
    if isinstance(text, bytes):
        temporary.write_bytes(text)
    else:
        temporary.write_text(text)
    os.replace(temporary, path)


def edit_config(proxy: Gateway, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrites the proxy's configuration file with `change` applied."""
    config = json.loads(proxy.config_path.read_text())
    change(config)
    write_atomically(proxy.config_path, json.dumps(config, indent=2))


def config_status(proxy: Gateway) -> dict[str, Any]:
    """The admin `/config` report."""
    status: dict[str, Any] = requests.get(proxy.admin_url + "/config", timeout=5).json()
    return status


def wait_for_reload(proxy: Gateway, finished_after: float, timeout: float = 30) -> dict[str, Any]:
    """The `/config` report once a reload has finished after `finished_after` (Unix seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = config_status(proxy)
        last = status["last_reload"]
        if last is not None and last["finished_at_ms"] >= finished_after * 1000:
            return status
        time.sleep(0.05)
    raise AssertionError(f"no reload within {timeout} s:\n{proxy.log()[-3000:]}")


def auth_chain(auth_config: Path, wasm: Path | None = None) -> dict[str, Any]:
    """The auth filter reading its configuration from `auth_config`."""
    filter_ = {
        "name": "auth",
        "wasm": str(wasm or built_filter("auth_filter")),
        "configuration_file": str(auth_config),
    }
    return {"name": "chain", "filters": [filter_]}


def with_identity(auth_config: Path, identity: str) -> None:
    """Makes the demo key map to `identity`."""
    config = json.loads(AUTH_CONFIG.read_text())
    config["api_key"]["keys"][0]["identity"] = identity
    write_atomically(auth_config, json.dumps(config))


def test_sighup_reloads_twice_under_load_without_failing_a_request(
    tmp_path: Path, gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    blue, green = upstreams("blue"), upstreams("green")
    auth_config = tmp_path / "auth.json"
    with_identity(auth_config, "demo-user")
    proxy = gateway(
        {
            "server": {"reload": {"watch": False}},
            "filter_chains": [auth_chain(auth_config)],
            "routes": [{"name": "all", "cluster": "blue", "filter_chain": "chain"}],
            "clusters": [cluster("blue", blue), cluster("green", green)],
        }
    )
    assert config_status(proxy)["generation"] == 1

    with Load(proxy.url + "/v1/x", {"x-api-key": DEMO_KEY}) as load:
        load.wait_for(lambda o: o == (200, "blue", "demo-user"))

        # First change: the route moves to another cluster.
        edit_config(proxy, lambda c: c["routes"][0].update(cluster="green"))
        sent = time.time()
        proxy.process.send_signal(signal.SIGHUP)
        status = wait_for_reload(proxy, sent)
        assert status["last_reload"]["applied"], status
        assert status["last_reload"]["trigger"] == "signal"
        assert status["generation"] == 2
        load.wait_for(lambda o: o == (200, "green", "demo-user"))

        # Second change: the filter's own configuration file (new filter VMs on every worker).
        with_identity(auth_config, "demo-user-v2")
        sent = time.time()
        proxy.process.send_signal(signal.SIGHUP)
        assert wait_for_reload(proxy, sent)["generation"] == 3
        load.wait_for(lambda o: o == (200, "green", "demo-user-v2"))

    assert load.failures() == []
    assert load.fresh_retries == 0, "a reload closes no connection"
    metrics = requests.get(proxy.admin_url + "/metrics", timeout=5).text
    assert 'gateway_config_reloads_total{outcome="applied"} 2' in metrics
    assert "gateway_config_generation 3" in metrics


def test_watched_files_reload_and_a_broken_configuration_is_refused_while_serving(
    tmp_path: Path, gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    auth_config = tmp_path / "auth.json"
    with_identity(auth_config, "demo-user")
    wasm = tmp_path / "auth_filter.wasm"
    shutil.copy(built_filter("auth_filter"), wasm)
    proxy = gateway(
        {
            "server": {"reload": {"watch": True, "poll_interval": "200ms"}},
            "filter_chains": [auth_chain(auth_config, wasm)],
            "routes": [{"name": "all", "cluster": "app", "filter_chain": "chain"}],
            "clusters": [cluster("app", upstreams("app"))],
        }
    )

    def refused(change: Callable[[], None], reason: str) -> None:
        serving = config_status(proxy)["generation"]
        changed = time.time()
        change()
        status = wait_for_reload(proxy, changed)
        assert not status["last_reload"]["applied"], status
        assert reason in status["last_reload"]["error"], status
        assert status["generation"] == serving, "the serving configuration is unchanged"

    with Load(proxy.url + "/v1/x", {"x-api-key": DEMO_KEY}) as load:
        load.wait_for(lambda o: o == (200, "app", "demo-user"))

        # A file the configuration only references changes: no signal needed.
        changed = time.time()
        with_identity(auth_config, "watched-user")
        status = wait_for_reload(proxy, changed)
        assert status["last_reload"] | {"finished_at_ms": 0, "duration_ms": 0} == {
            "trigger": "file_change",
            "applied": True,
            "finished_at_ms": 0,
            "duration_ms": 0,
        }
        load.wait_for(lambda o: o == (200, "app", "watched-user"))

        # A .wasm that is not WebAssembly, a setting only a restart applies, a dangling reference.
        original_wasm = wasm.read_bytes()
        refused(lambda: write_atomically(wasm, b"\0asm but not really"), "filter_chains[0].filters[0]")
        restored = time.time()
        write_atomically(wasm, original_wasm)
        assert wait_for_reload(proxy, restored)["last_reload"]["applied"]
        refused(
            lambda: edit_config(proxy, lambda c: c["listeners"][0].update(address="127.0.0.1:1")),
            "listeners changed; only a restart applies that",
        )
        refused(
            lambda: edit_config(proxy, lambda c: c["routes"][0].update(cluster="ghost")),
            'routes[0].cluster: no cluster is named "ghost"',
        )
        time.sleep(0.5)

    assert load.failures() == []
    assert load.fresh_retries == 0, "a reload closes no connection"
    assert all(o == (200, "app", "watched-user") for o in load.outcomes[-50:])
    assert "configuration reload refused; the previous configuration keeps serving" in proxy.log()
    metrics = requests.get(proxy.admin_url + "/metrics", timeout=5).text
    assert 'gateway_config_reloads_total{outcome="refused"} 3' in metrics


@pytest.mark.parametrize("trigger", ["sighup", "file_watch"])
def test_a_change_made_while_starting_is_applied_once_serving(
    tmp_path: Path, upstreams: Callable[..., EchoServer], trigger: str
) -> None:
    auth_config = tmp_path / "auth.json"
    with_identity(auth_config, "demo-user")
    filters = [
        {"name": "auth", "wasm": str(built_filter("auth_filter")), "configuration_file": str(auth_config)},
        {"name": "cache", "wasm": str(built_filter("cache_filter")), "configuration_file": str(CACHE_CONFIG)},
    ]
    port, admin_port = free_port(), free_port()
    config = {
        "server": {"reload": {"watch": trigger == "file_watch", "poll_interval": "200ms"}},
        "listeners": [{"name": "public", "address": f"127.0.0.1:{port}"}],
        "admin": {"address": f"127.0.0.1:{admin_port}"},
        "filter_chains": [{"name": "chain", "filters": filters}],
        "routes": [{"name": "all", "cluster": "app", "filter_chain": "chain"}],
        "clusters": [cluster("app", upstreams("app"))],
    }
    admin = f"http://127.0.0.1:{admin_port}"
    log_path = tmp_path / "proxy.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(proxy_binary()), "run", str(write_config(config, tmp_path))], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        time.sleep(0.2)  # compiling the filters takes longer than this
        assert wait_until_serving(process, admin + "/healthz", timeout=0.1) is not None, "still starting"
        with_identity(auth_config, "changed-while-starting")
        if trigger == "sighup":
            process.send_signal(signal.SIGHUP)  # its default action would end the process
        assert wait_until_serving(process, admin + "/healthz", timeout=60) is None, log_path.read_text()

        def identity() -> str:
            response = requests.get(f"http://127.0.0.1:{port}/x", headers={"x-api-key": DEMO_KEY}, timeout=5)
            return str(response.json()["headers"]["x-gateway-identity"])

        deadline = time.monotonic() + 30
        while identity() != "changed-while-starting" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert identity() == "changed-while-starting", "the change made while compiling was applied"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)


@pytest.mark.parametrize("keep_alive", [False, True], ids=["new-connections", "keep-alive"])
def test_upgrade_hands_the_listeners_to_a_new_process_without_failing_a_request(
    tmp_path: Path,
    gateway: Callable[[dict[str, Any]], Gateway],
    upstreams: Callable[..., EchoServer],
    keep_alive: bool,
) -> None:
    old_upstream, new_upstream = upstreams("old"), upstreams("new")
    old = gateway(
        {
            "server": {"upgrade_socket": str(tmp_path / "upgrade.sock"), "shutdown_grace_period": "1s"},
            "routes": [{"name": "all", "cluster": "app"}],
            "clusters": [cluster("app", old_upstream)],
        }
    )
    # The new binary may bring a new configuration; here the upstream changes.
    new_config = json.loads(old.config_path.read_text())
    new_config["clusters"] = [cluster("app", new_upstream)]
    new_config_path = tmp_path / "new.yaml"
    new_config_path.write_text(json.dumps(new_config))
    new_log = tmp_path / "new.log"

    # New connections: the listening socket never refuses one. Keep-alive: the old process closes
    # each connection after a response (Connection: close) instead of dropping idle ones.
    with Load(old.url + "/", {}, keep_alive=keep_alive) as load:
        load.wait_for(lambda o: o[:2] == (200, "old"))
        with new_log.open("wb") as log:
            new = subprocess.Popen(
                [str(proxy_binary()), "run", "--upgrade", str(new_config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            old.process.send_signal(signal.SIGQUIT)
            assert wait_until_serving(new, old.admin_url + "/healthz", timeout=60) is None, new_log.read_text()
            load.wait_for(lambda o: o[:2] == (200, "new"))
            assert old.process.wait(timeout=30) == 0, old.log()[-3000:]
            time.sleep(0.5)
        finally:
            if load.failures():
                new.kill()
    try:
        assert load.failures() == [], f"{load.failures()[:5]}\n{old.log()[-2000:]}\n{new_log.read_text()[-2000:]}"
        # Only a connection the old process had just accepted when it stopped can be closed
        # unanswered, and each load thread holds one connection at a time.
        assert load.fresh_retries <= load.threads, load.fresh_retries
        assert requests.get(old.url + "/", timeout=5).json()["upstream"] == "new"
    finally:
        new.send_signal(signal.SIGINT)
        new.wait(timeout=15)
