"""The production layout (deploy/) keeps its promises: one beat, the gateway and the web
apart, a worker per queue, resources and probes on every container, Redis persisting
the usage stream, every setting documented. `make check-deploy` validates the same files
against the Kubernetes and Compose schemas; these tests check what no schema can."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tesseract_web.celery import CONCERNS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent

# --------------------------------------------------------------------------- helpers


def settings_variables() -> set[str]:
    """Every environment variable tesseract_web/settings.py reads (env_* and _secret)."""
    tree = ast.parse((ROOT / "tesseract_web" / "settings.py").read_text())
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and (node.func.id.startswith("env_") or node.func.id == "_secret")
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def documented(path: Path) -> dict[str, str]:
    """NAME=value lines of an env file, each required to follow a comment."""
    found: dict[str, str] = {}
    previous = ""
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            assert previous.startswith("#") or previous in found, f"{line}: no comment above"
            found[match.group(1)] = match.group(2)
            previous = match.group(1)
        else:
            previous = line
    return found


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def k8s() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def command_line(container: dict) -> str:
    return " ".join(container["command"])


# --------------------------------------------------------------------------- environment


def test_every_setting_is_documented_in_both_env_examples():
    variables = settings_variables()
    assert {"DATABASE_URL", "REDIS_URL", "TESSERACT_GATEWAY_REGION"} <= variables
    for example in (ROOT / ".env.example", DEPLOY / ".env.example"):
        assert variables - set(documented(example)) == set(), example


def test_the_production_example_names_nothing_the_settings_do_not_read():
    compose_only = {"POSTGRES_PASSWORD", "GATEWAY_WORKERS"}
    assert set(documented(DEPLOY / ".env.example")) - settings_variables() == compose_only


def test_the_production_example_is_production_and_leaves_no_number_empty():
    values = documented(DEPLOY / ".env.example")
    assert values["TESSERACT_ENV"] == "production"
    assert values["SESSION_COOKIE_SECURE"] == "1"
    assert values["DEBUG"] == "0"
    assert "localhost" in values["ALLOWED_HOSTS"].split(",")  # the health checks' Host
    # An empty value reads as the default for strings, but int("") stops start-up.
    for name, value in values.items():
        if name.endswith(("_S", "_H", "_MIN", "_PCT", "_LIMIT", "_AGE", "_PORT")):
            assert value.isdigit(), name


def test_every_setting_the_k8s_config_map_sets_is_one_the_settings_read(k8s):
    (config,) = of_kind(k8s, "ConfigMap").values()
    (secret,) = of_kind(k8s, "Secret").values()
    assert set(config["data"]) | set(secret["stringData"]) <= settings_variables()
    assert {"SECRET_KEY", "API_KEY_PEPPER", "DATABASE_URL", "REDIS_URL"} <= set(
        secret["stringData"]
    )
    # An example of keys: applied by mistake, an empty SECRET_KEY stops start-up.
    assert set(secret["stringData"].values()) == {""}


# --------------------------------------------------------------------------- compose


def test_compose_runs_exactly_one_beat(compose):
    services = compose["services"]
    beats = [name for name, s in services.items() if " beat " in f" {_cmd(s)} "]
    assert beats == ["beat"]
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1


def _cmd(service: dict) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else " ".join(command)


def test_compose_runs_the_gateway_and_the_web_apart_with_several_gateway_workers(compose):
    gateway, web = compose["services"]["gateway"], compose["services"]["web"]
    assert "tesseract_web.asgi:gateway" in _cmd(gateway)
    assert "--workers" in _cmd(gateway)
    assert "tesseract_web.asgi:web" in _cmd(web)
    assert "asgi:web" not in _cmd(gateway)
    assert "asgi:gateway" not in _cmd(web)
    assert "asgi:application" not in (DEPLOY / "compose.yaml").read_text()


def test_compose_publishes_the_web_and_the_gateway_on_loopback_only(compose):
    # The web trusts X-Forwarded-For (sign-in throttling by address): only the proxy
    # on the host may reach it.
    assert "--forwarded-allow-ips" in _cmd(compose["services"]["web"])
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), name


def test_compose_runs_a_worker_per_concern_queue(compose):
    queues = [
        re.search(r"-Q (\S+)", _cmd(s)).group(1)  # type: ignore[union-attr]
        for s in compose["services"].values()
        if " worker " in f" {_cmd(s)} "
    ]
    for concern in CONCERNS:
        assert sum(f"}}.{concern}" in q for q in queues) == 1, concern


def test_every_long_running_compose_service_has_a_healthcheck_and_limits(compose):
    for name, service in compose["services"].items():
        assert service["deploy"]["resources"]["limits"], name
        if name != "migrate":  # runs once, then exits
            assert service["healthcheck"]["test"], name
            assert service["deploy"]["resources"]["reservations"], name


def test_compose_redis_persists_the_usage_stream(compose):
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in compose["services"]["redis"]["volumes"])


# --------------------------------------------------------------------------- kubernetes


def test_k8s_runs_exactly_one_beat_that_is_replaced_never_doubled(k8s):
    deployments = of_kind(k8s, "Deployment")
    beats = [
        name
        for name, d in deployments.items()
        if any(" beat " in f" {command_line(c)} " for c in containers(d))
    ]
    assert beats == ["tesseract-beat"]
    beat = deployments["tesseract-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    scaled = {
        hpa["spec"]["scaleTargetRef"]["name"]
        for hpa in of_kind(k8s, "HorizontalPodAutoscaler").values()
    }
    assert "tesseract-beat" not in scaled


def test_k8s_gateway_and_web_are_separate_deployments(k8s):
    deployments = of_kind(k8s, "Deployment")
    (gateway,) = containers(deployments["tesseract-gateway"])
    (web,) = containers(deployments["tesseract-web"])
    assert "tesseract_web.asgi:gateway" in command_line(gateway)
    assert "tesseract_web.asgi:web" in command_line(web)


def test_k8s_runs_a_worker_deployment_per_concern_queue(k8s):
    commands = [command_line(c) for d in of_kind(k8s, "Deployment").values() for c in containers(d)]
    for concern in CONCERNS:
        assert sum(f"$(CELERY_QUEUE).{concern}" in c for c in commands) == 1, concern


def test_every_k8s_container_has_resources_and_probes(k8s):
    workloads = [d for d in k8s if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    assert len(workloads) >= 7
    for workload in workloads:
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            if workload["kind"] != "Job":
                assert container["livenessProbe"], where
                assert container["readinessProbe"], where


def test_k8s_gateway_and_web_are_ready_only_when_their_health_endpoint_says_so(k8s):
    deployments = of_kind(k8s, "Deployment")
    for name in ("tesseract-gateway", "tesseract-web"):
        (container,) = containers(deployments[name])
        probe = container["readinessProbe"]["httpGet"]
        assert probe["path"] == "/health", name
        # Django answers 400 to a Host it does not allow: the probe names one it does.
        assert {"name": "Host", "value": "localhost"} in probe["httpHeaders"], name
    (config,) = of_kind(k8s, "ConfigMap").values()
    assert "localhost" in config["data"]["ALLOWED_HOSTS"].split(",")


def test_the_ingress_sends_v1_to_the_gateway_and_the_rest_to_the_web(k8s):
    (ingress,) = of_kind(k8s, "Ingress").values()
    (rule,) = ingress["spec"]["rules"]
    routes = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert routes == {"/v1": "tesseract-gateway", "/": "tesseract-web"}
    services = of_kind(k8s, "Service")
    assert {"tesseract-gateway", "tesseract-web"} <= set(services)


def test_the_gateway_has_a_disruption_budget_and_an_autoscaler(k8s):
    gateway_labels = of_kind(k8s, "Deployment")["tesseract-gateway"]["spec"]["selector"]
    (pdb,) = of_kind(k8s, "PodDisruptionBudget").values()
    assert pdb["spec"]["selector"] == gateway_labels
    (hpa,) = of_kind(k8s, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tesseract-gateway"
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]


def test_k8s_redis_persists_the_usage_stream(k8s):
    (redis,) = of_kind(k8s, "StatefulSet").values()
    command = containers(redis)[0]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert redis["spec"]["volumeClaimTemplates"]


# --------------------------------------------------------------------------- the validators


def test_the_kubernetes_validator_rejects_an_unknown_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    manifest = (DEPLOY / "k8s" / "beat.yaml").read_text()
    bad.write_text(manifest.replace("image: tesseract", "imagee: tesseract"))
    args = [str(BIN / "kubernetes-validate"), "--strict", "--quiet"]
    assert subprocess.run([*args, str(bad)], capture_output=True, check=False).returncode != 0
    good = subprocess.run([*args, str(DEPLOY / "k8s" / "beat.yaml")], check=False)
    assert good.returncode == 0


def test_the_compose_validator_rejects_a_misspelt_key(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text((DEPLOY / "compose.yaml").read_text().replace("healthcheck:", "helthcheck:"))
    ran = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ran.returncode != 0
    assert "helthcheck" in ran.stdout
