"""The gRPC API (`proto/python_ml/v1/*.proto`), served beside the HTTP one by the same code.

Each call is the HTTP operation's: its request is turned into the same pydantic model (so the same
validation and limits hold), handled by the same functions, and its errors become gRPC statuses:
the message is the error's, and trailing metadata carries `error-code` (the stable code of the
JSON errors) and `x-request-id`. The caller's tenant comes from the gateway's signed identity
metadata, verified as over HTTP (`trust.py`). `grpc.health.v1.Health` answers NOT_SERVING until the
model has loaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import BaseModel, ValidationError

from .answering import answer_events, retrieve
from .dependencies import ServiceState
from .embedding import MODEL_NAME
from .errors import REQUEST_ID_HEADER, ApiError, request_id_from, validation_message
from .models import EmbeddingRequest, IngestRequest, QueryRequest
from .routers import documents, embeddings
from .trust import Caller, caller_from_headers
from .v1 import embeddings_pb2, rag_pb2

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
P = TypeVar("P", bound=Message)

MAX_METADATA_BYTES = 16 * 1024
"""A call's metadata (gRPC's headers), as the gateway bounds request headers."""

RAG_SERVICE = "python_ml.v1.Rag"
EMBEDDINGS_SERVICE = "python_ml.v1.Embeddings"

# HTTP statuses of the JSON errors to gRPC codes, as gRPC's own HTTP mapping reads them.
_GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    """The gRPC code an error of this HTTP status is answered with."""
    return _GRPC_CODES.get(http_status, grpc.StatusCode.INTERNAL)


class _Call:
    """One call's request id, caller and error reporting."""

    def __init__(self, state: ServiceState, context: grpc.aio.ServicerContext) -> None:
        self.state = state
        self.context = context
        # grpcio hands text metadata over decoded from UTF-8 (`-bin` entries as bytes).
        self.metadata = [(key.encode("utf-8"), _bytes(value)) for key, value in context.invocation_metadata() or ()]
        self.request_id = request_id_from(dict(self.metadata).get(REQUEST_ID_HEADER.encode(), b""))
        context.set_trailing_metadata(((REQUEST_ID_HEADER, self.request_id),))

    def caller(self) -> Caller:
        return caller_from_headers(self.state.settings, self.metadata, self.request_id)

    def model(self, model: type[M], fields: dict[str, Any]) -> M:
        """The HTTP API's request model for these fields; invalid is 422 `invalid_request`."""
        try:
            return model.model_validate(fields)
        except ValidationError as exc:
            raise ApiError(422, "invalid_request", validation_message(exc.errors())) from None

    def parse(self, message: type[P], data: bytes) -> P:
        """The request message; bytes that are not one are 400 `invalid_request`."""
        try:
            return message.FromString(data)
        except DecodeError:
            name = message.DESCRIPTOR.full_name
            raise ApiError(400, "invalid_request", f"the request is not a valid {name} message") from None

    async def fail(self, status: int, code: str, message: str) -> None:
        """Ends the call with the gRPC status for this error."""
        await self.context.abort(
            grpc_code(status),
            message,
            trailing_metadata=(("error-code", code), (REQUEST_ID_HEADER, self.request_id)),
        )

    @asynccontextmanager
    async def errors_as_status(self) -> AsyncIterator[None]:
        """Ends the call with the gRPC status of an `ApiError` raised inside, or INTERNAL (logged)
        for anything unexpected; the call's own end (cancelled, aborted) passes through."""
        try:
            yield
        except ApiError as exc:
            await self.fail(exc.status, exc.code, exc.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("gRPC call failed (request %s)", self.request_id)
            await self.fail(500, "internal_error", "internal error; see the service log")


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _fields(message: Message) -> dict[str, Any]:
    """A request message as the JSON body the HTTP API takes (unset optional fields left out)."""
    try:
        fields = json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except (ValueError, json_format.Error) as exc:  # NaN or infinity in a Struct, which JSON cannot hold
        raise ApiError(422, "invalid_request", f"the request holds a value JSON cannot: {exc}") from None
    return _integral(fields)  # type: ignore[no-any-return]


_MAX_EXACT_INTEGER = 2**53
"""The largest integer a double holds exactly."""


def _integral(value: Any) -> Any:  # noqa: ANN401 - any JSON value
    # google.protobuf.Value holds every number as a double; JSON does not tell 3 from 3.0 either.
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_EXACT_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _handled(
    state: ServiceState, message: type[P], work: Callable[[_Call, P], Awaitable[Message]]
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message | None]]:
    """A unary handler for requests of type `message`, whose `ApiError`s (and anything unexpected)
    become gRPC statuses. It parses the request itself, so that garbage is an error like any other."""

    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> Message | None:
        call = _Call(state, context)
        async with call.errors_as_status():
            return await work(call, call.parse(message, data))
        return None  # `fail` aborted the call

    return handle


async def _ingest(call: _Call, request: rag_pb2.IngestRequest) -> rag_pb2.IngestResponse:
    body = call.model(IngestRequest, _fields(request))
    result = await documents.ingest(body, call.caller(), call.state)
    return json_format.ParseDict(result.model_dump(), rag_pb2.IngestResponse())


async def _embed(call: _Call, request: embeddings_pb2.EmbedRequest) -> embeddings_pb2.EmbedResponse:
    body = call.model(EmbeddingRequest, {"input": list(request.inputs), "model": request.model or MODEL_NAME})
    result = await embeddings.embeddings(body, call.state)
    return embeddings_pb2.EmbedResponse(
        # Floats were asked for (the default encoding), never base64.
        embeddings=[embeddings_pb2.Embedding(values=cast(list[float], item.embedding)) for item in result.data],
        model=result.model,
        prompt_tokens=result.usage.prompt_tokens,
    )


def _query(state: ServiceState) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[rag_pb2.QueryEvent]]:
    async def query(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[rag_pb2.QueryEvent]:
        call = _Call(state, context)
        async with call.errors_as_status():
            body = call.model(QueryRequest, _fields(call.parse(rag_pb2.QueryRequest, data)))
            retrieval = await retrieve(state, call.caller(), body)
        async for name, fields in answer_events(state.generator, body.question, retrieval, call.request_id):
            if name == "token":
                yield rag_pb2.QueryEvent(token=rag_pb2.Token(text=fields["text"]))
            elif name == "sources":
                yield rag_pb2.QueryEvent(sources=json_format.ParseDict(fields, rag_pb2.Sources()))
            elif name == "done":
                yield rag_pb2.QueryEvent(done=json_format.ParseDict(fields, rag_pb2.Done()))
            else:
                error = fields["error"]
                await call.fail(error["status"], error["code"], error["message"])

    return query


def _generic_handlers(state: ServiceState) -> list[grpc.GenericRpcHandler]:
    rag = grpc.method_handlers_generic_handler(
        RAG_SERVICE,
        {
            "Query": grpc.unary_stream_rpc_method_handler(
                _query(state),
                response_serializer=rag_pb2.QueryEvent.SerializeToString,
            ),
            "Ingest": grpc.unary_unary_rpc_method_handler(
                _handled(state, rag_pb2.IngestRequest, _ingest),
                response_serializer=rag_pb2.IngestResponse.SerializeToString,
            ),
        },
    )
    embedder = grpc.method_handlers_generic_handler(
        EMBEDDINGS_SERVICE,
        {
            "Embed": grpc.unary_unary_rpc_method_handler(
                _handled(state, embeddings_pb2.EmbedRequest, _embed),
                response_serializer=embeddings_pb2.EmbedResponse.SerializeToString,
            )
        },
    )
    return [rag, embedder]


@dataclass
class GrpcServer:
    """The running gRPC server."""

    server: grpc.aio.Server
    port: int
    """The port it listens on (the one asked for, or the one picked for port 0)."""
    health_updates: asyncio.Task[None]

    async def stop(self, grace_seconds: float) -> None:
        """Refuses new calls and gives running ones `grace_seconds` to finish."""
        self.health_updates.cancel()
        await self.server.stop(grace_seconds)


async def start_grpc_server(state: ServiceState, address: str, model_loaded: Awaitable[None]) -> GrpcServer:
    """Serves the gRPC API on `address` (`host:port`, port 0 for any). Health says SERVING once
    `model_loaded` has finished with the model in place."""
    settings = state.settings
    server = grpc.aio.server(
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_calls,
        options=[
            # The HTTP API's body limit, checked by gRPC before a message is parsed.
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            # A second instance on the same port fails to start instead of sharing its calls.
            ("grpc.so_reuseport", 0),
        ],
    )
    server.add_generic_rpc_handlers(_generic_handlers(state))
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port(address)
    services = ("", RAG_SERVICE, EMBEDDINGS_SERVICE)
    for service in services:
        await checker.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()

    async def serve_once_loaded() -> None:
        await model_loaded
        if state.rag is not None:
            for service in services:
                await checker.set(service, health_pb2.HealthCheckResponse.SERVING)

    return GrpcServer(server, port, asyncio.create_task(serve_once_loaded()))
