#!/usr/bin/env python3
"""`make bench-grpc`: the same RAG query over HTTP/JSON and over gRPC, through our proxy.

Starts python-ml (its real model, the offline answer writer, the shipped corpus ingested) with its
gRPC API, and our proxy (`proxy` profile) with the auth filter in front of both APIs: `/v1/` to the
HTTP port, `/python_ml.v1.` to the gRPC port over h2c. Then, for each transport:

  latency      the corpus's questions one at a time, N queries: p50/p99 of the whole answer
               (last byte or last message)
  throughput   C client threads asking for D seconds: answers/s

  http json    POST /v1/rag/query, one JSON answer (requests, a kept-alive connection per thread)
  http sse     the same with "stream": true, read to the `done` event
  grpc stream  python_ml.v1.Rag/Query, read to the `done` message (grpcio, a channel per thread)

Runs are repeated and the report gives medians over runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import requests
from harness.envoy import free_port
from harness.gateway import DEMO_KEY, REPO, auth_filter, start_gateway
from harness.gateway_identity import SIGNING_KEY_ENV, TEST_SIGNING_KEY
from harness.python_ml_service import start_python_ml
from python_ml.v1 import rag_pb2, rag_pb2_grpc

Ask = Callable[[str], None]
TRANSPORTS = ("http json", "http sse", "grpc stream")


def gateway_config(port: int, http_port: int, grpc_port: int) -> dict[str, object]:
    signed = {"key_env": SIGNING_KEY_ENV}
    return {
        "server": {"threads": 1},
        "logging": {"format": "json", "level": "warn"},
        "listeners": [{"name": "public", "address": f"127.0.0.1:{port}", "h2c": True}],
        "filter_chains": [{"name": "auth", "filters": [auth_filter()]}],
        "routes": [
            {
                "name": "grpc",
                "match": {"path": {"prefix": "/python_ml.v1."}},
                "cluster": "ml-grpc",
                "filter_chain": "auth",
            },
            {"name": "http", "match": {"path": {"prefix": "/v1/"}}, "cluster": "ml", "filter_chain": "auth"},
        ],
        "clusters": [
            {"name": "ml", "endpoints": [f"127.0.0.1:{http_port}"], "identity_signature": signed},
            {
                "name": "ml-grpc",
                "endpoints": [f"127.0.0.1:{grpc_port}"],
                "protocol": "http2",
                "identity_signature": signed,
            },
        ],
    }


_channels: list[grpc.Channel] = []


def askers(gateway: str, transport: str) -> Ask:
    """A function that asks one question over `transport` and waits for the whole answer."""
    if transport == "grpc stream":
        channel = grpc.insecure_channel(gateway)
        _channels.append(channel)
        stub = rag_pb2_grpc.RagStub(channel)
        metadata = (("x-api-key", DEMO_KEY),)

        def ask_grpc(question: str) -> None:
            events = list(stub.Query(rag_pb2.QueryRequest(question=question), metadata=metadata, timeout=60))
            assert events[-1].WhichOneof("event") == "done"

        return ask_grpc
    session = requests.Session()
    session.headers["x-api-key"] = DEMO_KEY
    url = f"http://{gateway}/v1/rag/query"
    if transport == "http sse":

        def ask_sse(question: str) -> None:
            with session.post(url, json={"question": question, "stream": True}, stream=True, timeout=60) as response:
                response.raise_for_status()
                body = response.content
            assert b"event: done" in body

        return ask_sse

    def ask_json(question: str) -> None:
        response = session.post(url, json={"question": question}, timeout=60)
        response.raise_for_status()
        assert response.json()["answer"]

    return ask_json


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency(gateway: str, transport: str, questions: list[str], count: int) -> tuple[float, float]:
    ask = askers(gateway, transport)
    times = []
    for i in range(count):
        started = time.perf_counter()
        ask(questions[i % len(questions)])
        times.append((time.perf_counter() - started) * 1000)
    return percentile(times, 0.5), percentile(times, 0.99)


def throughput(gateway: str, transport: str, questions: list[str], clients: int, seconds: float) -> float:
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        ask = askers(gateway, transport)
        i = n
        while time.monotonic() < stop:
            ask(questions[i % len(questions)])
            done[n] += 1
            i += clients

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - started)


def main() -> int:
    """Run the benchmark and print the report (Markdown)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100, help="sequential queries per transport per run")
    parser.add_argument("--duration", type=float, default=10, help="seconds of each throughput run")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    os.environ[SIGNING_KEY_ENV] = TEST_SIGNING_KEY
    work = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    http_port, grpc_port, port = free_port(), free_port(), free_port()
    service = start_python_ml(http_port, work / "python-ml.log", signing_key=TEST_SIGNING_KEY, grpc_port=grpc_port)
    proxy = None
    try:
        proxy = start_gateway(gateway_config(port, http_port, grpc_port), work)
        gateway = f"127.0.0.1:{port}"
        corpus = REPO / "python-ml" / "corpus"
        documents = [{"id": p.stem, "text": p.read_text()} for p in sorted(corpus.glob("*.md"))]
        requests.post(
            f"http://{gateway}/v1/rag/documents",
            json={"documents": documents},
            headers={"x-api-key": DEMO_KEY},
            timeout=300,
        ).raise_for_status()
        questions = [q["question"] for q in json.loads((corpus / "questions.json").read_text())]
        for transport in TRANSPORTS:  # warm-up
            latency(gateway, transport, questions, 10)
        rows: dict[str, list[tuple[float, float, float]]] = {t: [] for t in TRANSPORTS}
        for run in range(args.runs):
            for transport in TRANSPORTS:
                p50, p99 = latency(gateway, transport, questions, args.requests)
                rate = throughput(gateway, transport, questions, args.clients, args.duration)
                rows[transport].append((p50, p99, rate))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        for channel in _channels:
            channel.close()
        if proxy is not None:
            proxy.stop()
        service.terminate()
        service.wait(timeout=15)
    print(
        f"\n{args.runs} runs, {args.requests} sequential queries and {args.clients} clients x "
        f"{args.duration:.0f} s per transport per run, {len(documents)} documents, {os.cpu_count()} cores; "
        "medians over runs\n"
    )
    print("| transport | p50 ms | p99 ms | answers/s |")
    print("|---|---:|---:|---:|")
    for transport, runs in rows.items():
        p50, p99, rate = (statistics.median(run[i] for run in runs) for i in range(3))
        print(f"| {transport} | {p50:.2f} | {p99:.2f} | {rate:.1f} |")
    json_p50 = statistics.median(r[0] for r in rows["http json"])
    grpc_p50 = statistics.median(r[0] for r in rows["grpc stream"])
    print(f"\ngRPC p50 / HTTP JSON p50: {grpc_p50 / json_p50:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
