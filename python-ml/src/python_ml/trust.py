"""Who a request acts for: the tenant the gateway verified, believed only with the gateway's signature.

The gateway authenticates callers and tells the service who they are in request headers:
`x-gateway-identity`, `x-gateway-tenant`, `x-gateway-scopes` and `x-request-id`. Anyone who reaches
the service directly can send those headers too, so the gateway also signs them:

    x-gateway-signature: v1;t=<unix seconds>;sig=<lowercase hex HMAC-SHA256>

over the bytes `v1\\n<t>\\n<request id>\\n<identity>\\n<scopes>\\n<tenant>` (an absent header is an
empty string) with a key the two share. The service reads the identity headers only once that
signature verifies and `t` is within `gateway_signature_max_age_seconds` of its clock; the tenant is
`x-gateway-tenant`, or the identity when that is empty.

Without a key (local development) the headers are ignored and every caller is the tenant `public`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from .dependencies import service
from .errors import ApiError, request_id_of
from .models import ErrorResponse
from .settings import Settings

log = logging.getLogger(__name__)

PUBLIC_TENANT = "public"
"""The one tenant every caller shares when no signing key is configured."""

SIGNATURE_HEADER = b"x-gateway-signature"
# In the order the signed message lists them, after the version and the timestamp.
SIGNED_HEADERS = (b"x-request-id", b"x-gateway-identity", b"x-gateway-scopes", b"x-gateway-tenant")
# Digits only (int() would also take signs, spaces, underscores and other scripts' digits), and few
# enough that converting them is cheap.
_SIGNATURE = re.compile(rb"v1;t=([0-9]{1,15});sig=([0-9a-f]{64})")


@dataclass(frozen=True)
class Caller:
    """Who a request acts for: the tenant whose documents it may read and write, and the identity
    the gateway authenticated (empty for the shared `public` tenant)."""

    tenant: str
    identity: str


class UntrustedCaller(Exception):
    """The request carries no signature the service can accept; the message says why."""


def verify(headers: Iterable[tuple[bytes, bytes]], key: bytes, max_age_seconds: float, now: float) -> Caller:
    """The caller the gateway vouched for in these raw (ASGI) request headers.

    Works on the header bytes as received, which are what the gateway signed. Raises
    `UntrustedCaller` unless the signature verifies under `key` and its timestamp is at most
    `max_age_seconds` from `now`, either way."""
    values: dict[bytes, bytes] = {}
    for name, value in headers:
        if name == SIGNATURE_HEADER or name in SIGNED_HEADERS:
            # Two copies would leave open which one was signed and which one is read.
            if name in values:
                raise UntrustedCaller(f"{name.decode()} is sent more than once")
            values[name] = value
    signature = values.get(SIGNATURE_HEADER)
    if signature is None:
        raise UntrustedCaller("there is no x-gateway-signature header")
    match = _SIGNATURE.fullmatch(signature)
    if match is None:
        raise UntrustedCaller("x-gateway-signature is not v1;t=<unix seconds>;sig=<64 lowercase hex digits>")
    timestamp, signed_digest = match.groups()
    message = b"\n".join([b"v1", timestamp, *(values.get(name, b"") for name in SIGNED_HEADERS)])
    expected = hmac.new(key, message, hashlib.sha256).hexdigest().encode("ascii")
    if not hmac.compare_digest(expected, signed_digest):
        raise UntrustedCaller("the signature does not match the headers")
    # Checked after the signature, so only a genuine gateway signature learns it is out of date.
    if abs(now - int(timestamp)) > max_age_seconds:
        raise UntrustedCaller(f"the signature's timestamp is more than {max_age_seconds:g} s from the service's clock")
    try:
        identity = values.get(b"x-gateway-identity", b"").decode("utf-8")
        tenant = values.get(b"x-gateway-tenant", b"").decode("utf-8") or identity
    except UnicodeDecodeError:
        raise UntrustedCaller("the identity headers are not UTF-8") from None
    if not tenant:
        raise UntrustedCaller("the signed headers name no tenant and no identity")
    return Caller(tenant=tenant, identity=identity)


def caller_from_headers(settings: Settings, headers: Iterable[tuple[bytes, bytes]], request_id: str | None) -> Caller:
    """Who a request with these raw headers (HTTP) or this metadata (gRPC) acts for: 401
    `untrusted_caller` when a signing key is set and the signature cannot be accepted; the shared
    `public` tenant when no key is."""
    if settings.gateway_signing_key is None:
        return Caller(tenant=PUBLIC_TENANT, identity="")
    key = settings.gateway_signing_key.get_secret_value().encode("utf-8")
    try:
        return verify(headers, key, settings.gateway_signature_max_age_seconds, time.time())
    except UntrustedCaller as exc:
        # A gateway whose key or clock is off shows up here first.
        log.warning("refused an unsigned or badly signed request (request %s): %s", request_id, exc)
        raise ApiError(401, "untrusted_caller", f"this endpoint needs the gateway's signed identity: {exc}") from None


def trusted_caller(request: Request) -> Caller:
    """FastAPI dependency: who the request acts for (`caller_from_headers`)."""
    return caller_from_headers(service(request).settings, request.scope["headers"], request_id_of(request))


TrustedCaller = Annotated[Caller, Depends(trusted_caller)]

UNTRUSTED_RESPONSE: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "`untrusted_caller`: no valid gateway signature"}
}
"""The OpenAPI entry for the endpoints that take a `TrustedCaller`."""


def log_trust_mode(settings: Settings) -> None:
    """Says at start-up whose word the service takes for who is calling."""
    if settings.gateway_signing_key is None:
        log.warning(
            "PYML_GATEWAY_SIGNING_KEY is not set: identity headers are ignored and every caller shares"
            " the tenant %r (local development only)",
            PUBLIC_TENANT,
        )
    else:
        log.info(
            "documents and queries need the gateway's signature, at most %d s old",
            settings.gateway_signature_max_age_seconds,
        )
