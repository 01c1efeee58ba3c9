#!/usr/bin/env python3
"""`make bench-sandbox`: sandbox-host latency per language and executions/s at full concurrency.

Starts the service (the `proxy` profile build) with the shipped configuration and measures, over
loopback HTTP:

  latency      a trivial program per language (print 1+1), one request at a time, N requests;
               p50/p99 of the server-side `duration_ms` (instantiate + run) and of the whole
               HTTP round trip
  throughput   the same Python program from `max_running` x 2 client threads for D seconds

Runs are repeated and the report gives medians over runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from harness.gateway import target_dir
from harness.sandbox_host import SandboxHost, start_sandbox

PROGRAMS = {
    "python": "print(1 + 1)",
    "javascript": "console.log(1 + 1)",
    "wat": """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1) (data (i32.const 16) "2\\n")
  (func (export "_start") (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 2))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))""",
}


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency(host: SandboxHost, language: str, count: int) -> tuple[float, float, float, float]:
    """p50/p99 of server duration and of the round trip, in ms."""
    session = requests.Session()
    server, total = [], []
    for _ in range(count):
        started = time.perf_counter()
        result = session.post(
            f"{host.url}/v1/executions", json={"language": language, "code": PROGRAMS[language]}
        ).json()
        total.append((time.perf_counter() - started) * 1000)
        assert result["stdout"] == "2\n", result
        server.append(result["duration_ms"])
    return percentile(server, 0.5), percentile(server, 0.99), percentile(total, 0.5), percentile(total, 0.99)


def throughput(host: SandboxHost, clients: int, seconds: float) -> float:
    """Completed Python executions per second with `clients` concurrent callers."""
    deadline = time.monotonic() + seconds

    def client(_: int) -> int:
        session, done = requests.Session(), 0
        while time.monotonic() < deadline:
            response = session.post(
                f"{host.url}/v1/executions", json={"language": "python", "code": PROGRAMS["python"]}
            )
            done += response.status_code == 200
        return done

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        completed = sum(pool.map(client, range(clients)))
    return completed / (time.monotonic() - started)


def main() -> int:
    """Run the benchmark and print the report (Markdown)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per language per run")
    parser.add_argument("--duration", type=float, default=10, help="seconds of the throughput run")
    parser.add_argument("--max-running", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    os.environ.setdefault("SANDBOX_HOST_BINARY", str(target_dir() / "proxy" / "sandbox-host"))
    concurrency = {"max_running": args.max_running, "max_queued": 256, "queue_timeout_ms": 60000}
    host = start_sandbox(Path(tempfile.mkdtemp(prefix="bench-sandbox-")), {"concurrency": concurrency})
    try:
        for language in PROGRAMS:  # warm-up
            latency(host, language, 10)
        rows: dict[str, list[tuple[float, float, float, float]]] = {language: [] for language in PROGRAMS}
        rates = []
        for run in range(args.runs):
            for language in PROGRAMS:
                rows[language].append(latency(host, language, args.requests))
            rates.append(throughput(host, args.max_running * 2, args.duration))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        host.stop()
    print(f"\n{args.runs} runs, {args.requests} sequential requests per language, {os.cpu_count()} cores\n")
    print("| language | server p50 ms | server p99 ms | round trip p50 ms | round trip p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for language, runs in rows.items():
        medians = [statistics.median(run[i] for run in runs) for i in range(4)]
        print(f"| {language} | " + " | ".join(f"{m:.2f}" for m in medians) + " |")
    print(
        f"\nPython `print(1 + 1)` at full concurrency ({args.max_running} running, "
        f"{args.max_running * 2} clients, {args.duration:.0f} s): "
        f"{statistics.median(rates):.1f} executions/s (median of {args.runs})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
