"""What stage 3's tool calls things, where they live, and how long it waits."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parents[1]  # stage3_k8s/
OVERLAYS = HERE / "k8s" / "overlays"
NAMESPACE_FILE = HERE / "k8s" / "base" / "namespace.yaml"
KIND_CONFIG = HERE / "kind-config.yaml"
DOCKERFILE = HERE / "Dockerfile"
NAME = "chatlab"  # the kind cluster, the minikube profile, the namespace and the image
NAMESPACE = NAME
IMAGE = NAME
SECRET = "chat-cookie"  # holds CLUSTER_COOKIE; referenced by k8s/base/chat.yaml
REDIS_SECRET = "redis-auth"  # holds the Redis password; referenced by redis.yaml and chat.yaml
SECRETS = {SECRET: "cookie", REDIS_SECRET: "password"}
PORT = 4000
HOST_NAME = "test.com"
DEFAULT_REPLICAS = 3  # k8s/base/chat.yaml
GATEWAY = "chat"  # the Gateway (and HTTPRoute) of k8s/base/gateway.yaml
ROLLOUT_TIMEOUT = "300s"
CONVERGE_DEADLINE = 180.0
ENTRY_DEADLINE = 120.0
MESSAGE_DEADLINE = 30.0
PROGRESS_EVERY = 5.0
RETRY_PAUSE = 5.0

# Right after the entry point's controller turns ready, an admission webhook may refuse
# an object for a few more seconds (its certificate is still being installed): retry.
APPLY_ATTEMPTS = 12
