"""The local Kubernetes: kind (with cloud-provider-kind for Gateway API) or minikube, each a small class."""

from __future__ import annotations

import contextlib
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from stage3_k8s.deploy.config import APPLY_ATTEMPTS, GATEWAY, HOST_NAME, KIND_CONFIG, NAME, NAMESPACE
from stage3_k8s.deploy.shell import Shell, StepFailed, find_tool, rel, say

# kind's entry point, pinned: cloud-provider-kind serves LoadBalancer Services and
# Gateway API. v0.11.1 installs the Gateway API v1.5.1 CRDs (standard channel) and the
# GatewayClass `cloud-provider-kind`, whose Gateways it runs as Envoy containers.
CLOUD_PROVIDER_KIND_VERSION = "v0.11.1"
CLOUD_PROVIDER_KIND_IMAGE = (
    f"registry.k8s.io/cloud-provider-kind/cloud-controller-manager:{CLOUD_PROVIDER_KIND_VERSION}"
)
CLOUD_PROVIDER_KIND_CONTAINER = f"{NAME}-cloud-provider-kind"
GATEWAY_API_VERSION = "v1.5.1"
GATEWAY_CLASS = "cloud-provider-kind"
GATEWAY_CONTROLLER = "kind.sigs.k8s.io/gateway-controller"

# The labels cloud-provider-kind puts on the containers it starts.
CCM_CLUSTER_LABEL = "io.x-k8s.cloud-provider-kind.cluster"
CCM_GATEWAY_LABEL = "io.x-k8s.cloud-provider-kind.gateway.name"

# minikube, named in full: the Docker driver (Docker is needed for the image anyway);
# 2 CPUs, the default of Docker Desktop, Colima and minikube, which ten chat pods fit;
# Calico as the network plugin, since minikube's default one ignores NetworkPolicies.
MINIKUBE_DRIVER = "docker"
MINIKUBE_CPUS = 2
MINIKUBE_MEMORY = "4g"
MINIKUBE_CNI = "calico"


@dataclass
class Cluster:
    """One local Kubernetes: how to make it, its entry point, how to load an image and reach the chat."""

    shell: Shell
    k8s: ClassVar[str]
    entry_name: ClassVar[str]

    @property
    def context(self) -> str:
        raise NotImplementedError

    def kubectl(self, *args: str, namespace: str | None = NAMESPACE) -> list[str]:
        cmd = [find_tool("kubectl") or "kubectl", "--context", self.context]
        if namespace is not None:
            cmd += ["--namespace", namespace]
        return [*cmd, *args]

    def has_context(self) -> bool:
        answer = self.shell.query(
            [find_tool("kubectl") or "kubectl", "config", "get-contexts", "--output", "name"],
            assume="the context exists",
            dry=(0, self.context),
            show=False,
        )
        return self.context in answer.stdout.split()

    def ensure(self) -> None:
        raise NotImplementedError

    def install_entry(self) -> None:
        raise NotImplementedError

    def load(self, image: str) -> None:
        raise NotImplementedError

    def overlay_patches(self) -> list[dict[str, Any]]:
        """Patches known only at run time, added to the overlay when it is applied."""
        return []

    def wait_entry(self) -> None:
        """Until the entry point has taken the applied route."""

    def entry(self) -> tuple[str, int]:
        """Where this machine reaches the entry point (address, port)."""
        raise NotImplementedError

    def delete(self) -> None:
        raise NotImplementedError

    def url_help(self, entry: tuple[str, int]) -> list[str]:
        raise NotImplementedError


def on_linux() -> bool:
    """Docker on Linux puts containers on this machine's network; on macOS and Windows they sit in a VM."""
    return platform.system() == "Linux"


class Kind(Cluster):
    k8s = "kind"
    entry_name = f"Gateway API: cloud-provider-kind {CLOUD_PROVIDER_KIND_VERSION}"

    @property
    def context(self) -> str:
        return f"kind-{NAME}"

    def ensure(self) -> None:
        clusters = self.shell.query(["kind", "get", "clusters"], assume="no cluster yet")
        if NAME in clusters.stdout.split():
            say("    exists; reusing it")
            return
        say("    creating it (a minute or two the first time)")
        self.shell.run(["kind", "create", "cluster", "--name", NAME, "--config", rel(KIND_CONFIG), "--wait", "180s"])

    def provider_command(self) -> list[str]:
        # In a container it sees Linux, so it is told to map the Gateway's port to this
        # machine where the kind network is not reachable (macOS, Windows).
        cmd = ["docker", "run", "--detach", "--restart", "unless-stopped", "--name", CLOUD_PROVIDER_KIND_CONTAINER]
        cmd += ["--network", "kind", "--volume", "/var/run/docker.sock:/var/run/docker.sock"]
        cmd += [CLOUD_PROVIDER_KIND_IMAGE]
        return cmd if on_linux() else [*cmd, "--enable-lb-port-mapping"]

    def install_entry(self) -> None:
        state = self.shell.query(
            ["docker", "ps", "--all", "--filter", f"name=^{CLOUD_PROVIDER_KIND_CONTAINER}$", "--format", "{{.State}}"],
            assume="not started yet",
            dry=(0, ""),
        ).stdout.strip()
        if state == "running":
            say(f"    {CLOUD_PROVIDER_KIND_CONTAINER} runs; keeping it")
        elif state:
            self.shell.run(["docker", "start", CLOUD_PROVIDER_KIND_CONTAINER])
        else:
            self.shell.run(self.provider_command())
        # kind's one node is also its control plane, which load balancers skip by default.
        self.shell.run(
            self.kubectl(
                "label",
                "node",
                f"{NAME}-control-plane",
                "node.kubernetes.io/exclude-from-external-load-balancers-",
                namespace=None,
            ),
            check=False,
            note="no error if the label is already gone",
        )
        # Retried: until cloud-provider-kind has installed the CRDs, kubectl knows no such kind.
        self.shell.run(
            self.kubectl("wait", "--for=create", f"gatewayclass/{GATEWAY_CLASS}", "--timeout=120s", namespace=None),
            attempts=APPLY_ATTEMPTS,
        )
        self.shell.run(
            self.kubectl(
                "wait", "--for=condition=Accepted", f"gatewayclass/{GATEWAY_CLASS}", "--timeout=60s", namespace=None
            )
        )

    def load(self, image: str) -> None:
        self.shell.run(["kind", "load", "docker-image", image, "--name", NAME])

    def overlay_patches(self) -> list[dict[str, Any]]:
        answer = self.shell.query(
            ["docker", "network", "inspect", "kind", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{end}}"],
            assume="kind's usual 172.18.0.0/16",
            dry=(0, "172.18.0.0/16"),
        )
        subnets = answer.stdout.split()
        if answer.returncode != 0 or not subnets:
            raise StepFailed(f"cannot read the subnets of kind's Docker network: {answer.stderr.strip()}")
        return [gateway_network_patch(subnets)] + ([] if on_linux() else ANY_HOST_PATCHES)

    def wait_entry(self) -> None:
        self.shell.run(self.kubectl("wait", "--for=condition=Programmed", f"gateway/{GATEWAY}", "--timeout=300s"))

    def entry(self) -> tuple[str, int]:
        if on_linux():
            answer = self.shell.query(
                self.kubectl("get", f"gateway/{GATEWAY}", "--output", "jsonpath={.status.addresses[0].value}"),
                assume="the Gateway has an address",
                dry=(0, "<gateway address>"),
            )
            if answer.returncode != 0 or not answer.stdout.strip():
                raise StepFailed(f"the Gateway has no address yet: {answer.stderr.strip()}")
            return answer.stdout.strip(), 80
        label = f"{CCM_GATEWAY_LABEL}={NAME}/{NAMESPACE}/{GATEWAY}"
        names = self.shell.query(
            ["docker", "ps", "--filter", f"label={label}", "--format", "{{.Names}}"],
            assume="the Gateway's Envoy container runs",
            dry=(0, "<envoy container>"),
        ).stdout.split()
        if not names:
            raise StepFailed("cloud-provider-kind runs no Envoy container for the Gateway (docker ps shows none)")
        mapped = self.shell.query(
            ["docker", "port", names[0], "80/tcp"], assume="published on 32768", dry=(0, "0.0.0.0:32768")
        ).stdout
        return "127.0.0.1", published_port(mapped)

    def delete(self) -> None:
        if NAME in self.shell.query(["kind", "get", "clusters"], assume="it exists", dry=(0, NAME)).stdout.split():
            self.shell.run(["kind", "delete", "cluster", "--name", NAME])
        else:
            say("    no kind cluster named chatlab")
        # cloud-provider-kind's own container, and the Envoy containers it started for this cluster.
        listed = self.shell.query(
            ["docker", "ps", "--all", "--quiet", "--filter", f"name=^{CLOUD_PROVIDER_KIND_CONTAINER}$"],
            assume="it lists cloud-provider-kind",
            dry=(0, "<cloud-provider-kind>"),
        ).stdout.split()
        listed += self.shell.query(
            ["docker", "ps", "--all", "--quiet", "--filter", f"label={CCM_CLUSTER_LABEL}={NAME}"],
            assume="it lists the Gateway's Envoy",
            dry=(0, "<envoy>"),
        ).stdout.split()
        if listed:
            self.shell.run(["docker", "rm", "--force", *listed])

    def url_help(self, entry: tuple[str, int]) -> list[str]:
        host, port = entry
        if port == 80:
            return [
                f"Open http://{HOST_NAME} once it points at {host} (`{host} {HOST_NAME}` in /etc/hosts),",
                f"or without that: curl -H 'Host: {HOST_NAME}' http://{host}/",
            ]
        return [
            f"Open http://{HOST_NAME}:{port} once {HOST_NAME} points at {host} (`{host} {HOST_NAME}` in /etc/hosts),",
            f"or http://localhost:{port}: off Linux the route takes any host name (docs/troubleshooting.md).",
        ]


def gateway_network_patch(subnets: Sequence[str]) -> dict[str, Any]:
    """The chat port admits kind's Docker network (where the Gateway's Envoy runs): its real subnets."""
    ops: list[dict[str, Any]] = [{"op": "remove", "path": "/spec/ingress/0/from/1"}]
    ops += [{"op": "add", "path": "/spec/ingress/0/from/-", "value": {"ipBlock": {"cidr": s}}} for s in subnets]
    return {"target": {"kind": "NetworkPolicy", "name": "chat"}, "patch": json.dumps(ops)}


# Off Linux the Gateway's port 80 is published on a random port of this machine, so the
# browser sends `Host: test.com:<port>`. cloud-provider-kind turns the listener's and the
# route's hostnames into Envoy's virtual-host domains as they are, and Envoy matches the
# Host header against them with its port (its FAQ, "Why is my route not found?"): test.com
# would match nothing. Without hostnames the domain is `*`, and any Host reaches the route.
# (Giving the Gateway a fixed address would publish it on port 80 instead: on every
# interface of the machine, and only where port 80 is free and may be bound.)
ANY_HOST_PATCHES: list[dict[str, Any]] = [
    {
        "target": {"kind": "Gateway", "name": GATEWAY},
        "patch": json.dumps([{"op": "remove", "path": "/spec/listeners/0/hostname"}]),
    },
    {
        "target": {"kind": "HTTPRoute", "name": GATEWAY},
        "patch": json.dumps([{"op": "remove", "path": "/spec/hostnames"}]),
    },
]


def published_port(docker_port_output: str) -> int:
    """The host port in `docker port` output (`0.0.0.0:49153`, `[::]:49153`, one per line)."""
    for line in docker_port_output.split():
        with contextlib.suppress(ValueError):
            return int(line.rsplit(":", 1)[1])
    raise StepFailed(f"the Gateway's port 80 is not published on this machine: {docker_port_output.strip()!r}")


class Minikube(Cluster):
    k8s = "minikube"
    entry_name = "minikube's ingress addon (minikube has no Gateway API addon)"

    @property
    def context(self) -> str:
        return NAME

    def ensure(self) -> None:
        status = self.shell.query(["minikube", "status", "--profile", NAME], assume="no cluster yet")
        if status.returncode == 0:
            say("    runs; reusing it")
            return
        say("    starting it (a few minutes the first time)")
        self.shell.run(
            [
                "minikube",
                "start",
                "--profile",
                NAME,
                "--driver",
                MINIKUBE_DRIVER,
                "--cpus",
                str(MINIKUBE_CPUS),
                "--memory",
                MINIKUBE_MEMORY,
                "--cni",
                MINIKUBE_CNI,
            ]
        )

    def install_entry(self) -> None:
        # minikube waits until the addon's pods are ready (its "Verifying ingress addon").
        self.shell.run(["minikube", "addons", "enable", "ingress", "--profile", NAME])

    def load(self, image: str) -> None:
        self.shell.run(["minikube", "image", "load", image, "--profile", NAME])

    def entry(self) -> tuple[str, int]:
        if on_linux():
            answer = self.shell.query(["minikube", "ip", "--profile", NAME], dry=(0, "<minikube ip>"))
            if answer.returncode != 0:
                raise StepFailed(f"minikube ip failed: {answer.stderr.strip()}")
            return answer.stdout.strip(), 80
        say(f"    needs `minikube tunnel --profile {NAME}` running in another terminal (it asks for your password)")
        return "127.0.0.1", 80

    def delete(self) -> None:
        # Always: `minikube status` fails for a stopped profile too, which would be left behind.
        self.shell.run(["minikube", "delete", "--profile", NAME])

    def url_help(self, entry: tuple[str, int]) -> list[str]:
        host, _ = entry
        lines = [f"Open http://{HOST_NAME} once it points at {host} (`{host} {HOST_NAME}` in /etc/hosts)"]
        if not on_linux():
            lines.append(f"while `minikube tunnel --profile {NAME}` runs in another terminal.")
        return lines


CLUSTERS: dict[str, type[Cluster]] = {"kind": Kind, "minikube": Minikube}
