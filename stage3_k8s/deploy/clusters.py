"""The local Kubernetes: kind (with cloud-provider-kind for Gateway API) or minikube, each a small class."""

from __future__ import annotations

import contextlib
import json
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from stage3_k8s.deploy.config import GATEWAY, HOST_NAME, KIND_CONFIG, NAME, NAMESPACE
from stage3_k8s.deploy.machine import (
    GIB,
    Findings,
    Floor,
    check_version,
    docker_memory,
    gib,
    running_images,
)
from stage3_k8s.deploy.shell import Shell, StepFailed, find_tool, rel, say

# kind's entry point, pinned: cloud-provider-kind serves LoadBalancer Services and
# Gateway API. v0.11.1 installs the Gateway API CRDs it embeds, v1.5.0 (standard
# channel; its Go code is built against the v1.5.1 module, whose standard CRDs add only
# a rule against a repeated CORS filter), and the GatewayClass `cloud-provider-kind`,
# whose Gateways it runs as Envoy containers on kind's Docker network.
CLOUD_PROVIDER_KIND_VERSION = "v0.11.1"
CLOUD_PROVIDER_KIND_IMAGE = (
    f"registry.k8s.io/cloud-provider-kind/cloud-controller-manager:{CLOUD_PROVIDER_KIND_VERSION}"
)
CLOUD_PROVIDER_KIND_CONTAINER = f"{NAME}-cloud-provider-kind"
# It acts on every kind cluster of the machine. By default it would also make its own
# IngressClass the default one in each, so that other clusters' Ingresses without a
# class would go to it: not here.
CLOUD_PROVIDER_KIND_FLAGS = ["--enable-default-ingress=false"]
GATEWAY_CLASS = "cloud-provider-kind"
GATEWAY_CLASS_DEADLINE = 180.0  # until cloud-provider-kind has installed its CRDs and GatewayClass

KIND_TESTED = "v0.33.0"
KIND_FLOORS = (
    Floor((0, 24, 0), "its network plugin ignores NetworkPolicies, so the policies here would protect nothing"),
    Floor(
        (0, 28, 0),
        "its default Kubernetes (before v1.33) lacks the v1 ServiceCIDR API that cloud-provider-kind's Gateway reads",
    ),
)
# What Docker needs to hold for kind: the node (its control plane takes about 0.7 GiB), the
# Gateway's Envoy, Redis and the chat pods (about 45 MiB each when idle, 96Mi requested).
KIND_MEMORY_NEEDED = int(1.5 * GIB)
KIND_MEMORY_FOR_TEN = int(2.5 * GIB)

# The labels cloud-provider-kind puts on the containers it starts.
CCM_CLUSTER_LABEL = "io.x-k8s.cloud-provider-kind.cluster"
CCM_GATEWAY_LABEL = "io.x-k8s.cloud-provider-kind.gateway.name"

# minikube, named in full: the Docker driver (Docker is needed for the image anyway);
# 2 CPUs, the default of Docker Desktop, Colima and minikube, which ten chat pods fit;
# kindnet as the network plugin: kind's own, which enforces NetworkPolicies (it embeds
# kube-network-policies), so both clusters run the same policy engine. minikube picks it
# by itself for containerd (its default runtime from v1.39) on the Docker driver, but
# picks `bridge`, which ignores NetworkPolicies, for the docker runtime: hence named.
MINIKUBE_DRIVER = "docker"
MINIKUBE_CPUS = 2
# A limit for minikube's node container, which Docker does not reserve: what must fit
# in Docker's VM is what the node uses (its control plane, kindnet, the ingress
# controller: about 1.2 GiB; then Redis and the chat pods). minikube itself compares
# --memory with this machine's memory, not with Docker's VM.
MINIKUBE_MEMORY = "4g"
MINIKUBE_MEMORY_NEEDED = int(2.5 * GIB)
MINIKUBE_MEMORY_FOR_TEN = int(3.5 * GIB)
MINIKUBE_CNI = "kindnet"
MINIKUBE_TESTED = "v1.39.0"
MINIKUBE_FLOORS = (Floor((1, 34, 0), "its kindnet (before kindnetd v20240813) does not enforce NetworkPolicies"),)
INGRESS_NAMESPACE = "ingress-nginx"  # the ingress addon's
INGRESS_SERVICE = "service/ingress-nginx-controller"


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
        )
        return self.context in answer.stdout.split()

    def check_machine(self, findings: Findings) -> None:
        """Versions, Docker's memory, other clusters: what stops the run or deserves a word first."""
        raise NotImplementedError

    def notice(self) -> str:
        """What the learner must do while `up` runs, said before its first step; empty when nothing."""
        return ""

    def ensure(self) -> None:
        raise NotImplementedError

    def install_entry(self) -> None:
        raise NotImplementedError

    def entry_diagnostics(self) -> list[list[str]]:
        """The read-only commands whose answers say why the entry point does not work."""
        return []

    def diagnose_entry(self) -> None:
        """Print the answers of entry_diagnostics(), for a wait on the entry point that failed."""
        for cmd in self.entry_diagnostics():
            answer = self.shell.query(cmd)
            for line in (answer.stdout + answer.stderr).strip().splitlines()[-40:]:
                say("    | " + line)

    def entry_forward(self) -> tuple[str, str, int] | None:
        """Where `up` reaches the entry point through `kubectl port-forward` (namespace, target, port),
        when this machine cannot reach it directly; None when entry() can."""
        return None

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


def check_memory(shell: Shell, findings: Findings, needed: int, what: str, *, comfortable: int) -> None:
    """A problem under `needed` (the cluster with three chat pods), a warning under `comfortable` (ten)."""
    total = docker_memory(shell)
    advice = math.ceil(comfortable / GIB) + 1
    if total is None:
        findings.warnings.append("cannot read Docker's memory (`docker info`); the lab needs " + gib(needed))
    elif total < needed:
        findings.problems.append(
            f"Docker has {gib(total)} of memory, {what} needs {gib(needed)}: give Docker more (Docker Desktop:"
            f" Settings, Resources; Colima, whose VM has 2 GiB by default: `colima start --memory {advice}`)"
        )
    elif total < comfortable:
        findings.warnings.append(
            f"Docker has {gib(total)} of memory: three chat pods fit; for ten (`make stage3-scale REPLICAS=10`)"
            f" give it {gib(comfortable)} or more, or pods may be killed for memory"
        )


class Kind(Cluster):
    k8s = "kind"
    entry_name = f"Gateway API: cloud-provider-kind {CLOUD_PROVIDER_KIND_VERSION}"

    @property
    def context(self) -> str:
        return f"kind-{NAME}"

    def check_machine(self, findings: Findings) -> None:
        version = self.shell.query(["kind", "version"], assume=f"kind {KIND_TESTED}", dry=(0, f"kind {KIND_TESTED}"))
        check_version("kind", version.stdout or version.stderr, KIND_FLOORS, KIND_TESTED, findings)
        check_memory(self.shell, findings, KIND_MEMORY_NEEDED, "a kind cluster", comfortable=KIND_MEMORY_FOR_TEN)
        clusters = self.shell.query(["kind", "get", "clusters"], assume="no other cluster", dry=(0, ""))
        others = sorted(name for name in clusters.stdout.split() if name != NAME)
        if others:
            findings.warnings.append(
                f"other kind clusters run here ({', '.join(others)}): cloud-provider-kind acts on every kind cluster"
                " of this machine, so it will also serve their LoadBalancer Services and Gateways (it adds no"
                " default IngressClass to them: it runs with --enable-default-ingress=false)"
            )
        running = self.shell.query(
            ["docker", "ps", "--format", "{{.Names}} {{.Image}}"], assume="no other cloud-provider-kind", dry=(0, "")
        )
        rivals = running_images(running.stdout, "cloud-provider-kind", CLOUD_PROVIDER_KIND_CONTAINER)
        if rivals:
            findings.warnings.append(
                f"another cloud-provider-kind runs ({', '.join(rivals)}): two would fight over the same load"
                " balancer and Gateway containers. Stop it (`docker stop NAME`) while the lab runs;"
                " one started as a program rather than a container is not seen here"
            )

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
        cmd += [CLOUD_PROVIDER_KIND_IMAGE, *self.provider_flags()]
        return cmd

    def provider_flags(self) -> list[str]:
        return CLOUD_PROVIDER_KIND_FLAGS + ([] if on_linux() else ["--enable-lb-port-mapping"])

    def install_entry(self) -> None:
        # Its state, image and flags: one started by an earlier version of the lab (other
        # flags, another version) is replaced rather than kept.
        found = self.shell.query(
            [
                "docker",
                "inspect",
                "--format",
                "{{.State.Status}} {{.Config.Image}} {{json .Args}}",
                CLOUD_PROVIDER_KIND_CONTAINER,
            ],
            assume="not started yet",
            dry=(1, "", f"Error: No such object: {CLOUD_PROVIDER_KIND_CONTAINER}"),
        )
        state, image, args = (found.stdout.strip() + "  ").split(" ", 2) if found.returncode == 0 else ["", "", ""]
        flags: object = None
        with contextlib.suppress(ValueError):
            flags = json.loads(args)
        current = image == CLOUD_PROVIDER_KIND_IMAGE and flags == self.provider_flags()
        if state and not current:
            say(f"    {CLOUD_PROVIDER_KIND_CONTAINER} runs another version or other flags; replacing it")
            self.shell.run(["docker", "rm", "--force", CLOUD_PROVIDER_KIND_CONTAINER])
        if state == "running" and current:
            say(f"    {CLOUD_PROVIDER_KIND_CONTAINER} runs; keeping it")
        elif state and current:
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
        # Polled, within one deadline: until cloud-provider-kind has installed its CRDs,
        # kubectl knows no such kind, and `kubectl wait` fails at once.
        get_class = self.kubectl("get", f"gatewayclass/{GATEWAY_CLASS}", "--output", "name", namespace=None)

        def created() -> tuple[bool, str]:
            answer = self.shell.query(get_class, poll=True)
            return answer.returncode == 0, (answer.stderr.strip() or answer.stdout.strip())[-200:]

        try:
            self.shell.wait(f"gatewayclass/{GATEWAY_CLASS} exists", created, GATEWAY_CLASS_DEADLINE, polls=[get_class])
            self.shell.run(
                self.kubectl(
                    "wait", "--for=condition=Accepted", f"gatewayclass/{GATEWAY_CLASS}", "--timeout=60s", namespace=None
                )
            )
        except StepFailed:
            self.diagnose_entry()
            raise

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
        try:
            self.shell.run(self.kubectl("wait", "--for=condition=Programmed", f"gateway/{GATEWAY}", "--timeout=300s"))
        except StepFailed:
            self.diagnose_entry()
            raise

    def entry_diagnostics(self) -> list[list[str]]:
        conditions = '{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
        listeners = (
            '{range .status.listeners[*].conditions[*]}listener {.type}={.status} {.reason}: {.message}{"\n"}{end}'
        )
        parents = '{range .status.parents[*].conditions[*]}route {.type}={.status} {.reason}: {.message}{"\n"}{end}'
        return [
            ["docker", "logs", "--tail", "40", CLOUD_PROVIDER_KIND_CONTAINER],
            self.kubectl("get", f"gatewayclass/{GATEWAY_CLASS}", "--output", f"jsonpath={conditions}", namespace=None),
            self.kubectl("get", f"gateway/{GATEWAY}", "--output", f"jsonpath={conditions}{listeners}"),
            self.kubectl("get", f"httproute/{GATEWAY}", "--output", f"jsonpath={parents}"),
        ]

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

    def check_machine(self, findings: Findings) -> None:
        version = self.shell.query(
            ["minikube", "version", "--short"], assume=f"minikube {MINIKUBE_TESTED}", dry=(0, MINIKUBE_TESTED)
        )
        check_version("minikube", version.stdout or version.stderr, MINIKUBE_FLOORS, MINIKUBE_TESTED, findings)
        check_memory(
            self.shell, findings, MINIKUBE_MEMORY_NEEDED, "a minikube cluster", comfortable=MINIKUBE_MEMORY_FOR_TEN
        )

    def notice(self) -> str:
        if on_linux():
            return ""
        return (
            f"! On this machine your browser reaches minikube only through `minikube tunnel --profile {NAME}`:"
            " start it now in another terminal (it asks for your password and keeps running)."
            " `make stage3` checks the entry point through a port-forward and does not wait for it."
        )

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
        return "127.0.0.1", 80  # through `minikube tunnel`

    def entry_forward(self) -> tuple[str, str, int] | None:
        # Off Linux minikube's node sits in Docker's VM: without the tunnel (which needs the
        # learner's password) only a port-forward to the addon's controller reaches it.
        return None if on_linux() else (INGRESS_NAMESPACE, INGRESS_SERVICE, 80)

    def entry_diagnostics(self) -> list[list[str]]:
        return [
            self.kubectl("logs", "deployment/ingress-nginx-controller", "--tail", "40", namespace=INGRESS_NAMESPACE),
            self.kubectl("describe", f"ingress/{GATEWAY}"),
        ]

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
