"""The HTTP service: embeddings, RAG ingest and query, health, readiness and metrics; and beside
it, when `grpc_port` is set, the same operations over gRPC (`grpc_service.py`).

The model loads in the background after start-up; `/readyz` answers 200 only once it has, and the
model endpoints answer 503 `model_loading` until then. Model work runs in worker threads, at most
`embedding_concurrency` at a time, so the event loop keeps serving. Documents and queries belong to
the tenant the gateway signed for (`trust.py`); every request is bounded (`limits.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from .dependencies import ServiceState
from .embedding import MODEL_NAME, Embedder, bundled_model_dir
from .errors import RequestIdMiddleware, install_error_handlers
from .generation import build_generator
from .grpc_service import start_grpc_server
from .limits import BodySizeLimit
from .metrics import ServiceMetrics
from .rag import Rag
from .routers import chat, documents, embeddings, health, metrics, query, semantic_cache
from .semantic_index import SemanticIndex
from .settings import Settings
from .store import VectorStore
from .telemetry import RequestTelemetry
from .trust import log_trust_mode

log = logging.getLogger(__name__)


def _load(settings: Settings) -> tuple[Rag, SemanticIndex]:
    embedder = Embedder(settings.model_dir or bundled_model_dir(), settings.embedding_batch_size)
    store = VectorStore(settings, embedder.dimensions)
    index = SemanticIndex(
        store, settings.semantic_cache_collection, embedder.dimensions, settings.semantic_cache_max_entries
    )
    return Rag(embedder, store), index


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application, configured by `settings` (default: from the environment)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log_trust_mode(settings)
        timeout = httpx.Timeout(settings.llm_timeout_seconds, connect=settings.llm_connect_timeout_seconds)
        async with httpx.AsyncClient(timeout=timeout) as client:
            state = ServiceState(
                settings=settings,
                generator=build_generator(settings, client),
                model_slots=asyncio.Semaphore(settings.embedding_concurrency),
            )
            app.state.service = state
            loader = asyncio.create_task(_load_in_background(state))
            grpc_server = None
            if settings.grpc_port:
                address = f"{settings.host}:{settings.grpc_port}"
                grpc_server = await start_grpc_server(state, address, asyncio.shield(loader))
                log.info("gRPC API on %s", address)
            app.state.grpc = grpc_server
            yield
            if grpc_server is not None:
                await grpc_server.stop(grace_seconds=5)
            loader.cancel()
            if state.rag is not None:
                state.rag.store.close()

    app = FastAPI(
        title="python-ml",
        version="0.1.0",
        summary="Embeddings and retrieval-augmented answers behind the gateway.",
        lifespan=lifespan,
        # FastAPI's spans go to the provider `telemetry.configure_trace_export` installed; its own
        # set-up from the environment would add exporters for metrics and logs too.
        telemetry={"auto_configure": False},
    )
    app.state.metrics = ServiceMetrics()
    # The last added runs first: the request id exists before the body limit can refuse anything,
    # and the telemetry (metrics, access log, span) sees every answer, refusals included.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(RequestTelemetry, metrics=app.state.metrics)
    install_error_handlers(app)
    for router in (
        health.router,
        metrics.router,
        embeddings.router,
        documents.router,
        query.router,
        chat.router,
        semantic_cache.router,
    ):
        app.include_router(router)
    return app


async def _load_in_background(state: ServiceState) -> None:
    started = time.monotonic()
    try:
        rag, index = await asyncio.to_thread(_load, state.settings)
        # The index first: a handler that sees the model loaded finds the index too.
        state.semantic_index = index
        state.rag = rag
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
