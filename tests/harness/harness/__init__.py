"""The end-to-end harness: starts the real parts (our proxy, Envoy with our filters, Redis,
sandbox-host, python-ml, echo upstreams) on free loopback ports for the suites in `tests/` and
the benchmarks in `bench/`. `make venv` installs it (editable) into the repository's venv."""
