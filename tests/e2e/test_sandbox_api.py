"""sandbox-host's HTTP API on a real socket, with the real interpreters (issue 8).

The execution engine's hostile-input cases are in `sandbox-host/tests/hostile.rs`; this suite
covers what only the service does: the JSON contract, limits against server maxima, capabilities
from the caller's forwarded scopes, the admission queue, and the service staying up under a
concurrent hostile load.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from harness.gateway_identity import signed_headers
from harness.sandbox_host import APPROVAL_KEY_ENV, TEST_APPROVAL_KEY, SandboxHost, approve, base_config, start_sandbox

HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hi from wasm\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 13))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxHost]:
    """One service for the module's tests: an approval key for destructive capabilities, and a
    queue deep enough that a burst of 51 is all admitted."""
    os.environ[APPROVAL_KEY_ENV] = TEST_APPROVAL_KEY
    overrides = {
        "approval_key_env": APPROVAL_KEY_ENV,
        "concurrency": {"max_running": 4, "max_queued": 64, "queue_timeout_ms": 60000},
    }
    host = start_sandbox(tmp_path_factory.mktemp("sandbox"), overrides)
    yield host
    host.stop()


@pytest.fixture
def small_sandbox(tmp_path: Path) -> Iterator[Callable[..., SandboxHost]]:
    """A service with a custom queue, for admission tests."""
    started: list[SandboxHost] = []

    def start(**concurrency: int) -> SandboxHost:
        started.append(start_sandbox(tmp_path, {"concurrency": concurrency}))
        return started[-1]

    yield start
    for host in started:
        host.stop()


def error_of(response: requests.Response) -> dict[str, Any]:
    """The `error` object of a JSON error response, checking its stable shape."""
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"status", "code", "message", "request_id"}
    assert body["error"]["status"] == response.status_code
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return dict(body["error"])


def test_every_language_runs(sandbox: SandboxHost) -> None:
    cases = [
        ({"language": "python", "code": "print(1 + 1)"}, "2\n"),
        ({"language": "javascript", "code": "console.log([1, 2].map(x => x * 2).join(','))"}, "2,4\n"),
        ({"language": "wat", "code": HELLO_WAT}, "hi from wasm\n"),
    ]
    for body, stdout in cases:
        response = sandbox.execute(body)
        assert response.status_code == 200, response.text
        result = response.json()
        assert (result["outcome"], result["stdout"], result["exit_code"]) == ("ok", stdout, 0)
        assert result["fuel_used"] > 0 and result["duration_ms"] > 0
        assert result["language"] == body["language"]


def test_a_binary_module_is_accepted_as_base64(sandbox: SandboxHost) -> None:
    # The smallest WASI command: (module (func (export "_start"))).
    module = bytes.fromhex("0061736d0100000001040160000003020100070a01065f737461727400000a040102000b")
    response = sandbox.execute({"language": "wasm", "code": base64.b64encode(module).decode()})
    assert response.json()["outcome"] == "ok"


def test_stdin_args_and_the_callers_request_id(sandbox: SandboxHost) -> None:
    body = {
        "language": "python",
        "code": "import sys; print(sys.argv[1], sys.stdin.read())",
        "stdin": "in",
        "args": ["x"],
    }
    response = sandbox.execute(body, headers={"x-request-id": "req-42"})
    assert response.json()["stdout"] == "x in\n"
    assert response.json()["request_id"] == response.headers["x-request-id"] == "req-42"


@pytest.mark.parametrize("sent", [None, "has space", "x" * 500])
def test_every_request_has_one_id_in_its_answer_and_its_access_log_line(sandbox: SandboxHost, sent: str | None) -> None:
    """A missing or unusable `x-request-id` is replaced once: the answer and the log agree."""
    headers = {} if sent is None else {"x-request-id": sent}
    answered = requests.get(f"{sandbox.url}/no/such/endpoint", headers=headers, timeout=10)
    request_id = error_of(answered)["request_id"]
    assert request_id != sent and len(request_id) == 36
    deadline = time.monotonic() + 10
    while not (lines := [line for line in sandbox.log().splitlines() if f'"request_id":"{request_id}"' in line]):
        assert time.monotonic() < deadline, "no access-log line"
        time.sleep(0.05)
    logged = json.loads(lines[0])
    assert (logged["target"], logged["status"], logged["path"]) == ("access_log", 404, "/no/such/endpoint")


def test_runtimes_lists_languages_versions_packages_and_limits(sandbox: SandboxHost) -> None:
    listing = requests.get(f"{sandbox.url}/v1/runtimes", timeout=10).json()
    versions = {r["language"]: r["version"] for r in listing["runtimes"]}
    assert set(versions) == {"python", "javascript", "wasm", "wat"}
    assert "3.15" in versions["python"] and "QuickJS" in versions["javascript"]
    packages = {r["language"]: r["packages"] for r in listing["runtimes"]}
    assert {"numpy", "pandas"} <= set(packages["python"]) and packages["javascript"] == {}
    assert listing["limits"]["max"]["timeout_ms"] >= listing["limits"]["default"]["timeout_ms"]


def test_limits_apply_and_cannot_exceed_the_server_maximum(sandbox: SandboxHost) -> None:
    result = sandbox.execute({"language": "python", "code": "while True: pass", "limits": {"timeout_ms": 300}}).json()
    assert result["outcome"] == "timeout"
    assert result["limits"]["timeout_ms"] == 300
    refused = sandbox.execute({"language": "python", "code": "1", "limits": {"memory_bytes": 1 << 40}})
    assert refused.status_code == 400
    assert error_of(refused)["code"] == "limit_exceeds_maximum"


def test_bad_requests_get_json_errors(sandbox: SandboxHost) -> None:
    cases = [
        ({"language": "cobol", "code": "x"}, 400, "invalid_request"),
        ({"language": "python"}, 400, "invalid_request"),
        ({"language": "python", "code": "1", "limitz": {}}, 400, "invalid_request"),
        ({"language": "wasm", "code": "not base64!"}, 400, "invalid_request"),
        ({"language": "wasm", "code": base64.b64encode(b"\0asm garbage").decode()}, 400, "invalid_module"),
        (
            {"language": "wat", "code": '(module (import "env" "f" (func)) (func (export "_start")))'},
            400,
            "invalid_module",
        ),
        ({"language": "python", "code": "#" * (2 << 20)}, 413, "code_too_large"),
        ({"language": "python", "code": "#" * (5 << 20)}, 413, "request_too_large"),
    ]
    for body, status, code in cases:
        response = sandbox.execute(body)
        assert response.status_code == status, (body, response.text)
        assert error_of(response)["code"] == code
    assert error_of(requests.get(f"{sandbox.url}/nowhere", timeout=10))["code"] == "not_found"


def test_a_dataset_needs_the_scope_the_gateway_forwarded(sandbox: SandboxHost) -> None:
    body = {
        "language": "python",
        "code": "print(open('/data/demo/cities.csv').read().splitlines()[1])",
        "capabilities": {"datasets": [{"name": "demo"}]},
    }
    refused = sandbox.execute(body, headers=signed_headers(identity="bob", scopes="other"))
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "insufficient_scope"
    granted = sandbox.execute(body, headers=signed_headers(identity="alice", scopes="sandbox:dataset:demo"))
    assert granted.json()["stdout"] == "Lisbon,545000\n"


def test_scopes_count_only_with_a_valid_fresh_gateway_signature(sandbox: SandboxHost) -> None:
    body = {
        "language": "python",
        "code": "print(open('/data/demo/cities.csv').read().splitlines()[1])",
        "capabilities": {"datasets": [{"name": "demo"}]},
    }
    granted = signed_headers(identity="alice", scopes="sandbox:dataset:demo", request_id="r-1")
    forged_cases = {
        "unsigned": {"x-gateway-identity": "alice", "x-gateway-scopes": "sandbox:dataset:demo"},
        "wrong key": signed_headers(identity="alice", scopes="sandbox:dataset:demo", key="not-the-gateways-key-at-all"),
        "expired": signed_headers(identity="alice", scopes="sandbox:dataset:demo", at=int(time.time()) - 600),
        "scopes widened": {
            **signed_headers(identity="alice", scopes="other"),
            "x-gateway-scopes": "sandbox:dataset:demo",
        },
        "moved to another request": {**granted, "x-request-id": "r-2"},
        "garbage": {**granted, "x-gateway-signature": "v1;t=x;sig=\u00ff"},
    }
    for case, headers in forged_cases.items():
        refused = sandbox.execute(body, headers=headers)
        assert (refused.status_code, error_of(refused)["code"]) == (403, "insufficient_scope"), case
        # Pure computation still runs for such a caller.
        plain = sandbox.execute({"language": "python", "code": "print(6*7)"}, headers=headers)
        assert plain.json()["stdout"] == "42\n", case
    assert sandbox.execute(body, headers=granted).json()["stdout"] == "Lisbon,545000\n"


def test_a_service_that_refuses_unsigned_callers_runs_nothing_for_them(tmp_path: Path) -> None:
    config = base_config()
    strict = start_sandbox(tmp_path, {"gateway": {**config["gateway"], "unsigned_callers": "refuse"}})
    try:
        plain = {"language": "python", "code": "print(6*7)"}
        forged = {"x-gateway-identity": "alice", "x-gateway-scopes": "sandbox:dataset:demo"}
        for case, headers in {"no identity": {}, "unsigned identity": forged}.items():
            refused = strict.execute(plain, headers=headers)
            assert (refused.status_code, error_of(refused)["code"]) == (401, "untrusted_caller"), case
        signed = strict.execute(plain, headers=signed_headers(identity="alice", scopes=""))
        assert signed.json()["stdout"] == "42\n", signed.text
    finally:
        strict.stop()


def test_writing_a_dataset_needs_an_approval_of_this_code_by_this_caller(sandbox: SandboxHost) -> None:
    code = "print(1)"
    body = {"language": "python", "code": code, "capabilities": {"datasets": [{"name": "demo", "write": True}]}}
    headers = signed_headers(identity="alice", scopes="sandbox:dataset:demo")
    refused = sandbox.execute(body, headers=headers)
    assert (refused.status_code, error_of(refused)["code"]) == (403, "approval_required")
    later = int(time.time()) + 600
    approval = approve("alice", "demo", code.encode(), later)
    approved = sandbox.execute(body, headers={**headers, "x-sandbox-approval": approval})
    assert approved.json()["outcome"] == "ok", approved.text
    replays = {
        "other code": {**body, "code": "import shutil; shutil.rmtree('/data/demo')"},
        "another caller": body,
        "expired": body,
    }
    for case, replayed in replays.items():
        sent = {**headers, "x-sandbox-approval": approval}
        if case == "another caller":
            sent = {**signed_headers(identity="mallory", scopes="sandbox:dataset:demo"), "x-sandbox-approval": approval}
        if case == "expired":
            sent["x-sandbox-approval"] = approve("alice", "demo", code.encode(), int(time.time()) - 1)
        refused = sandbox.execute(replayed, headers=sent)
        assert (refused.status_code, error_of(refused)["code"]) == (403, "approval_required"), case
    assert sandbox.execute({"language": "python", "code": "print(6*7)"}).json()["stdout"] == "42\n"


def test_scratch_is_writable_and_discarded(sandbox: SandboxHost) -> None:
    write = "import os; open('/scratch/f', 'w').write('x'); print(os.listdir('/scratch'))"
    body = {"language": "python", "code": write, "capabilities": {"scratch": True}}
    assert sandbox.execute(body).json()["stdout"] == "['f']\n"
    look = {"language": "python", "code": "import os; print(os.listdir('/scratch'))", "capabilities": {"scratch": True}}
    assert sandbox.execute(look).json()["stdout"] == "[]\n", "a fresh scratch directory each time"


def test_a_full_queue_answers_429_and_a_long_wait_503(small_sandbox: Callable[..., SandboxHost]) -> None:
    host = small_sandbox(max_running=1, max_queued=1, queue_timeout_ms=500)
    slow = {
        "language": "wat",
        "code": '(module (func (export "_start") (loop (br 0))))',
        "limits": {"timeout_ms": 2000},
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        responses = list(pool.map(lambda _: host.execute(slow), range(3)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 429, 503], [r.text for r in responses]
    for response in responses:
        if response.status_code != 200:
            assert error_of(response)["code"] in {"too_many_executions", "queue_timeout"}
            assert response.headers["retry-after"] == "1"


def test_fifty_concurrent_hostile_executions_and_a_benign_one(sandbox: SandboxHost) -> None:
    hostile = [
        {"language": "python", "code": "while True: pass"},
        {"language": "python", "code": "x = bytearray(1 << 30)"},
        {"language": "python", "code": "while True: print('x' * 1000)"},
        {"language": "wat", "code": '(module (func $f (export "_start") (call $f)))'},
        {"language": "javascript", "code": "while (true) {}"},
    ]
    expected = {"timeout", "memory_limit", "output_limit", "trap"}

    def run(i: int) -> requests.Response:
        body = {**hostile[i % len(hostile)], "limits": {"timeout_ms": 300, "memory_bytes": 32 << 20}}
        return sandbox.execute(body, timeout=120)

    with ThreadPoolExecutor(max_workers=51) as pool:
        attacks = [pool.submit(run, i) for i in range(50)]
        benign = pool.submit(sandbox.execute, {"language": "python", "code": "print(sum(range(10)))"}, timeout=120)
        assert benign.result().json()["stdout"] == "45\n"
        results = [a.result() for a in attacks]
    for response in results:
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] in expected, response.text
    metrics = requests.get(f"{sandbox.url}/metrics", timeout=10).text
    assert 'sandbox_executions_total{language="python",outcome="timeout"}' in metrics
    assert requests.get(f"{sandbox.url}/readyz", timeout=10).status_code == 200


def test_sleeping_code_ends_at_its_deadline(sandbox: SandboxHost) -> None:
    for language, code in [
        ("python", "import time\ntime.sleep(100)"),
        ("javascript", "os.sleep(100000)"),
    ]:
        started = time.monotonic()
        response = sandbox.execute({"language": language, "code": code, "limits": {"timeout_ms": 1000}})
        took = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "timeout", response.text
        assert took < 2.0, f"{language}: answered after {took:.1f} s for a 1 s deadline"


def test_clients_that_hang_up_mid_sleep_give_their_slots_back(small_sandbox: Callable[..., SandboxHost]) -> None:
    host = small_sandbox(max_running=4, max_queued=32, queue_timeout_ms=30000)
    body = json.dumps({"language": "python", "code": "import time\ntime.sleep(25)", "limits": {"timeout_ms": 30000}})
    request = (
        f"POST /v1/executions HTTP/1.1\r\nhost: sandbox\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n{body}"
    ).encode()
    hung_up = []
    for _ in range(20):
        conn = socket.create_connection(("127.0.0.1", host.port), timeout=5)
        conn.sendall(request)
        hung_up.append(conn)
    time.sleep(1.0)  # the first four are asleep in the guest, the rest queued
    for conn in hung_up:
        conn.close()
    time.sleep(0.5)
    started = time.monotonic()
    response = host.execute({"language": "python", "code": "print(6*7)"})
    assert response.status_code == 200, response.text
    assert response.json()["stdout"] == "42\n"
    assert time.monotonic() - started < 1.0, "the slots came back at once"


def test_binary_and_control_output_keeps_the_answer_bounded(sandbox: SandboxHost) -> None:
    code = "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 4096)"  # 1 MiB of every byte value
    response = sandbox.execute({"language": "python", "code": code, "limits": {"stdout_bytes": 1 << 20}})
    assert response.status_code == 200, response.text[:300]
    body = response.json()
    assert body["stdout_truncated"] is False
    # JSON escapes a control character in 6 bytes and replaces an invalid byte by U+FFFD (3 bytes).
    assert len(response.content) <= 6 * (1 << 20) + 4096
    assert sandbox.execute({"language": "python", "code": "print(6*7)"}).json()["stdout"] == "42\n"
