"""The host's ABI probe filter in stock Envoy: the observable results asserted by
proxy/wasm-host/tests/abi.rs in our host hold in Envoy 1.40 too."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from harness.envoy import EnvoyProcess, start_envoy
from harness.gateway import Gateway


def start_probe(mode: str, wasm: Path, upstream_port: int, work_dir: Path) -> EnvoyProcess:
    return start_envoy(
        wasm=wasm, plugin_config=mode, plugin_name="probe", upstream_port=upstream_port, work_dir=work_dir
    )


@pytest.fixture(scope="module")
def probe(probe_wasm: Path, upstream_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyProcess]:
    envoy = start_probe("headers", probe_wasm, upstream_port, tmp_path_factory.mktemp("probe"))
    yield envoy
    envoy.stop()


def test_headers_properties_and_bodies_match_the_host(probe: EnvoyProcess) -> None:
    response = requests.post(
        f"http://127.0.0.1:{probe.listen_port}/v1/x",
        data=b"hello world",
        headers={"x-remove-me": "secret"},
        timeout=5,
    )
    assert response.status_code == 200
    # Response phase: property set in the request phase read back, response.code as int64,
    # body prepended and appended after buffering to end of stream.
    assert response.headers["x-prop-roundtrip"] == "from-request"
    assert response.headers["x-prop-code"] == "200"
    # The request headers cannot be read in the body phase once their phase continued.
    assert response.headers["x-late-request-header"] == "2"
    assert response.text.startswith("<") and response.text.endswith("!")
    seen = json.loads(response.text[1:-1])
    headers = seen["headers"]
    assert seen["path"] == "/probed/v1/x"
    assert headers["x-probe"] == "1"
    assert "x-remove-me" not in headers
    assert headers["x-prop-method"] == "POST"
    assert headers["x-prop-plugin"] == "probe"
    assert headers["x-prop-header"] == "secret"
    assert headers["x-prop-missing"] == "-"
    assert headers["x-prop-source"].startswith("127.0.0.1:")
    assert seen["body"] == "HELLO WORLD"


def test_local_reply_matches_the_host(probe_wasm: Path, upstream_port: int, tmp_path: Path) -> None:
    envoy = start_probe("local-reply", probe_wasm, upstream_port, tmp_path)
    try:
        response = requests.get(f"http://127.0.0.1:{envoy.listen_port}/", timeout=5)
    finally:
        envoy.stop()
    assert response.status_code == 418
    assert response.headers["x-local"] == "yes"
    # Envoy runs a local reply through the filter's own response callbacks.
    assert response.headers["x-prop-code"] == "418"
    assert response.text == "<short and stout!"


def test_a_root_context_logs_and_ticks_without_traffic_as_in_our_proxy(
    probe_wasm: Path,
    upstream_port: int,
    gateway: Callable[[dict[str, Any]], Gateway],
    tmp_path: Path,
) -> None:
    expected = ["probe: vm started", "probe: configured in mode", "probe: tick"]
    envoy_dir = tmp_path / "envoy"
    envoy_dir.mkdir()
    envoy = start_probe("root-log", probe_wasm, upstream_port, envoy_dir)
    probe_filter = {"name": "probe", "wasm": str(probe_wasm), "configuration": "root-log"}
    ours = gateway(
        {
            "filter_chains": [{"name": "probe", "filters": [probe_filter]}],
            "routes": [{"name": "all", "cluster": "app", "filter_chain": "probe"}],
            "clusters": [{"name": "app", "endpoints": [f"127.0.0.1:{upstream_port}"]}],
        }
    )
    try:
        deadline = time.monotonic() + 10
        logs = {"envoy": "", "ours": ""}
        while time.monotonic() < deadline:
            logs = {"envoy": envoy.log(), "ours": ours.log()}
            if all(line in log for line in expected for log in logs.values()):
                break
            time.sleep(0.2)
        for name, log in logs.items():
            missing = [line for line in expected if line not in log]
            assert not missing, f"{name} lacks {missing} with no traffic:\n{log[-3000:]}"
    finally:
        envoy.stop()
