"""`make bench-ai`: what the AI filters add to a chat request, in our proxy and in Envoy 1.40.

Every set-up answers a small chat completion POST from the same upstream (bench-upstream's fixed
chat completion without `usage`, so ai-tokens reserves each request and settles it at its estimate:
the filter's whole path). Set-ups, in each proxy: no filter; ai-tokens alone (a budget no request
exhausts); and the semantic cache alone, with python-ml's real index (the real model) on loopback,
measured on exact hits (`chat_post.lua`, the same question again), semantic hits
(`chat_paraphrase.lua`, the question in other words: an embedding and a search, then the answer
from cache) and misses (`chat_miss.lua`, a new partition each time: an embedding, a search and an
insert, then the upstream and the store). At 32 connections (throughput) and at 1 (the latency one
request pays); the index-bound set-ups at 1 only. Runs are interleaved and the report gives
medians, as in `make bench`."""

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
from harness.python_ml_service import start_python_ml
from run_bench import Setup, run_wrk

BENCH = Path(__file__).parent
EXACT = BENCH / "chat_post.lua"
PARAPHRASE = BENCH / "chat_paraphrase.lua"
MISS = BENCH / "chat_miss.lua"
INDEX_TOKEN = "bench-semantic-cache-token"
AI_TOKENS = {
    "budgets": [{"name": "bench", "key": {"header": "x-team"}, "tokens": 10**15, "per": "minute"}],
    "default_max_tokens": 256,
}
SEMANTIC_CACHE = {"tenant_header": "x-team", "index": {"cluster": "index", "token": INDEX_TOKEN, "timeout_ms": 2000}}
# wrk script of each set-up, by name
SCRIPTS: dict[str, Path] = {}
# filter name → (wasm file, configuration)
FILTERS = {"ai-tokens": ("ai_tokens_filter", AI_TOKENS), "semantic-cache": ("semantic_cache_filter", SEMANTIC_CACHE)}


def proxy_config(
    upstream_port: int, index_port: int, threads: int, filter_name: str | None, module_cache: Path
) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "chat", "cluster": "llm"}
    config: dict[str, Any] = {
        "server": {"threads": threads, "module_cache_dir": str(module_cache)},
        "logging": {"format": "json", "level": "warn", "access_log": False},
        "routes": [route],
        "clusters": [
            {"name": "llm", "endpoints": [f"127.0.0.1:{upstream_port}"]},
            {"name": "index", "endpoints": [f"127.0.0.1:{index_port}"]},
        ],
    }
    if filter_name:
        wasm, configuration = FILTERS[filter_name]
        config["filter_chains"] = [
            {
                "name": "ai",
                "filters": [{"name": filter_name, "wasm": str(built_filter(wasm)), "configuration": configuration}],
            }
        ]
        route["filter_chain"] = "ai"
    return config


def measured(name: str, url: str, pid: int, connections: int) -> list[Setup]:
    """The set-ups one server is measured in: (name, script) per load."""
    if name.endswith("semantic-cache"):
        loads = [(f"{name} exact-hit {connections} conn", EXACT, connections), (f"{name} exact-hit 1 conn", EXACT, 1)]
        loads += [(f"{name} semantic-hit 1 conn", PARAPHRASE, 1), (f"{name} miss 1 conn", MISS, 1)]
    else:
        loads = [(f"{name} {connections} conn", EXACT, connections), (f"{name} 1 conn", EXACT, 1)]
    setups = []
    for setup_name, script, conns in loads:
        setup = Setup(setup_name, url, pid, conns)
        SCRIPTS[setup_name] = script
        setups.append(setup)
    return setups


def start_setups(
    threads: int, upstream_port: int, index_port: int, work: Path, connections: int, servers: list[Any]
) -> list[Setup]:
    module_cache = work / "module-cache"
    for filter_name in FILTERS:  # fills the module cache
        start_gateway(proxy_config(upstream_port, index_port, threads, filter_name, module_cache), work).stop()
    setups = []
    for filter_name in (None, *FILTERS):
        proxy = start_gateway(proxy_config(upstream_port, index_port, threads, filter_name, module_cache), work)
        servers.append(proxy)
        url = proxy.url + "/v1/chat/completions"
        setups += measured(f"proxy-{filter_name or 'none'}", url, proxy.process.pid, connections)
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
                plugin_config=json.dumps(AI_TOKENS),
                plugin_name="ai-tokens",
                upstream_port=upstream_port,
                work_dir=Path(tempfile.mkdtemp(prefix="bench-envoy-", dir=work)),
                concurrency=threads,
                log_level="warn",
            ),
        ),
        (
            "envoy-semantic-cache",
            start_envoy_bootstrap(
                REPO / "envoy-config" / "semantic-cache.yaml",
                {
                    "UPSTREAM_PORT": str(upstream_port),
                    "INDEX_PORT": str(index_port),
                    "WASM_PATH": json.dumps(str(built_filter("semantic_cache_filter").resolve())),
                    "PLUGIN_CONFIG": json.dumps(json.dumps(SEMANTIC_CACHE)),
                    "PLUGIN_NAME": json.dumps("semantic-cache"),
                },
                work_dir=Path(tempfile.mkdtemp(prefix="bench-envoy-", dir=work)),
                concurrency=threads,
                log_level="warn",
            ),
        ),
    ]
    for name, envoy in envoys:
        servers.append(envoy)
        url = f"http://127.0.0.1:{envoy.listen_port}/v1/chat/completions"
        setups += measured(name, url, envoy.process.pid, connections)
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
    c = args.connections

    def added(proxy: str, setup: str, figure: str, conns: int) -> float:
        return by_name[f"{proxy}-{setup} {conns} conn"].median(figure) - by_name[f"{proxy}-none {conns} conn"].median(
            figure
        )

    print("\n| added to a request, against no filter | ours | Envoy |\n|---|---:|---:|")
    for setup, label in [
        ("ai-tokens", "ai-tokens"),
        ("semantic-cache exact-hit", "semantic cache, exact hit"),
        ("semantic-cache semantic-hit", "semantic cache, semantic hit (index call)"),
        ("semantic-cache miss", "semantic cache, miss (index call, upstream, store)"),
    ]:
        print(
            f"| {label}: p50, 1 connection (ms) | {added('proxy', setup, 'p50_ms', 1):.3f} | "
            f"{added('envoy', setup, 'p50_ms', 1):.3f} |"
        )
    for setup, label in [("ai-tokens", "ai-tokens"), ("semantic-cache exact-hit", "semantic cache, exact hit")]:
        ours_cpu = added("proxy", setup, "cpu_us_per_request", c)
        envoy_cpu = added("envoy", setup, "cpu_us_per_request", c)
        print(f"| {label}: CPU per request, {c} connections (µs) | {ours_cpu:.1f} | {envoy_cpu:.1f} |")
    for setup in ("ai-tokens", "semantic-cache exact-hit"):
        ours = by_name[f"proxy-{setup} {c} conn"].median("requests_per_second")
        envoy = by_name[f"envoy-{setup} {c} conn"].median("requests_per_second")
        print(f"\n{setup}, {c} connections: ours {ours:,.0f} req/s, Envoy {envoy:,.0f} ({ours / envoy:.2f}x).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="worker threads of each proxy")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ai-"))
    upstream_port = free_port()
    upstream = subprocess.Popen([str(target_dir() / "proxy" / "bench-upstream"), str(upstream_port), "chat"])
    index_port = free_port()
    index = start_python_ml(index_port, work / "python-ml.log", env={"PYML_SEMANTIC_CACHE_TOKEN": INDEX_TOKEN})
    servers: list[Any] = []
    try:
        time.sleep(0.3)
        setups = start_setups(args.threads, upstream_port, index_port, work, args.connections, servers)
        for setup in setups:
            run_wrk(setup, 2, SCRIPTS[setup.name])  # warm-up (and the exact hits' first, stored answer)
        for round_number in range(args.runs):
            for setup in setups:
                setup.results.append(run_wrk(setup, args.duration, SCRIPTS[setup.name]))
            print(f"round {round_number + 1}/{args.runs} done", file=sys.stderr)
        report(setups, args)
    finally:
        for server in servers:
            server.stop()
        upstream.terminate()
        index.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
