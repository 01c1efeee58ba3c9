"""Fixtures: the service on a real loopback socket (uvicorn in a thread), the real model."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fake_llm import FakeLLM, Reply
from fastapi import FastAPI
from python_ml.app import create_app
from python_ml.dependencies import ServiceState
from python_ml.embedding import Embedder, bundled_model_dir
from python_ml.evaluation import load_corpus
from python_ml.settings import Settings


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningService:
    """The service listening on loopback."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread
    app: FastAPI

    @property
    def grpc_target(self) -> str:
        """Where its gRPC API listens (`host:port`)."""
        return f"127.0.0.1:{self.app.state.grpc.port}"

    def client(self, **kwargs: Any) -> httpx.Client:  # noqa: ANN401 - passed through to httpx
        """An HTTP client for this service."""
        return httpx.Client(base_url=self.url, **{"timeout": 30, **kwargs})

    @property
    def state(self) -> ServiceState:
        """The running application's state (its model, store and settings)."""
        state: ServiceState = self.app.state.service
        return state


def start_service(settings: Settings, wait_ready: bool = True) -> RunningService:
    """Serves `create_app(settings)` on a free port; waits for /readyz unless told not to."""
    port = free_port()
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"{url}/readyz" if wait_ready else f"{url}/healthz", timeout=2).status_code
            if status == 200:
                return RunningService(url, server, thread, app)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"service on {url} did not become ready")


def stop_service(service: RunningService) -> None:
    """Asks uvicorn to exit and waits for it."""
    service.server.should_exit = True
    service.thread.join(timeout=15)


@pytest.fixture
def service_factory() -> Iterator[Callable[..., RunningService]]:
    """Starts services with setting overrides: `service_factory(generator="openai", ...)`."""
    started: list[RunningService] = []

    def start(wait_ready: bool = True, **overrides: Any) -> RunningService:  # noqa: ANN401 - settings values
        overrides.setdefault("generator", "extractive")  # never pick up a key from the environment
        overrides.setdefault("grpc_port", free_port())
        settings = Settings(_env_file=None, qdrant_path=":memory:", **overrides)
        service = start_service(settings, wait_ready)
        started.append(service)
        return service

    yield start
    for service in started:
        stop_service(service)


@pytest.fixture(scope="session")
def corpus_service() -> Iterator[RunningService]:
    """One service with the shipped corpus ingested, shared by the read-only query tests."""
    service = start_service(
        Settings(_env_file=None, qdrant_path=":memory:", generator="extractive", grpc_port=free_port())
    )
    with service.client() as client:
        documents = [d.model_dump() for d in load_corpus()]
        client.post("/v1/rag/documents", json={"documents": documents}).raise_for_status()
    yield service
    stop_service(service)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The model, loaded once."""
    return Embedder(bundled_model_dir())


@pytest.fixture
def fake_llm() -> Iterator[Callable[[list[Reply]], FakeLLM]]:
    """Starts scripted provider stand-ins (`fake_llm([Reply(...)])`), stopped after the test."""
    started: list[FakeLLM] = []

    def start(script: list[Reply]) -> FakeLLM:
        server = FakeLLM(script)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
