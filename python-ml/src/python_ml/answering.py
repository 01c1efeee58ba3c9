"""Answers from the tenant's documents, for HTTP (`routers/query.py`) and gRPC (`grpc_service.py`)
alike: retrieval first, then the answer as events (`token`, `sources`, then `done` or `error`)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .dependencies import ServiceState, elapsed_ms, loaded_rag, on_model_thread
from .errors import ApiError, error_body
from .generation import AnswerGenerator, GenerationError
from .models import QueryRequest, Source, Timing
from .rag import EmptyCorpusError
from .store import Hit
from .trust import Caller

log = logging.getLogger(__name__)

AnswerEvent = tuple[str, dict[str, Any]]
"""An event's name and its data: `token` {text}, `sources` {sources}, `done` {generator, timing},
or `error` (the usual error body)."""


@dataclass(frozen=True)
class Retrieval:
    """The chunks a question retrieved, numbered as the answer cites them, and when it started."""

    hits: list[Hit]
    sources: list[Source]
    started: float
    retrieval_ms: float


async def retrieve(state: ServiceState, caller: Caller, body: QueryRequest) -> Retrieval:
    """The tenant's chunks nearest the question. 409 `empty_corpus` before any document is indexed;
    failures here come before any answer is sent, so they are plain errors."""
    rag = loaded_rag(state)
    started = time.perf_counter()
    top_k = body.top_k or state.settings.default_top_k
    try:
        hits = await on_model_thread(state, lambda: rag.retrieve(caller.tenant, body.question, top_k, body.filters))
    except EmptyCorpusError:
        raise ApiError(
            409, "empty_corpus", "no documents are indexed for this tenant yet; POST /v1/rag/documents first"
        ) from None
    sources = [_source(n, hit) for n, hit in enumerate(hits, start=1)]
    return Retrieval(hits=hits, sources=sources, started=started, retrieval_ms=elapsed_ms(started))


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


async def answer_events(
    generator: AnswerGenerator, question: str, retrieval: Retrieval, request_id: str | None
) -> AsyncIterator[AnswerEvent]:
    """`token` events as the answer is written, then `sources`, then `done` with the timing.

    The events always end in `done` or `error`: once an answer has started, a status can no longer
    say something failed, and a stream that just stops looks like a network fault. So any failure
    becomes one `error` event with the usual error body: 502 `llm_unavailable` for the provider,
    500 `internal_error` (logged) for anything else. Only a caller that went away gets nothing more."""
    generation_started = time.perf_counter()
    try:
        async for piece in generator.stream(question, retrieval.hits):
            yield "token", {"text": piece}
        yield "sources", {"sources": [s.model_dump() for s in retrieval.sources]}
        timing = Timing(
            retrieval_ms=retrieval.retrieval_ms,
            generation_ms=elapsed_ms(generation_started),
            total_ms=elapsed_ms(retrieval.started),
        )
        last: AnswerEvent = ("done", {"generator": generator.name, "timing": timing.model_dump()})
    except GenerationError as exc:
        last = ("error", error_body(502, "llm_unavailable", str(exc), request_id))
    except Exception:
        log.exception("the answer stream failed (request %s)", request_id)
        last = ("error", error_body(500, "internal_error", "internal error; see the service log", request_id))
    yield last
