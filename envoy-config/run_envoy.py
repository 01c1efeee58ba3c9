"""Starts the venv's Envoy with one of this directory's bootstraps, a filter and its plugin
configuration: `.venv/bin/python envoy-config/run_envoy.py --help`. The code is the harness's
(`tests/harness/harness/envoy.py`), which the suites and benchmarks use."""

from harness.envoy import main

if __name__ == "__main__":
    raise SystemExit(main())
