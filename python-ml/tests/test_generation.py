"""Hosted answer generation against a scripted provider on loopback: streaming, retries,
failures, timeouts and cancellation. No test reaches the network."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import RunningService
from fake_llm import Ending, FakeLLM, Reply
from test_api import assert_error, parse_events

DOCUMENT = {"id": "geo", "text": "Paris is the capital of France. Berlin is the capital of Germany."}
QUESTION = {"question": "What is the capital of France?"}


def provider_settings(provider: str, llm: FakeLLM) -> dict[str, object]:
    """Settings that point `provider` at the fake, with fast retries."""
    common = {"generator": provider, "llm_backoff_seconds": 0.01, "llm_max_retries": 2}
    if provider == "anthropic":
        return {**common, "anthropic_api_key": "sk-ant-test", "anthropic_base_url": llm.url}
    return {**common, "openai_api_key": "sk-test", "openai_base_url": f"{llm.url}/v1"}


def ingested(service: RunningService) -> RunningService:
    with service.client() as client:
        client.post("/v1/rag/documents", json={"documents": [DOCUMENT]}).raise_for_status()
    return service


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_hosted_answer_uses_the_sources(
    provider: str, service_factory: Callable[..., RunningService], fake_llm: Callable[[list[Reply]], FakeLLM]
) -> None:
    llm = fake_llm([Reply(text="Paris is the capital of France [1].")])
    service = ingested(service_factory(**provider_settings(provider, llm)))
    with service.client() as client:
        body = client.post("/v1/rag/query", json=QUESTION).json()
    assert body["answer"] == "Paris is the capital of France [1]."
    assert body["generator"] == provider
    sent = llm.recorded.requests[0]
    if provider == "anthropic":
        assert sent["path"] == "/v1/messages"
        assert sent["headers"]["x-api-key"] == "sk-ant-test" and sent["headers"]["anthropic-version"]
        prompt = sent["body"]["messages"][0]["content"]
    else:
        assert sent["path"] == "/v1/chat/completions"
        assert sent["headers"]["authorization"] == "Bearer sk-test"
        prompt = sent["body"]["messages"][1]["content"]
    assert sent["body"]["stream"] is True
    assert "[1] (document geo)" in prompt and "Paris is the capital of France." in prompt
    assert "Question: What is the capital of France?" in prompt


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_streamed_hosted_answer(
    provider: str, service_factory: Callable[..., RunningService], fake_llm: Callable[[list[Reply]], FakeLLM]
) -> None:
    llm = fake_llm([Reply(text="It is Paris [1].")])
    service = ingested(service_factory(**provider_settings(provider, llm)))
    with service.client() as client, client.stream("POST", "/v1/rag/query", json={**QUESTION, "stream": True}) as r:
        events = parse_events(r.iter_lines())
    tokens = [data["text"] for name, data in events if name == "token"]
    assert tokens == ["It", " is", " Paris", " [1]."]
    assert [name for name, _ in events][-2:] == ["sources", "done"]


def test_429_and_503_are_retried(
    service_factory: Callable[..., RunningService], fake_llm: Callable[[list[Reply]], FakeLLM]
) -> None:
    llm = fake_llm([Reply(status=429, retry_after="0"), Reply(status=503), Reply(text="Paris [1].")])
    service = ingested(service_factory(**provider_settings("openai", llm)))
    with service.client() as client:
        assert client.post("/v1/rag/query", json=QUESTION).json()["answer"] == "Paris [1]."
    assert len(llm.recorded.requests) == 3


def test_persistent_failure_is_a_502(
    service_factory: Callable[..., RunningService], fake_llm: Callable[[list[Reply]], FakeLLM]
) -> None:
    llm = fake_llm([Reply(status=500)])
    service = ingested(service_factory(**provider_settings("anthropic", llm)))
    with service.client() as client:
        error = assert_error(client.post("/v1/rag/query", json=QUESTION), 502, "llm_unavailable")
        assert "after 3 attempts" in str(error["message"])
        with client.stream("POST", "/v1/rag/query", json={**QUESTION, "stream": True}) as r:
            events = parse_events(r.iter_lines())
    assert events[-1][0] == "error" and events[-1][1]["error"]["code"] == "llm_unavailable"
    assert len(llm.recorded.requests) == 6  # 1 + 2 retries, twice


def test_client_errors_are_not_retried(
    service_factory: Callable[..., RunningService], fake_llm: Callable[[list[Reply]], FakeLLM]
) -> None:
    llm = fake_llm([Reply(status=401)])
    service = ingested(service_factory(**provider_settings("openai", llm)))
    with service.client() as client:
        assert_error(client.post("/v1/rag/query", json=QUESTION), 502, "llm_unavailable")
    assert len(llm.recorded.requests) == 1


def test_a_slow_provider_times_out(
    service_factory: Callable[..., RunningService], fake_llm: Callable[[list[Reply]], FakeLLM]
) -> None:
    llm = fake_llm([Reply(delay_before=3.0)])
    settings = {**provider_settings("openai", llm), "llm_timeout_seconds": 0.3, "llm_max_retries": 0}
    service = ingested(service_factory(**settings))
    with service.client() as client:
        assert_error(client.post("/v1/rag/query", json=QUESTION), 502, "llm_unavailable")


def test_unreachable_provider_is_a_502(service_factory: Callable[..., RunningService]) -> None:
    from conftest import free_port

    settings = {
        "generator": "openai",
        "openai_api_key": "sk-test",
        "openai_base_url": f"http://127.0.0.1:{free_port()}/v1",
        "llm_backoff_seconds": 0.01,
        "llm_max_retries": 1,
    }
    with ingested(service_factory(**settings)).client() as client:
        error = assert_error(client.post("/v1/rag/query", json=QUESTION), 502, "llm_unavailable")
        assert "ConnectError" in str(error["message"])


@pytest.mark.parametrize("stream", [True, False])
def test_client_going_away_cancels_the_provider_request(
    stream: bool, service_factory: Callable[..., RunningService], fake_llm: Callable[[list[Reply]], FakeLLM]
) -> None:
    llm = fake_llm([Reply(text=" ".join(["word"] * 200), delay_between=0.05)])
    service = ingested(service_factory(**provider_settings("anthropic", llm)))
    # The stream case hangs up itself after the first token; a 1 s read timeout there only fails the
    # test on a busy machine.
    with service.client(timeout=10.0 if stream else 1.0) as client:
        if stream:
            with client.stream("POST", "/v1/rag/query", json={**QUESTION, "stream": True}) as r:
                next(r.iter_lines())  # the first token arrived; now hang up
        else:
            with pytest.raises(Exception):  # noqa: B017 - the read timeout is how this client hangs up
                client.post("/v1/rag/query", json=QUESTION)
    # 200 words at 50 ms would take 10 s; the fake sees the hang-up long before.
    assert llm.recorded.hung_up.wait(timeout=5), "the provider request was not cancelled"


STREAM_FAILURES = [
    # (how the provider's stream ends after a few words, the status and code of the error event)
    ("cut", 502, "llm_unavailable"),
    ("malformed", 502, "llm_unavailable"),
    ("unexpected", 500, "internal_error"),
]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize(("ending", "status", "code"), STREAM_FAILURES)
def test_a_stream_failing_midway_ends_with_an_error_event(
    provider: str,
    ending: Ending,
    status: int,
    code: str,
    service_factory: Callable[..., RunningService],
    fake_llm: Callable[[list[Reply]], FakeLLM],
) -> None:
    llm = fake_llm([Reply(text="Paris is", ending=ending), Reply(text="It is Paris [1].")])
    service = ingested(service_factory(**provider_settings(provider, llm)))
    with service.client() as client:
        with client.stream("POST", "/v1/rag/query", json={**QUESTION, "stream": True}) as r:
            assert r.status_code == 200
            events = parse_events(r.iter_lines())
        assert [name for name, _ in events] == ["token", "token", "error"]
        error = events[-1][1]["error"]
        assert (error["status"], error["code"]) == (status, code)
        assert error["request_id"] == r.headers["x-request-id"]
        assert "Traceback" not in error["message"]

        # The next answer, from a provider behaving again, is whole.
        with client.stream("POST", "/v1/rag/query", json={**QUESTION, "stream": True}) as r:
            events = parse_events(r.iter_lines())
        assert [name for name, _ in events][-3:] == ["token", "sources", "done"]


@pytest.mark.parametrize(("ending", "status", "code"), STREAM_FAILURES)
def test_an_answer_failing_midway_is_an_error_not_a_shorter_answer(
    ending: Ending,
    status: int,
    code: str,
    service_factory: Callable[..., RunningService],
    fake_llm: Callable[[list[Reply]], FakeLLM],
) -> None:
    llm = fake_llm([Reply(text="Paris is", ending=ending), Reply(text="It is Paris [1].")])
    service = ingested(service_factory(**provider_settings("anthropic", llm)))
    with service.client() as client:
        assert_error(client.post("/v1/rag/query", json=QUESTION), status, code)
        assert client.post("/v1/rag/query", json=QUESTION).json()["answer"] == "It is Paris [1]."
