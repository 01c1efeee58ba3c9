"""Throughput and latency of python-ml on this machine; writes docs/python-ml-benchmarks.md.

    make bench-ml                       # or: .venv/bin/python python-ml/scripts/benchmark.py --runs 5

Measures, each over several runs (medians reported):
- embeddings per second, in process, for short sentences and for chunk-sized passages;
- `POST /v1/embeddings` latency for one sentence, through uvicorn on loopback;
- ingest time for a 1,000-chunk corpus, then `POST /v1/rag/query` p50/p99 on it (sequential) and
  queries per second with several clients at once.
The corpus is made of sentences from python-ml/corpus recombined with a fixed seed, one chunk per
document, so every chunk is distinct and the run is repeatable.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from harness.gateway import REPO
from harness.python_ml_service import start_python_ml
from python_ml.chunking import split_sentences
from python_ml.embedding import Embedder, bundled_model_dir
from python_ml.evaluation import load_corpus, load_questions

REPORT = REPO / "docs" / "python-ml-benchmarks.md"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def synthetic_chunks(count: int, chars: int, seed: int = 1) -> list[str]:
    """`count` distinct passages of about `chars` characters, from the corpus's sentences."""
    sentences = [s for d in load_corpus() for s in split_sentences(d.text) if not s.startswith("#")]
    rng = random.Random(seed)
    passages = []
    for _ in range(count):
        passage = ""
        while len(passage) < chars - 150:
            passage += rng.choice(sentences) + " "
        passages.append(passage.strip())
    return passages


def embeddings_per_second(embedder: Embedder, texts: list[str], runs: int) -> tuple[float, float]:
    """Median texts/s and word pieces per text."""
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        embedder.embed(texts)
        rates.append(len(texts) / (time.perf_counter() - started))
    tokens = statistics.mean(embedder.count_tokens(t) for t in texts)
    return statistics.median(rates), tokens


def timed_post(client: httpx.Client, path: str, body: dict[str, object]) -> float:
    started = time.perf_counter()
    client.post(path, json=body).raise_for_status()
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200, help="sequential queries per run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for the throughput run")
    parser.add_argument("--port", type=int, default=18100)
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    args = parser.parse_args()

    embedder = Embedder(bundled_model_dir())
    questions = [q.question for q in load_questions()]
    short_rate, short_tokens = embeddings_per_second(embedder, (questions * 10)[:256], args.runs)
    passages = synthetic_chunks(args.chunks, 900)
    long_rate, long_tokens = embeddings_per_second(embedder, passages[:128], args.runs)

    service = start_python_ml(args.port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=300) as client:
            single = [timed_post(client, "/v1/embeddings", {"input": q}) for q in questions * 4]
            documents = [{"id": f"doc-{i}", "text": text} for i, text in enumerate(passages)]
            started = time.perf_counter()
            stored = 0
            for i in range(0, len(documents), 100):
                stored += client.post("/v1/rag/documents", json={"documents": documents[i : i + 100]}).json()["chunks"]
            ingest_s = time.perf_counter() - started

            p50s, p99s = [], []
            for _ in range(args.runs):
                latencies = [
                    timed_post(client, "/v1/rag/query", {"question": questions[i % len(questions)]})
                    for i in range(args.queries)
                ]
                p50s.append(percentile(latencies, 50))
                p99s.append(percentile(latencies, 99))

            rates = []
            for _ in range(args.runs):
                per_client = args.queries // args.clients
                started = time.perf_counter()
                with ThreadPoolExecutor(args.clients) as pool:
                    list(
                        pool.map(
                            lambda i: timed_post(client, "/v1/rag/query", {"question": questions[i % len(questions)]}),
                            range(per_client * args.clients),
                        )
                    )
                rates.append(per_client * args.clients / (time.perf_counter() - started))
    finally:
        service.terminate()
        service.wait(timeout=15)

    command = "make bench-ml" if args.runs == 5 else f"python python-ml/scripts/benchmark.py --runs {args.runs}"
    report = f"""# python-ml benchmarks

Generated by `{command}` ({args.runs} runs each, medians) on {os.cpu_count()} CPU cores,
Python {platform.python_version()}, all-MiniLM-L6-v2 on numpy ({_blas()}), embedded Qdrant in memory,
extractive generator (no LLM call). Do not edit by hand: re-run the script.

## Embeddings (in process)

| input | word pieces each | embeddings/s |
|---|---:|---:|
| short sentences (batch of 256) | {short_tokens:.0f} | {short_rate:.0f} |
| 900-character passages (batch of 128) | {long_tokens:.0f} | {long_rate:.1f} |

`POST /v1/embeddings`, one sentence, sequential, through uvicorn on loopback:
p50 {percentile(single, 50):.1f} ms, p99 {percentile(single, 99):.1f} ms ({len(single)} requests).

## RAG on a {stored:,}-chunk corpus

Ingest (chunk, embed, store) of {stored:,} chunks in batches of 100 documents: {ingest_s:.1f} s
({stored / ingest_s:.1f} chunks/s).

| `POST /v1/rag/query` | p50 (ms) | p99 (ms) |
|---|---:|---:|
| sequential, {args.queries} queries per run | {statistics.median(p50s):.1f} | {statistics.median(p99s):.1f} |

Per-run p50: {", ".join(f"{v:.1f}" for v in p50s)} ms; p99: {", ".join(f"{v:.1f}" for v in p99s)} ms.

With {args.clients} concurrent clients: {statistics.median(rates):.0f} queries/s
(runs: {", ".join(f"{r:.0f}" for r in rates)}).
"""
    print(report)
    if not args.no_write:
        REPORT.write_text(report)
        print(f"wrote {REPORT.relative_to(REPO)}")
    return 0


def _blas() -> str:
    try:
        import numpy as np

        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]  # type: ignore[index]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - only a label in the report
        return "numpy BLAS"


if __name__ == "__main__":
    sys.exit(main())
