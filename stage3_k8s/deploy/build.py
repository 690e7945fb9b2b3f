"""The image's tag: a hash of exactly the files its build context lets in."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path

from stage3_k8s.deploy.config import ROOT


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
