"""What `make` would run for a target: its recipe, printed by `make -n` without running it."""

from __future__ import annotations

import subprocess

from tests.helpers.paths import ROOT


def recipe_line(target: str, variables: list[str], module: str, *, built: str) -> str:
    """The line of `make -n target variables` that runs `python -m module`, spaces collapsed.

    `built` is a prerequisite make is told not to rebuild (-o), so that printing the recipe
    never builds the virtualenv."""
    out = subprocess.run(
        ["make", "-n", "-o", built, target, *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    (line,) = [line for line in out.splitlines() if module in line]
    return " ".join(line.split())
