"""sandbox-host's sessions (issue 24) on a real socket, with the real Python snapshot.

A session keeps one interpreter instance between executions: globals, imports and `/scratch`.
It belongs to the identity the gateway signed; to anyone else it does not exist.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from harness.gateway_identity import SIGNING_KEY_ENV, TEST_SIGNING_KEY, signed_headers
from harness.sandbox_host import SandboxHost, start_sandbox

ALICE = "alice"
BOB = "bob"


def start(work_dir: Path, **sessions: int) -> SandboxHost:
    """A service trusting the test gateway key, with these session settings."""
    overrides = {
        "gateway": {"signing_key_env": SIGNING_KEY_ENV, "max_signature_age_seconds": 60},
        "sessions": {"max_per_identity": 2, "max_total": 3, **sessions},
    }
    return start_sandbox(work_dir, overrides, env={SIGNING_KEY_ENV: TEST_SIGNING_KEY})


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxHost]:
    host = start(tmp_path_factory.mktemp("sessions"))
    yield host
    host.stop()


def as_(identity: str) -> dict[str, str]:
    return signed_headers(identity=identity)


def create(sandbox: SandboxHost, identity: str = ALICE) -> dict[str, Any]:
    response = sandbox.session("POST", headers=as_(identity))
    assert response.status_code == 201, response.text
    session: dict[str, Any] = response.json()["session"]
    assert response.headers["location"] == f"/v1/sessions/{session['id']}"
    return session


def run(
    sandbox: SandboxHost, session_id: str, code: str, identity: str = ALICE, limits: dict[str, int] | None = None
) -> requests.Response:
    body: dict[str, Any] = {"code": code, "limits": limits or {}}
    return sandbox.session("POST", f"/{session_id}/executions", headers=as_(identity), json=body)


def error_code(response: requests.Response) -> str:
    error = response.json()["error"]
    assert set(error) == {"status", "code", "message", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    return str(error["code"])


@pytest.fixture
def session(sandbox: SandboxHost) -> Iterator[dict[str, Any]]:
    created = create(sandbox)
    yield created
    sandbox.session("DELETE", f"/{created['id']}", headers=as_(ALICE))


def test_globals_imports_and_scratch_files_live_on_between_executions(
    sandbox: SandboxHost, session: dict[str, Any]
) -> None:
    first = run(sandbox, session["id"], "import numpy as np\nx = np.arange(5)\nopen('/scratch/f', 'w').write('kept')")
    assert first.json()["outcome"] == "ok", first.text
    assert first.json()["session_ended"] is False
    second = run(sandbox, session["id"], "print(int(x.sum()), np.__name__, open('/scratch/f').read())")
    assert second.json()["stdout"] == "10 numpy kept\n", second.text
    # A Python exception is the program's error, not the session's end.
    failed = run(sandbox, session["id"], "raise ValueError('boom')").json()
    assert (failed["outcome"], failed["exit_code"], failed["session_ended"]) == ("error", 1, False)
    assert "ValueError: boom" in failed["stderr"]
    # So is `sys.exit`: the program ends with its status, the session goes on.
    exited = run(sandbox, session["id"], "import sys\nsys.exit(3)").json()
    assert (exited["outcome"], exited["exit_code"], exited["session_ended"]) == ("error", 3, False)
    # As in a notebook cell, the value of a last expression is printed.
    assert run(sandbox, session["id"], "len(x)").json()["stdout"] == "5\n"
    shown = sandbox.session("GET", f"/{session['id']}", headers=as_(ALICE)).json()["session"]
    assert shown["executions"] == 5 and shown["language"] == "python"
    assert 0 < shown["memory_bytes"] <= 256 << 20


def test_another_identity_cannot_see_use_or_delete_a_session(sandbox: SandboxHost, session: dict[str, Any]) -> None:
    path = f"/{session['id']}"
    assert run(sandbox, session["id"], "secret = 42").json()["outcome"] == "ok"
    for method, suffix, body in [
        ("GET", "", None),
        ("DELETE", "", None),
        ("POST", "/executions", {"code": "print(secret)"}),
    ]:
        response = sandbox.session(method, path + suffix, headers=as_(BOB), json=body)
        assert (response.status_code, error_code(response)) == (404, "session_not_found"), method
    assert sandbox.session("GET", headers=as_(BOB)).json()["sessions"] == []
    listed = sandbox.session("GET", headers=as_(ALICE)).json()["sessions"]
    assert session["id"] in [s["id"] for s in listed]
    # Bob's own session has its own globals and its own /scratch.
    bobs = create(sandbox, BOB)
    try:
        assert run(sandbox, session["id"], "open('/scratch/mine', 'w').write('a')").json()["outcome"] == "ok"
        looked = run(sandbox, bobs["id"], "import os\nprint('secret' in globals(), os.listdir('/scratch'))", BOB)
        assert looked.json()["stdout"] == "False []\n", looked.text
    finally:
        sandbox.session("DELETE", f"/{bobs['id']}", headers=as_(BOB))
    # The owner still has it, untouched.
    assert run(sandbox, session["id"], "print(secret)").json()["stdout"] == "42\n"


def test_sessions_need_an_identity_the_gateway_signed(sandbox: SandboxHost, session: dict[str, Any]) -> None:
    forged = signed_headers(identity=ALICE, key="not-the-gateways-key-at-all")
    unsigned = {"x-gateway-identity": ALICE}
    for headers in [None, unsigned, forged, signed_headers()]:
        created = sandbox.session("POST", headers=headers)
        assert (created.status_code, error_code(created)) == (403, "identity_required")
        used = sandbox.session("POST", f"/{session['id']}/executions", headers=headers, json={"code": "1"})
        assert used.status_code == 403


def test_caps_per_identity_and_deletion(sandbox: SandboxHost) -> None:
    first, second = create(sandbox), create(sandbox)
    refused = sandbox.session("POST", headers=as_(ALICE))
    assert (refused.status_code, error_code(refused)) == (429, "too_many_sessions")
    assert "retry-after" not in refused.headers, "retrying cannot help until one is deleted"
    deleted = sandbox.session("DELETE", f"/{first['id']}", headers=as_(ALICE))
    assert deleted.status_code == 204
    gone = run(sandbox, first["id"], "1")
    assert (gone.status_code, error_code(gone)) == (404, "session_not_found")
    third = create(sandbox)
    # The service's total: alice holds 2, carol's first fits, dave's does not.
    carol = create(sandbox, "carol")
    full = sandbox.session("POST", headers=as_("dave"))
    assert (full.status_code, error_code(full)) == (429, "sessions_full")
    for identity, created in [(ALICE, second), (ALICE, third), ("carol", carol)]:
        assert sandbox.session("DELETE", f"/{created['id']}", headers=as_(identity)).status_code == 204


@pytest.mark.parametrize(
    ("code", "limits", "outcome"),
    [
        ("while True: pass", {"timeout_ms": 300}, "timeout"),
        ("import time\ntime.sleep(60)", {"timeout_ms": 300}, "timeout"),
        ("x = bytearray(10**9)", {}, "memory_limit"),
        ("while True: print('x' * 1000)", {"stdout_bytes": 10000}, "output_limit"),
        ("open('/scratch/big', 'wb').write(b'x' * (70 << 20))", {}, "scratch_limit"),
    ],
)
def test_a_program_that_hits_a_limit_ends_its_session_and_others_go_on(
    sandbox: SandboxHost, code: str, limits: dict[str, int], outcome: str
) -> None:
    doomed, bystander = create(sandbox), create(sandbox, BOB)
    try:
        assert run(sandbox, bystander["id"], "y = 7", BOB).json()["outcome"] == "ok"
        result = run(sandbox, doomed["id"], code, limits=limits).json()
        assert (result["outcome"], result["session_ended"]) == (outcome, True), result
        after = run(sandbox, doomed["id"], "print(1)")
        assert (after.status_code, error_code(after)) == (404, "session_not_found")
        assert run(sandbox, bystander["id"], "print(y)", BOB).json()["stdout"] == "7\n"
    finally:
        sandbox.session("DELETE", f"/{bystander['id']}", headers=as_(BOB))
        sandbox.session("DELETE", f"/{doomed['id']}", headers=as_(ALICE))


def test_one_execution_at_a_time_per_session(sandbox: SandboxHost, session: dict[str, Any]) -> None:
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(run, sandbox, session["id"], "import time\ntime.sleep(1.5)\nz = 1")
        time.sleep(0.5)
        busy = run(sandbox, session["id"], "print(2)")
        assert (busy.status_code, error_code(busy)) == (409, "session_busy")
        assert slow.result().json()["outcome"] == "ok"
    assert run(sandbox, session["id"], "print(z)").json()["stdout"] == "1\n"


def test_hostile_requests_are_refused_and_the_session_goes_on(sandbox: SandboxHost, session: dict[str, Any]) -> None:
    path = f"/{session['id']}/executions"
    cases: list[tuple[Any, int, str]] = [
        (b"not json", 400, "invalid_request"),
        ({"code": 5}, 400, "invalid_request"),
        ({"code": "1", "stdin": "x"}, 400, "invalid_request"),
        ({"code": "1", "limits": {"memory_bytes": 1 << 30}}, 400, "invalid_request"),
        ({"code": "1", "limits": {"timeout_ms": 10**9}}, 400, "limit_exceeds_maximum"),
        ({"code": "x" * (2 << 20)}, 413, "code_too_large"),
        ({"code": "x" * (5 << 20)}, 413, "request_too_large"),
    ]
    for body, status, code in cases:
        raw = body if isinstance(body, bytes) else None
        response = sandbox.session("POST", path, headers=as_(ALICE), json=None if raw else body, data=raw)
        assert (response.status_code, error_code(response)) == (status, code), (
            body if isinstance(body, bytes) else list(body)
        )
    for weird in ["../../etc/passwd", "x" * 5000, "%00"]:
        response = sandbox.session("GET", f"/{weird}", headers=as_(ALICE))
        assert response.status_code == 404
    wrong_language = sandbox.session("POST", headers=as_(ALICE), json={"language": "javascript"})
    assert (wrong_language.status_code, error_code(wrong_language)) == (400, "sessions_unsupported")
    assert run(sandbox, session["id"], "print('still here')").json()["stdout"] == "still here\n"


def test_idle_sessions_expire(tmp_path: Path) -> None:
    host = start(tmp_path, idle_timeout_seconds=1)
    try:
        created = create(host)
        assert run(host, created["id"], "a = 1").json()["outcome"] == "ok"
        deadline = time.monotonic() + 10
        while host.session("GET", f"/{created['id']}", headers=as_(ALICE)).status_code == 200:
            assert time.monotonic() < deadline, "the idle session was never deleted"
            time.sleep(0.2)
        # The sweep then frees its instance.
        while "sessions expired" not in host.log():
            assert time.monotonic() < deadline, "the expired session was never swept"
            time.sleep(0.2)
    finally:
        host.stop()
