"""The Compose lab without an engine: what `make stage3-compose` checks and writes, what
compose.yaml promises, and where the stand-in images come from.

What the containers then do is tests/test_stage3_compose.py, against the real engine.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stage3_k8s import compose_lab, standin
from tests.helpers.make import recipe_line
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.slow

COMPOSE = yaml.safe_load((ROOT / "stage3_k8s" / "compose.yaml").read_text())
K8S = ROOT / "stage3_k8s" / "k8s" / "base"


def launcher(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stage3_k8s.compose_lab", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def manifest(name: str) -> list[dict[str, object]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


# make ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "variables", "expected"),
    [("stage3-compose", ["NODES=5"], "up --nodes 5"), ("stage3-compose-down", [], "down")],
)
def test_make_targets_are_thin_calls_of_the_launcher(target: str, variables: list[str], expected: str) -> None:
    line = recipe_line(target, variables, "stage3_k8s.compose_lab", built=".venv/.installed")
    assert line.endswith(f"python -m stage3_k8s.compose_lab {expected}")


# What is missing, in one line ------------------------------------------------------------------


def test_without_docker_one_line_says_what_to_install(tmp_path: Path) -> None:
    result = launcher("up", PATH=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == (
        "stage3-compose: Docker is missing: install it (Debian: apt-get install docker.io) and start its daemon\n"
    )
    assert result.stdout == ""


def test_a_daemon_that_does_not_answer_is_one_line_saying_to_start_it(tmp_path: Path) -> None:
    result = launcher("up", DOCKER_HOST=f"unix://{tmp_path}/no-daemon.sock")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("stage3-compose: the Docker daemon does not answer (")
    assert line.endswith("): start it (systemctl start docker, or run dockerd as root)")
    assert result.stdout == ""


def test_without_compose_v2_one_line_says_where_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker, so no compose plugin either
    monkeypatch.setattr(compose_lab, "bundled_compose", lambda: None)
    with pytest.raises(compose_lab.LabError, match=r"^Docker Compose v2 is missing: install the docker-compose-plugin"):
        compose_lab.compose_command()


def test_the_bundled_compose_is_the_binary_not_its_exit_status_dropping_wrapper() -> None:
    binary = compose_lab.bundled_compose()
    assert binary is not None and binary.name == "docker-compose"
    assert binary.read_bytes()[:4] == b"\x7fELF"
    failed = subprocess.run([str(binary), "no-such-command"], capture_output=True, timeout=30, check=False)
    assert failed.returncode != 0


def test_nodes_out_of_range_are_refused_before_anything_runs() -> None:
    result = launcher("up", "--nodes", "0")
    assert result.returncode == 1
    assert result.stderr == "stage3-compose: NODES must be between 1 and 20, got 0\n"


# Secrets ---------------------------------------------------------------------------------------


def test_the_secrets_are_made_once_readable_by_the_owner_only(tmp_path: Path) -> None:
    path = compose_lab.ensure_secrets(tmp_path / "state" / "chatlab.env")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in path.read_text().splitlines())
    assert set(values) == {"REDIS_PASSWORD", "CLUSTER_COOKIE"}
    assert len(set(values.values())) == 2 and all(len(v) >= 32 for v in values.values())
    first = path.read_text()
    compose_lab.ensure_secrets(path)
    assert path.read_text() == first, "kept from one run to the next"


def test_the_state_folder_is_git_ignored() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", ".stage3/chatlab.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0


def test_the_compose_file_has_no_secret_and_requires_both_from_the_environment() -> None:
    text = (ROOT / "stage3_k8s" / "compose.yaml").read_text()
    for name in ("REDIS_PASSWORD", "CLUSTER_COOKIE"):
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses and all(use.startswith(":?") for use in uses), (name, uses)
    redis = COMPOSE["services"]["redis"]
    assert "--requirepass" in " ".join(redis["command"])
    assert 'REDISCLI_AUTH="$$REDIS_PASSWORD"' in " ".join(redis["healthcheck"]["test"]), "never on a command line"


# compose.yaml and the pod ----------------------------------------------------------------------


def test_the_chat_service_has_the_pods_hardening_and_memory_limit() -> None:
    chat = COMPOSE["services"]["chat"]
    (deployment,) = [doc for doc in manifest("chat.yaml") if doc["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]  # type: ignore[index]
    (container,) = pod["containers"]
    assert chat["user"] == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert chat["read_only"] is container["securityContext"]["readOnlyRootFilesystem"] is True
    assert chat["cap_drop"] == container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert chat["security_opt"] == ["no-new-privileges:true"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert [t.split(":")[0] for t in chat["tmpfs"]] == [m["mountPath"] for m in container["volumeMounts"]]
    limit = container["resources"]["limits"]["memory"]  # 256Mi
    assert chat["deploy"]["resources"]["limits"]["memory"] == limit.replace("Mi", "M")


def test_the_chat_service_finds_its_peers_as_a_pod_does() -> None:
    chat = COMPOSE["services"]["chat"]
    assert chat["networks"]["default"]["aliases"] == ["chat-nodes"]
    assert chat["environment"]["DISCOVERY"] == "dns"
    assert chat["environment"]["DNS_SERVICE"] == "chat-nodes"
    assert "POD_IP" not in chat["environment"] and "NODE_NAME" not in chat["environment"]
    assert chat["build"] == {"context": "..", "dockerfile": "stage3_k8s/Dockerfile", "args": ["BASE_IMAGE"]}
    assert chat["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_ports_are_published_on_127_0_0_1_only() -> None:
    for name, service in COMPOSE["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_the_console_is_on_as_in_the_pod_and_never_published() -> None:
    chat = COMPOSE["services"]["chat"]
    (deployment,) = [doc for doc in manifest("chat.yaml") if doc["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
    pod_env = {item["name"]: item.get("value") for item in container["env"]}
    assert chat["environment"]["CONSOLE_PORT"] == pod_env["CONSOLE_PORT"] == "4100"
    assert not any(str(port).endswith(":4100") for port in chat["ports"])


def test_redis_is_the_manifests_image_never_pulled_in_tests_and_keeps_an_append_only_file() -> None:
    redis = COMPOSE["services"]["redis"]
    assert redis["image"] == "${REDIS_IMAGE:-redis:7.4.6-alpine}"
    assert standin.redis_image() == "redis:7.4.6-alpine" != standin.REDIS_IMAGE
    assert redis["pull_policy"] == "${PULL_POLICY:-missing}"
    command = " ".join(redis["command"])
    assert "--appendonly yes --appendfsync everysec" in command
    assert redis["volumes"] == ["redis-data:/data"] and "redis-data" in COMPOSE["volumes"]
    assert redis["read_only"] is True and redis["cap_drop"] == ["ALL"]
    assert COMPOSE["name"] == compose_lab.PROJECT == "chatlab"


def test_the_launcher_and_the_stand_in_builder_stay_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for path in ("stage3_k8s/compose.yaml", "stage3_k8s/compose_lab.py", "stage3_k8s/standin.py"):
        assert path in ignored


# The stand-in base -----------------------------------------------------------------------------


def test_the_mirror_comes_from_deb822_sources_skipping_security(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert standin.apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_the_mirror_comes_from_a_one_line_sources_list(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# a comment\ndeb-src http://src.example/debian bookworm main\n"
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm main\n"
    )
    assert standin.apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_no_mirror_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(standin.StandinError, match="no Debian mirror"):
        standin.apt_mirror(tmp_path)


def test_no_mirror_is_written_into_what_builds_the_stand_ins() -> None:
    """The mirror is this machine's: no URL at all in the builder, CI's script or the test helpers."""
    sources = [ROOT / "stage3_k8s" / "standin.py", ROOT / ".ci" / "run", ROOT / "tests" / "helpers" / "containers.py"]
    for path in sources:
        assert not re.search(r"\b(https?|ftp)://", path.read_text()), path
