"""The gateway's side of the identity signature, written from the spec rather than from `trust.py`,
so the tests check the service against the spec and not against itself."""

from __future__ import annotations

import hashlib
import hmac
import time


def signed_headers(
    key: str,
    identity: str = "",
    tenant: str = "",
    scopes: str = "",
    request_id: str | None = None,
    t: int | None = None,
) -> dict[str, str]:
    """The headers the gateway adds: identity, tenant, scopes, request id (when given) and
    `x-gateway-signature: v1;t=<t>;sig=<hex HMAC-SHA256>` over the newline-joined values."""
    timestamp = str(int(time.time()) if t is None else t)
    message = "\n".join(["v1", timestamp, request_id or "", identity, scopes, tenant]).encode("utf-8")
    digest = hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()
    headers = {
        "x-gateway-identity": identity,
        "x-gateway-tenant": tenant,
        "x-gateway-scopes": scopes,
        "x-gateway-signature": f"v1;t={timestamp};sig={digest}",
    }
    if request_id is not None:
        headers["x-request-id"] = request_id
    return headers
