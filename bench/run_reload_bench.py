#!/usr/bin/env python3
"""`make bench-reload`: how long a configuration reload takes, on `make run`'s configuration.

Our proxy (the `proxy` profile build) serves proxy/config/example.yaml (two filter chains, five
filters) on free ports. The script sends SIGHUP several times and reads each reload's
`duration_ms` from the admin `/config` endpoint, in two cases:

  unchanged   the .wasm files are the same (compiled modules are reused from memory)
  new module  the auth filter's .wasm gains a custom section before each reload, so its module is
              new and is compiled again (the other four filters are reused)

The report gives medians, and the process's RSS at start and after each case (compiled modules are
kept in memory, the 16 most recent; old generations must not accumulate).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from harness.gateway import REPO, Gateway, free_port, proxy_binary, start_gateway, wasm_dir


def custom_section(payload: bytes) -> bytes:
    """A wasm custom section named `bench` holding `payload` (changes the module, not its code)."""
    name = b"bench"
    content = bytes([len(name)]) + name + payload
    size = len(content)
    leb = bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        leb.append(byte | (0x80 if size else 0))
        if not size:
            break
    return b"\x00" + bytes(leb) + content


def reload_once(proxy: Gateway) -> float:
    """Sends SIGHUP and returns the applied reload's `duration_ms`."""
    before = requests.get(proxy.admin_url + "/config", timeout=5).json()["generation"]
    proxy.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = requests.get(proxy.admin_url + "/config", timeout=5).json()
        if status["generation"] > before:
            return float(status["last_reload"]["duration_ms"])
        last = status["last_reload"]
        if last is not None and not last["applied"]:
            raise RuntimeError(f"reload refused: {last['error']}")
        time.sleep(0.01)
    raise RuntimeError("no reload within 120 s")


def rss_mib(pid: int) -> float:
    """Resident set size of `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    """Run the benchmark and print the report (Markdown)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="reloads per case")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-reload-"))
    filters = work / "filters"
    filters.mkdir()
    for built in wasm_dir().glob("*.wasm"):
        shutil.copy(built, filters)
    os.environ["WASM_DIR"] = str(filters)
    # make run's configuration signs identity headers for sandbox-host with this variable's key.
    os.environ.setdefault("GATEWAY_SIGNING_KEY", secrets.token_hex(32))
    config: dict[str, Any] = yaml.safe_load((REPO / "proxy" / "config" / "example.yaml").read_text())
    config["server"]["reload"] = {"watch": False}
    config["logging"] = {"format": "json", "level": "warn", "access_log": False}
    config["admin"] = {"address": f"127.0.0.1:{free_port()}"}
    config["listeners"] = [{"name": "public", "address": f"127.0.0.1:{free_port()}"}]
    for chain in config["filter_chains"]:
        for filter_ in chain["filters"]:
            if "configuration_file" in filter_:
                filter_["configuration_file"] = str(REPO / "proxy" / "config" / filter_["configuration_file"])

    proxy = start_gateway(config, work, timeout=600)
    try:
        rss = {"at start": rss_mib(proxy.process.pid)}
        unchanged = [reload_once(proxy) for _ in range(args.runs)]
        rss[f"after {args.runs} unchanged reloads"] = rss_mib(proxy.process.pid)
        auth = filters / "auth_filter.wasm"
        original = auth.read_bytes()
        new_module = []
        for run in range(args.runs):
            auth.write_bytes(original + custom_section(f"{time.time_ns()}-{run}".encode()))
            new_module.append(reload_once(proxy))
        rss[f"then after {args.runs} reloads with a new module"] = rss_mib(proxy.process.pid)
    finally:
        proxy.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"binary: {proxy_binary()}; {args.runs} reloads per case\n")
    print("| case | median reload | min | max |")
    print("|---|---:|---:|---:|")
    for name, values in [("unchanged .wasm files", unchanged), ("one new module (auth)", new_module)]:
        print(f"| {name} | {statistics.median(values):.1f} ms | {min(values):.1f} ms | {max(values):.1f} ms |")
    print("\nRSS: " + "; ".join(f"{when} {mib:.0f} MiB" for when, mib in rss.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
