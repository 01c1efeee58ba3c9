"""What the routers share: the state the lifespan builds, and the dependencies that read it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request

from .errors import ApiError
from .generation import AnswerGenerator
from .models import ErrorResponse
from .rag import Rag
from .semantic_index import SemanticIndex
from .settings import Settings

T = TypeVar("T")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (404, 409, 413, 422, 502, 503)
}
"""The error statuses the OpenAPI document lists for the model endpoints."""


@dataclass
class ServiceState:
    """What the lifespan builds and the handlers use."""

    settings: Settings
    generator: AnswerGenerator
    model_slots: asyncio.Semaphore
    rag: Rag | None = None
    semantic_index: SemanticIndex | None = None
    load_error: str | None = None


def service(request: Request) -> ServiceState:
    """The running service's state."""
    state: ServiceState = request.app.state.service
    return state


Service = Annotated[ServiceState, Depends(service)]


def loaded_rag(state: ServiceState) -> Rag:
    """The model and store, or 503 while they load (or if they failed to)."""
    if state.rag is None:
        if state.load_error:
            raise ApiError(503, "model_unavailable", "the model failed to load; see the service log")
        raise ApiError(503, "model_loading", "the model is still loading; retry shortly")
    return state.rag


async def on_model_thread(state: ServiceState, work: Callable[[], T]) -> T:
    """Runs CPU-bound `work` in a worker thread, at most `embedding_concurrency` at a time, so the
    event loop keeps serving."""
    async with state.model_slots:
        return await anyio.to_thread.run_sync(work)


def elapsed_ms(since: float) -> float:
    """Milliseconds since the `time.perf_counter()` reading `since`."""
    return round((time.perf_counter() - since) * 1000, 2)
