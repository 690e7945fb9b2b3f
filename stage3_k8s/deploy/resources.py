"""What `kubectl apply` gets: the overlay with the image tag, and the Secrets (over stdin, never on disk)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from stage3_k8s.deploy.clusters import Cluster
from stage3_k8s.deploy.config import IMAGE, NAMESPACE, SECRETS
from stage3_k8s.deploy.shell import StepFailed, say


def kustomization(
    overlay: Path, workdir: Path, tag: str, *, replicas: int | None = None, patches: Sequence[dict[str, Any]] = ()
) -> str:
    """The overlay with the image tag set, as kustomize wants it: a path relative to `workdir`.

    Both ends are resolved first: kustomize follows links before it applies `../..`, so a
    path counted from a linked folder (macOS's /var -> /private/var, a linked TMPDIR)
    would climb from the wrong place.
    """
    text = (
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "resources:\n"
        f"  - {os.path.relpath(overlay.resolve(), workdir.resolve())}\n"
        "images:\n"
        f"  - name: {IMAGE}\n"
        f"    newTag: {tag}\n"
    )
    if replicas is not None:
        text += f"replicas:\n  - name: chat\n    count: {replicas}\n"
    if patches:
        text += "patches:\n"
        for patch in patches:
            target = patch["target"]
            text += f"  - target:\n      kind: {target['kind']}\n      name: {target['name']}\n"
            text += f"    patch: {json.dumps(patch['patch'])}\n"
    return text


@contextlib.contextmanager
def tagged_overlay(overlay: Path, tag: str, **options: Any) -> Iterator[Path]:
    """A temporary folder (under TMPDIR) holding the kustomization that `kubectl apply -k` takes."""
    with tempfile.TemporaryDirectory(prefix="chatlab-stage3-") as workdir:
        path = Path(workdir)
        (path / "kustomization.yaml").write_text(kustomization(overlay, path, tag, **options))
        yield path


def secret_objects(values: dict[str, str]) -> str:
    """The Secrets to create, for `kubectl create -f -` (stdin: never on disk, never shown)."""
    items: list[dict[str, Any]] = []
    for name, value in values.items():
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "chat"}},
                "type": "Opaque",
                "data": {SECRETS[name]: base64.b64encode(value.encode()).decode()},
            }
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def secrets_to_create(cluster: Cluster) -> list[str]:
    """The Secrets not there yet. Only NotFound means "make one": any other error (no access,
    an API server that does not answer) stops, since a new cookie would split old and new pods."""
    missing = []
    for name in SECRETS:
        answer = cluster.shell.query(
            cluster.kubectl("get", "secret", name, "--output", "name"),
            assume="no Secret yet",
            dry=(1, "", f'Error from server (NotFound): secrets "{name}" not found'),
        )
        if answer.returncode == 0:
            say(f"    {name} exists; keeping it (the running pods share it)")
        elif "NotFound" in answer.stderr:
            missing.append(name)
        else:
            raise StepFailed(f"cannot tell whether Secret {NAMESPACE}/{name} exists: {answer.stderr.strip()}")
    return missing
