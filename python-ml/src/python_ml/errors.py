"""Errors as clients see them: `{"error": {status, code, message, request_id}}`, never a traceback.

The shape is the gateway filters' own, so a client handles one format whichever layer refused it.
The request id is the gateway's `x-request-id` when one came in, else a new one; it is echoed in
the response header of every answer. Both mirror the Rust crate `gateway-contract`
(`crates/gateway-contract`), which the filters, the proxy and sandbox-host share.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .models import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_MAX_REQUEST_ID = 128
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


class ApiError(Exception):
    """An error with a status and a stable code, raised anywhere a request is handled."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_body(status: int, code: str, message: str, request_id: str | None) -> dict[str, Any]:
    """The JSON body of an error."""
    detail = ErrorDetail(status=status, code=code, message=message, request_id=request_id)
    return ErrorResponse(error=detail).model_dump()


def request_id_from(incoming: bytes) -> str:
    """The caller's request id when it is sane (gateway-contract's rule: non-empty printable ASCII
    without spaces, bounded), else a new one."""
    usable = 0 < len(incoming) <= _MAX_REQUEST_ID and all(0x21 <= byte <= 0x7E for byte in incoming)
    return incoming.decode("ascii") if usable else str(uuid.uuid4())


def request_id_of(request: Request) -> str | None:
    """The id `RequestIdMiddleware` gave this request."""
    return getattr(request.state, "request_id", None)


def _response(request: Request, status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(status, code, message, request_id_of(request)), status_code=status)


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """The first of a validation's errors, located (`body.documents.0.id: ...`), and how many more."""
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid value')}{more}"


def install_error_handlers(app: FastAPI) -> None:
    """Routes every failure, expected or not, to the JSON error shape."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _response(request, exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _response(request, 422, "invalid_request", validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return _response(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error (request %s)", request_id_of(request))
        response = _response(request, 500, "internal_error", "internal error; see the service log")
        # Starlette answers unhandled errors outside every middleware, RequestIdMiddleware included.
        if (request_id := request_id_of(request)) is not None:
            response.headers[REQUEST_ID_HEADER] = request_id
        # Starlette re-raises after this answer and the server then closes the connection; saying
        # so keeps a keep-alive client from sending its next request into the closed socket.
        response.headers["connection"] = "close"
        return response


class RequestIdMiddleware:
    """Gives each request an id (the incoming `x-request-id` when sane) and echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = request_id_from(dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b""))
        scope.setdefault("state", {})["request_id"] = request_id
        trace.get_current_span().set_attribute("request.id", request_id)  # FastAPI's server span

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        await self._app(scope, receive, send_with_id)
