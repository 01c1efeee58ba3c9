"""Answer generation behind one interface: an offline extractive answer, Anthropic, or any
OpenAI-compatible endpoint.

Every generator streams text pieces. The hosted ones retry 429/5xx and connection failures with
exponential backoff (honouring `Retry-After`) until the first byte arrives; after that a failure
ends the answer with `GenerationError`. Cancelling the consuming task closes the upstream request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import httpx
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .chunking import split_sentences
from .settings import Settings
from .store import Hit

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
_TRACE_CONTEXT = TraceContextTextMapPropagator()

_RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
_MAX_RETRY_AFTER_SECONDS = 30.0
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i in is it of on or the this to was what"
    " when where which who why will with you your".split()
)

SYSTEM_PROMPT = (
    "Answer the question using only the numbered sources. Cite every claim with the number of its"
    " source in square brackets, like [1]. If the sources do not contain the answer, say so."
)


class GenerationError(Exception):
    """The answer could not be generated (provider down, refusing, or too slow)."""


class AnswerGenerator(Protocol):
    """Writes an answer to `question` from `sources`, citing them as [1], [2], … in order."""

    name: str

    def stream(self, question: str, sources: Sequence[Hit]) -> AsyncIterator[str]:
        """The answer as it is produced, in pieces."""
        ...


class ExtractiveGenerator:
    """The offline default: the source sentences that share most words with the question, each
    cited. Deterministic and instant, so the service is useful (and testable) without a key."""

    name = "extractive"

    def __init__(self, max_sentences: int = 3) -> None:
        self._max_sentences = max_sentences

    async def stream(self, question: str, sources: Sequence[Hit]) -> AsyncIterator[str]:
        """One sentence per piece, each followed by its citation."""
        for i, sentence in enumerate(self.select(question, sources)):
            yield ("" if i == 0 else " ") + sentence

    def select(self, question: str, sources: Sequence[Hit]) -> list[str]:
        """The answer's sentences, with citations, in source order."""
        if not sources:
            return ["The indexed documents do not contain an answer to this question."]
        terms = _terms(question)
        scored: list[tuple[int, int, int, str]] = []
        for number, hit in enumerate(sources, start=1):
            for position, sentence in enumerate(split_sentences(hit.chunk.text)):
                overlap = len(terms & _terms(sentence))
                if overlap:
                    scored.append((overlap, number, position, sentence))
        # Most shared words first; ties go to the better-ranked source, then the earlier sentence.
        best = sorted(scored, key=lambda s: (-s[0], s[1], s[2]))[: self._max_sentences]
        if not best:
            first = split_sentences(sources[0].chunk.text)
            best = [(0, 1, 0, first[0] if first else sources[0].chunk.text)]
        return [f"{sentence} [{number}]" for _, number, _, sentence in sorted(best, key=lambda s: (s[1], s[2]))]


def _terms(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def _prompt(question: str, sources: Sequence[Hit]) -> str:
    numbered = "\n\n".join(
        f"[{n}] (document {hit.chunk.document_id})\n{hit.chunk.text}" for n, hit in enumerate(sources, start=1)
    )
    return f"Sources:\n\n{numbered}\n\nQuestion: {question}"


class _HostedGenerator:
    """What the hosted providers share: one HTTP client, retries before the first byte, SSE lines."""

    name = "hosted"

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client

    @asynccontextmanager
    async def _open(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        """The provider's streamed answer, in a client span (OpenTelemetry's GenAI conventions)
        that the provider receives as its `traceparent` and that lasts until the stream ends."""
        model = str(body.get("model", ""))
        span = _tracer.start_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.system": self.name,
                "gen_ai.request.model": model,
                "server.address": httpx.URL(url).host,
            },
        )
        traced_headers = dict(headers)
        # The trace context only: a caller's `baggage` is not the provider's business.
        _TRACE_CONTEXT.inject(traced_headers, context=trace.set_span_in_context(span))
        try:
            response = await self._send(url, traced_headers, body, span)
            try:
                yield response
            finally:
                await response.aclose()
        except Exception as exc:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            span.end()

    async def _send(self, url: str, headers: dict[str, str], body: dict[str, Any], span: Span) -> httpx.Response:
        """The provider's response once it accepts (a status below 400), retried before the first
        byte on transport errors and retryable statuses, at most `llm_max_retries` times."""
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                request = self._client.build_request("POST", url, headers=headers, json=body)
                response = await self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                failure = f"{self.name}: {type(exc).__name__}"
            else:
                if response.status_code < 400:
                    return response
                detail = (await response.aread())[:300].decode("utf-8", "replace")
                await response.aclose()
                failure = f"{self.name} answered {response.status_code}"
                if response.status_code not in _RETRYABLE_STATUS:
                    log.warning("%s: %s", failure, detail)
                    raise GenerationError(failure)
                retry_after = _retry_after(response.headers.get("retry-after"))
            if attempt >= self._settings.llm_max_retries:
                raise GenerationError(f"{failure} (after {attempt + 1} attempts)")
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            log.info("%s; retrying in %.2fs", failure, delay)
            await asyncio.sleep(delay)
            attempt += 1
            span.set_attribute("http.request.resend_count", attempt)

    def _backoff(self, attempt: int) -> float:
        base: float = self._settings.llm_backoff_seconds * (2**attempt)
        return base * (0.5 + random.random() / 2)  # jitter so replicas do not retry in step

    async def _events(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        """The JSON `data:` payloads of a server-sent event stream, up to the provider's end mark
        (OpenAI's `[DONE]`, Anthropic's `message_stop`). A stream that stops before its end mark
        was cut off, and is a `GenerationError` rather than a shorter answer."""
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except json.JSONDecodeError as exc:
                    raise GenerationError(f"{self.name} sent malformed event data") from exc
                if not isinstance(event, dict):
                    raise GenerationError(f"{self.name} sent malformed event data")
                if event.get("type") == "message_stop":
                    return
                yield event
        except httpx.TransportError as exc:
            raise GenerationError(f"{self.name}: {type(exc).__name__} while streaming") from exc
        raise GenerationError(f"{self.name}: the stream ended before the answer was complete")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER_SECONDS)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class AnthropicGenerator(_HostedGenerator):
    """Claude through the Messages API, streamed."""

    name = "anthropic"

    async def stream(self, question: str, sources: Sequence[Hit]) -> AsyncIterator[str]:
        """Text deltas as Claude writes them."""
        settings = self._settings
        assert settings.anthropic_api_key is not None
        headers = {
            "x-api-key": settings.anthropic_api_key.get_secret_value(),
            "anthropic-version": "2023-06-01",
        }
        body = {
            "model": settings.anthropic_model,
            "max_tokens": settings.llm_max_tokens,
            "system": SYSTEM_PROMPT,
            "messages": [{"role": "user", "content": _prompt(question, sources)}],
            "stream": True,
        }
        url = settings.anthropic_base_url.rstrip("/") + "/v1/messages"
        async with self._open(url, headers, body) as response:
            async for event in self._events(response):
                kind = event.get("type")
                if kind == "content_block_delta" and event.get("delta", {}).get("type") == "text_delta":
                    yield event["delta"]["text"]
                elif kind == "error":
                    raise GenerationError(f"anthropic: {event.get('error', {}).get('type', 'error')}")


class OpenAIGenerator(_HostedGenerator):
    """Any OpenAI-compatible chat completions endpoint, streamed."""

    name = "openai"

    async def stream(self, question: str, sources: Sequence[Hit]) -> AsyncIterator[str]:
        """Content deltas as the model writes them."""
        settings = self._settings
        assert settings.openai_api_key is not None
        headers = {"authorization": f"Bearer {settings.openai_api_key.get_secret_value()}"}
        body = {
            "model": settings.openai_model,
            "max_tokens": settings.llm_max_tokens,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": _prompt(question, sources)},
            ],
            "stream": True,
        }
        url = settings.openai_base_url.rstrip("/") + "/chat/completions"
        async with self._open(url, headers, body) as response:
            async for event in self._events(response):
                if "error" in event:
                    raise GenerationError("openai: error event in stream")
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content


def build_generator(settings: Settings, client: httpx.AsyncClient) -> AnswerGenerator:
    """The generator the settings ask for; `auto` picks the first provider with a key."""
    choice = settings.generator
    if choice == "auto":
        if settings.anthropic_api_key:
            choice = "anthropic"
        elif settings.openai_api_key:
            choice = "openai"
        else:
            choice = "extractive"
    if choice == "anthropic":
        if not settings.anthropic_api_key:
            raise ValueError("generator 'anthropic' needs ANTHROPIC_API_KEY")
        return AnthropicGenerator(settings, client)
    if choice == "openai":
        if not settings.openai_api_key:
            raise ValueError("generator 'openai' needs OPENAI_API_KEY")
        return OpenAIGenerator(settings, client)
    return ExtractiveGenerator()
