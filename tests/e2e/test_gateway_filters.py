"""The three gateway filters (auth, rate limit, cache) chained, run against our proxy and against
Envoy 1.40 with the same .wasm files and the same plugin configuration, and one set of
expectations: every test runs once per gateway.

Hostile inputs included: malformed and oversized tokens, `alg: none`, expired tokens, wrong
audience, forged identity headers, a burst of 1,000 requests against a limit of 100, and cache
poisoning through unkeyed headers.
"""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from harness.filter_stack import BATCH_KEY, BYPASS_KEY, ISSUER, KID, Stack


def token(key: rsa.RSAPrivateKey, kid: str = KID, **overrides: str | int | list[str] | None) -> str:
    """A token from the test identity provider, valid for ten minutes unless overridden."""
    claims: dict[str, str | int | list[str] | None] = {
        "iss": ISSUER,
        "aud": "gateway",
        "sub": "alice",
        "tenant": "acme",
        "exp": int(time.time()) + 600,
    }
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="RS256", headers={"kid": kid})


def get(stack: Stack, path: str, **headers: str) -> requests.Response:
    """GET through the gateway."""
    return requests.get(stack.url + path, headers=headers, timeout=10)


def bearer(value: str) -> dict[str, str]:
    """An Authorization header."""
    return {"authorization": f"Bearer {value}"}


def error_code(response: requests.Response) -> str:
    """The stable code of a JSON error body."""
    return str(response.json()["error"]["code"])


def seen_upstream(response: requests.Response) -> dict[str, str]:
    """The request headers the echo upstream received."""
    assert response.status_code == 200, response.text
    return dict(response.json()["headers"])


# --- auth -----------------------------------------------------------------------------------


def test_valid_token_reaches_upstream_with_identity_and_without_token(
    stack: Stack, signing_key: rsa.RSAPrivateKey
) -> None:
    response = get(stack, "/v1/data", **bearer(token(signing_key)))
    headers = seen_upstream(response)
    assert headers["x-gateway-identity"] == "alice"
    assert headers["x-gateway-tenant"] == "acme"
    assert "authorization" not in headers


def test_forged_identity_headers_never_reach_upstream(stack: Stack, signing_key: rsa.RSAPrivateKey) -> None:
    forged = {"x-gateway-identity": "admin", "x-gateway-tenant": "victim", "x-gateway-scopes": "admin"}
    headers = seen_upstream(get(stack, "/v1/data", **bearer(token(signing_key)), **forged))
    assert (headers["x-gateway-identity"], headers["x-gateway-tenant"]) == ("alice", "acme")
    assert "x-gateway-scopes" not in headers
    anonymous = seen_upstream(get(stack, "/public/docs", **forged))
    assert not {"x-gateway-identity", "x-gateway-tenant", "x-gateway-scopes"} & anonymous.keys()


def test_hostile_tokens_are_refused_with_reason_codes(stack: Stack, signing_key: rsa.RSAPrivateKey) -> None:
    def b64(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"iss": ISSUER, "aud": "gateway", "sub": "mallory", "exp": int(time.time()) + 600}
    alg_none = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    valid = token(signing_key)
    tampered = valid[:-4] + ("AAAA" if not valid.endswith("AAAA") else "BBBB")
    cases = {
        alg_none: "disallowed_algorithm",
        token(signing_key, exp=int(time.time()) - 3600): "token_expired",
        token(signing_key, aud="someone-else"): "invalid_audience",
        token(signing_key, iss="https://evil.test"): "unknown_issuer",
        token(signing_key, kid="unknown-kid"): "unknown_key",
        tampered: "invalid_signature",
        "not.a.jwt": "malformed_token",
        "x" * 5000: "token_too_large",
    }
    for value, code in cases.items():
        response = get(stack, "/v1/data", **bearer(value), **{"x-request-id": "req-hostile"})
        assert response.status_code == 401, (code, response.text)
        assert response.headers["content-type"] == "application/json"
        assert error_code(response) == code
        assert response.json()["error"]["request_id"] == "req-hostile"
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="gateway", error="invalid_token"'), challenge


def test_missing_credentials_and_missing_scopes(stack: Stack, signing_key: rsa.RSAPrivateKey) -> None:
    missing = get(stack, "/v1/data")
    assert missing.status_code == 401
    assert error_code(missing) == "missing_credentials"
    assert missing.headers["www-authenticate"] == 'Bearer realm="gateway", ApiKey realm="gateway"'

    no_scope = get(stack, "/admin/users", **{"x-api-key": BATCH_KEY})
    assert no_scope.status_code == 403
    assert error_code(no_scope) == "insufficient_scope"
    assert 'error="insufficient_scope"' in no_scope.headers["www-authenticate"]
    admin = get(stack, "/admin/users", **bearer(token(signing_key, scope="admin read")))
    assert seen_upstream(admin)["x-gateway-scopes"] == "admin read"
    assert get(stack, "/v1/data", **{"x-api-key": "wrong"}).status_code == 401


# --- rate limit ------------------------------------------------------------------------------


def test_a_burst_of_1000_gets_the_limit_of_100(stack: Stack) -> None:
    def call(_: int) -> requests.Response:
        return get(stack, "/limited/work", **{"x-api-key": BATCH_KEY})

    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(call, range(1000)))
    statuses = [r.status_code for r in responses]
    # proxy-wasm has no add-if-absent: a bucket is created by an unconditional write, so when
    # both workers create it at once the later write can replace the other's first take
    # (docs/proxy-wasm-host.md, shared data). Once it exists every take is a compare-and-swap.
    allowed = statuses.count(200)
    assert 100 <= allowed <= 102
    assert statuses.count(429) == 1000 - allowed
    refused = next(r for r in responses if r.status_code == 429)
    assert error_code(refused) == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-limit"] == "100"


def test_every_response_reports_the_tightest_limit(stack: Stack) -> None:
    response = get(stack, "/v1/data", **{"x-api-key": BATCH_KEY})
    assert response.status_code == 200
    for prefix in ("ratelimit", "x-ratelimit"):
        assert response.headers[f"{prefix}-limit"] == "100000"
        assert int(response.headers[f"{prefix}-remaining"]) < 100000
        assert response.headers[f"{prefix}-reset"].isdigit()


# --- cache -----------------------------------------------------------------------------------


def test_get_is_served_from_cache_with_age(stack: Stack) -> None:
    key = {"x-api-key": BATCH_KEY}
    first = get(stack, "/cached/report", **key)
    second = get(stack, "/cached/report", **key)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.json()["count"] == first.json()["count"]
    assert int(second.headers["age"]) >= 0
    assert "ratelimit-remaining" in second.headers


def test_tenants_never_see_each_others_answers(stack: Stack, signing_key: rsa.RSAPrivateKey) -> None:
    batch = get(stack, "/cached/tenant-view", **{"x-api-key": BATCH_KEY})
    alice = get(stack, "/cached/tenant-view", **bearer(token(signing_key)))
    assert (batch.headers["x-cache"], alice.headers["x-cache"]) == ("MISS", "MISS")
    assert seen_upstream(alice)["x-gateway-identity"] == "alice"
    again = get(stack, "/cached/tenant-view", **bearer(token(signing_key)))
    assert again.headers["x-cache"] == "HIT"
    assert again.json()["headers"]["x-gateway-identity"] == "alice"


def test_unkeyed_headers_cannot_poison_the_cache(stack: Stack) -> None:
    key = {"x-api-key": BATCH_KEY}
    poisoned = get(stack, "/cached/page", **key, **{"x-forwarded-host": "evil.test"})
    if stack.kind == "envoy":
        # Envoy forwards the client's X-Forwarded-Host, so the cache refuses to key the request.
        assert poisoned.headers["x-cache"] == "BYPASS"
        clean = get(stack, "/cached/page", **key)
        assert clean.headers["x-cache"] == "MISS"
    else:
        # Our proxy drops X-Forwarded-* claims from untrusted clients before any filter runs.
        assert poisoned.headers["x-cache"] == "MISS"
        assert "evil.test" not in poisoned.text
        clean = get(stack, "/cached/page", **key)
    assert "evil.test" not in clean.text
    assert get(stack, "/cached/page", **key).headers["x-cache"] == "HIT"


def test_post_queries_are_keyed_by_body(stack: Stack) -> None:
    key = {"x-api-key": BATCH_KEY}

    def ask(question: str) -> requests.Response:
        return requests.post(stack.url + "/cached/rag/query", json={"q": question}, headers=key, timeout=10)

    first, repeat, other = ask("what is wasm?"), ask("what is wasm?"), ask("what is envoy?")
    assert [r.headers.get("x-cache") for r in (first, repeat, other)] == ["MISS", "HIT", "MISS"]
    assert repeat.json()["body"] == '{"q": "what is wasm?"}'


def test_cache_control_from_client_and_upstream_is_honoured(stack: Stack) -> None:
    key = {"x-api-key": BATCH_KEY}
    path = "/cached/no-store?cache_control=no-store"
    assert [get(stack, path, **key).headers["x-cache"] for _ in range(2)] == ["MISS", "MISS"]
    get(stack, "/cached/fresh", **key)
    assert get(stack, "/cached/fresh", **key, **{"cache-control": "no-store"}).headers["x-cache"] == "BYPASS"
    refreshed = get(stack, "/cached/fresh", **key, **{"cache-control": "no-cache"})
    assert refreshed.headers["x-cache"] == "MISS"


def test_bypass_header_needs_the_scope(stack: Stack) -> None:
    get(stack, "/cached/bypass", **{"x-api-key": BYPASS_KEY})
    ops = get(stack, "/cached/bypass", **{"x-api-key": BYPASS_KEY, "x-cache-bypass": "1"})
    assert ops.headers["x-cache"] == "BYPASS"
    get(stack, "/cached/bypass", **{"x-api-key": BATCH_KEY})
    batch = get(stack, "/cached/bypass", **{"x-api-key": BATCH_KEY, "x-cache-bypass": "1"})
    assert batch.headers["x-cache"] == "HIT"


def test_stale_answers_stand_in_for_a_failing_or_dead_upstream(stack: Stack) -> None:
    key = {"x-api-key": BATCH_KEY}
    fresh = get(stack, "/flaky/answer", **key)
    assert fresh.headers["x-cache"] == "MISS"
    time.sleep(1.2)  # past the 1 s freshness, within stale-if-error
    stack.flaky.fail_with = 503
    failing = get(stack, "/flaky/answer", **key)
    assert failing.status_code == 200
    assert failing.headers["x-cache"] == "STALE"
    assert failing.json()["count"] == fresh.json()["count"]
    stack.flaky.shutdown()
    stack.flaky.server_close()
    dead = get(stack, "/flaky/answer", **key)
    assert (dead.status_code, dead.headers["x-cache"]) == (200, "STALE")
    assert dead.json() == fresh.json()
    uncached = get(stack, "/flaky/never-cached", **key)
    assert uncached.status_code == 503
    assert uncached.headers["x-cache"] == "MISS"
