#!/usr/bin/env python3
"""`make bench-sandbox`: sandbox-host latency per program, executions/s at full concurrency, and
what executions and sessions cost in memory.

Starts the service (the `proxy` profile build) with the shipped configuration and measures, over
loopback HTTP:

  latency      each program below, one request at a time, N requests; p50/p99 of the server-side
               `duration_ms` (instantiate + run) and of the whole HTTP round trip, and the guest's
               linear memory (`memory_bytes`)
  throughput   Python `print(1 + 1)` from `max_running` x 2 client threads for D seconds, with the
               service's resident memory sampled meanwhile (its growth over idle, per running
               execution)
  sessions     the round trip of creating a session, of `print(1 + 1)` in it, and of a dataframe
               step that uses the previous step's frame; resident memory per live session

Runs are repeated and the report gives medians over runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from harness.gateway import target_dir
from harness.gateway_identity import SIGNING_KEY_ENV, TEST_SIGNING_KEY, signed_headers
from harness.sandbox_host import SandboxHost, start_sandbox

HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1) (data (i32.const 16) "2\\n")
  (func (export "_start") (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 2))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""

DATAFRAME = (
    "import numpy as np, pandas as pd\n"
    "df = pd.DataFrame({'city': ['a', 'b', 'c', 'a', 'b'] * 20, 'sales': np.arange(100.0)})\n"
    "print(df.groupby('city').sales.sum().to_dict()['a'])"
)

# name: (language, code, expected stdout)
PROGRAMS = {
    "python print(1 + 1)": ("python", "print(1 + 1)", "2\n"),
    "python json, re, math, datetime, collections": (
        "python",
        "import json, re, math, datetime, collections\n"
        "c = collections.Counter(re.findall(r'\\w+', 'a b a'))\n"
        "print(json.dumps({'a': c['a'], 'd': datetime.date(2026, 1, 1).isoformat(), 'pi': round(math.pi, 2)}))",
        '{"a": 2, "d": "2026-01-01", "pi": 3.14}\n',
    ),
    "python numpy + pandas dataframe": ("python", DATAFRAME, "1960.0\n"),
    "javascript console.log(1 + 1)": ("javascript", "console.log(1 + 1)", "2\n"),
    "wat hello": ("wat", HELLO_WAT, "2\n"),
}


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency(host: SandboxHost, name: str, count: int) -> tuple[float, float, float, float, float]:
    """p50/p99 of server duration and of the round trip in ms, and the median guest memory in MiB."""
    language, code, expected = PROGRAMS[name]
    session = requests.Session()
    server, total, memory = [], [], []
    for _ in range(count):
        started = time.perf_counter()
        result = session.post(f"{host.url}/v1/executions", json={"language": language, "code": code}).json()
        total.append((time.perf_counter() - started) * 1000)
        assert result["stdout"] == expected, result
        server.append(result["duration_ms"])
        memory.append(result["memory_bytes"] / 2**20)
    return (
        percentile(server, 0.5),
        percentile(server, 0.99),
        percentile(total, 0.5),
        percentile(total, 0.99),
        statistics.median(memory),
    )


def resident_mib(pid: int) -> float:
    """The process's resident memory (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def throughput(host: SandboxHost, clients: int, seconds: float) -> tuple[float, float, float]:
    """Completed Python executions per second with `clients` concurrent callers, and the service's
    resident memory before (idle) and at its peak meanwhile, in MiB."""
    deadline = time.monotonic() + seconds
    idle = resident_mib(host.process.pid)
    peak = [idle]
    done_sampling = threading.Event()

    def sample() -> None:
        while not done_sampling.wait(0.02):
            peak[0] = max(peak[0], resident_mib(host.process.pid))

    def client(_: int) -> int:
        session, done = requests.Session(), 0
        while time.monotonic() < deadline:
            response = session.post(f"{host.url}/v1/executions", json={"language": "python", "code": "print(1 + 1)"})
            done += response.status_code == 200
        return done

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        completed = sum(pool.map(client, range(clients)))
    rate = completed / (time.monotonic() - started)
    done_sampling.set()
    sampler.join()
    return rate, idle, peak[0]


def sessions(host: SandboxHost, count: int, live: int) -> tuple[float, float, float, float]:
    """Round trips (ms, medians) of creating a session, `print(1 + 1)` in one and a dataframe step
    on the previous step's frame; and resident MiB per live session (`live` sessions holding a
    frame each)."""
    http = requests.Session()
    created, printed, stepped = [], [], []
    for _ in range(count):
        started = time.perf_counter()
        response = http.post(f"{host.url}/v1/sessions", headers=signed_headers(identity="bench"))
        created.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 201, response.text
        path = f"{host.url}/v1/sessions/{response.json()['session']['id']}"
        run = http.post(f"{path}/executions", headers=signed_headers(identity="bench"), json={"code": DATAFRAME})
        assert run.json()["outcome"] == "ok", run.text
        for code, into in [("print(1 + 1)", printed), ("df['sales'] = df.sales * 2\nprint(len(df))", stepped)]:
            started = time.perf_counter()
            run = http.post(f"{path}/executions", headers=signed_headers(identity="bench"), json={"code": code})
            into.append((time.perf_counter() - started) * 1000)
            assert run.json()["outcome"] == "ok", run.text
        http.delete(path, headers=signed_headers(identity="bench"))
    time.sleep(0.5)
    before = resident_mib(host.process.pid)
    paths = []
    for index in range(live):
        headers = signed_headers(identity=f"bench-{index}")
        response = http.post(f"{host.url}/v1/sessions", headers=headers)
        assert response.status_code == 201, response.text
        paths.append((f"{host.url}/v1/sessions/{response.json()['session']['id']}", headers))
        http.post(f"{paths[-1][0]}/executions", headers=headers, json={"code": DATAFRAME})
    after = resident_mib(host.process.pid)
    for path, headers in paths:
        http.delete(path, headers=headers)
    return statistics.median(created), statistics.median(printed), statistics.median(stepped), (after - before) / live


def main() -> int:
    """Run the benchmark and print the report (Markdown)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per program per run")
    parser.add_argument("--duration", type=float, default=10, help="seconds of the throughput run")
    parser.add_argument("--max-running", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--sessions", type=int, default=20, help="sessions created per run")
    parser.add_argument("--prestarted", type=int, default=4, help="Python instances kept started ahead")
    args = parser.parse_args()
    os.environ.setdefault("SANDBOX_HOST_BINARY", str(target_dir() / "proxy" / "sandbox-host"))
    overrides = {
        "concurrency": {
            "max_running": args.max_running,
            "max_queued": 256,
            "queue_timeout_ms": 60000,
            "prestarted": args.prestarted,
        },
        "gateway": {"signing_key_env": SIGNING_KEY_ENV, "max_signature_age_seconds": 60},
        "sessions": {"max_per_identity": 2, "max_total": 8},
    }
    work = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    host = start_sandbox(work, overrides, env={SIGNING_KEY_ENV: TEST_SIGNING_KEY})
    try:
        for name in PROGRAMS:  # warm-up
            latency(host, name, 10)
        rows: dict[str, list[tuple[float, ...]]] = {name: [] for name in PROGRAMS}
        rates, memory, session_rows = [], [], []
        for run in range(args.runs):
            for name in PROGRAMS:
                rows[name].append(latency(host, name, args.requests))
            rate, idle, peak = throughput(host, args.max_running * 2, args.duration)
            rates.append(rate)
            memory.append((idle, peak))
            session_rows.append(sessions(host, args.sessions, 8))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        host.stop()
    print(
        f"\n{args.runs} runs, {args.requests} sequential requests per program, {args.prestarted} prestarted, "
        f"{os.cpu_count()} cores\n"
    )
    print("| program | server p50 ms | server p99 ms | round trip p50 ms | round trip p99 ms | guest memory MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in rows.items():
        medians = [statistics.median(run[i] for run in runs) for i in range(5)]
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in medians[:4]) + f" | {medians[4]:.0f} |")
    idle = statistics.median(m[0] for m in memory)
    peak = statistics.median(m[1] for m in memory)
    print(
        f"\nPython `print(1 + 1)` at full concurrency ({args.max_running} running, "
        f"{args.max_running * 2} clients, {args.duration:.0f} s): "
        f"{statistics.median(rates):.1f} executions/s (median of {args.runs}). Resident memory of the "
        f"service: {idle:.0f} MiB idle, {peak:.0f} MiB at peak, so {(peak - idle) / args.max_running:.1f} MiB "
        "per running execution."
    )
    created, printed, stepped, per_session = (statistics.median(r[i] for r in session_rows) for i in range(4))
    print(
        f"\nSessions (round trips, medians): create {created:.2f} ms; `print(1 + 1)` in a session "
        f"{printed:.2f} ms; a dataframe step on the previous step's frame {stepped:.2f} ms. "
        f"Resident memory per live session holding a 100-row frame: {per_session:.1f} MiB."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
