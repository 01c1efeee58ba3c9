"""The gateway's identity signature, as services check it (mirrors crates/gateway-identity).

`x-gateway-signature: v1;t=<unix seconds>;sig=<hex HMAC-SHA256>` over
`"v1\\n" + t + "\\n" + request_id + "\\n" + identity + "\\n" + scopes + "\\n" + tenant`.
"""

from __future__ import annotations

import hashlib
import hmac
import time

# The key every proxy, sandbox-host and python-ml the suites start shares (conftest exports it).
TEST_SIGNING_KEY = "e2e-gateway-signing-key-0123456789abcdef"
SIGNING_KEY_ENV = "GATEWAY_SIGNING_KEY"


def signed_headers(
    identity: str = "",
    scopes: str = "",
    tenant: str = "",
    request_id: str = "",
    key: str = TEST_SIGNING_KEY,
    at: int | None = None,
) -> dict[str, str]:
    """The identity headers as the gateway sends them, with their signature."""
    t = int(time.time()) if at is None else at
    message = f"v1\n{t}\n{request_id}\n{identity}\n{scopes}\n{tenant}".encode()
    signature = hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
    headers = {"x-gateway-signature": f"v1;t={t};sig={signature}"}
    for name, value in [
        ("x-gateway-identity", identity),
        ("x-gateway-scopes", scopes),
        ("x-gateway-tenant", tenant),
        ("x-request-id", request_id),
    ]:
        if value:
            headers[name] = value
    return headers
