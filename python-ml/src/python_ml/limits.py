"""Bounds on what one request may cost, each a setting, each refusal a 413 naming the limit.

The body cap holds for every request and is enforced before anything parses the body. The ingest caps
(metadata size and nesting, chunks per document and per request) are checked before any text is
split or embedded: one request could otherwise ask for millions of chunks, each embedded and
stored with its own copy of the metadata, while the store's lock holds every query back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_body
from .models import Document
from .settings import Settings


class _BodyTooLarge(Exception):
    """Raised into the application when the body streaming in passes the cap, so it stops reading."""


class BodySizeLimit:
    """ASGI middleware: 413 `body_too_large` for a request body over `max_bytes`.

    A declared `Content-Length` over the cap is refused before any of the body is read. A body without
    one (chunked) is counted as it streams in; when it passes the cap the application's read fails and
    whatever the application answers to that is replaced by the 413. Either way at most `max_bytes`
    reach the application."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self._app = app
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        # The server has already refused a malformed or contradictory length.
        if declared.isdigit() and int(declared) > self._max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        exceeded = False
        responding = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal responding
            if exceeded and not responding:
                return
            responding = True
            await send(message)

        try:
            await self._app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if responding:
                raise
        if exceeded and not responding:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is larger than {self._max_bytes} bytes (PYML_MAX_BODY_BYTES)"
        body = error_body(413, "body_too_large", message, scope.get("state", {}).get("request_id"))
        # Closing the connection stops the rest of the body arriving; keeping it open would mean reading it all.
        await JSONResponse(body, status_code=413, headers={"connection": "close"})(scope, receive, send)


def check_metadata(documents: Sequence[Document], settings: Settings) -> None:
    """413 `metadata_too_large` for a document whose metadata nests deeper than
    `max_metadata_depth` or is longer than `max_metadata_bytes` as compact UTF-8 JSON."""
    for document in documents:
        if _depth_exceeds(document.metadata, settings.max_metadata_depth):
            raise ApiError(
                413,
                "metadata_too_large",
                f"document {document.id!r}: metadata nests deeper than {settings.max_metadata_depth} levels"
                " (PYML_MAX_METADATA_DEPTH)",
            )
        size = len(json.dumps(document.metadata, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if size > settings.max_metadata_bytes:
            raise ApiError(
                413,
                "metadata_too_large",
                f"document {document.id!r}: metadata is {size} bytes as JSON, more than"
                f" {settings.max_metadata_bytes} bytes (PYML_MAX_METADATA_BYTES)",
            )


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether objects and arrays in `value` nest more than `limit` levels. A loop rather than
    recursion: the body parser accepts nesting deep enough to exhaust Python's stack."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, level = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if level > limit:
            return True
        pending.extend((child, level + 1) for child in children)
    return False


def check_chunk_counts(chunks: Mapping[str, int], settings: Settings, estimated: bool) -> None:
    """413 `too_many_chunks` when a document (`chunks` maps document ids to chunk counts) would make
    more than `max_chunks_per_document` chunks, or all of them more than `max_chunks_per_request`."""
    about = "about " if estimated else ""
    for document_id, count in chunks.items():
        if count > settings.max_chunks_per_document:
            raise ApiError(
                413,
                "too_many_chunks",
                f"document {document_id!r} would make {about}{count} chunks, more than"
                f" {settings.max_chunks_per_document} per document (PYML_MAX_CHUNKS_PER_DOCUMENT)",
            )
    total = sum(chunks.values())
    if total > settings.max_chunks_per_request:
        raise ApiError(
            413,
            "too_many_chunks",
            f"the documents would make {about}{total} chunks, more than {settings.max_chunks_per_request}"
            " per request (PYML_MAX_CHUNKS_PER_REQUEST)",
        )
