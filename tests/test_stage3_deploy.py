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
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from stage3_k8s import deploy

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run_deploy(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path if path is not None else os.environ.get("PATH", "")}
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
        ("stage3-scale", ["REPLICAS=10"], "--k8s kind scale --replicas 10"),
        ("stage3-scale", [], "--k8s kind scale --replicas 3"),
        ("stage3-status", ["K8S=minikube"], "--k8s minikube status"),
        ("stage3-down", [], "--k8s kind down"),
    ],
)
def test_make_targets_are_thin_calls_of_the_deploy_script(target: str, variables: list[str], expected: str) -> None:
    # -n prints the recipe; -o keeps make from rebuilding the virtualenv to print it.
    out = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed-stage3", target, *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    (line,) = [line for line in out.splitlines() if "stage3_k8s.deploy" in line]
    assert " ".join(line.split()).endswith(f"python -m stage3_k8s.deploy {expected}")


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


# Tool checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k8s", ["kind", "minikube"])
def test_missing_tools_are_named_with_where_to_get_them(k8s: str, tmp_path: Path) -> None:
    result = run_deploy("--k8s", k8s, "up", path=str(tmp_path))  # an empty PATH: no docker, no kind, no minikube
    assert result.returncode == 2
    assert f"missing: docker, {k8s}\n" in result.stdout
    assert deploy.WHERE_TO_GET["docker"] in result.stdout and deploy.WHERE_TO_GET[k8s] in result.stdout
    assert "kubectl" not in result.stdout.split("missing:")[1].splitlines()[0], "kubectl comes with the virtualenv"
    assert "==>" not in result.stdout, "nothing is started before the check"


def test_kubectl_is_the_pinned_one_from_the_virtualenv() -> None:
    assert deploy.find_tool("kubectl") == str(BIN / "kubectl")


def test_a_docker_without_its_daemon_is_reported_before_anything_runs(tmp_path: Path) -> None:
    # Stand-ins for a docker CLI whose daemon is down, and for kind.
    (tmp_path / "docker").write_text('#!/bin/sh\necho "Cannot connect to the Docker daemon" >&2\nexit 1\n')
    (tmp_path / "kind").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("docker", "kind"):
        (tmp_path / tool).chmod(0o755)
    result = run_deploy("up", path=str(tmp_path))
    assert result.returncode == 2
    assert "docker is installed but does not answer" in result.stdout
    assert "==>" not in result.stdout


@pytest.mark.parametrize("action", [["status"], ["scale", "--replicas", "10"]])
def test_scale_and_status_without_a_stage3_cluster_say_how_to_make_one(action: list[str], tmp_path: Path) -> None:
    # The real kubectl, reading an empty kubeconfig: no context kind-chatlab.
    (tmp_path / "config").write_text("apiVersion: v1\nkind: Config\n")
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "config")}
    result = subprocess.run(
        [sys.executable, "-m", "stage3_k8s.deploy", *action],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert (
        "no stage 3 cluster here (no kubectl context kind-chatlab): run `make stage3 K8S=kind` first" in result.stdout
    )


def test_scale_needs_a_sensible_number_of_replicas() -> None:
    result = run_deploy("scale", "--replicas", "0")
    assert result.returncode == 2
    assert "--replicas must be between 1 and 50" in result.stderr


# What `up` would run ------------------------------------------------------------------------


def test_up_on_kind_creates_the_cluster_installs_ingress_builds_loads_applies_waits_and_proves() -> None:
    result = run_deploy("--dry-run", "--k8s", "kind", "up")
    assert result.returncode == 0, result.stdout + result.stderr
    cmds = commands(result.stdout)
    image = f"chatlab:{deploy.image_tag()}"
    order = [
        index_of(cmds, "kind", "get", "clusters"),
        index_of(cmds, "kind", "create", "cluster", "--name", "chatlab", "--config", "stage3_k8s/kind-config.yaml"),
        index_of(cmds, "apply", "--filename", deploy.INGRESS_NGINX_KIND),
        index_of(cmds, "rollout", "status", "deployment/ingress-nginx-controller"),
        index_of(cmds, "docker", "build", "--file", "stage3_k8s/Dockerfile", "--tag", image, "."),
        index_of(cmds, "kind", "load", "docker-image", image, "--name", "chatlab"),
        index_of(cmds, "get", "secret", "chat-cookie"),
        index_of(cmds, "apply", "--filename", "-"),
        index_of(cmds, "apply", "--kustomize"),
        index_of(cmds, "rollout", "status", "deployment/redis"),
        index_of(cmds, "rollout", "status", "deployment/chat"),
        index_of(cmds, "get", "pods", "--selector", "app=chat"),
        index_of(cmds, "port-forward"),
    ]
    assert order == sorted(order)
    assert "/controller-v" in deploy.INGRESS_NGINX_KIND, "the ingress controller is pinned"
    assert f"newTag: {deploy.image_tag()}" in result.stdout, "the applied overlay uses the image just built"
    assert not image.endswith(":latest")
    # Every kubectl call names the cluster it made: no other cluster of the user's is touched.
    for cmd in cmds:
        if program(cmd) == "kubectl":
            assert cmd[1:3] == ["--context", "kind-chatlab"], cmd
    assert "http://test.com" in result.stdout


def test_up_on_minikube_uses_its_profile_addon_and_image_loader() -> None:
    result = run_deploy("--dry-run", "--k8s", "minikube", "up")
    assert result.returncode == 0, result.stdout + result.stderr
    cmds = commands(result.stdout)
    image = f"chatlab:{deploy.image_tag()}"
    order = [
        index_of(cmds, "minikube", "status", "--profile", "chatlab"),
        index_of(cmds, "minikube", "start", "--profile", "chatlab"),
        index_of(cmds, "minikube", "addons", "enable", "ingress", "--profile", "chatlab"),
        index_of(cmds, "docker", "build", "--tag", image),
        index_of(cmds, "minikube", "image", "load", image, "--profile", "chatlab"),
        index_of(cmds, "apply", "--kustomize"),
    ]
    assert order == sorted(order)
    assert all(cmd[1:3] == ["--context", "chatlab"] for cmd in cmds if program(cmd) == "kubectl")
    assert "overlays/minikube" in result.stdout


def test_scale_waits_for_the_rollout_and_for_every_pod_to_see_all() -> None:
    result = run_deploy("--dry-run", "scale", "--replicas", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    cmds = commands(result.stdout)
    order = [
        index_of(cmds, "scale", "deployment/chat", "--replicas=10"),
        index_of(cmds, "rollout", "status", "deployment/chat"),
        index_of(cmds, "get", "pods", "--selector", "app=chat"),
    ]
    assert order == sorted(order)
    assert any("proxy/api/nodes" in word for cmd in cmds for word in cmd)


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


# The pieces `up` hands to kubectl ----------------------------------------------------------


def test_the_generated_kustomization_renders_the_overlay_with_the_built_tag(tmp_path: Path) -> None:
    tag = "0.1.0-0123456789ab"
    (tmp_path / "kustomization.yaml").write_text(deploy.kustomization(deploy.OVERLAYS / "kind", tmp_path, tag))
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
    with deploy.tagged_overlay(deploy.OVERLAYS / "kind", "0.1.0-0123456789ab") as workdir:
        assert str(workdir).startswith(str(tmp_path / "link")), "the folder was made under the linked TMPDIR"
        rendered = subprocess.run(
            [BIN / "kubectl", "kustomize", workdir], capture_output=True, text=True, timeout=60, check=False
        )
    assert rendered.returncode == 0, rendered.stderr
    assert "image: chatlab:0.1.0-0123456789ab" in rendered.stdout


def test_the_cookie_secret_is_valid_random_and_only_sent_on_stdin() -> None:
    cookie = "a-cookie-for-this-test-only-0123456789"
    listing = json.loads(deploy.cookie_objects(cookie))
    for item in listing["items"]:
        kubernetes_validate.validate(item, "1.37.0", strict=True)
    secret = next(item for item in listing["items"] if item["kind"] == "Secret")
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == (deploy.SECRET, deploy.NAMESPACE)
    assert base64.b64decode(secret["data"]["cookie"]).decode() == cookie
    dry = run_deploy("--dry-run", "up").stdout
    assert "data" not in dry and 'cookie":' not in dry, "the cookie is never printed"


def test_the_image_tag_follows_the_sources(tmp_path: Path) -> None:
    for source in deploy.IMAGE_SOURCES:
        origin = ROOT / source
        if origin.is_file():
            shutil.copy2(origin, tmp_path / source)
        else:
            shutil.copytree(origin, tmp_path / source, ignore=shutil.ignore_patterns("__pycache__"))
    first = deploy.image_tag(tmp_path)
    assert first == deploy.image_tag(tmp_path)
    assert first.startswith("0.1.0-") and len(first.split("-")[1]) == 12
    (tmp_path / "stage3_k8s" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "stage3_k8s" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    assert deploy.image_tag(tmp_path) == first, "caches are not sources"
    module = tmp_path / "shared" / "settings.py"
    module.write_text(module.read_text() + "\n# changed\n")
    assert deploy.image_tag(tmp_path) != first


# Reading the cluster's answers -------------------------------------------------------------


class CannedShell(deploy.Shell):
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
    target = deploy.Target("kind", CannedShell(pods, {}))
    assert deploy.chat_pods(target) == [deploy.Pod("chat-a", "10.0.0.1"), deploy.Pod("chat-b", "10.0.0.2")]


def test_the_wait_ends_when_every_pod_lists_exactly_all_pods(capsys: pytest.CaptureFixture[str]) -> None:
    pods = [pod("chat-a", "10.0.0.1"), pod("chat-b", "10.0.0.2")]
    views = {"chat-a": ["chat@10.0.0.1", "chat@10.0.0.2"], "chat-b": ["chat@10.0.0.2", "chat@10.0.0.1"]}
    target = deploy.Target("kind", CannedShell(pods, views))
    assert [p.name for p in deploy.wait_one_cluster(target, replicas=2, deadline=5)] == ["chat-a", "chat-b"]
    assert "2 of 2 pods list all 2 nodes" in capsys.readouterr().out


def test_the_wait_gives_up_at_its_deadline_saying_what_it_saw() -> None:
    pods = [pod("chat-a", "10.0.0.1"), pod("chat-b", "10.0.0.2")]
    views = {
        "chat-a": ["chat@10.0.0.1", "chat@10.0.0.2"],
        "chat-b": ["chat@10.0.0.2", "chat@10.0.0.9"],
    }  # b still lists a gone pod
    target = deploy.Target("kind", CannedShell(pods, views))
    with pytest.raises(deploy.StepFailed, match="1 of 2 pods list all 2 nodes"):
        deploy.wait_one_cluster(target, replicas=2, deadline=0.5)
