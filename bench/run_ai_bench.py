"""`make bench-ai`: what the ai-tokens filter adds to a chat request, in our proxy and in Envoy 1.40.

Every set-up answers the same small chat completion POST (`bench/chat_post.lua`) from the same
upstream (bench-upstream, a fixed 200 without `usage`, so each request is reserved and settled at its
estimate: the filter's whole path). Set-ups: each proxy with no filter and with ai-tokens alone (a
budget no request exhausts), at 32 connections (throughput) and at 1 (the latency one request
pays). Runs are interleaved and the report gives medians, as in `make bench`."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.envoy import free_port, start_envoy, start_envoy_bootstrap
from harness.gateway import REPO, built_filter, start_gateway, target_dir
from run_bench import Setup, run_wrk

SCRIPT = Path(__file__).with_name("chat_post.lua")
CONFIG = {
    "budgets": [{"name": "bench", "key": {"header": "x-team"}, "tokens": 10**15, "per": "minute"}],
    "default_max_tokens": 256,
}


def proxy_config(upstream_port: int, threads: int, filtered: bool, module_cache: Path) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "chat", "cluster": "llm"}
    config: dict[str, Any] = {
        "server": {"threads": threads, "module_cache_dir": str(module_cache)},
        "logging": {"format": "json", "level": "warn", "access_log": False},
        "routes": [route],
        "clusters": [{"name": "llm", "endpoints": [f"127.0.0.1:{upstream_port}"]}],
    }
    if filtered:
        wasm = str(built_filter("ai_tokens_filter"))
        config["filter_chains"] = [
            {"name": "ai", "filters": [{"name": "ai-tokens", "wasm": wasm, "configuration": CONFIG}]}
        ]
        route["filter_chain"] = "ai"
    return config


def start_setups(threads: int, upstream_port: int, work: Path, connections: int, servers: list[Any]) -> list[Setup]:
    module_cache = work / "module-cache"
    start_gateway(proxy_config(upstream_port, threads, True, module_cache), work).stop()  # fills it
    setups = []
    for name, filtered in [("proxy-none", False), ("proxy-ai-tokens", True)]:
        proxy = start_gateway(proxy_config(upstream_port, threads, filtered, module_cache), work)
        servers.append(proxy)
        for conns in (connections, 1):
            setups.append(Setup(f"{name} {conns} conn", proxy.url + "/v1/chat/completions", proxy.process.pid, conns))
    envoys = [
        (
            "envoy-none",
            start_envoy_bootstrap(
                REPO / "envoy-config" / "passthrough.yaml",
                {"UPSTREAM_PORT": str(upstream_port)},
                work_dir=Path(tempfile.mkdtemp(prefix="bench-envoy-", dir=work)),
                concurrency=threads,
                log_level="warn",
            ),
        ),
        (
            "envoy-ai-tokens",
            start_envoy(
                wasm=built_filter("ai_tokens_filter"),
                plugin_config=json.dumps(CONFIG),
                plugin_name="ai-tokens",
                upstream_port=upstream_port,
                work_dir=Path(tempfile.mkdtemp(prefix="bench-envoy-", dir=work)),
                concurrency=threads,
                log_level="warn",
            ),
        ),
    ]
    for name, envoy in envoys:
        servers.append(envoy)
        url = f"http://127.0.0.1:{envoy.listen_port}/v1/chat/completions"
        for conns in (connections, 1):
            setups.append(Setup(f"{name} {conns} conn", url, envoy.process.pid, conns))
    return setups


def report(setups: list[Setup], args: argparse.Namespace) -> None:
    print(
        f"\n{args.runs} runs x {args.duration}s, wrk -t1 with a chat POST, loopback, 2 cores, "
        f"{args.threads} worker thread(s)\n"
    )
    print("| set-up | requests/s | p50 ms | p99 ms | CPU µs/request | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    by_name = {s.name: s for s in setups}
    for s in setups:
        print(
            f"| {s.name} | {s.median('requests_per_second'):,.0f} | {s.median('p50_ms'):.3f} | "
            f"{s.median('p99_ms'):.3f} | {s.median('cpu_us_per_request'):.1f} | "
            f"{sum(r.errors for r in s.results)} |"
        )
    print("\n| added by ai-tokens | ours | Envoy |\n|---|---:|---:|")
    c = args.connections

    def added(proxy: str, figure: str, conns: int) -> float:
        return by_name[f"{proxy}-ai-tokens {conns} conn"].median(figure) - by_name[f"{proxy}-none {conns} conn"].median(
            figure
        )

    print(f"| p50 latency, 1 connection (ms) | {added('proxy', 'p50_ms', 1):.3f} | {added('envoy', 'p50_ms', 1):.3f} |")
    print(
        f"| CPU per request, {c} connections (µs) | {added('proxy', 'cpu_us_per_request', c):.1f} | "
        f"{added('envoy', 'cpu_us_per_request', c):.1f} |"
    )
    ours = by_name[f"proxy-ai-tokens {c} conn"].median("requests_per_second")
    envoy = by_name[f"envoy-ai-tokens {c} conn"].median("requests_per_second")
    print(f"\nWith ai-tokens, {c} connections: ours {ours:,.0f} req/s, Envoy {envoy:,.0f} ({ours / envoy:.2f}x).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="worker threads of each proxy")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ai-"))
    upstream_port = free_port()
    upstream = subprocess.Popen([str(target_dir() / "proxy" / "bench-upstream"), str(upstream_port)])
    servers: list[Any] = []
    try:
        time.sleep(0.3)
        setups = start_setups(args.threads, upstream_port, work, args.connections, servers)
        for setup in setups:
            run_wrk(setup, 2, SCRIPT)  # warm-up
        for round_number in range(args.runs):
            for setup in setups:
                setup.results.append(run_wrk(setup, args.duration, SCRIPT))
            print(f"round {round_number + 1}/{args.runs} done", file=sys.stderr)
        report(setups, args)
    finally:
        for server in servers:
            server.stop()
        upstream.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
