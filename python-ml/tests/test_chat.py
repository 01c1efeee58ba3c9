"""`POST /v1/chat/completions`: OpenAI's own client against the real service (the offline
generator over the shipped corpus, and a scripted hosted provider), plain and streamed, usage,
limits, and hostile bodies."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from conftest import RunningService
from fake_llm import FakeLLM, Reply
from python_ml.embedding import Embedder
from python_ml.tokens import TokenCounter
from test_api import assert_error
from test_generation import ingested, provider_settings

QUESTION = "How long should an espresso shot take?"
MESSAGES: list[Any] = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": QUESTION},
]


def client_for(service: RunningService) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)


def test_the_openai_client_gets_an_answer_with_usage(corpus_service: RunningService, embedder: Embedder) -> None:
    completion = client_for(corpus_service).chat.completions.create(model="any-model", messages=MESSAGES)
    answer = completion.choices[0].message.content
    assert answer and "[1]" in answer and "second" in answer.lower(), answer
    assert completion.choices[0].finish_reason == "stop" and completion.model == "any-model"
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    usage = completion.usage
    assert usage is not None
    counter = embedder.tokens
    assert usage.prompt_tokens == counter.count("Answer briefly.") + counter.count(QUESTION)
    assert usage.completion_tokens == counter.count(answer)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_a_stream_carries_the_same_answer_and_usage_when_asked(corpus_service: RunningService) -> None:
    client = client_for(corpus_service)
    plain = client.chat.completions.create(model="m", messages=MESSAGES)
    chunks = list(
        client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage, "usage comes last, alone"
    assert all(c.usage is None for c in chunks[:-1])

    without = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in without) and without[-1].choices[0].finish_reason == "stop"


def test_the_raw_stream_ends_with_done(corpus_service: RunningService) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with corpus_service.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert data[-1] == "[DONE]"
    assert all(json.loads(item)["object"] == "chat.completion.chunk" for item in data[:-1])


@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
def test_the_answer_is_cut_at_its_token_limit(
    corpus_service: RunningService, embedder: Embedder, limit_field: str
) -> None:
    client = client_for(corpus_service)
    full = client.chat.completions.create(model="m", messages=MESSAGES)
    assert full.usage is not None and full.usage.completion_tokens > 5
    kwargs: dict[str, Any] = {limit_field: 5}
    cut = client.chat.completions.create(model="m", messages=MESSAGES, **kwargs)
    assert cut.choices[0].finish_reason == "length"
    text = cut.choices[0].message.content or ""
    assert text and (full.choices[0].message.content or "").startswith(text)
    assert cut.usage is not None and cut.usage.completion_tokens == embedder.tokens.count(text) <= 5


def test_a_tenant_without_documents_gets_an_answer_saying_so(service_factory: Callable[..., RunningService]) -> None:
    service = service_factory()
    completion = client_for(service).chat.completions.create(model="m", messages=MESSAGES)
    assert "do not contain" in (completion.choices[0].message.content or "")


def test_the_hosted_model_answers_the_last_user_turn(
    service_factory: Callable[..., RunningService], fake_llm: Callable[[list[Reply]], FakeLLM]
) -> None:
    llm = fake_llm([Reply(text="Paris [1].")])
    service = ingested(service_factory(**provider_settings("openai", llm)))
    messages: list[Any] = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
    ]
    completion = client_for(service).chat.completions.create(model="m", messages=messages)
    assert completion.choices[0].message.content == "Paris [1]."
    assert "Question: What is the capital of France?" in llm.recorded.requests[0]["body"]["messages"][1]["content"]


def test_a_provider_failing_mid_stream_ends_with_an_error_chunk(
    service_factory: Callable[..., RunningService], fake_llm: Callable[[list[Reply]], FakeLLM]
) -> None:
    llm = fake_llm([Reply(text="Paris is", ending="cut")])
    service = ingested(service_factory(**provider_settings("openai", llm)))
    stream = client_for(service).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "capital of France?"}], stream=True
    )
    with pytest.raises(openai.APIError, match="llm_unavailable|stream ended"):
        list(stream)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "m", "messages": []}, 422, "invalid_request"),
        ({"model": "m", "messages": [{"role": "system", "content": "only a system turn"}]}, 422, "invalid_request"),
        ({"model": "m", "messages": [{"role": "user", "content": "   "}]}, 422, "invalid_request"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, 422, "invalid_request"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 422, "invalid_request"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 422, "invalid_request"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, 422, "invalid_request"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 422, "invalid_request"),
        ({"model": "", "messages": [{"role": "user", "content": "hi"}]}, 422, "invalid_request"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}] * 300}, 413, "too_many_messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "x" * 200_001}]}, 413, "messages_too_long"),
        ({"model": "m", "messages": "hi"}, 422, "invalid_request"),
    ],
)
def test_bad_bodies_get_json_errors_and_the_service_goes_on(
    corpus_service: RunningService, body: dict[str, Any], status: int, code: str
) -> None:
    with corpus_service.client() as client:
        assert_error(client.post("/v1/chat/completions", json=body), status, code)
        ok = client.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [(b"\xff\xfe{", "application/json", 400, "http_error"), (b"model=m", "text/plain", 422, "invalid_request")],
)
def test_a_body_that_is_not_json_is_refused(
    corpus_service: RunningService, content: bytes, content_type: str, status: int, code: str
) -> None:
    with corpus_service.client() as client:
        response = client.post("/v1/chat/completions", content=content, headers={"content-type": content_type})
    assert_error(response, status, code)


def test_token_counts_are_untruncated_and_cuts_are_exact(embedder: Embedder) -> None:
    counter: TokenCounter = embedder.tokens
    long_text = "espresso " * 1000
    assert counter.count(long_text) == 1000 * counter.count("espresso"), "no 256-piece truncation"
    assert counter.prefix("hello brave new world", 2) == "hello brave"
    assert counter.prefix("hello", 0) == "" and counter.prefix("hello", 10) == "hello"
