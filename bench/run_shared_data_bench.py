#!/usr/bin/env python3
"""`make bench-shared-data`: the latency the Redis shared-data backend adds per request.

Two set-ups of our proxy (the `proxy` profile build) answer the same requests from the same
upstream (bench-upstream) through the same filters, auth and rate-limit (a limit high enough that
every request is admitted, so each one reads and CAS-writes its bucket):

  memory   shared_data: memory (the default, per process)
  redis    shared_data: redis, a real `redis-server` on loopback (no persistence)

wrk loads each over keep-alive connections; runs are interleaved and the report gives medians over
runs and the difference redis - memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "envoy-config"))
sys.path.insert(0, str(REPO / "tests" / "support"))
sys.path.insert(0, str(REPO / "bench"))

from gateway import Gateway, free_port, start_gateway, target_dir  # noqa: E402
from redis_server import start_redis  # noqa: E402
from run_bench import AUTH_CONFIG, Setup, run_wrk  # noqa: E402

RATE_LIMIT = {"limits": [{"name": "per-identity", "key": "identity", "requests": 1000000000, "per": "second"}]}


def proxy_config(upstream_port: int, threads: int, shared_data: dict[str, Any]) -> dict[str, Any]:
    """Our proxy with auth and rate-limit on one catch-all route."""
    wasm = target_dir() / "wasm32-wasip1" / "release"
    filters = [
        {"name": "auth", "wasm": str(wasm / "auth_filter.wasm"), "configuration_file": str(AUTH_CONFIG)},
        {"name": "rate-limit", "wasm": str(wasm / "rate_limit_filter.wasm"), "configuration": RATE_LIMIT},
    ]
    return {
        "server": {"threads": threads},
        "logging": {"format": "json", "level": "warn", "access_log": False},
        "shared_data": shared_data,
        "filter_chains": [{"name": "limited", "filters": filters}],
        "routes": [{"name": "all", "cluster": "upstream", "filter_chain": "limited"}],
        "clusters": [{"name": "upstream", "endpoints": [f"127.0.0.1:{upstream_port}"]}],
    }


def main() -> int:
    """Run the benchmark and print the report (Markdown)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="worker threads of the proxy")
    args = parser.parse_args()

    target = target_dir()
    os.environ.setdefault("GATEWAY_PROXY_BINARY", str(target / "proxy" / "proxy"))
    work = Path(tempfile.mkdtemp(prefix="bench-shared-data-"))
    redis = start_redis(work)
    upstream_port = free_port()
    upstream = subprocess.Popen([str(target / "proxy" / "bench-upstream"), str(upstream_port)])
    servers: list[Gateway] = []
    try:
        time.sleep(0.3)
        setups = []
        backends = {
            "memory": {"backend": "memory"},
            "redis": {"backend": "redis", "redis": {"url": redis.url, "key_prefix": "bench:"}},
        }
        for name, shared_data in backends.items():
            proxy = start_gateway(proxy_config(upstream_port, args.threads, shared_data), work)
            servers.append(proxy)
            setups.append(Setup(name, proxy.url + "/", proxy.process.pid))
        for setup in setups:
            run_wrk(setup.url, args.connections, 2)
        for round_number in range(args.runs):
            for setup in setups:
                setup.results.append(run_wrk(setup.url, args.connections, args.duration))
            print(f"round {round_number + 1}/{args.runs} done", file=sys.stderr)
    finally:
        for server in servers:
            server.stop()
        upstream.terminate()
        redis.kill()

    print(
        f"\n{args.runs} runs x {args.duration}s, wrk -t1 -c{args.connections}, "
        f"{args.threads} worker thread(s), auth + rate-limit filters, loopback, {os.cpu_count()} cores\n"
    )
    print("| shared data | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|")
    medians = {}
    for setup in setups:
        rps = statistics.median(r.requests_per_second for r in setup.results)
        p50 = statistics.median(r.p50_ms for r in setup.results)
        p99 = statistics.median(r.p99_ms for r in setup.results)
        medians[setup.name] = (rps, p50, p99)
        print(f"| {setup.name} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {sum(r.errors for r in setup.results)} |")
    memory, redis_ = medians["memory"], medians["redis"]
    print(
        f"\nredis - memory: p50 +{redis_[1] - memory[1]:.3f} ms, p99 +{redis_[2] - memory[2]:.3f} ms; "
        f"requests/s ratio {redis_[0] / memory[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
