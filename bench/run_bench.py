#!/usr/bin/env python3
"""`make bench`: our proxy against Envoy 1.40 with the same upstream, filter and configuration.

Four set-ups answer the same requests from the same upstream (bench-upstream, a fixed 200):

  proxy-none     our proxy, no filters            envoy-none     Envoy, router only
  proxy-filters  our proxy, the auth filter       envoy-filters  Envoy, the same auth .wasm (V8)

Each gets the same worker-thread count and is loaded by wrk over loopback with keep-alive. Runs are
interleaved (round r measures every set-up once) so drift affects all alike; the report gives
medians over runs, peak RSS, and the ratios proxy-filters/envoy-filters and proxy-filters/proxy-none.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "envoy-config"))
sys.path.insert(0, str(REPO / "tests" / "support"))

from gateway import Gateway, free_port, start_gateway, target_dir  # noqa: E402
from run_envoy import EnvoyProcess, start_envoy  # noqa: E402

API_KEY = "demo-key-change-me"
AUTH_CONFIG = REPO / "envoy-config" / "plugins" / "auth.json"


@dataclass
class Result:
    """One wrk run."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Setup:
    """A server under test."""

    name: str
    url: str
    pid: int
    results: list[Result] = field(default_factory=list)

    def peak_rss_mib(self) -> float:
        """Peak resident memory (VmHWM) of the server process."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        return kib / 1024


def to_ms(value: str) -> float:
    """wrk's '812.00us' / '1.23ms' / '1.01s' in milliseconds."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, connections: int, duration: int) -> Result:
    """One wrk run with the API key the auth filter wants (ignored where there is no filter)."""
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-H",
            f"x-api-key: {API_KEY}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return Result(
        requests_per_second=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        p50_ms=to_ms(latency["50"]),
        p99_ms=to_ms(latency["99"]),
        errors=errors,
    )


def proxy_config(upstream_port: int, threads: int, wasm: Path | None) -> dict[str, Any]:
    """Our proxy with one catch-all route, optionally through the auth filter."""
    route: dict[str, Any] = {"name": "all", "cluster": "upstream"}
    config: dict[str, Any] = {
        "server": {"threads": threads},
        "logging": {"format": "json", "level": "warn", "access_log": False},
        "routes": [route],
        "clusters": [{"name": "upstream", "endpoints": [f"127.0.0.1:{upstream_port}"]}],
    }
    if wasm is not None:
        filters = [{"name": "auth", "wasm": str(wasm), "configuration_file": str(AUTH_CONFIG)}]
        config["filter_chains"] = [{"name": "auth", "filters": filters}]
        route["filter_chain"] = "auth"
    return config


def main() -> int:
    """Run the benchmark and print the report (Markdown)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="worker threads of each proxy")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()

    target = target_dir()
    auth_wasm = target / "wasm32-wasip1" / "release" / "auth_filter.wasm"
    os.environ.setdefault("GATEWAY_PROXY_BINARY", str(target / "proxy" / "proxy"))
    work = Path(tempfile.mkdtemp(prefix="bench-"))

    upstream_port = free_port()
    upstream = subprocess.Popen([str(target / "proxy" / "bench-upstream"), str(upstream_port)])
    servers: list[Gateway | EnvoyProcess] = []
    try:
        time.sleep(0.3)
        setups = []
        for name, wasm in [("proxy-none", None), ("proxy-filters", auth_wasm)]:
            proxy = start_gateway(proxy_config(upstream_port, args.threads, wasm), work)
            servers.append(proxy)
            setups.append(Setup(name, proxy.url + "/", proxy.process.pid))
        for name, template in [("envoy-none", "passthrough.yaml"), ("envoy-filters", "auth-filter.yaml")]:
            envoy = start_envoy(
                wasm=auth_wasm,
                plugin_config=AUTH_CONFIG.read_text(),
                upstream_port=upstream_port,
                template=REPO / "envoy-config" / template,
                work_dir=Path(tempfile.mkdtemp(prefix=f"{name}-")),
                concurrency=args.threads,
                log_level="warn",
            )
            servers.append(envoy)
            setups.append(Setup(name, f"http://127.0.0.1:{envoy.listen_port}/", envoy.process.pid))

        for setup in setups:
            run_wrk(setup.url, args.connections, 2)  # warm-up: connections, JIT, caches
        for round_number in range(args.runs):
            for setup in setups:
                setup.results.append(run_wrk(setup.url, args.connections, args.duration))
            print(f"round {round_number + 1}/{args.runs} done", file=sys.stderr)
        report(setups, args)
        if args.json:
            raw = {s.name: [r.__dict__ for r in s.results] for s in setups}
            args.json.write_text(json.dumps(raw, indent=2))
    finally:
        for server in servers:
            server.stop()
        upstream.terminate()
    return 0


def report(setups: list[Setup], args: argparse.Namespace) -> None:
    """Print medians per set-up and the ratios."""
    medians = {}
    print(
        f"\n{args.runs} runs x {args.duration}s, wrk -t1 -c{args.connections}, "
        f"{args.threads} worker thread(s) per proxy, loopback, {os.cpu_count()} cores\n"
    )
    print("| set-up | requests/s | p50 ms | p99 ms | peak RSS MiB | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for setup in setups:
        rps = statistics.median(r.requests_per_second for r in setup.results)
        p50 = statistics.median(r.p50_ms for r in setup.results)
        p99 = statistics.median(r.p99_ms for r in setup.results)
        errors = sum(r.errors for r in setup.results)
        medians[setup.name] = (rps, p50, p99)
        print(f"| {setup.name} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {setup.peak_rss_mib():.1f} | {errors} |")
    ours, envoy, bare = medians["proxy-filters"], medians["envoy-filters"], medians["proxy-none"]
    print("\n| ratio | requests/s | p50 | p99 |")
    print("|---|---:|---:|---:|")
    for label, (a, b) in [
        ("proxy-filters / envoy-filters", (ours, envoy)),
        ("proxy-filters / proxy-none", (ours, bare)),
    ]:
        print(f"| {label} | {a[0] / b[0]:.2f} | {a[1] / b[1]:.2f} | {a[2] / b[2]:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
