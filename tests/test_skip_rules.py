"""The rule of tests/conftest.py, as a learner without root, Docker, Chromium or Node.js meets it.

A small pytest session runs with the rule's plugin (tests/helpers/skip_rule.py), over one test
per requirement such a user lacks, as an unprivileged user (`nobody` through `setpriv`
when we are root; ourselves otherwise) and with a PATH that has no docker, chromium or
node. Outside CI each test skips with the line that says what it needs; under CI=true
each one fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT
from tests.helpers.requirements import REQUIREMENTS

pytestmark = pytest.mark.slow

SESSION_TIMEOUT = 120.0
MISSING = ("netns", "docker", "browser", "node")  # what nobody, with no tools on PATH, lacks

# One test per requirement, each of which would pass if it ran.
NEEDS_EVERYTHING = "import pytest\n" + "".join(
    f"\n@pytest.mark.{name}\ndef test_needs_{name}():\n    pass\n" for name in MISSING
)


def unprivileged_session(folder: Path, *, ci: bool) -> subprocess.CompletedProcess[str]:
    (folder / "test_needs.py").write_text(NEEDS_EVERYTHING)
    bin_dir = folder / "bin"  # what the session may find on PATH: a shell, and no tools
    bin_dir.mkdir()
    (bin_dir / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) runs the session as nobody"
        prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    env = {
        "PATH": str(bin_dir),
        "HOME": str(folder),
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "CI": "true" if ci else "false",
    }
    return subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.helpers.skip_rule",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(folder),
            "-q",
            "-rsf",
            "test_needs.py",
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT,
        check=False,
    )


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder that nobody can read: pytest's own temp folders are private to their user."""
    with tempfile.TemporaryDirectory(prefix="chatlab-skip-rules-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def test_without_what_they_need_the_suites_skip_with_one_line_each(folder: Path) -> None:
    result = unprivileged_session(folder, ci=False)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(MISSING)} skipped" in result.stdout
    skips = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("SKIPPED [1] ")]
    assert sorted(skips) == sorted(REQUIREMENTS[name][1] for name in MISSING), result.stdout


def test_under_ci_a_missing_requirement_fails(folder: Path) -> None:
    result = unprivileged_session(folder, ci=True)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{len(MISSING)} errors" in result.stdout  # the skip comes in setup, so each is an error of setup
    assert result.stdout.count("skipped under CI=true") == len(MISSING), result.stdout
