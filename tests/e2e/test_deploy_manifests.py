"""The deployment manifests in deploy/ (issue 9): they parse, the sidecar's proxy configuration
passes `proxy validate` with the real filters, every name they reference exists, and the Istio
WasmPlugins carry the same plugin configuration as envoy-config/plugins. No cluster runs here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.gateway import REPO, run_proxy, wasm_dir

DEPLOY = REPO / "deploy"
ISTIO_PHASES = {"AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE"}


def documents(path: Path) -> list[dict[str, Any]]:
    """Every YAML document in a manifest file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [doc for doc in by_kind(docs, kind) if doc["metadata"]["name"] == name]
    return doc


def secret_of(container: dict[str, Any], variable: str) -> dict[str, str]:
    """The Secret key a container's environment variable comes from."""
    (entry,) = [e for e in container["env"] if e["name"] == variable]
    reference: dict[str, str] = entry["valueFrom"]["secretKeyRef"]
    return reference


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_the_sidecar_deployment_references_what_exists(tmp_path: Path) -> None:
    docs = documents(DEPLOY / "kubernetes" / "gateway-sidecar.yaml")
    config_map = named(docs, "ConfigMap", "gateway-sidecar-config")
    deployment = named(docs, "Deployment", "python-ml")
    services = {service["metadata"]["name"]: service for service in by_kind(docs, "Service")}
    service = services["python-ml"]
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]

    proxy_config = yaml.safe_load(config_map["data"]["proxy.yaml"])
    (sidecar,) = [c for c in spec["template"]["spec"]["containers"] if c["name"] == "gateway"]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    listeners = {listener["name"]: listener["address"] for listener in proxy_config["listeners"]}
    assert ports["admin"] == port_of(proxy_config["admin"]["address"])
    assert ports["http"] == port_of(listeners["inbound"])
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > int(
        proxy_config["server"]["shutdown_grace_period"].rstrip("s")
    )

    volumes = {v["name"]: v["configMap"]["name"] for v in spec["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    for mount in sidecar["volumeMounts"]:
        assert mount["name"] in volumes
        # A subPath mount never sees ConfigMap updates, so the proxy could not reload them.
        assert "subPath" not in mount, mount
    (config_dir,) = [path for path, m in mounts.items() if volumes[m["name"]] == config_map["metadata"]["name"]]
    assert sidecar["args"] == ["run", f"{config_dir}/proxy.yaml"], "the proxy reads the mounted configuration"
    for chain in proxy_config["filter_chains"]:
        for filter_ in chain["filters"]:
            directory, key = filter_["configuration_file"].rsplit("/", 1)
            assert directory == config_dir and key in config_map["data"], filter_

    # The outbound cluster reaches sandbox-host by its Service's cluster DNS name and port.
    clusters = {cluster["name"]: cluster for cluster in proxy_config["clusters"]}
    sandbox_service = services["sandbox-host"]
    namespace = sandbox_service["metadata"].get("namespace", "default")
    assert clusters["sandbox-host"]["endpoints"] == [
        f"sandbox-host.{namespace}.svc.cluster.local:{sandbox_service['spec']['ports'][0]['port']}"
    ]

    # Secrets come from the environment, never the file: the admin token and the signing key.
    secret_env = {e["name"] for e in sidecar["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert proxy_config["admin"]["bearer_token_env"] in secret_env
    assert clusters["sandbox-host"]["identity_signature"]["key_env"] in secret_env
    # python-ml scopes documents by tenant: it verifies the same key the sidecar signs with.
    (python_ml,) = [c for c in spec["template"]["spec"]["containers"] if c["name"] == "python-ml"]
    python_ml_env = {e["name"]: e.get("value") for e in python_ml["env"]}
    assert clusters["local"]["endpoints"] == [f"{python_ml_env['PYML_HOST']}:{python_ml_env['PYML_PORT']}"]
    signing_key = secret_of(sidecar, clusters["local"]["identity_signature"]["key_env"])
    assert secret_of(python_ml, "PYML_GATEWAY_SIGNING_KEY") == signing_key
    routes = {route["name"]: route for route in proxy_config["routes"]}
    assert all(route.get("filter_chain") for route in routes.values()), "every route has the auth filter"
    (policy,) = by_kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == sandbox_service["spec"]["selector"]
    (allowed,) = policy["spec"]["ingress"]
    assert allowed["from"] == [{"podSelector": {"matchLabels": spec["selector"]["matchLabels"]}}]

    # sandbox-host listens where its Service points, and refuses whatever the gateway did not sign.
    sandbox = named(docs, "Deployment", "sandbox-host")
    sandbox_spec = sandbox["spec"]["template"]["spec"]
    assert sandbox["spec"]["selector"]["matchLabels"] == sandbox_service["spec"]["selector"]
    (sandbox_container,) = sandbox_spec["containers"]
    (sandbox_volume,) = sandbox_spec["volumes"]
    (sandbox_mount,) = sandbox_container["volumeMounts"]
    sandbox_config_map = named(docs, "ConfigMap", sandbox_volume["configMap"]["name"])
    (sandbox_file,) = sandbox_config_map["data"]
    assert sandbox_container["args"] == ["--config", f"{sandbox_mount['mountPath']}/{sandbox_file}"]
    sandbox_config = yaml.safe_load(sandbox_config_map["data"][sandbox_file])
    assert port_of(sandbox_config["listen"]) == sandbox_service["spec"]["ports"][0]["targetPort"]
    trust = sandbox_config["gateway"]
    assert trust["unsigned_callers"] == "refuse"
    assert secret_of(sandbox_container, trust["signing_key_env"]) == signing_key

    # The filters ConfigMap (built with --from-file) holds the built modules the config names.
    filters_dir = next(path for path, m in mounts.items() if m["name"] == "filters")
    assert {"name": "WASM_DIR", "value": filters_dir} in sidecar["env"]

    # `proxy validate` on the real file, with the mounts pointing at this checkout.
    for key, text in config_map["data"].items():
        if key.endswith(".json"):
            json.loads(text)
        (tmp_path / key).write_text(text.replace(config_dir, str(tmp_path)))
    config_file = tmp_path / "proxy.yaml"
    # The cluster's DNS names exist only inside the cluster: check their syntax, not their answer.
    validate(config_file, "--skip-dns")


def validate(config_file: Path, *options: str) -> None:
    """`proxy validate` with `${WASM_DIR}` pointing at the built filters."""
    os.environ["WASM_DIR"] = str(wasm_dir())
    try:
        checked = run_proxy("validate", *options, str(config_file))
    finally:
        del os.environ["WASM_DIR"]
    assert checked.returncode == 0, checked.stderr


def test_the_backends_are_where_the_one_line_switches_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backends = documents(DEPLOY / "kubernetes" / "backends.yaml")
    services = {service["metadata"]["name"]: service for service in by_kind(backends, "Service")}
    for workload in by_kind(backends, "Deployment") + by_kind(backends, "StatefulSet"):
        name = workload["metadata"]["name"]
        template = workload["spec"]["template"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        assert services[name]["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
        (container,) = template["spec"]["containers"]
        (port,) = services[name]["spec"]["ports"]
        assert port["targetPort"] in {p["name"] for p in container["ports"]}, name

    def address(service: str) -> str:
        namespace = services[service]["metadata"].get("namespace", "default")
        return f"{service}.{namespace}.svc.cluster.local:{services[service]['spec']['ports'][0]['port']}"

    sidecar_docs = documents(DEPLOY / "kubernetes" / "gateway-sidecar.yaml")
    deployment = named(sidecar_docs, "Deployment", "python-ml")
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    python_ml, gateway = containers["python-ml"], containers["gateway"]
    assert {"name": "PYML_QDRANT_URL", "value": f"http://{address('qdrant')}"} in python_ml["env"]

    # Each backend takes its key from the Secret its clients read, and only its clients' pods in.
    (qdrant,) = by_kind(backends, "StatefulSet")
    (qdrant_server,) = qdrant["spec"]["template"]["spec"]["containers"]
    assert secret_of(qdrant_server, "QDRANT__SERVICE__API_KEY") == secret_of(python_ml, "PYML_QDRANT_API_KEY")
    redis = named(backends, "Deployment", "redis")
    (redis_server,) = redis["spec"]["template"]["spec"]["containers"]
    assert "$(REDIS_PASSWORD)" in redis_server["args"]
    redis_password = secret_of(redis_server, "REDIS_PASSWORD")
    policies = {p["spec"]["podSelector"]["matchLabels"]["app"]: p for p in by_kind(backends, "NetworkPolicy")}
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    for backend in ("qdrant", "redis"):
        (allowed,) = policies[backend]["spec"]["ingress"]
        assert allowed["from"] == [{"podSelector": {"matchLabels": pods}}], backend

    # Shared data switches to Redis by uncommenting one line of the sidecar's proxy.yaml.
    config_map = named(sidecar_docs, "ConfigMap", "gateway-sidecar-config")
    text = config_map["data"]["proxy.yaml"]
    (switch,) = [line for line in text.splitlines() if line.startswith("# shared_data:")]
    switched = yaml.safe_load(text.replace(switch, switch.removeprefix("# ")))
    assert switched["shared_data"]["redis"]["url"] == f"redis://{address('redis')}/0"
    gateway_password = secret_of(gateway, switched["shared_data"]["redis"]["password_env"])
    assert {k: v for k, v in gateway_password.items() if k != "optional"} == redis_password
    config_dir = "/etc/gateway/config"
    for key, value in config_map["data"].items():
        (tmp_path / key).write_text(value.replace(config_dir, str(tmp_path)))
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(switched).replace(config_dir, str(tmp_path)))
    monkeypatch.setenv("REDIS_PASSWORD", "as-the-pod-has-it")
    validate(tmp_path / "proxy.yaml", "--skip-dns")


def test_istio_wasm_plugins_carry_the_same_plugin_configuration() -> None:
    plugins = by_kind(documents(DEPLOY / "istio" / "wasm-plugins.yaml"), "WasmPlugin")
    deployment = by_kind(documents(DEPLOY / "kubernetes" / "gateway-sidecar.yaml"), "Deployment")[0]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    shipped = {
        "gateway-auth": json.loads((REPO / "envoy-config" / "plugins" / "auth.json").read_text()),
        "gateway-rate-limit": json.loads((REPO / "envoy-config" / "plugins" / "rate-limit.json").read_text()),
    }
    assert {p["metadata"]["name"] for p in plugins} == set(shipped)
    for plugin in plugins:
        assert plugin["apiVersion"] == "extensions.istio.io/v1alpha1"
        spec = plugin["spec"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), "selects the sidecar's pods"
        assert spec["url"].startswith("oci://")
        assert spec["phase"] in ISTIO_PHASES
        assert spec["failStrategy"] in {"FAIL_CLOSE", "FAIL_OPEN"}
        assert spec["pluginConfig"] == shipped[plugin["metadata"]["name"]]


def test_the_make_run_configuration_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMANTIC_CACHE_TOKEN", "generated-by-make-run")  # as `make run` does
    validate(REPO / "proxy" / "config" / "example.yaml")
