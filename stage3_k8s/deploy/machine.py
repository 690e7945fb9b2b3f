"""What `up` checks on this machine before it makes anything: versions, Docker's memory, neighbours.

Each check asks one read-only command and turns the answer into problems (the run stops,
naming each) and warnings (said, and the run goes on).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from stage3_k8s.deploy.shell import Shell

GIB = 2**30


@dataclass(frozen=True)
class Floor:
    """The oldest version of a tool that does what the lab needs, and what an older one lacks."""

    version: tuple[int, int, int]
    lacks: str


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The first `vX.Y.Z` (or `X.Y.Z`) in a tool's version line."""
    match = re.search(r"\bv?(\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def dotted(version: tuple[int, int, int]) -> str:
    return "v" + ".".join(map(str, version))


def check_version(tool: str, answer: str, floors: Sequence[Floor], tested: str, into: Findings) -> None:
    """Each floor the version is under is a problem naming what it lacks; an unreadable version is a warning."""
    found = parse_version(answer)
    if found is None:
        into.warnings.append(
            f"cannot read the version of {tool} from {answer.strip()!r}; the lab is tested with {tested}"
        )
        return
    for floor in floors:
        if found < floor.version:
            into.problems.append(
                f"{tool} {dotted(found)} is too old: {floor.lacks} (needs {dotted(floor.version)} or later;"
                f" the lab is tested with {tested})"
            )


def docker_memory(shell: Shell) -> int | None:
    """The memory Docker's engine has, in bytes: on macOS and Windows that of its VM, not of the machine."""
    answer = shell.query(
        ["docker", "info", "--format", "{{.MemTotal}}"], assume="Docker has 8 GiB", dry=(0, str(8 * GIB))
    )
    try:
        return int(answer.stdout.strip()) if answer.returncode == 0 else None
    except ValueError:
        return None


def running_images(docker_ps: str, image_part: str, ours: str) -> list[str]:
    """Running containers (`docker ps --format '{{.Names}} {{.Image}}'`) whose image holds `image_part`."""
    found = []
    for line in docker_ps.splitlines():
        name, _, image = line.strip().partition(" ")
        if image_part in image and name != ours:
            found.append(name)
    return found


def gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"
