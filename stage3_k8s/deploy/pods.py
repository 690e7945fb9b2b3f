"""The chat pods: who runs, what each lists, why a rollout is stuck, whether more fit."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

from stage3_k8s.deploy.clusters import Cluster
from stage3_k8s.deploy.config import CONVERGE_DEADLINE, NAMESPACE, PORT, ROLLOUT_TIMEOUT
from stage3_k8s.deploy.shell import StepFailed, say


@dataclass(frozen=True)
class Pod:
    name: str
    ip: str

    @property
    def node(self) -> str:
        return f"chat@{self.ip}"


def chat_pods(cluster: Cluster) -> list[Pod]:
    """The chat pods that run and are not going away (terminating ones are left out)."""
    answer = cluster.shell.query(
        cluster.kubectl("get", "pods", "--selector", "app=chat", "--output", "json"), poll=True
    )
    if answer.returncode != 0:
        return []
    pods = []
    for item in json.loads(answer.stdout).get("items", []):
        status, meta = item.get("status", {}), item.get("metadata", {})
        if status.get("phase") == "Running" and status.get("podIP") and not meta.get("deletionTimestamp"):
            pods.append(Pod(meta["name"], status["podIP"]))
    return sorted(pods, key=lambda pod: pod.name)


def node_view(cluster: Cluster, pod: Pod) -> list[str] | None:
    """GET /api/nodes of one pod, through the API server's proxy (no port-forward needed)."""
    path = f"/api/v1/namespaces/{NAMESPACE}/pods/{pod.name}:{PORT}/proxy/api/nodes"
    answer = cluster.shell.query(cluster.kubectl("get", "--raw", path, namespace=None), poll=True)
    if answer.returncode != 0:
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return list(json.loads(answer.stdout)["nodes"])
    return None


def wait_one_cluster(cluster: Cluster, replicas: int | None = None, deadline: float = CONVERGE_DEADLINE) -> list[Pod]:
    """Until every chat pod lists exactly the chat pods in GET /api/nodes (and there are `replicas` of them)."""
    pods: list[Pod] = []

    def check() -> tuple[bool, str]:
        nonlocal pods
        pods = chat_pods(cluster)
        if not pods or (replicas is not None and len(pods) != replicas):
            return False, f"{len(pods)} of {replicas if replicas is not None else '?'} pods running"
        expected = {pod.node for pod in pods}
        agree = sum(1 for pod in pods if set(node_view(cluster, pod) or []) == expected)
        return agree == len(pods), f"{agree} of {len(pods)} pods list all {len(pods)} nodes"

    polls = [
        cluster.kubectl("get", "pods", "--selector", "app=chat", "--output", "json"),
        cluster.kubectl(
            "get", "--raw", f"/api/v1/namespaces/{NAMESPACE}/pods/<pod>:{PORT}/proxy/api/nodes", namespace=None
        ),
    ]
    progress = cluster.shell.wait("every pod lists all", check, deadline, polls=polls)
    if progress:
        say(f"    {progress}")
    return pods


def rollout(cluster: Cluster, workload: str) -> None:
    """`kubectl rollout status`; on a timeout, the pods with their state and the recent events."""
    try:
        cluster.shell.run(cluster.kubectl("rollout", "status", workload, f"--timeout={ROLLOUT_TIMEOUT}"))
    except StepFailed:
        pods = cluster.shell.query(cluster.kubectl("get", "pods", "--output", "json"))
        events = cluster.shell.query(cluster.kubectl("get", "events", "--output", "json"))
        for line in diagnose(load_json(pods.stdout), load_json(events.stdout)):
            say(line)
        raise


def load_json(text: str) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    return {}


def cause_of(reason: str, message: str) -> str:
    """One line on what a pod's waiting reason or scheduling message usually means."""
    if reason == "ErrImageNeverPull":
        return "the image is not in the cluster: the load step did not run, or loaded another tag"
    if reason in ("ErrImagePull", "ImagePullBackOff"):
        if "toomanyrequests" in message or "rate limit" in message:
            return "Docker Hub's pull rate limit: wait, or `docker login` and run `make stage3` again"
        return "the image cannot be pulled: check the name and this machine's network"
    if reason == "CrashLoopBackOff":
        return "the container keeps exiting: `kubectl --context <context> -n chatlab logs --previous <pod>`"
    if reason == "CreateContainerConfigError":
        return f"its configuration is incomplete (a missing Secret?): {message}"
    if "Insufficient cpu" in message or "Insufficient memory" in message:
        return "not enough free CPU or memory on the nodes: `make stage3-scale` to fewer pods, or a bigger VM"
    if "unbound" in message and "PersistentVolumeClaim" in message:
        return "its volume claim is not bound: does the cluster have a default StorageClass?"
    return ""


def pod_state(item: dict[str, Any]) -> tuple[str, str]:
    """(state, cause) of one pod: the waiting reason of a container, else why it is not scheduled, else its phase."""
    status = item.get("status", {})
    for container in status.get("containerStatuses", []):
        waiting = container.get("state", {}).get("waiting")
        if waiting:
            reason, message = waiting.get("reason", "Waiting"), waiting.get("message", "")
            return reason, cause_of(reason, message)
    for condition in status.get("conditions", []):
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            message = condition.get("message", "")
            return f"Pending ({condition.get('reason', 'Unschedulable')}: {message})", cause_of("", message)
    return status.get("phase", "Unknown"), ""


def diagnose(pods: dict[str, Any], events: dict[str, Any], recent: int = 10) -> list[str]:
    lines = ["    the pods:"]
    for item in pods.get("items", []):
        state, cause = pod_state(item)
        lines.append(f"      {item['metadata']['name']}: {state}" + (f"\n        -> {cause}" if cause else ""))
    lines.append(f"    the last {recent} events:")
    stamped = sorted(
        events.get("items", []),
        key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or "",
    )
    for event in stamped[-recent:]:
        about = event.get("involvedObject", {})
        lines.append(
            f"      {event.get('type', '')} {about.get('kind', '')}/{about.get('name', '')}: "
            f"{event.get('reason', '')}: {event.get('message', '')}"
        )
    return lines


UNITS = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity (`100m`, `2`, `96Mi`, `4Gi`) as a number (cores, bytes)."""
    match = re.fullmatch(r"([0-9.eE+-]+?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(text))
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    return float(match[1]) * UNITS.get(match[2] or "", 1)


def requests_of(spec: dict[str, Any]) -> dict[str, float]:
    total = {"cpu": 0.0, "memory": 0.0}
    for container in spec.get("containers", []):
        for key in total:
            total[key] += quantity(container.get("resources", {}).get("requests", {}).get(key, 0))
    return total


def shortfall(nodes: dict[str, Any], pods: dict[str, Any], deployment: dict[str, Any], replicas: int) -> str | None:
    """What the nodes lack to run `replicas` chat pods, or None when they fit (by requests, as the scheduler counts)."""
    free = {"cpu": 0.0, "memory": 0.0}
    for node in nodes.get("items", []):
        for key in free:
            free[key] += quantity(node["status"]["allocatable"][key])
    for item in pods.get("items", []):
        if item.get("status", {}).get("phase") in ("Succeeded", "Failed") or not item.get("spec", {}).get("nodeName"):
            continue
        for key, value in requests_of(item["spec"]).items():
            free[key] -= value
    per_pod = requests_of(deployment["spec"]["template"]["spec"])
    more = replicas - deployment["spec"].get("replicas", 0)
    short = []
    if more > 0:
        need_cpu, need_memory = more * per_pod["cpu"], more * per_pod["memory"]
        if need_cpu > free["cpu"]:
            short.append(
                f"CPU: {more} more pods request {need_cpu * 1000:.0f}m, {max(free['cpu'], 0) * 1000:.0f}m free"
            )
        if need_memory > free["memory"]:
            short.append(
                f"memory: {more} more pods request {need_memory / 2**20:.0f}Mi, "
                f"{max(free['memory'], 0) / 2**20:.0f}Mi free"
            )
    return "; ".join(short) or None


def check_capacity(cluster: Cluster, replicas: int) -> None:
    shell = cluster.shell
    nodes = shell.query(cluster.kubectl("get", "nodes", "--output", "json", namespace=None), dry=(0, "{}"))
    pods = shell.query(cluster.kubectl("get", "pods", "--all-namespaces", "--output", "json"), dry=(0, "{}"))
    chat = shell.query(cluster.kubectl("get", "deployment/chat", "--output", "json"), dry=(0, "{}"))
    if shell.dry_run:
        say("  # dry run: then compares the free CPU and memory with what the new pods request")
        return
    for answer in (nodes, pods, chat):
        if answer.returncode != 0:
            raise StepFailed(f"cannot read the cluster's capacity: {answer.stderr.strip()}")
    short = shortfall(json.loads(nodes.stdout), json.loads(pods.stdout), json.loads(chat.stdout), replicas)
    if short:
        raise StepFailed(
            f"{replicas} chat pods do not fit: {short}. Give the cluster more (Docker Desktop or Colima's CPUs; "
            f"minikube start --cpus), or scale to fewer"
        )
    say(f"    {replicas} pods fit")


def current_replicas(cluster: Cluster) -> int | None:
    answer = cluster.shell.query(
        cluster.kubectl("get", "deployment/chat", "--output", "jsonpath={.spec.replicas}"),
        assume="no chat Deployment yet",
    )
    with contextlib.suppress(ValueError):
        return int(answer.stdout) if answer.returncode == 0 else None
    return None
