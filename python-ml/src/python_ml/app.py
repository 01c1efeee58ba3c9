"""The HTTP service: embeddings, RAG ingest and query, health and readiness.

The model loads in the background after start-up; `/readyz` answers 200 only once it has, and the
model endpoints answer 503 `model_loading` until then. Model work runs in worker threads, at most
`embedding_concurrency` at a time, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .embedding import MODEL_NAME, Embedder, bundled_model_dir
from .errors import ApiError, RequestIdMiddleware, error_body, install_error_handlers, request_id_of
from .generation import AnswerGenerator, GenerationError, build_generator
from .models import (
    Chunking,
    EmbeddingItem,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    IngestRequest,
    IngestResponse,
    QueryRequest,
    QueryResponse,
    Source,
    Timing,
    Usage,
)
from .rag import EmptyCorpusError, Rag
from .settings import Settings
from .store import Hit, VectorStore

log = logging.getLogger(__name__)

T = TypeVar("T")

MODEL_ALIASES = frozenset({MODEL_NAME, f"sentence-transformers/{MODEL_NAME}"})
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (404, 409, 413, 422, 502, 503)}


@dataclass
class ServiceState:
    """What the lifespan builds and the handlers use."""

    settings: Settings
    generator: AnswerGenerator
    model_slots: asyncio.Semaphore
    rag: Rag | None = None
    load_error: str | None = None


def _load(settings: Settings) -> Rag:
    embedder = Embedder(settings.model_dir or bundled_model_dir(), settings.embedding_batch_size)
    store = VectorStore(settings, embedder.dimensions)
    return Rag(embedder, store, Chunking(size=settings.chunk_size, overlap=settings.chunk_overlap))


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application, configured by `settings` (default: from the environment)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.llm_timeout_seconds, connect=settings.llm_connect_timeout_seconds)
        async with httpx.AsyncClient(timeout=timeout) as client:
            state = ServiceState(
                settings=settings,
                generator=build_generator(settings, client),
                model_slots=asyncio.Semaphore(settings.embedding_concurrency),
            )
            app.state.service = state
            loader = asyncio.create_task(_load_in_background(state))
            yield
            loader.cancel()
            if state.rag is not None:
                state.rag.store.close()

    app = FastAPI(
        title="python-ml",
        version="0.1.0",
        summary="Embeddings and retrieval-augmented answers behind the gateway.",
        lifespan=lifespan,
    )
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    _routes(app)
    return app


async def _load_in_background(state: ServiceState) -> None:
    started = time.monotonic()
    try:
        state.rag = await asyncio.to_thread(_load, state.settings)
    except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log, the process stays up
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("model or vector store failed to load")
        return
    log.info(
        "model %s loaded in %.0f ms; generator %s",
        MODEL_NAME,
        (time.monotonic() - started) * 1000,
        state.generator.name,
    )


def _service(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


def _rag(state: ServiceState) -> Rag:
    if state.rag is None:
        if state.load_error:
            raise ApiError(503, "model_unavailable", "the model failed to load; see the service log")
        raise ApiError(503, "model_loading", "the model is still loading; retry shortly")
    return state.rag


async def _on_model_thread(state: ServiceState, work: Callable[[], T]) -> T:
    async with state.model_slots:
        return await anyio.to_thread.run_sync(work)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def _routes(app: FastAPI) -> None:
    @app.get("/healthz", summary="Liveness: the process is serving")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded", responses={503: {"model": ErrorResponse}})
    async def readyz(request: Request) -> dict[str, Any]:
        state = _service(request)
        rag = _rag(state)
        return {
            "status": "ready",
            "model": MODEL_NAME,
            "dimensions": rag.embedder.dimensions,
            "generator": state.generator.name,
        }

    @app.post(
        "/v1/embeddings", response_model=EmbeddingResponse, responses=_ERRORS, summary="Embed texts (OpenAI-compatible)"
    )
    async def embeddings(request: Request, body: EmbeddingRequest) -> EmbeddingResponse:
        state = _service(request)
        settings = state.settings
        if body.model not in MODEL_ALIASES:
            raise ApiError(404, "model_not_found", f"model {body.model!r} is not served here; use {MODEL_NAME!r}")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise ApiError(422, "invalid_request", "body.input: at least one text is required")
        if len(texts) > settings.max_inputs_per_request:
            raise ApiError(413, "too_many_inputs", f"at most {settings.max_inputs_per_request} inputs per request")
        if any(len(t) > settings.max_input_chars for t in texts):
            raise ApiError(413, "input_too_long", f"each input is limited to {settings.max_input_chars} characters")
        rag = _rag(state)
        if body.dimensions is not None and body.dimensions != rag.embedder.dimensions:
            raise ApiError(
                422, "invalid_request", f"body.dimensions: this model has {rag.embedder.dimensions} dimensions"
            )
        result = await _on_model_thread(state, lambda: rag.embedder.embed(texts))
        tokens = sum(result.token_counts)
        return EmbeddingResponse(
            data=[
                EmbeddingItem(index=i, embedding=_encode(v, body.encoding_format)) for i, v in enumerate(result.vectors)
            ],
            model=MODEL_NAME,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    @app.post("/v1/rag/documents", response_model=IngestResponse, responses=_ERRORS, summary="Index documents")
    async def ingest(request: Request, body: IngestRequest) -> IngestResponse:
        state = _service(request)
        settings = state.settings
        if len(body.documents) > settings.max_documents_per_request:
            raise ApiError(
                413, "too_many_documents", f"at most {settings.max_documents_per_request} documents per request"
            )
        if any(len(d.text) > settings.max_document_chars for d in body.documents):
            raise ApiError(
                413, "document_too_long", f"each document is limited to {settings.max_document_chars} characters"
            )
        if body.chunking and body.chunking.overlap >= body.chunking.size:
            raise ApiError(422, "invalid_request", "body.chunking.overlap: must be smaller than size")
        ids = [d.id for d in body.documents]
        if len(set(ids)) != len(ids):
            raise ApiError(422, "invalid_request", "body.documents: document ids must be unique within a request")
        rag = _rag(state)
        started = time.perf_counter()
        results = await _on_model_thread(state, lambda: [rag.ingest(d, body.chunking) for d in body.documents])
        return IngestResponse(
            documents=results,
            chunks=sum(r.chunks for r in results),
            embedded=sum(r.embedded for r in results),
            reused=sum(r.reused for r in results),
            duration_ms=_ms(started),
        )

    @app.post(
        "/v1/rag/query",
        response_model=QueryResponse,
        responses={
            **_ERRORS,
            200: {
                "content": {"text/event-stream": {}},
                "description": "JSON, or server-sent events when `stream` is true",
            },
        },
        summary="Answer a question from the indexed documents",
    )
    async def query(request: Request, body: QueryRequest) -> Response:
        state = _service(request)
        rag = _rag(state)
        started = time.perf_counter()
        top_k = body.top_k or state.settings.default_top_k
        try:
            hits = await _on_model_thread(state, lambda: rag.retrieve(body.question, top_k, body.filters))
        except EmptyCorpusError:
            raise ApiError(409, "empty_corpus", "no documents are indexed yet; POST /v1/rag/documents first") from None
        retrieval_ms = _ms(started)
        sources = [_source(n, hit) for n, hit in enumerate(hits, start=1)]
        if body.stream:
            events = _answer_events(
                state.generator, body.question, hits, sources, started, retrieval_ms, request_id_of(request)
            )
            return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})

        generation_started = time.perf_counter()
        answer = await _unless_disconnected(request, _collect(state.generator.stream(body.question, hits)))
        if answer is None:
            return Response(status_code=499)
        return JSONResponse(
            QueryResponse(
                answer=answer,
                generator=state.generator.name,
                sources=sources,
                timing=Timing(retrieval_ms=retrieval_ms, generation_ms=_ms(generation_started), total_ms=_ms(started)),
            ).model_dump()
        )


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def _source(number: int, hit: Hit) -> Source:
    chunk = hit.chunk
    return Source(
        number=number,
        document_id=chunk.document_id,
        chunk_index=chunk.chunk_index,
        text=chunk.text,
        start=chunk.start,
        end=chunk.end,
        metadata=chunk.metadata,
        score=round(hit.score, 6),
    )


async def _collect(pieces: AsyncIterator[str]) -> str:
    try:
        return "".join([piece async for piece in pieces])
    except GenerationError as exc:
        raise ApiError(502, "llm_unavailable", str(exc)) from None


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Runs `work`, cancelling it (and the provider request under it) if the client goes away."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            log.info("client went away; answer cancelled (request %s)", request_id_of(request))
            return None


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _answer_events(
    generator: AnswerGenerator,
    question: str,
    hits: list[Hit],
    sources: list[Source],
    started: float,
    retrieval_ms: float,
    request_id: str | None,
) -> AsyncIterator[str]:
    """`token` events as the answer is written, then `sources`, then `done` with the timing; an
    `error` event (the usual error body) replaces the rest if generation fails mid-way."""
    generation_started = time.perf_counter()
    try:
        async for piece in generator.stream(question, hits):
            yield _event("token", {"text": piece})
    except GenerationError as exc:
        yield _event("error", error_body(502, "llm_unavailable", str(exc), request_id))
        return
    yield _event("sources", {"sources": [s.model_dump() for s in sources]})
    timing = Timing(retrieval_ms=retrieval_ms, generation_ms=_ms(generation_started), total_ms=_ms(started))
    yield _event("done", {"generator": generator.name, "timing": timing.model_dump()})
