"""The auth filter's .wasm in stock Envoy 1.40 (V8), in front of a real upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from harness.envoy import EnvoyProcess, EnvoyStartError, start_envoy

KEYS = {"alice": "alice-key-1", "bob": "bob-key-2"}
PLUGIN_CONFIG = json.dumps(
    {
        "identity_header": "x-gateway-identity",
        "api_key": {
            "header": "x-api-key",
            "query_parameter": "api_key",
            "keys": [{"identity": name, "key": key} for name, key in KEYS.items()],
        },
    }
)


@pytest.fixture(scope="module")
def envoy(auth_wasm: Path, upstream_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyProcess]:
    process = start_envoy(
        wasm=auth_wasm,
        plugin_config=PLUGIN_CONFIG,
        upstream_port=upstream_port,
        work_dir=tmp_path_factory.mktemp("envoy"),
    )
    yield process
    process.stop()


def url(envoy: EnvoyProcess, path: str = "/v1/echo") -> str:
    return f"http://127.0.0.1:{envoy.listen_port}{path}"


def assert_unauthorized(response: requests.Response, code: str) -> None:
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"] == 'ApiKey realm="gateway"'
    error = response.json()["error"]
    assert error["status"] == 401
    assert error["code"] == code
    assert error["request_id"], "the error names the request id Envoy generated"


def test_valid_key_reaches_upstream_with_identity(envoy: EnvoyProcess) -> None:
    response = requests.get(url(envoy), headers={"x-api-key": KEYS["alice"]}, timeout=5)
    assert response.status_code == 200
    seen = response.json()
    assert seen["headers"]["x-gateway-identity"] == "alice"
    assert "x-api-key" not in seen["headers"], "the credential is hidden from the upstream"


def test_key_in_query_parameter(envoy: EnvoyProcess) -> None:
    response = requests.get(url(envoy, f"/v1/echo?a=1&api_key={KEYS['bob']}"), timeout=5)
    assert response.status_code == 200
    seen = response.json()
    assert seen["headers"]["x-gateway-identity"] == "bob"
    assert seen["path"] == "/v1/echo?a=1"


def test_missing_key_is_401(envoy: EnvoyProcess) -> None:
    assert_unauthorized(requests.get(url(envoy), timeout=5), "missing_api_key")


def test_wrong_key_is_401(envoy: EnvoyProcess) -> None:
    response = requests.get(url(envoy), headers={"x-api-key": "not-a-key"}, timeout=5)
    assert_unauthorized(response, "invalid_api_key")
    assert "not-a-key" not in response.text, "the presented credential is never echoed"


def test_forged_identity_never_reaches_upstream(envoy: EnvoyProcess) -> None:
    response = requests.get(
        url(envoy),
        headers={"x-api-key": KEYS["bob"], "x-gateway-identity": "admin", "X-Gateway-Identity": "root"},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.json()["headers"]["x-gateway-identity"] == "bob"


def test_forged_identity_without_key_is_rejected(envoy: EnvoyProcess) -> None:
    response = requests.get(url(envoy), headers={"x-gateway-identity": "admin"}, timeout=5)
    assert_unauthorized(response, "missing_api_key")


def test_invalid_plugin_configuration_refuses_to_start(auth_wasm: Path, upstream_port: int, tmp_path: Path) -> None:
    with pytest.raises(EnvoyStartError) as failure:
        start_envoy(
            wasm=auth_wasm,
            plugin_config=json.dumps({"api_key": {"keys": [{"identity": "x"}]}}),
            upstream_port=upstream_port,
            work_dir=tmp_path,
        )
    assert 'auth-filter: invalid plugin configuration: api_key.keys[0]: give exactly one of "key" or "sha256"' in (
        failure.value.log
    )
