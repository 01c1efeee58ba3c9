"""`POST /v1/rag/query`: an answer from the tenant's documents, as JSON or as server-sent events."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..answering import AnswerEvent, answer_events, collect_answer, retrieve
from ..dependencies import ERROR_RESPONSES, Service, elapsed_ms
from ..errors import request_id_of
from ..models import QueryRequest, QueryResponse, Timing
from ..trust import UNTRUSTED_RESPONSE, TrustedCaller

log = logging.getLogger(__name__)

T = TypeVar("T")

router = APIRouter()


@router.post(
    "/v1/rag/query",
    response_model=QueryResponse,
    responses={
        **ERROR_RESPONSES,
        **UNTRUSTED_RESPONSE,
        200: {
            "content": {"text/event-stream": {}},
            "description": "JSON, or server-sent events when `stream` is true",
        },
    },
    summary="Answer a question from the indexed documents",
)
async def query(request: Request, body: QueryRequest, caller: TrustedCaller, state: Service) -> Response:
    """Retrieves the tenant's chunks nearest the question, then writes an answer citing them.
    Retrieval happens before any answer is sent, so its failures are plain JSON errors."""
    retrieval = await retrieve(state, caller, body)
    if body.stream:
        events = answer_events(state.generator, body.question, retrieval, request_id_of(request))
        return StreamingResponse(
            _server_sent(events), media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )

    generation_started = time.perf_counter()
    answer = await unless_disconnected(request, collect_answer(state.generator.stream(body.question, retrieval.hits)))
    if answer is None:
        return Response(status_code=499)
    return JSONResponse(
        QueryResponse(
            answer=answer,
            generator=state.generator.name,
            sources=retrieval.sources,
            timing=Timing(
                retrieval_ms=retrieval.retrieval_ms,
                generation_ms=elapsed_ms(generation_started),
                total_ms=elapsed_ms(retrieval.started),
            ),
        ).model_dump()
    )


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
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


async def _server_sent(events: AsyncIterator[AnswerEvent]) -> AsyncIterator[str]:
    async for name, data in events:
        yield f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
