"""`POST /v1/rag/query`: an answer from the tenant's documents, as JSON or as server-sent events."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..dependencies import ERROR_RESPONSES, Service, elapsed_ms, loaded_rag, on_model_thread
from ..errors import ApiError, error_body, request_id_of
from ..generation import AnswerGenerator, GenerationError
from ..models import QueryRequest, QueryResponse, Source, Timing
from ..rag import EmptyCorpusError
from ..store import Hit
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
    rag = loaded_rag(state)
    started = time.perf_counter()
    top_k = body.top_k or state.settings.default_top_k
    try:
        hits = await on_model_thread(state, lambda: rag.retrieve(caller.tenant, body.question, top_k, body.filters))
    except EmptyCorpusError:
        raise ApiError(
            409, "empty_corpus", "no documents are indexed for this tenant yet; POST /v1/rag/documents first"
        ) from None
    retrieval_ms = elapsed_ms(started)
    sources = [_source(n, hit) for n, hit in enumerate(hits, start=1)]
    if body.stream:
        events = _answer_events(
            state.generator, body.question, hits, sources, started, retrieval_ms, request_id_of(request)
        )
        return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})

    generation_started = time.perf_counter()
    answer = await unless_disconnected(request, collect_answer(state.generator.stream(body.question, hits)))
    if answer is None:
        return Response(status_code=499)
    return JSONResponse(
        QueryResponse(
            answer=answer,
            generator=state.generator.name,
            sources=sources,
            timing=Timing(
                retrieval_ms=retrieval_ms, generation_ms=elapsed_ms(generation_started), total_ms=elapsed_ms(started)
            ),
        ).model_dump()
    )


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


async def collect_answer(pieces: AsyncIterator[str]) -> str:
    """The whole answer; a provider failure is 502 `llm_unavailable`."""
    try:
        return "".join([piece async for piece in pieces])
    except GenerationError as exc:
        raise ApiError(502, "llm_unavailable", str(exc)) from None


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
    """`token` events as the answer is written, then `sources`, then `done` with the timing.

    The stream always ends in `done` or `error`: once the 200 has gone out an HTTP status can no
    longer say something failed, and a stream that just stops looks like a network fault. So any
    failure becomes one `error` event with the usual error body: 502 `llm_unavailable` for the
    provider, 500 `internal_error` (logged) for anything else. Only a client that went away gets
    nothing more."""
    generation_started = time.perf_counter()
    try:
        async for piece in generator.stream(question, hits):
            yield _event("token", {"text": piece})
        yield _event("sources", {"sources": [s.model_dump() for s in sources]})
        timing = Timing(
            retrieval_ms=retrieval_ms, generation_ms=elapsed_ms(generation_started), total_ms=elapsed_ms(started)
        )
        last = _event("done", {"generator": generator.name, "timing": timing.model_dump()})
    except GenerationError as exc:
        last = _event("error", error_body(502, "llm_unavailable", str(exc), request_id))
    except Exception:
        log.exception("the answer stream failed (request %s)", request_id)
        last = _event("error", error_body(500, "internal_error", "internal error; see the service log", request_id))
    yield last
