"""Tenants: the gateway's signature verifier on its own, then isolation between tenants and the refusal
of unsigned and forged callers through the API on a real socket."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable

import httpx
import pytest
from conftest import RunningService
from gateway_signature import signed_headers
from pydantic import ValidationError
from python_ml.settings import Settings
from python_ml.trust import Caller, UntrustedCaller, verify
from test_api import assert_error

KEY = "test-signing-key-0123456789abcdef"
NOW = 1_760_000_000
MAX_AGE = 60


def raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Headers as an ASGI server hands them over."""
    return [(name.encode(), value.encode()) for name, value in headers.items()]


def check(headers: dict[str, str] | list[tuple[bytes, bytes]], key: str = KEY, now: float = NOW) -> Caller:
    return verify(raw(headers) if isinstance(headers, dict) else headers, key.encode(), MAX_AGE, now)


# --- the verifier -------------------------------------------------------------------------------


def test_a_valid_signature_names_the_tenant() -> None:
    headers = signed_headers(KEY, identity="alice", tenant="acme", scopes="rag:read rag:write", request_id="r-1", t=NOW)
    assert check(headers) == Caller(tenant="acme", identity="alice")


def test_without_a_tenant_the_identity_is_the_tenant() -> None:
    assert check(signed_headers(KEY, identity="bob", t=NOW)) == Caller(tenant="bob", identity="bob")


def test_an_absent_request_id_is_signed_as_empty() -> None:
    headers = signed_headers(KEY, identity="alice", tenant="acme", t=NOW)
    assert "x-request-id" not in headers
    assert check(headers).tenant == "acme"


def test_utf8_identities_are_read_as_signed() -> None:
    headers = raw(signed_headers(KEY, identity="zoë", tenant="café", t=NOW))
    headers = [(name, value.decode().encode("utf-8")) for name, value in headers]
    assert check(headers) == Caller(tenant="café", identity="zoë")


def test_a_signature_under_another_key_is_refused() -> None:
    with pytest.raises(UntrustedCaller, match="does not match"):
        check(signed_headers("another-key", identity="alice", tenant="acme", t=NOW))


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-gateway-tenant", "other"),
        ("x-gateway-tenant", ""),
        ("x-gateway-identity", "mallory"),
        ("x-gateway-scopes", "rag:read rag:write admin"),
        ("x-request-id", "r-2"),
    ],
)
def test_a_changed_header_is_refused(header: str, value: str) -> None:
    headers = signed_headers(KEY, identity="alice", tenant="acme", scopes="rag:read", request_id="r-1", t=NOW)
    with pytest.raises(UntrustedCaller, match="does not match"):
        check({**headers, header: value})


def test_a_header_added_after_signing_is_refused() -> None:
    headers = signed_headers(KEY, identity="alice", t=NOW)
    with pytest.raises(UntrustedCaller, match="does not match"):
        check({**headers, "x-gateway-tenant": "acme"})


@pytest.mark.parametrize(
    ("skew", "accepted"), [(-MAX_AGE, True), (MAX_AGE, True), (-MAX_AGE - 1, False), (MAX_AGE + 1, False)]
)
def test_timestamps_more_than_the_window_away_are_refused(skew: int, accepted: bool) -> None:
    # A negative skew is an old signature (replayed, or a slow gateway clock); a positive one is
    # dated in the future.
    headers = signed_headers(KEY, identity="alice", t=NOW + skew)
    if accepted:
        assert check(headers).tenant == "alice"
    else:
        with pytest.raises(UntrustedCaller, match="from the service's clock"):
            check(headers)


def signature_of(headers: dict[str, str]) -> str:
    return headers["x-gateway-signature"]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: "",
        lambda s: s.replace("v1;", "v2;"),
        lambda s: s.replace("v1;", ""),
        lambda s: s.upper().replace("V1;T=", "v1;t=").replace(";SIG=", ";sig="),
        lambda s: s[:-1],
        lambda s: s + "0",
        lambda s: s.replace(";sig=", ";sig=sha256:"),
        lambda s: s.replace(f"t={NOW}", f"t=+{NOW}"),
        lambda s: s.replace(f"t={NOW}", f"t={NOW}.0"),
        lambda s: s.replace(f"t={NOW}", "t=1e9"),
        lambda s: s.replace(f"t={NOW}", f"t= {NOW}"),
        lambda s: s.replace(f"t={NOW}", "t=" + "9" * 40),
        lambda s: s.replace(";", "; "),
        lambda s: s + ";extra=1",
        lambda s: s.split(";sig=")[0],
    ],
)
def test_malformed_signatures_are_refused(mangle: Callable[[str], str]) -> None:
    headers = signed_headers(KEY, identity="alice", t=NOW)
    mangled = {**headers, "x-gateway-signature": mangle(signature_of(headers))}
    with pytest.raises(UntrustedCaller):
        check(mangled)


def test_digits_of_other_scripts_are_not_a_timestamp() -> None:
    # int() reads "١٧٦٠..." (Arabic-Indic digits) as a number; the header must be ASCII digits.
    headers = raw(signed_headers(KEY, identity="alice", t=NOW))
    arabic = str(NOW).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    mangled = [
        (n, v.replace(f"t={NOW}".encode(), f"t={arabic}".encode()) if n == b"x-gateway-signature" else v)
        for n, v in headers
    ]
    with pytest.raises(UntrustedCaller, match="is not v1"):
        check(mangled)


def test_missing_signature_is_refused() -> None:
    headers = signed_headers(KEY, identity="alice", tenant="acme", t=NOW)
    del headers["x-gateway-signature"]
    with pytest.raises(UntrustedCaller, match="no x-gateway-signature"):
        check(headers)


@pytest.mark.parametrize("header", ["x-gateway-tenant", "x-gateway-signature", "x-request-id"])
def test_a_repeated_header_is_refused(header: str) -> None:
    headers = signed_headers(KEY, identity="alice", tenant="acme", request_id="r-1", t=NOW)
    with pytest.raises(UntrustedCaller, match="more than once"):
        check([*raw(headers), (header.encode(), headers[header].encode())])


def test_a_signature_over_no_identity_is_refused() -> None:
    with pytest.raises(UntrustedCaller, match="no tenant"):
        check(signed_headers(KEY, t=NOW))


def test_identity_bytes_that_are_not_utf8_are_refused() -> None:
    # Signed correctly over bytes that are not UTF-8: the signature holds but the tenant is unreadable.
    identity = b"\xff\xfe"
    message = b"\n".join([b"v1", str(NOW).encode(), b"", identity, b"", b""])
    digest = hmac.new(KEY.encode(), message, hashlib.sha256).hexdigest()
    headers = [(b"x-gateway-identity", identity), (b"x-gateway-signature", f"v1;t={NOW};sig={digest}".encode())]
    with pytest.raises(UntrustedCaller, match="not UTF-8"):
        check(headers)


# --- through the API ----------------------------------------------------------------------------


def as_tenant(tenant: str, identity: str | None = None) -> dict[str, str]:
    """A caller's headers as the gateway sends them, signed now."""
    return signed_headers(KEY, identity=identity or f"{tenant}-user", tenant=tenant, scopes="rag")


def ingest(client: httpx.Client, headers: dict[str, str], document: dict[str, object]) -> dict[str, object]:
    response = client.post("/v1/rag/documents", json={"documents": [document]}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def assert_still_serves(client: httpx.Client, headers: dict[str, str]) -> None:
    """A benign ingest and query for the caller work."""
    ingest(client, headers, {"id": "benign", "text": "Sourdough bread rises because wild yeast makes gas."})
    answer = client.post("/v1/rag/query", json={"question": "Why does sourdough rise?"}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert "wild yeast" in answer.json()["answer"]


A_TEXT = "The acme launch code is tangerine. Only acme may read this sentence."
B_TEXT = "Globex keeps its recipes in the blue binder. This belongs to globex."


def test_tenants_cannot_read_overwrite_or_delete_each_others_documents(
    service_factory: Callable[..., RunningService],
) -> None:
    service = service_factory(gateway_signing_key=KEY)
    a, b = as_tenant("acme"), as_tenant("globex")
    with service.client() as client:
        assert ingest(client, a, {"id": "d1", "text": A_TEXT, "metadata": {"owner": "acme"}})["chunks"] == 1

        # B sees nothing of A's: not by id, not by search, not by delete.
        assert_error(client.get("/v1/rag/documents/d1", headers=b), 404, "document_not_found")
        assert_error(client.post("/v1/rag/query", json={"question": "launch code"}, headers=b), 409, "empty_corpus")
        assert_error(client.delete("/v1/rag/documents/d1", headers=b), 404, "document_not_found")

        # B's own d1, with A's exact text as a second document: nothing of A's is reused or replaced.
        both = client.post(
            "/v1/rag/documents",
            json={"documents": [{"id": "d1", "text": B_TEXT}, {"id": "copy", "text": A_TEXT}]},
            headers=b,
        )
        assert both.status_code == 200, both.text
        # Reusing A's stored vector would tell B that A holds this text.
        assert [(d["id"], d["embedded"], d["reused"]) for d in both.json()["documents"]] == [
            ("d1", 1, 0),
            ("copy", 1, 0),
        ]
        assert client.get("/v1/rag/documents/d1", headers=a).json()["chunks"][0]["text"] == A_TEXT
        assert client.get("/v1/rag/documents/d1", headers=b).json()["chunks"][0]["text"] == B_TEXT

        # Each tenant's search finds its own documents only, even with a filter naming the other's metadata.
        for headers, own in ((a, {"d1"}), (b, {"d1", "copy"})):
            found = client.post("/v1/rag/query", json={"question": "launch code recipes", "top_k": 50}, headers=headers)
            assert {s["document_id"] for s in found.json()["sources"]} == own
        filtered = client.post(
            "/v1/rag/query", json={"question": "launch code", "filters": {"owner": "acme"}}, headers=b
        ).json()
        assert filtered["sources"] == []

        # B deleting its d1 leaves A's.
        assert client.delete("/v1/rag/documents/d1", headers=b).json() == {"id": "d1", "chunks": 1}
        assert_error(client.get("/v1/rag/documents/d1", headers=b), 404, "document_not_found")
        kept = client.get("/v1/rag/documents/d1", headers=a).json()
        assert kept["metadata"] == {"owner": "acme"} and kept["chunks"][0]["text"] == A_TEXT

        assert_still_serves(client, a)
        assert_still_serves(client, b)


def test_the_identity_is_the_tenant_when_the_gateway_names_none(
    service_factory: Callable[..., RunningService],
) -> None:
    service = service_factory(gateway_signing_key=KEY)
    dave = signed_headers(KEY, identity="dave")
    with service.client() as client:
        ingest(client, dave, {"id": "notes", "text": A_TEXT})
        assert client.get("/v1/rag/documents/notes", headers=dave).status_code == 200
        assert client.get("/v1/rag/documents/notes", headers=as_tenant("acme")).status_code == 404


def test_unsigned_and_forged_callers_get_401(service_factory: Callable[..., RunningService]) -> None:
    service = service_factory(gateway_signing_key=KEY)
    a = as_tenant("acme")
    claims = {"x-gateway-identity": "acme-user", "x-gateway-tenant": "acme", "x-gateway-scopes": "rag"}
    forged = signed_headers("guessed-key", identity="acme-user", tenant="acme")
    expired = signed_headers(KEY, identity="acme-user", tenant="acme", t=int(time.time()) - 120)
    future = signed_headers(KEY, identity="acme-user", tenant="acme", t=int(time.time()) + 120)
    tampered = {**a, "x-gateway-tenant": "globex"}
    with service.client() as client:
        ingest(client, a, {"id": "d1", "text": A_TEXT})
        for headers in ({}, claims, forged, expired, future, tampered):
            calls = [
                client.post("/v1/rag/documents", json={"documents": [{"id": "d1", "text": "x"}]}, headers=headers),
                client.post("/v1/rag/query", json={"question": "launch code"}, headers=headers),
                client.get("/v1/rag/documents/d1", headers=headers),
                client.delete("/v1/rag/documents/d1", headers=headers),
            ]
            for response in calls:
                assert_error(response, 401, "untrusted_caller")
            assert_still_serves(client, a)
        # Nothing any of them sent reached A's document.
        assert client.get("/v1/rag/documents/d1", headers=a).json()["chunks"][0]["text"] == A_TEXT
        # Embeddings hold no tenant's data, and stay open to whoever the gateway lets through.
        assert client.post("/v1/embeddings", json={"input": "hello"}).status_code == 200
        assert client.get("/readyz").status_code == 200


def test_without_a_key_identity_headers_are_ignored_and_everyone_is_public(
    service_factory: Callable[..., RunningService], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="python_ml.trust"):
        service = service_factory()
    warnings = [r.getMessage() for r in caplog.records if r.name == "python_ml.trust"]
    assert len(warnings) == 1 and "PYML_GATEWAY_SIGNING_KEY is not set" in warnings[0] and "'public'" in warnings[0]
    with service.client() as client:
        # Claimed tenants, signed or not, make no difference: there is one shared tenant.
        ingest(client, {"x-gateway-tenant": "acme"}, {"id": "d1", "text": A_TEXT})
        for headers in ({}, {"x-gateway-tenant": "globex"}, signed_headers("any-key", tenant="globex")):
            assert client.get("/v1/rag/documents/d1", headers=headers).json()["chunks"][0]["text"] == A_TEXT
        assert_still_serves(client, {})


def test_the_key_is_never_logged(
    service_factory: Callable[..., RunningService], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        service = service_factory(gateway_signing_key=KEY)
        with service.client() as client:
            tampered = {**as_tenant("acme"), "x-gateway-scopes": "all"}
            assert_error(client.get("/v1/rag/documents/d1", headers=tampered), 401, "untrusted_caller")
            assert_still_serves(client, as_tenant("acme"))
    assert "is not set" not in caplog.text
    assert "need the gateway's signature" in caplog.text
    assert KEY not in caplog.text


@pytest.mark.parametrize("key", ["", "fifteen-bytes!!"])
def test_a_short_key_is_refused_at_start(key: str) -> None:
    with pytest.raises(ValidationError, match="at least 16 bytes"):
        Settings(_env_file=None, gateway_signing_key=key)
