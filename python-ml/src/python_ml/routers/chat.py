"""`POST /v1/chat/completions`, OpenAI-compatible, so its clients (and an AI gateway's token
budgets) work unchanged: the assistant answers the last user turn from the tenant's documents
with the service's generator (the offline extractive one, or the hosted model when a key is set),
as one JSON answer or as OpenAI's streamed chunks, with `usage` in word pieces (`tokens.py`)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..answering import collect_answer
from ..dependencies import ERROR_RESPONSES, Service, loaded_rag, on_model_thread
from ..errors import ApiError, error_body, request_id_of
from ..generation import GenerationError
from ..models import ChatChoice, ChatCompletion, ChatMessage, ChatRequest, ChatUsage
from ..rag import EmptyCorpusError
from ..settings import Settings
from ..store import Hit
from ..tokens import TokenCounter
from ..trust import UNTRUSTED_RESPONSE, TrustedCaller
from .query import unless_disconnected

router = APIRouter()


@dataclass
class _Answer:
    """What a completion is, and how its answer went so far."""

    id: str
    created: int
    model: str
    prompt_tokens: int
    limit: int
    finish_reason: Literal["stop", "length"] = "stop"

    def usage(self, answer: str, counter: TokenCounter) -> ChatUsage:
        completion_tokens = counter.count(answer)
        return ChatUsage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=self.prompt_tokens + completion_tokens,
        )


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        **ERROR_RESPONSES,
        **UNTRUSTED_RESPONSE,
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or chunks when `stream` is true"},
    },
    summary="Answer a conversation's last question from the indexed documents (OpenAI-compatible)",
)
async def chat_completions(request: Request, body: ChatRequest, caller: TrustedCaller, state: Service) -> Response:
    """Checks the request's bounds, counts its prompt, retrieves the tenant's chunks nearest the
    last user turn (none when the tenant has no documents yet), then writes the answer, cut at
    `max_completion_tokens` (or `max_tokens`, or the service's cap)."""
    question, limit = _checked(body, state.settings)
    rag = loaded_rag(state)
    counter = rag.embedder.tokens
    texts = [message.text() for message in body.messages]
    prompt_tokens = await on_model_thread(state, lambda: sum(counter.count(text) for text in texts))
    try:
        hits: list[Hit] = await on_model_thread(
            state, lambda: rag.retrieve(caller.tenant, question, state.settings.default_top_k, None)
        )
    except EmptyCorpusError:
        hits = []
    answer = _Answer(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model, prompt_tokens, limit)
    pieces = _within_limit(state.generator.stream(question, hits), counter, answer)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = _chunks(pieces, answer, counter, include_usage, request_id_of(request))
        return StreamingResponse(chunks, media_type="text/event-stream", headers={"cache-control": "no-cache"})
    text = await unless_disconnected(request, collect_answer(pieces))
    if text is None:
        return Response(status_code=499)
    completion = ChatCompletion(
        id=answer.id,
        created=answer.created,
        model=answer.model,
        choices=[ChatChoice(message=ChatMessage(role="assistant", content=text), finish_reason=answer.finish_reason)],
        usage=answer.usage(text, counter),
    )
    return JSONResponse(completion.model_dump(exclude_none=True))


def _checked(body: ChatRequest, settings: Settings) -> tuple[str, int]:
    """The question and the answer's token limit, or the error the request earns."""
    if len(body.messages) > settings.max_chat_messages:
        raise ApiError(413, "too_many_messages", f"at most {settings.max_chat_messages} messages per request")
    if sum(len(message.text()) for message in body.messages) > settings.max_chat_chars:
        raise ApiError(413, "messages_too_long", f"the messages are limited to {settings.max_chat_chars} characters")
    question = body.question()
    if question is None or not question.strip():
        raise ApiError(422, "invalid_request", "body.messages: a user message with text is required")
    limit = body.token_limit()
    if limit is not None and limit > settings.max_completion_tokens:
        raise ApiError(
            422, "invalid_request", f"body.max_tokens: at most {settings.max_completion_tokens} on this service"
        )
    return question, limit or settings.max_completion_tokens


async def _within_limit(pieces: AsyncIterator[str], counter: TokenCounter, answer: _Answer) -> AsyncIterator[str]:
    """The generator's pieces until the answer reaches its limit; the piece that crosses it is cut
    and the generator (with a provider request under it) closed."""
    used = 0
    try:
        async for piece in pieces:
            size = counter.count(piece)
            if used + size > answer.limit:
                answer.finish_reason = "length"
                if cut := counter.prefix(piece, answer.limit - used):
                    yield cut
                return
            used += size
            yield piece
    finally:
        if isinstance(pieces, AsyncGenerator):
            await pieces.aclose()


def _chunk(answer: _Answer, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
    data: dict[str, Any] = {
        "id": answer.id,
        "object": "chat.completion.chunk",
        "created": answer.created,
        "model": answer.model,
        "choices": choices,
    }
    if usage is not None:
        data["usage"] = usage
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _delta(delta: dict[str, str], finish_reason: str | None = None) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": delta, "finish_reason": finish_reason}]


async def _chunks(
    pieces: AsyncIterator[str], answer: _Answer, counter: TokenCounter, include_usage: bool, request_id: str | None
) -> AsyncIterator[str]:
    """OpenAI's stream: the role, the text as it is written, the finish reason, with
    `include_usage` a last chunk with no choices and the usage, then `[DONE]`. A failure after the
    200 is one chunk holding the usual error body (OpenAI's clients raise it), then `[DONE]`."""
    yield _chunk(answer, _delta({"role": "assistant", "content": ""}))
    written: list[str] = []
    try:
        async for piece in pieces:
            written.append(piece)
            yield _chunk(answer, _delta({"content": piece}))
    except GenerationError as exc:
        yield f"data: {json.dumps(error_body(502, 'llm_unavailable', str(exc), request_id))}\n\n"
    else:
        yield _chunk(answer, _delta({}, answer.finish_reason))
        if include_usage:
            yield _chunk(answer, [], answer.usage("".join(written), counter).model_dump())
    yield "data: [DONE]\n\n"
