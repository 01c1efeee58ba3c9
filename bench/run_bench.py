#!/usr/bin/env python3
"""`make bench`: our proxy against Envoy 1.40 hosting the same three filters.

Every set-up answers the same requests from the same upstream (bench-upstream, a fixed 200):

  proxy-none / envoy-none       pass-through, no filters
  proxy-chain / envoy-chain     auth (API key), rate-limit (a limit every request passes) and cache
                                (a rule on /cached), the same .wasm files and plugin configurations;
                                measured on an uncached path (/api) and on cache hits (/cached)
  proxy-chain-redis             our chain with shared data in a real redis-server (uncached path,
                                and with one connection for the latency Redis adds)

Each server gets the same worker-thread count and is loaded by wrk over loopback with keep-alive.
Runs are interleaved (round r measures every set-up once) so drift affects all alike; the report
gives medians over runs, peak RSS, CPU time per request, and the ratios the performance goals are
stated in, for every worker count asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.envoy import EnvoyProcess, start_envoy_bootstrap
from harness.gateway import REPO, Gateway, built_filter, free_port, start_gateway, target_dir
from harness.redis_server import RedisServer, start_redis

API_KEY = "demo-key-change-me"
AUTH_CONFIG = REPO / "envoy-config" / "plugins" / "auth.json"
RATE_LIMIT = {"limits": [{"name": "per-identity", "key": "identity", "requests": 1000000000, "per": "second"}]}
CACHE = {"rules": [{"path_prefix": "/cached", "ttl_seconds": 3600}], "partition_headers": ["x-gateway-identity"]}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    """One wrk run."""

    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_seconds: float

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU time (user + system) per answered request, in microseconds."""
        return self.cpu_seconds * 1e6 / max(self.requests, 1)


@dataclass
class Setup:
    """A server and the path and load it is measured with."""

    name: str
    url: str
    pid: int
    connections: int
    results: list[Result] = field(default_factory=list)

    def peak_rss_mib(self) -> float:
        """Peak resident memory (VmHWM) of the server process."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        return kib / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def median(self, attribute: str) -> float:
        """The median of one figure over the runs."""
        return statistics.median(getattr(r, attribute) for r in self.results)


def to_ms(value: str) -> float:
    """wrk's '812.00us' / '1.23ms' / '1.01s' in milliseconds."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(setup: Setup, duration: int, script: Path | None = None) -> Result:
    """One wrk run with the API key the auth filter wants (ignored where there is no filter);
    `script` is a wrk Lua script (a POST body, say)."""
    cpu_before = setup.cpu_seconds()
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{setup.connections}",
            f"-d{duration}s",
            "--latency",
            "-H",
            f"x-api-key: {API_KEY}",
            *(["-s", str(script)] if script else []),
            setup.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = setup.cpu_seconds() - cpu_before
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return Result(
        requests=int(re.search(r"(\d+) requests in", output).group(1)),  # type: ignore[union-attr]
        requests_per_second=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        p50_ms=to_ms(latency["50"]),
        p99_ms=to_ms(latency["99"]),
        errors=errors,
        cpu_seconds=cpu,
    )


def proxy_config(
    upstream_port: int, threads: int, chain: bool, shared_data: dict[str, Any], module_cache: Path
) -> dict[str, Any]:
    """Our proxy with one catch-all route, optionally through the three filters. Compiled filters
    come from `module_cache`, as in production: a cold start's Cranelift compilation is a start-up
    cost, not what the proxy needs to serve."""
    route: dict[str, Any] = {"name": "all", "cluster": "upstream"}
    config: dict[str, Any] = {
        "server": {"threads": threads, "module_cache_dir": str(module_cache)},
        "logging": {"format": "json", "level": "warn", "access_log": False},
        "shared_data": shared_data,
        "routes": [route],
        "clusters": [{"name": "upstream", "endpoints": [f"127.0.0.1:{upstream_port}"]}],
    }
    if chain:
        filters = [
            {"name": "auth", "wasm": str(built_filter("auth_filter")), "configuration_file": str(AUTH_CONFIG)},
            {"name": "rate-limit", "wasm": str(built_filter("rate_limit_filter")), "configuration": RATE_LIMIT},
            {"name": "cache", "wasm": str(built_filter("cache_filter")), "configuration": CACHE},
        ]
        config["filter_chains"] = [{"name": "gateway", "filters": filters}]
        route["filter_chain"] = "gateway"
    return config


def start_envoy(upstream_port: int, threads: int, chain: bool, work: Path) -> EnvoyProcess:
    """Envoy with the router alone, or with the same three filters and configurations."""
    if not chain:
        template, values = REPO / "envoy-config" / "passthrough.yaml", {"UPSTREAM_PORT": str(upstream_port)}
    else:
        template = REPO / "envoy-config" / "gateway-filters.yaml"
        values = {
            "UPSTREAM_PORT": str(upstream_port),
            "FLAKY_PORT": str(upstream_port),
            "JWKS_PORT": str(upstream_port),
            "AUTH_WASM": json.dumps(str(built_filter("auth_filter"))),
            "RATE_LIMIT_WASM": json.dumps(str(built_filter("rate_limit_filter"))),
            "CACHE_WASM": json.dumps(str(built_filter("cache_filter"))),
            "AUTH_CONFIG": json.dumps(AUTH_CONFIG.read_text()),
            "RATE_LIMIT_CONFIG": json.dumps(json.dumps(RATE_LIMIT)),
            "CACHE_CONFIG": json.dumps(json.dumps(CACHE)),
        }
    return start_envoy_bootstrap(
        template,
        values,
        work_dir=Path(tempfile.mkdtemp(prefix="bench-envoy-", dir=work)),
        concurrency=threads,
        log_level="warn",
    )


def start_setups(
    threads: int, upstream_port: int, redis: RedisServer, work: Path, connections: int, servers: list[Any]
) -> list[Setup]:
    """Starts every server for one worker count; `servers` collects them for stopping."""
    memory: dict[str, Any] = {"backend": "memory"}
    in_redis = {"backend": "redis", "redis": {"url": redis.url, "key_prefix": f"bench{threads}:"}}
    module_cache = work / "module-cache"
    start_gateway(proxy_config(upstream_port, threads, True, memory, module_cache), work).stop()  # fills it
    setups = []
    for name, chain, shared_data in [
        ("proxy-none", False, memory),
        ("proxy-chain", True, memory),
        ("proxy-chain-redis", True, in_redis),
    ]:
        proxy: Gateway = start_gateway(proxy_config(upstream_port, threads, chain, shared_data, module_cache), work)
        servers.append(proxy)
        pid = proxy.process.pid
        setups.append(Setup(name, proxy.url + "/api", pid, connections))
        if chain and shared_data is memory:
            setups.append(Setup(f"{name} hit", proxy.url + "/cached", pid, connections))
        if chain:
            setups.append(Setup(f"{name} 1 conn", proxy.url + "/api", pid, 1))
    for name, chain in [("envoy-none", False), ("envoy-chain", True)]:
        envoy = start_envoy(upstream_port, threads, chain, work)
        servers.append(envoy)
        url = f"http://127.0.0.1:{envoy.listen_port}"
        setups.append(Setup(name, url + "/api", envoy.process.pid, connections))
        if chain:
            setups.append(Setup(f"{name} hit", url + "/cached", envoy.process.pid, connections))
    return setups


def check_cache_hits(setups: list[Setup]) -> None:
    """The cache-hit set-ups must really be answered from the cache."""
    for setup in setups:
        if setup.name.endswith(" hit"):
            headers = subprocess.run(
                ["curl", "-s", "-D", "-", "-o", "/dev/null", "-H", f"x-api-key: {API_KEY}", setup.url],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.lower()
            if "x-cache: hit" not in headers:
                raise SystemExit(f"{setup.name}: {setup.url} is not answered from the cache:\n{headers}")


def main() -> int:
    """Run the benchmark and print the report (Markdown)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", default="1,2", help="worker-thread counts to measure, comma-separated")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()

    target = target_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    redis = start_redis(work)
    upstream_port = free_port()
    upstream = subprocess.Popen([str(target / "proxy" / "bench-upstream"), str(upstream_port)])
    raw: dict[str, Any] = {}
    try:
        time.sleep(0.3)
        for threads in [int(t) for t in args.threads.split(",")]:
            servers: list[Any] = []
            try:
                setups = start_setups(threads, upstream_port, redis, work, args.connections, servers)
                for setup in setups:
                    run_wrk(setup, 2)  # warm-up: connections, JIT, caches
                check_cache_hits(setups)
                for round_number in range(args.runs):
                    for setup in setups:
                        setup.results.append(run_wrk(setup, args.duration))
                    print(f"{threads} worker(s): round {round_number + 1}/{args.runs} done", file=sys.stderr)
                report(setups, threads, args)
                raw[str(threads)] = {s.name: [r.__dict__ for r in s.results] for s in setups}
            finally:
                for server in servers:
                    server.stop()
        if args.json:
            args.json.write_text(json.dumps(raw, indent=2))
    finally:
        upstream.terminate()
        redis.kill()
    return 0


def report(setups: list[Setup], threads: int, args: argparse.Namespace) -> None:
    """Print medians per set-up and the goals as ratios."""
    print(
        f"\n### {threads} worker thread(s)\n\n{args.runs} runs x {args.duration}s, wrk -t1, "
        f"{args.connections} connections unless stated, loopback, {os.cpu_count()} cores\n"
    )
    print("| set-up | requests/s | p50 ms | p99 ms | CPU µs/request | peak RSS MiB | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    by_name = {s.name: s for s in setups}
    for s in setups:
        errors = sum(r.errors for r in s.results)
        print(
            f"| {s.name} | {s.median('requests_per_second'):,.0f} | {s.median('p50_ms'):.3f} | "
            f"{s.median('p99_ms'):.3f} | {s.median('cpu_us_per_request'):.1f} | {s.peak_rss_mib():.1f} | {errors} |"
        )

    def ratio(a: str, b: str, attribute: str = "requests_per_second") -> float:
        return by_name[a].median(attribute) / by_name[b].median(attribute)

    redis_p50 = by_name["proxy-chain-redis 1 conn"].median("p50_ms") - by_name["proxy-chain 1 conn"].median("p50_ms")
    goals = [
        ("chain, uncached: req/s vs Envoy", ratio("proxy-chain", "envoy-chain"), "≥ 1.50"),
        ("chain, uncached: p99 vs Envoy", ratio("proxy-chain", "envoy-chain", "p99_ms"), "≤ 1.00"),
        ("chain, cache hit: req/s vs Envoy", ratio("proxy-chain hit", "envoy-chain hit"), "≥ 1.50"),
        ("chain vs our pass-through: req/s", ratio("proxy-chain", "proxy-none"), "≥ 0.70"),
        (
            "chain: peak RSS vs Envoy",
            by_name["proxy-chain"].peak_rss_mib() / by_name["envoy-chain"].peak_rss_mib(),
            "≤ 0.60",
        ),
        ("Redis vs memory: req/s", ratio("proxy-chain-redis", "proxy-chain"), "≥ 0.80"),
        ("Redis vs memory: p50 added, 1 connection (ms)", redis_p50, "≤ 0.30"),
        ("pass-through: req/s vs Envoy", ratio("proxy-none", "envoy-none"), "(reference)"),
    ]
    print("\n| goal | measured | target |\n|---|---:|---:|")
    for label, value, target in goals:
        print(f"| {label} | {value:.2f} | {target} |")


if __name__ == "__main__":
    sys.exit(main())
