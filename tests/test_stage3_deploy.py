"""`make stage3` and friends, without Docker or Kubernetes.

Where the real command is here it is used: make itself, the pinned kubectl (its
kustomize renders what `up` would apply), and the real tool lookup. Where it is not
(docker's daemon, kind, minikube, a cluster), the script's --dry-run prints the
commands it would run, in order, and those are checked; the logic that reads a
cluster's answers is checked against canned answers.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from shared.client import PhoenixClient
from stage3_k8s.deploy import clusters, proofs
from stage3_k8s.deploy import shell as shell_module
from stage3_k8s.deploy.actions import Up, scale, status
from stage3_k8s.deploy.build import image_tag
from stage3_k8s.deploy.clusters import CLOUD_PROVIDER_KIND_IMAGE, Kind
from stage3_k8s.deploy.config import NAMESPACE, OVERLAYS, SECRET
from stage3_k8s.deploy.pods import Pod, cause_of, chat_pods, rollout, shortfall, wait_one_cluster
from stage3_k8s.deploy.proofs import (
    browser_host,
    browser_socket,
    exchange_message,
    http_status,
    over_websocket,
    prove_entry,
)
from stage3_k8s.deploy.resources import kustomization, secret_objects, tagged_overlay
from stage3_k8s.deploy.shell import WHERE_TO_GET, Shell, StepFailed, find_tool, shown
from tests.helpers.entry_proxy import EntryProxy
from tests.helpers.entry_proxy import kind_route as rendered_kind_route
from tests.helpers.make import recipe_line
from tests.helpers.paths import ROOT
from tests.helpers.ports import free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def run_deploy(*args: str, path: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m stage3_k8s.deploy args` with `env` added to ours, and PATH replaced by `path`."""
    env = {**os.environ, "PATH": path if path is not None else os.environ.get("PATH", ""), **env}
    return subprocess.run(
        [sys.executable, "-m", "stage3_k8s.deploy", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def commands(output: str) -> list[list[str]]:
    """The commands a dry run printed (`+ cmd  # note`), split as a shell would."""
    found = []
    for line in output.splitlines():
        if line.startswith("+ "):
            found.append(shlex.split(line[2:], comments=True))
    return found


def program(cmd: list[str]) -> str:
    return Path(cmd[0]).name


def index_of(cmds: list[list[str]], *words: str) -> int:
    """Position of the first command holding all `words`, in order of appearance."""
    for index, cmd in enumerate(cmds):
        if all(word in cmd for word in words):
            return index
    raise AssertionError(f"no command with {words} in:\n" + "\n".join(shlex.join(c) for c in cmds))


# make ----------------------------------------------------------------------------------------


def test_make_help_lists_the_stage3_targets() -> None:
    out = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True).stdout
    listed = {line.split()[0] for line in re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines() if line.strip()}
    assert {"stage3", "stage3-scale", "stage3-status", "stage3-down"} <= listed


@pytest.mark.parametrize(
    ("target", "variables", "expected"),
    [
        ("stage3", [], "--k8s kind up"),
        ("stage3", ["K8S=minikube", "DRY_RUN=1"], "--k8s minikube --dry-run up"),
        ("stage3", ["DRY_RUN=0"], "--k8s kind up"),
        ("stage3-down", ["DRY_RUN=no"], "--k8s kind down"),
        ("stage3-scale", ["REPLICAS=10"], "--k8s kind scale --replicas 10"),
        ("stage3-scale", [], "--k8s kind scale --replicas 3"),
        ("stage3-status", ["K8S=minikube"], "--k8s minikube status"),
        ("stage3-down", [], "--k8s kind down"),
    ],
)
def test_make_targets_are_thin_calls_of_the_deploy_script(target: str, variables: list[str], expected: str) -> None:
    line = recipe_line(target, variables, "stage3_k8s.deploy", built=".venv/.installed-stage3")
    assert line.endswith(f"python -m stage3_k8s.deploy {expected}")


def test_make_stage3_with_dry_run_prints_the_commands_and_runs_none() -> None:
    result = subprocess.run(
        ["make", "-o", ".venv/.installed-stage3", "stage3", "DRY_RUN=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Dry run: nothing was run." in result.stdout
    assert index_of(commands(result.stdout), "docker", "build") >= 0


def test_the_dry_runs_first_line_says_what_it_needs_and_what_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "docker").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "docker").chmod(0o755)
    result = run_deploy("--dry-run", "up", path=str(tmp_path))
    first, second = result.stdout.splitlines()[:2]
    assert first == "# dry run of `up` on kind, which needs docker, kind, kubectl: not found: kind"
    assert second == f"#   kind: {WHERE_TO_GET['kind']}"
    (tmp_path / "kind").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "kind").chmod(0o755)
    result = run_deploy("--dry-run", "up", path=str(tmp_path))
    assert (
        result.stdout.splitlines()[0] == "# dry run of `up` on kind, which needs docker, kind, kubectl: all found here"
    )


class RecordedRuns:
    """subprocess.run for a real (not dry) Shell: records each command and answers like a 2-pod cluster
    whose second pod sees its peer only from the second poll on."""

    def __init__(self) -> None:
        self.cmds: list[list[str]] = []
        self.views = 0

    def __call__(self, cmd, **_kwargs):  # type: ignore[no-untyped-def]
        self.cmds.append(list(cmd))
        out = ""
        if "--raw" in cmd:
            self.views += 1
            seen = ["chat@10.0.0.1", "chat@10.0.0.2"] if self.views > 2 or "chat-a" in cmd[-1] else ["chat@10.0.0.2"]
            out = json.dumps({"self": "?", "nodes": seen})
        elif "json" in cmd and "pods" in cmd:
            out = json.dumps({"items": [pod("chat-a", "10.0.0.1"), pod("chat-b", "10.0.0.2")]})
        return subprocess.CompletedProcess(cmd, 0, out, "")


def test_a_real_run_prints_each_command_it_runs_and_a_polled_one_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = RecordedRuns()
    monkeypatch.setattr(shell_module.subprocess, "run", runs)
    cluster = Kind(Shell(dry_run=False))
    wait_one_cluster(cluster, replicas=2, deadline=10)
    status(cluster)
    printed = [line[2:].split("  # ")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")]
    assert runs.views > 2, "the wait polled more than once"
    assert {shown(cmd) for cmd in runs.cmds} <= set(printed)
    polled = shown(cluster.kubectl("get", "pods", "--selector", "app=chat", "--output", "json"))
    assert printed.count(polled) == 1 and [shown(cmd) for cmd in runs.cmds].count(polled) > 2
    assert all(line.startswith(".venv/bin/kubectl ") for line in printed), "runnable from the repository"


# Tool checks ----------------------------------------------------------------------------------

DOCKER_DOWN = (
    "docker is installed but does not answer (`docker info` failed): "
    "start the Docker daemon, or Docker Desktop, or Colima"
)


@pytest.mark.parametrize("k8s", ["kind", "minikube"])
def test_missing_tools_are_named_with_where_to_get_them(k8s: str, tmp_path: Path) -> None:
    result = run_deploy("--k8s", k8s, "up", path=str(tmp_path))  # an empty PATH: no docker, no kind, no minikube
    assert result.returncode == 2
    # The whole reply: kubectl is not missing (it comes with the virtualenv), and nothing ran.
    assert result.stdout.splitlines() == [
        f"stage 3 on {k8s} needs docker, {k8s}, kubectl and a running Docker; not found: docker, {k8s}",
        f"  docker: {WHERE_TO_GET['docker']}",
        f"  {k8s}: {WHERE_TO_GET[k8s]}",
    ]


def test_kubectl_is_the_pinned_one_from_the_virtualenv() -> None:
    assert find_tool("kubectl") == str(BIN / "kubectl")


def test_a_docker_without_its_daemon_is_reported_before_anything_runs(tmp_path: Path) -> None:
    # Stand-ins for a docker CLI whose daemon is down, and for kind.
    (tmp_path / "docker").write_text('#!/bin/sh\necho "Cannot connect to the Docker daemon" >&2\nexit 1\n')
    (tmp_path / "kind").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("docker", "kind"):
        (tmp_path / tool).chmod(0o755)
    result = run_deploy("up", path=str(tmp_path))
    assert result.returncode == 2
    # The whole reply: the one question asked, and what to do.
    assert result.stdout.splitlines() == [
        "+ docker info",
        f"stage 3 on kind needs docker, kind, kubectl and a running Docker; {DOCKER_DOWN}",
    ]


def test_every_missing_prerequisite_is_reported_at_once_docker_daemon_included(tmp_path: Path) -> None:
    # A docker CLI whose daemon is down, and no kind at all.
    (tmp_path / "docker").write_text('#!/bin/sh\necho "Cannot connect to the Docker daemon" >&2\nexit 1\n')
    (tmp_path / "docker").chmod(0o755)
    result = run_deploy("up", path=str(tmp_path))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "+ docker info",
        "stage 3 on kind needs docker, kind, kubectl and a running Docker; not found: kind",
        f"  kind: {WHERE_TO_GET['kind']}",
        DOCKER_DOWN,
    ]


@pytest.mark.parametrize("action", [["status"], ["scale", "--replicas", "10"]])
def test_scale_and_status_without_a_stage3_cluster_say_how_to_make_one(action: list[str], tmp_path: Path) -> None:
    # The real kubectl, reading an empty kubeconfig: no context kind-chatlab.
    (tmp_path / "config").write_text("apiVersion: v1\nkind: Config\n")
    result = run_deploy(*action, KUBECONFIG=str(tmp_path / "config"))
    assert result.returncode == 2
    assert [cmd[1:] for cmd in commands(result.stdout)] == [["config", "get-contexts", "--output", "name"]]
    assert (
        result.stdout.splitlines()[-1]
        == "no stage 3 cluster here (no kubectl context kind-chatlab): run `make stage3 K8S=kind` first"
    )


def test_scale_needs_a_sensible_number_of_replicas() -> None:
    result = run_deploy("scale", "--replicas", "0")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "python -m stage3_k8s.deploy: error: --replicas must be between 1 and 50"


# What `up` would run ------------------------------------------------------------------------


def test_up_on_kind_runs_cloud_provider_kind_builds_loads_applies_waits_and_proves_the_entry_point() -> None:
    result = run_deploy("--dry-run", "--k8s", "kind", "up")
    assert result.returncode == 0, result.stdout + result.stderr
    cmds = commands(result.stdout)
    image = f"chatlab:{image_tag()}"
    order = [
        index_of(cmds, "kind", "version"),
        index_of(cmds, "docker", "info", "--format", "{{.MemTotal}}"),
        index_of(cmds, "kind", "get", "clusters"),
        index_of(cmds, "kind", "create", "cluster", "--name", "chatlab", "--config", "stage3_k8s/kind-config.yaml"),
        index_of(cmds, "docker", "run", "--name", "chatlab-cloud-provider-kind", CLOUD_PROVIDER_KIND_IMAGE),
        index_of(cmds, "get", "gatewayclass/cloud-provider-kind"),
        index_of(cmds, "wait", "--for=condition=Accepted", "gatewayclass/cloud-provider-kind"),
        index_of(cmds, "docker", "build", "--file", "stage3_k8s/Dockerfile", "--tag", image, "."),
        index_of(cmds, "kind", "load", "docker-image", image, "--name", "chatlab"),
        index_of(cmds, "get", "secret", "chat-cookie"),
        index_of(cmds, "get", "secret", "redis-auth"),
        index_of(cmds, "apply", "--filename", "stage3_k8s/k8s/base/namespace.yaml"),
        index_of(cmds, "create", "--filename", "-"),
        index_of(cmds, "docker", "network", "inspect", "kind"),
        index_of(cmds, "apply", "--kustomize"),
        index_of(cmds, "rollout", "status", "statefulset/redis"),
        index_of(cmds, "rollout", "status", "deployment/chat"),
        index_of(cmds, "wait", "--for=condition=Programmed", "gateway/chat"),
        index_of(cmds, "port-forward"),
        index_of(cmds, "get", "gateway/chat"),
    ]
    assert order == sorted(order)
    (provider,) = [cmd for cmd in cmds if CLOUD_PROVIDER_KIND_IMAGE in cmd]
    assert provider[provider.index(CLOUD_PROVIDER_KIND_IMAGE) + 1 :] == ["--enable-default-ingress=false"]
    # Every wait is bounded by one timeout: none is retried on top of its own --timeout.
    assert not [cmd for cmd in cmds if "--for=create" in cmd]
    # Every kubectl call names the cluster it made: no other cluster of the user's is touched.
    for cmd in cmds:
        if program(cmd) == "kubectl":
            assert cmd[1:3] == ["--context", "kind-chatlab"], cmd
    # kind's entry point is the Gateway: nothing of minikube's ingress addon is touched.
    assert not [cmd for cmd in cmds if any("ingress-nginx" in word for word in cmd)]


def test_up_on_minikube_names_driver_and_cpus_and_lets_the_addon_wait_for_itself() -> None:
    result = run_deploy("--dry-run", "--k8s", "minikube", "up")
    assert result.returncode == 0, result.stdout + result.stderr
    cmds = commands(result.stdout)
    image = f"chatlab:{image_tag()}"
    start = [
        "minikube",
        "start",
        "--profile",
        "chatlab",
        "--driver",
        "docker",
        "--cpus",
        "2",
        "--memory",
        "4g",
        "--cni",
        "kindnet",
    ]
    order = [
        index_of(cmds, "minikube", "version", "--short"),
        index_of(cmds, "docker", "info", "--format", "{{.MemTotal}}"),
        index_of(cmds, "minikube", "status", "--profile", "chatlab"),
        index_of(cmds, *start),
        index_of(cmds, "minikube", "addons", "enable", "ingress", "--profile", "chatlab"),
        index_of(cmds, "docker", "build", "--tag", image),
        index_of(cmds, "minikube", "image", "load", image, "--profile", "chatlab"),
        index_of(cmds, "apply", "--kustomize"),
        index_of(cmds, "rollout", "status", "deployment/chat"),
        index_of(cmds, "minikube", "ip", "--profile", "chatlab"),
    ]
    assert order == sorted(order)
    assert start in cmds
    assert all(cmd[1:3] == ["--context", "chatlab"] for cmd in cmds if program(cmd) == "kubectl")
    # minikube waits for its addon's pods itself: nothing of the addon is named here, no other rollout waited for.
    assert not [cmd for cmd in cmds if any("ingress-nginx" in word for word in cmd)]
    assert not [cmd for cmd in cmds if "rollout" in cmd and "--namespace" in cmd and "chatlab" not in cmd]


def test_scale_waits_for_the_rollout_and_for_every_pod_to_see_all() -> None:
    result = run_deploy("--dry-run", "scale", "--replicas", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    cmds = commands(result.stdout)
    order = [
        index_of(cmds, "scale", "deployment/chat", "--replicas=10"),
        index_of(cmds, "rollout", "status", "deployment/chat"),
    ]
    assert order == sorted(order)
    assert index_of(cmds, "get", "nodes", "--output", "json") < order[0], "capacity is checked before scaling"
    # After the rollout, the two commands the wait polls: the pods, then each pod's node list.
    after = cmds[order[-1] + 1 :]
    assert all(cmd[1:3] == ["--context", "kind-chatlab"] for cmd in after)
    assert [cmd[3:] for cmd in after] == [
        ["--namespace", "chatlab", "get", "pods", "--selector", "app=chat", "--output", "json"],
        ["get", "--raw", "/api/v1/namespaces/chatlab/pods/<pod>:4000/proxy/api/nodes"],
    ]


class PlanShell(Shell):
    """A dry run that records each command it would run, and the kustomization of the folder it would run it in."""

    def __init__(self) -> None:
        super().__init__(dry_run=True)
        self.ran: list[tuple[list[str], dict | None, Path | None]] = []

    def run(self, cmd, **kwargs):  # type: ignore[no-untyped-def, override]
        cwd = kwargs.get("cwd")
        kustomization = yaml.safe_load((cwd / "kustomization.yaml").read_text()) if cwd else None
        self.ran.append((list(cmd), kustomization, cwd))
        return super().run(cmd, **kwargs)


@pytest.mark.parametrize("k8s", ["kind", "minikube"])
def test_up_applies_its_clusters_overlay_with_the_image_it_built(k8s: str) -> None:
    shell = PlanShell()
    Up(clusters.CLUSTERS[k8s](shell), tag="0.1.0-0123456789ab").run()
    (build,) = [cmd for cmd, _, _ in shell.ran if cmd[:2] == ["docker", "build"]]
    assert build[build.index("--tag") + 1] == "chatlab:0.1.0-0123456789ab"
    (applied,) = [(kustomization, cwd) for cmd, kustomization, cwd in shell.ran if "--kustomize" in cmd]
    kustomization, workdir = applied
    assert kustomization["images"] == [{"name": "chatlab", "newTag": "0.1.0-0123456789ab"}]
    assert [(workdir / path).resolve() for path in kustomization["resources"]] == [(OVERLAYS / k8s).resolve()]


def test_status_shows_pods_the_headless_endpoints_and_each_node_list() -> None:
    result = run_deploy("--dry-run", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    cmds = commands(result.stdout)
    index_of(cmds, "get", "pods", "--selector", "app=chat", "--output", "wide")
    index_of(cmds, "get", "endpointslices", "--selector", "kubernetes.io/service-name=chat-nodes")
    assert any("proxy/api/nodes" in word for cmd in cmds for word in cmd)


@pytest.mark.parametrize(
    ("k8s", "delete"),
    [
        ("kind", ["kind", "delete", "cluster", "--name", "chatlab"]),
        ("minikube", ["minikube", "delete", "--profile", "chatlab"]),
    ],
)
def test_down_removes_the_cluster_and_the_images_it_built(k8s: str, delete: list[str]) -> None:
    result = run_deploy("--dry-run", "--k8s", k8s, "down")
    assert result.returncode == 0, result.stdout + result.stderr
    cmds = commands(result.stdout)
    assert index_of(cmds, *delete) < index_of(cmds, "docker", "image", "rm")
    index_of(cmds, "docker", "image", "ls", "chatlab")
    if k8s == "kind":
        index_of(cmds, "docker", "rm", "--force")  # cloud-provider-kind and the Gateway's Envoy


def test_down_on_minikube_deletes_a_stopped_profile(tmp_path: Path) -> None:
    """`minikube status` fails for a stopped profile too; down deletes without asking it."""
    log = tmp_path / "calls"
    (tmp_path / "minikube").write_text(f'#!/bin/sh\necho "minikube $*" >> {log}\n[ "$1" = status ] && exit 7\nexit 0\n')
    (tmp_path / "docker").write_text(f'#!/bin/sh\necho "docker $*" >> {log}\nexit 0\n')
    for tool in ("minikube", "docker"):
        (tmp_path / tool).chmod(0o755)
    result = run_deploy("--k8s", "minikube", "down", path=f"{tmp_path}:/usr/bin:/bin")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    assert "minikube delete --profile chatlab" in calls
    assert not [call for call in calls if call.startswith("minikube status")]


def test_a_dry_run_piped_into_head_ends_quietly() -> None:
    result = subprocess.run(
        f"{shlex.quote(sys.executable)} -m stage3_k8s.deploy --dry-run up | head -n 2",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert len(result.stdout.splitlines()) == 2
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr


def test_the_deploy_tool_needs_no_test_extra_at_run_time() -> None:
    # The command line's module imports every other module of the tool. (websockets, which its
    # final checks speak through shared/client.py, is a runtime dependency, not an extra.)
    code = (
        "import sys, stage3_k8s.deploy.__main__; "
        "print(sorted(m for m in ('yaml', 'pytest', 'playwright', 'hypothesis') if m in sys.modules)); "
        "print(sorted(m for m in sys.modules if m.startswith('stage3_k8s.deploy.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    extras, modules = out.stdout.splitlines()
    assert extras == "[]"
    every = sorted(f"stage3_k8s.deploy.{path.stem}" for path in (ROOT / "stage3_k8s" / "deploy").glob("*.py"))
    assert modules == str([name for name in every if not name.endswith(".__init__")])


# The pieces `up` hands to kubectl ----------------------------------------------------------


def test_the_generated_kustomization_renders_the_overlay_with_the_built_tag(tmp_path: Path) -> None:
    tag = "0.1.0-0123456789ab"
    (tmp_path / "kustomization.yaml").write_text(kustomization(OVERLAYS / "kind", tmp_path, tag))
    rendered = subprocess.run(
        [BIN / "kubectl", "kustomize", tmp_path], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    images = [
        c["image"]
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] == "Deployment"
        for c in doc["spec"]["template"]["spec"]["containers"]
    ]
    assert f"chatlab:{tag}" in images
    assert not [image for image in images if image.startswith("chatlab:") and image != f"chatlab:{tag}"]


def test_the_overlay_renders_when_tmpdir_is_a_link_to_a_folder_at_another_depth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS's case: TMPDIR under /var, a link to /private/var. kustomize resolves the link
    before it climbs `../..`, so a path counted from the link's side would miss the overlay."""
    real = tmp_path / "deeper" / "still" / "deeper"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "link"))
    with tagged_overlay(OVERLAYS / "kind", "0.1.0-0123456789ab") as workdir:
        assert str(workdir).startswith(str(tmp_path / "link")), "the folder was made under the linked TMPDIR"
        rendered = subprocess.run(
            [BIN / "kubectl", "kustomize", workdir], capture_output=True, text=True, timeout=60, check=False
        )
    assert rendered.returncode == 0, rendered.stderr
    assert "image: chatlab:0.1.0-0123456789ab" in rendered.stdout


def test_the_cookie_secret_is_valid_random_and_only_sent_on_stdin() -> None:
    cookie = "a-cookie-for-this-test-only-0123456789"
    listing = json.loads(secret_objects({SECRET: cookie}))
    for item in listing["items"]:
        kubernetes_validate.validate(item, "1.37.0", strict=True)
    secret = next(item for item in listing["items"] if item["kind"] == "Secret")
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == (SECRET, NAMESPACE)
    assert base64.b64decode(secret["data"]["cookie"]).decode() == cookie
    dry = run_deploy("--dry-run", "up").stdout
    assert "data" not in dry and 'cookie":' not in dry, "the cookie is never printed"


def test_the_image_tag_follows_what_the_image_is_built_from_and_nothing_else(tmp_path: Path) -> None:
    shutil.copy2(ROOT / ".dockerignore", tmp_path / ".dockerignore")
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for source in ("shared", "stage2_cluster", "stage3_k8s"):
        shutil.copytree(ROOT / source, tmp_path / source, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("x = 1\n")
    first = image_tag(tmp_path)
    assert first == image_tag(tmp_path)
    assert first.startswith("0.1.0-") and len(first.split("-")[1]) == 12
    # Not in the image (.dockerignore): tests, manifests, the deploy tool, READMEs, caches.
    for outside in (
        "tests/test_x.py",
        "stage3_k8s/k8s/base/chat.yaml",
        "stage3_k8s/deploy/actions.py",
        "stage3_k8s/kind-config.yaml",
        "shared/README.md",
    ):
        path = tmp_path / outside
        path.write_text((path.read_text() if path.exists() else "") + "\n# changed\n")
        assert image_tag(tmp_path) == first, f"{outside} changed the tag"
    (tmp_path / "stage3_k8s" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "stage3_k8s" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    assert image_tag(tmp_path) == first, "caches are not sources"
    module = tmp_path / "shared" / "settings.py"
    module.write_text(module.read_text() + "\n# changed\n")
    assert image_tag(tmp_path) != first


# Reading the cluster's answers -------------------------------------------------------------


class CannedShell(Shell):
    """Answers kubectl queries from a dict instead of a cluster."""

    def __init__(self, pods: list[dict], views: dict[str, list[str]]) -> None:
        super().__init__(dry_run=False)
        self.pods, self.views = pods, views

    def query(self, cmd, **_kwargs):  # type: ignore[no-untyped-def, override]
        if "pods" in cmd and "json" in cmd:
            return subprocess.CompletedProcess(cmd, 0, json.dumps({"items": self.pods}), "")
        path = cmd[-1]
        name = path.split("/pods/")[1].split(":")[0]
        if name in self.views:
            return subprocess.CompletedProcess(cmd, 0, json.dumps({"self": "?", "nodes": self.views[name]}), "")
        return subprocess.CompletedProcess(cmd, 1, "", "no answer")


def pod(name: str, ip: str, *, phase: str = "Running", leaving: bool = False) -> dict:
    meta = {"name": name, **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if leaving else {})}
    return {"metadata": meta, "status": {"phase": phase, "podIP": ip}}


def test_pods_going_away_or_not_running_are_not_expected_in_the_cluster() -> None:
    pods = [
        pod("chat-b", "10.0.0.2"),
        pod("chat-a", "10.0.0.1"),
        pod("chat-c", "10.0.0.3", leaving=True),
        pod("chat-d", "", phase="Pending"),
    ]
    target = Kind(CannedShell(pods, {}))
    assert chat_pods(target) == [Pod("chat-a", "10.0.0.1"), Pod("chat-b", "10.0.0.2")]


def test_the_wait_ends_when_every_pod_lists_exactly_all_pods(capsys: pytest.CaptureFixture[str]) -> None:
    pods = [pod("chat-a", "10.0.0.1"), pod("chat-b", "10.0.0.2")]
    views = {"chat-a": ["chat@10.0.0.1", "chat@10.0.0.2"], "chat-b": ["chat@10.0.0.2", "chat@10.0.0.1"]}
    target = Kind(CannedShell(pods, views))
    assert [p.name for p in wait_one_cluster(target, replicas=2, deadline=5)] == ["chat-a", "chat-b"]
    assert "2 of 2 pods list all 2 nodes" in capsys.readouterr().out


def test_the_wait_gives_up_at_its_deadline_saying_what_it_saw() -> None:
    pods = [pod("chat-a", "10.0.0.1"), pod("chat-b", "10.0.0.2")]
    views = {
        "chat-a": ["chat@10.0.0.1", "chat@10.0.0.2"],
        "chat-b": ["chat@10.0.0.2", "chat@10.0.0.9"],
    }  # b still lists a gone pod
    target = Kind(CannedShell(pods, views))
    with pytest.raises(StepFailed, match="1 of 2 pods list all 2 nodes"):
        wait_one_cluster(target, replicas=2, deadline=0.5)


class ScriptedShell(Shell):
    """Answers queries by the first matching words; `run` fails for commands holding `fail`."""

    def __init__(self, answers: dict[str, tuple[int, str, str]], fail: str = "", dry_run: bool = False) -> None:
        super().__init__(dry_run=dry_run)
        self.answers, self.fail = answers, fail
        self.ran: list[str] = []
        self.stdin: list[str | None] = []

    def query(self, cmd, **_kwargs):  # type: ignore[no-untyped-def, override]
        line = shlex.join(cmd)
        for words, (code, out, err) in self.answers.items():
            if words in line:
                return subprocess.CompletedProcess(cmd, code, out, err)
        raise AssertionError(f"unexpected query: {line}")

    def run(self, cmd, **kwargs):  # type: ignore[no-untyped-def, override]
        self.ran.append(shlex.join(cmd))
        self.stdin.append(kwargs.get("stdin"))
        if self.fail and self.fail in shlex.join(cmd):
            raise StepFailed(f"{shlex.join(cmd)} failed with exit code 1")
        if not self.dry_run:
            return None
        return super().run(cmd, **kwargs)


def test_a_secret_lookup_error_other_than_not_found_stops_instead_of_making_a_new_cookie() -> None:
    refused = (1, "", "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host?")
    shell = ScriptedShell({"get secret": refused})
    with pytest.raises(StepFailed, match="cannot tell whether Secret chatlab/chat-cookie exists: The connection"):
        Up(Kind(shell), tag="t").secrets()
    assert shell.ran == [], "nothing was created"


def test_only_secrets_that_are_not_found_are_created(capsys: pytest.CaptureFixture[str]) -> None:
    shell = ScriptedShell(
        {
            "get secret chat-cookie": (0, "secret/chat-cookie", ""),
            "get secret redis-auth": (1, "", 'Error from server (NotFound): secrets "redis-auth" not found'),
        }
    )
    Up(Kind(shell), tag="t").secrets()
    annotate, namespace, create = shell.ran
    # The kept one loses the copy of its value that an apply of an earlier lab left in an annotation.
    assert annotate.endswith("annotate secret chat-cookie kubectl.kubernetes.io/last-applied-configuration-")
    shell.stdin.pop(0)
    assert namespace.endswith("apply --filename stage3_k8s/k8s/base/namespace.yaml") and shell.stdin[0] is None
    # Created, never applied: `apply` would keep the value in the last-applied-configuration annotation.
    assert create.endswith("--namespace chatlab create --filename -") and "apply" not in create
    items = json.loads(shell.stdin[1])["items"]
    assert [(item["kind"], item["metadata"]["name"]) for item in items] == [("Secret", "redis-auth")]
    assert "annotations" not in items[0]["metadata"]
    assert "chat-cookie exists; keeping it" in capsys.readouterr().out


def test_rerunning_up_after_scaling_keeps_the_replica_count_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    shell = ScriptedShell(
        {
            "jsonpath={.spec.replicas}": (0, "10", ""),
            "docker network inspect kind": (0, "172.18.0.0/16 fc00:f853:ccd:e793::/64", ""),
        },
        dry_run=True,
    )
    Up(Kind(shell), tag="t").apply()
    out = capsys.readouterr().out
    assert "keeping 10 chat pods (as scaled); `make stage3-scale REPLICAS=3` goes back" in out
    assert "#   replicas:\n  #     - name: chat\n  #       count: 10" in out


def node_json(cpu: str, memory: str, pods: list[tuple[str, str]]) -> tuple[dict, dict]:
    nodes = {"items": [{"status": {"allocatable": {"cpu": cpu, "memory": memory}}}]}
    running = {
        "items": [
            {
                "spec": {"nodeName": "n", "containers": [{"resources": {"requests": {"cpu": c, "memory": m}}}]},
                "status": {"phase": "Running"},
            }
            for c, m in pods
        ]
    }
    return nodes, running


def chat_deployment(replicas: int, cpu: str = "20m", memory: str = "96Mi") -> dict:
    container = {"resources": {"requests": {"cpu": cpu, "memory": memory}}}
    return {"spec": {"replicas": replicas, "template": {"spec": {"containers": [container]}}}}


def test_the_capacity_check_says_what_is_short_before_scaling() -> None:
    # A 2-CPU node whose system pods and entry point request 1.5 CPUs, 3 chat pods at the old 100m each.
    nodes, pods = node_json("2", "4Gi", [("1500m", "300Mi")] + [("100m", "96Mi")] * 3)
    assert shortfall(nodes, pods, chat_deployment(3, cpu="100m"), 10) == "CPU: 7 more pods request 700m, 200m free"
    # The requests as sized now: ten fit beside the same system pods.
    nodes, pods = node_json("2", "4Gi", [("1500m", "300Mi")] + [("20m", "96Mi")] * 3)
    assert shortfall(nodes, pods, chat_deployment(3), 10) is None


def test_scaling_stops_before_it_starts_when_the_pods_would_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    nodes, pods = node_json("1", "1Gi", [("900m", "300Mi")] + [("20m", "96Mi")] * 3)
    shell = ScriptedShell(
        {
            "get nodes": (0, json.dumps(nodes), ""),
            "get pods --all-namespaces": (0, json.dumps(pods), ""),
            "get deployment/chat": (0, json.dumps(chat_deployment(3)), ""),
        }
    )
    with pytest.raises(StepFailed, match=r"10 chat pods do not fit: CPU: 7 more pods request 140m, 40m free"):
        scale(Kind(shell), 10)
    assert not [cmd for cmd in shell.ran if " scale " in cmd], "nothing was scaled"


def test_a_rollout_timeout_shows_the_pods_their_causes_and_the_recent_events(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pods = {
        "items": [
            {
                "metadata": {"name": "chat-1"},
                "status": {
                    "phase": "Pending",
                    "containerStatuses": [{"state": {"waiting": {"reason": "ErrImageNeverPull", "message": "x"}}}],
                },
            },
            {
                "metadata": {"name": "chat-2"},
                "status": {
                    "phase": "Pending",
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/1 nodes are available: 1 Insufficient cpu.",
                        }
                    ],
                },
            },
            {"metadata": {"name": "redis-0"}, "status": {"phase": "Running"}},
        ]
    }
    events = {
        "items": [
            {
                "type": "Warning",
                "reason": "FailedScheduling",
                "message": "0/1 nodes are available: 1 Insufficient cpu.",
                "involvedObject": {"kind": "Pod", "name": "chat-2"},
                "lastTimestamp": "2026-11-29T06:00:02Z",
            },
            {
                "type": "Normal",
                "reason": "Scheduled",
                "message": "Successfully assigned chatlab/chat-1",
                "involvedObject": {"kind": "Pod", "name": "chat-1"},
                "lastTimestamp": "2026-11-29T06:00:01Z",
            },
        ]
    }
    shell = ScriptedShell(
        {"get pods --output json": (0, json.dumps(pods), ""), "get events": (0, json.dumps(events), "")},
        fail="rollout status",
    )
    with pytest.raises(StepFailed, match="rollout status deployment/chat"):
        rollout(Kind(shell), "deployment/chat")
    out = capsys.readouterr().out
    assert "chat-1: ErrImageNeverPull\n        -> the image is not in the cluster" in out
    assert "chat-2: Pending (Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.)" in out
    assert "-> not enough free CPU or memory on the nodes" in out
    assert "redis-0: Running" in out
    assert out.index("Normal Pod/chat-1: Scheduled") < out.index("Warning Pod/chat-2: FailedScheduling")


def test_a_pull_rate_limit_is_named_as_such() -> None:
    cause = cause_of("ErrImagePull", "429 Too Many Requests - toomanyrequests: You have reached your pull rate limit")
    assert cause.startswith("Docker Hub's pull rate limit")


def test_the_phoenix_socket_of_the_final_check_joins_and_delivers_on_a_real_node(stage1_node) -> None:  # type: ignore[no-untyped-def]
    """The final check's WebSocket exchange (the project's client, shared/client.py) against a real node."""
    address = (stage1_node.host, stage1_node.port)
    got = exchange_message(address, address, "through the deploy tool's client")
    assert got["body"] == "through the deploy tool's client" and got["user"] == "make stage3"
    assert http_status(address, "/", host="test.com") == 200


def test_a_socket_the_node_refuses_fails_the_check_with_the_status_it_got(stage1_node) -> None:  # type: ignore[no-untyped-def]
    """A page of another origin: the node answers the upgrade 403, and the check says so."""
    host = f"127.0.0.1:{stage1_node.port}"
    elsewhere = PhoenixClient(f"ws://{host}/socket/websocket?vsn=2.0.0", origin="http://elsewhere.example")

    async def join() -> None:
        async with elsewhere:
            raise AssertionError("the upgrade was accepted")

    with pytest.raises(StepFailed, match=f"the WebSocket upgrade via {host} was refused with HTTP 403"):
        over_websocket(host, join())


def test_a_join_the_node_refuses_fails_the_check_with_its_reason(stage1_node) -> None:  # type: ignore[no-untyped-def]
    address, host = (stage1_node.host, stage1_node.port), f"127.0.0.1:{stage1_node.port}"

    async def join() -> None:
        async with browser_socket(address, host) as client:
            await client.join("rooms:secret", {"user": "make stage3"})

    with pytest.raises(StepFailed, match=re.escape("join rooms:secret refused: {'reason': 'unauthorized'}")):
        over_websocket(host, join())


def test_a_socket_with_nothing_listening_fails_the_check() -> None:
    address = ("127.0.0.1", free_port())

    async def join() -> None:
        async with browser_socket(address, f"127.0.0.1:{address[1]}"):
            raise AssertionError("connected to a closed port")

    with pytest.raises(StepFailed, match=re.escape(f"the WebSocket via 127.0.0.1:{address[1]} failed")) as failed:
        over_websocket(f"127.0.0.1:{address[1]}", join())
    assert isinstance(failed.value.__cause__, ConnectionRefusedError)


class BehindEntry(Kind):
    """A kind cluster whose entry point is `address` on this machine (an EntryProxy, or a node itself)."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(Shell(dry_run=False))
        self.address = address

    def entry(self) -> tuple[str, int]:
        return self.address


def kind_route(monkeypatch: pytest.MonkeyPatch, system: str) -> tuple[dict, dict]:
    """The Gateway and HTTPRoute that `up` applies on kind when run on `system`, with its runtime patches."""
    monkeypatch.setattr(clusters.platform, "system", lambda: system)
    return rendered_kind_route(
        Kind(ScriptedShell({"docker network inspect kind": (0, "172.18.0.0/16\n", "")})).overlay_patches()
    )


@pytest.mark.parametrize(("system", "port"), [("Linux", 80), ("Darwin", 49153), ("Windows", 49153)])
def test_the_route_takes_the_host_a_browser_sends_for_the_url_up_prints(
    monkeypatch: pytest.MonkeyPatch, system: str, port: int
) -> None:
    """On Linux the Gateway is served on its own address, port 80; elsewhere on a random port of
    this machine, and the browser's Host then carries that port, which Envoy does not strip."""
    gateway, route = kind_route(monkeypatch, system)
    proxy = EntryProxy.for_route(gateway, route, [])
    url = Kind(Shell(dry_run=True)).url_help(("127.0.0.1" if port != 80 else "172.18.0.3", port))[0].split()[1]
    host = urllib.parse.urlsplit(url).netloc
    assert host == browser_host(port)
    assert proxy.host_matches(host)
    if system == "Linux":  # where the name still selects the route, as in the original
        assert proxy.domains == ["test.com"]


def test_the_final_check_sends_what_a_browser_sends_and_passes_through_the_route(
    stage1_node, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    gateway, route = kind_route(monkeypatch, "Darwin")
    with EntryProxy.for_route(gateway, route, [(stage1_node.host, stage1_node.port)]) as proxy:
        assert prove_entry(BehindEntry(("127.0.0.1", proxy.port))) == ("127.0.0.1", proxy.port)
    host = f"test.com:{proxy.port}"
    page = [seen for seen in proxy.requests if seen.path == "/"]
    socket = [seen for seen in proxy.requests if seen.path.startswith("/socket/websocket")]
    assert page and all(seen.headers["host"] == host and seen.status == 0 for seen in page)
    assert socket and socket[0].headers["host"] == host and socket[0].headers["origin"] == f"http://{host}"
    assert socket[0].headers["upgrade"].lower() == "websocket" and socket[0].status == 0


def test_the_final_check_fails_where_the_route_would_not_match_the_browsers_host(
    stage1_node, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The route of before (test.com only) behind a published port: a browser got 404, and so does the check."""
    gateway, route = kind_route(monkeypatch, "Linux")
    monkeypatch.setattr(proofs, "ENTRY_DEADLINE", 0.5)
    with EntryProxy.for_route(gateway, route, [(stage1_node.host, stage1_node.port)]) as proxy:
        with pytest.raises(StepFailed, match="GET / answered 404"):
            prove_entry(BehindEntry(("127.0.0.1", proxy.port)))


def test_the_final_check_fails_when_the_entry_point_routes_the_node_api(stage1_node) -> None:  # type: ignore[no-untyped-def]
    """A (stage 1) node reached directly, nothing in between: its metrics answer."""
    with pytest.raises(StepFailed, match="GET /metrics answered 200 through the entry point: it must not be routed"):
        prove_entry(BehindEntry((stage1_node.host, stage1_node.port)))


def test_the_final_check_fails_when_the_navbar_cannot_reach_the_node_list(
    stage1_node, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The route of before, without /api/nodes and /readyz: the navbar's `nodes:` and `redis:` never changed."""
    gateway, route = kind_route(monkeypatch, "Darwin")
    route["spec"]["rules"] = route["spec"]["rules"][:1]
    with EntryProxy.for_route(gateway, route, [(stage1_node.host, stage1_node.port)]) as proxy:
        with pytest.raises(StepFailed, match="GET /api/nodes answered 404 through the entry point"):
            prove_entry(BehindEntry(("127.0.0.1", proxy.port)))


def test_every_kubectl_wait_in_the_kubernetes_lab_has_a_timeout_for_a_first_pull() -> None:
    page = (ROOT / "docs" / "04-kubernetes.md").read_text()
    waits = [line for line in page.splitlines() if re.search(r"\bkubectl\b.* (wait|run)\b", line)]
    assert waits
    assert all("--timeout=" in line or "--pod-running-timeout=" in line for line in waits), waits


def test_off_linux_cloud_provider_kind_publishes_the_gateway_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and Windows keep kind's network inside Docker's VM: the Gateway's port is mapped to 127.0.0.1."""
    monkeypatch.setattr(clusters.platform, "system", lambda: "Darwin")
    shell = ScriptedShell(
        {
            "docker ps --filter label=io.x-k8s.cloud-provider-kind.gateway.name=chatlab/chatlab/chat": (
                0,
                "kindccm-abc\n",
                "",
            ),
            "docker port kindccm-abc 80/tcp": (0, "0.0.0.0:49153\n[::]:49153\n", ""),
        }
    )
    kind = Kind(shell)
    assert kind.provider_command()[-1] == "--enable-lb-port-mapping"
    assert kind.entry() == ("127.0.0.1", 49153)
    monkeypatch.setattr(clusters.platform, "system", lambda: "Linux")
    assert "--enable-lb-port-mapping" not in kind.provider_command(), "on Linux the Gateway's own address is reachable"


# This machine, checked before anything is made --------------------------------------------------

STUB_DOCKER = """#!/bin/sh
echo "docker $*" >> "$LOG"
case "$*" in
  "info --format {{.MemTotal}}") echo "$MEM" ;;
  "ps --format {{.Names}} {{.Image}}") printf '%b' "$RUNNING" ;;
esac
"""
STUB_KIND = """#!/bin/sh
echo "kind $*" >> "$LOG"
case "$1" in
  version) echo "kind $VERSION go1.25.1 linux/amd64" ;;
  get) printf '%b' "$CLUSTERS" ;;
  create) exit 3 ;;
esac
"""
STUB_MINIKUBE = """#!/bin/sh
echo "minikube $*" >> "$LOG"
case "$1" in
  version) echo "$VERSION" ;;
  status) exit 7 ;;
  start) exit 3 ;;
esac
"""
GIB = 2**30


def stub_up(tmp_path: Path, k8s: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """A real (not dry) `up` with stand-ins for docker and kind/minikube that log what they are asked;
    making the cluster fails (exit 3), so the run stops at step 2 at the latest."""
    for name, script in (("docker", STUB_DOCKER), (k8s, STUB_KIND if k8s == "kind" else STUB_MINIKUBE)):
        (tmp_path / name).write_text(script)
        (tmp_path / name).chmod(0o755)
    log = tmp_path / "log"
    log.touch()
    defaults = {
        "MEM": str(8 * GIB),
        "VERSION": "v0.33.0" if k8s == "kind" else "v1.39.0",
        "CLUSTERS": "",
        "RUNNING": "",
    }
    result = run_deploy("--k8s", k8s, "up", path=f"{tmp_path}:/usr/bin:/bin", LOG=str(log), **{**defaults, **env})
    return result, log.read_text().splitlines()


@pytest.mark.parametrize(
    ("k8s", "version", "lacks"),
    [
        ("kind", "v0.23.0", ["ignores NetworkPolicies", "v1 ServiceCIDR API"]),
        ("kind", "v0.27.1", ["v1 ServiceCIDR API"]),
        ("minikube", "v1.33.1", ["does not enforce NetworkPolicies"]),
    ],
)
def test_a_tool_too_old_stops_up_before_anything_is_made(
    tmp_path: Path, k8s: str, version: str, lacks: list[str]
) -> None:
    result, asked = stub_up(tmp_path, k8s, VERSION=version)
    assert result.returncode == 1, result.stdout + result.stderr
    reasons = [line for line in result.stdout.splitlines() if line.startswith("  - ")]
    assert len(reasons) == len(lacks) and all(what in line for what, line in zip(lacks, reasons, strict=True))
    assert all(f"{k8s} {version} is too old" in line for line in reasons)
    assert not [line for line in asked if " create " in line or " start " in line or line.startswith("docker build")]


def test_the_tested_versions_pass_the_check(tmp_path: Path) -> None:
    result, asked = stub_up(tmp_path, "kind")
    assert "==> [1/10] this machine" in result.stdout and "    ok" in result.stdout.split("==> [2/10]")[0]
    assert asked.index("kind version") < asked.index(
        "kind create cluster --name chatlab --config stage3_k8s/kind-config.yaml --wait 180s"
    )


@pytest.mark.parametrize(
    ("k8s", "memory", "stops", "says"),
    [
        ("kind", GIB, True, "Docker has 1.0 GiB of memory, a kind cluster needs 1.5 GiB"),
        ("kind", 2 * GIB, False, "three chat pods fit; for ten"),  # Colima's default VM
        ("minikube", 2 * GIB, True, "Docker has 2.0 GiB of memory, a minikube cluster needs 2.5 GiB"),
        ("minikube", 3 * GIB, False, "three chat pods fit; for ten"),
        ("minikube", 8 * GIB, False, ""),
    ],
)
def test_dockers_memory_is_read_first_and_what_will_not_fit_is_named(
    tmp_path: Path, k8s: str, memory: int, stops: bool, says: str
) -> None:
    result, asked = stub_up(tmp_path, k8s, MEM=str(memory))
    before = result.stdout.split("==> [2/10]")[0]
    assert says in before
    assert ("==> [2/10]" not in result.stdout) == stops
    made = [line for line in asked if line.startswith(("kind create", "minikube start"))]
    assert "docker info --format {{.MemTotal}}" in asked and bool(made) != stops


def test_other_kind_clusters_and_another_cloud_provider_kind_are_named_and_explained(tmp_path: Path) -> None:
    running = "kindccm-other registry.k8s.io/cloud-provider-kind/cloud-controller-manager:v0.10.0\\nweb nginx:1\\n"
    result, _ = stub_up(tmp_path, "kind", CLUSTERS="dev\\nci\\n", RUNNING=running)
    before = result.stdout.split("==> [2/10]")[0]
    (clusters,) = [line for line in before.splitlines() if "other kind clusters" in line]
    assert "(ci, dev)" in clusters and "every kind cluster" in clusters and "--enable-default-ingress=false" in clusters
    (rival,) = [line for line in before.splitlines() if "another cloud-provider-kind" in line]
    assert "(kindccm-other)" in rival and "web" not in rival
    assert "==> [2/10]" in result.stdout, "warnings, not problems: the run goes on"


def test_minikube_off_linux_says_to_start_the_tunnel_before_the_cluster_and_checks_through_a_port_forward(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(clusters.platform, "system", lambda: "Darwin")
    shell = Shell(dry_run=True)
    Up(clusters.Minikube(shell), tag="t").run()
    out = capsys.readouterr().out
    before = out.split("==> [1/10]")[0]
    assert "minikube tunnel --profile chatlab" in before, "said before the first step"
    cmds = commands(out)
    forward = index_of(cmds, "--namespace", "ingress-nginx", "port-forward", "service/ingress-nginx-controller")
    assert forward > index_of(cmds, "rollout", "status", "deployment/chat")
    assert not [cmd for cmd in cmds if cmd[:2] == ["minikube", "tunnel"]], "never started by make stage3"


def test_a_cloud_provider_kind_of_an_earlier_lab_is_replaced_not_kept() -> None:
    old = f"running {CLOUD_PROVIDER_KIND_IMAGE} []"  # no --enable-default-ingress=false
    shell = ScriptedShell({"docker inspect": (0, old, ""), "get gatewayclass": (0, "gatewayclass/x", "")})
    Kind(shell).install_entry()
    assert shell.ran[0] == "docker rm --force chatlab-cloud-provider-kind"
    assert shell.ran[1].startswith("docker run ") and shell.ran[1].endswith(" --enable-default-ingress=false")
    current = f'running {CLOUD_PROVIDER_KIND_IMAGE} ["--enable-default-ingress=false"]'
    shell = ScriptedShell({"docker inspect": (0, current, ""), "get gatewayclass": (0, "gatewayclass/x", "")})
    Kind(shell).install_entry()
    assert not [cmd for cmd in shell.ran if cmd.startswith("docker ")]
    garbled = f"exited {CLOUD_PROVIDER_KIND_IMAGE} not-json"
    shell = ScriptedShell({"docker inspect": (0, garbled, ""), "get gatewayclass": (0, "gatewayclass/x", "")})
    Kind(shell).install_entry()
    assert shell.ran[0] == "docker rm --force chatlab-cloud-provider-kind" and shell.ran[1].startswith("docker run ")


def test_a_gateway_class_that_never_comes_stops_within_its_deadline_with_the_controllers_logs_and_conditions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(clusters, "GATEWAY_CLASS_DEADLINE", 0.5)
    shell = ScriptedShell(
        {
            "docker inspect": (0, f'running {CLOUD_PROVIDER_KIND_IMAGE} ["--enable-default-ingress=false"]', ""),
            "get gatewayclass/cloud-provider-kind --output name": (1, "", "the server doesn't have a resource type"),
            "docker logs --tail 40 chatlab-cloud-provider-kind": (0, "E1205 failed to install CRDs: forbidden\n", ""),
            "get gatewayclass/cloud-provider-kind --output 'jsonpath": (1, "", "NotFound"),
            "get gateway/chat": (1, "", "NotFound"),
            "get httproute/chat": (1, "", "NotFound"),
        }
    )
    with pytest.raises(StepFailed, match="gatewayclass/cloud-provider-kind exists: not done after 0s"):
        Kind(shell).install_entry()
    assert "    | E1205 failed to install CRDs: forbidden" in capsys.readouterr().out


def test_a_gateway_never_programmed_shows_its_conditions_and_the_controllers_logs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    programmed = "Accepted=True Accepted: ok\nProgrammed=False Pending: waiting for the proxy\n"
    shell = ScriptedShell(
        {
            "docker logs": (0, "I1205 creating gateway container\n", ""),
            "get gatewayclass/cloud-provider-kind --output 'jsonpath": (0, "Accepted=True Accepted: ok\n", ""),
            "get gateway/chat": (0, programmed, ""),
            "get httproute/chat": (0, "route Accepted=True Accepted: ok\n", ""),
        },
        fail="--for=condition=Programmed",
    )
    with pytest.raises(StepFailed):
        Kind(shell).wait_entry()
    out = capsys.readouterr().out
    assert "    | Programmed=False Pending: waiting for the proxy" in out
    assert "    | I1205 creating gateway container" in out and "    | route Accepted=True" in out
