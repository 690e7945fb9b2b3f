"""`python -m stage3_k8s`: one pod of the chat (the image's entry point).

Its defaults are the pod's: peers come from DNS, and the node is named after the
pod's address, `chat@$POD_IP`, which is how its peers will name it when they read the
address in DNS. HOST stays 127.0.0.1 here; the image sets HOST=0.0.0.0.

A pod and a container need no per-container settings: without POD_IP, a node listening
on every address takes the address its own host name resolves to, which is what the
kubelet and Docker both write into /etc/hosts, and what Docker's DNS answers for it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from shared.server import main
from shared.settings import Fields
from stage3_k8s.node import K8sNode

WILDCARD_HOSTS = ("0.0.0.0", "::")


def own_address() -> str:
    """The address this host's own name resolves to (127.0.0.1 if it resolves to none)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def stage_defaults(env: Mapping[str, str]) -> Fields:
    """NODE_NAME defaults to NODE_BASENAME@POD_IP. Without POD_IP: @HOST when the node listens
    on one address (127.0.0.1 when HOST is unset), else POD_IP itself defaults to the host
    name's address, which is also the address peers reach it at."""
    basename = env.get("NODE_BASENAME", "").strip() or "chat"
    host = env.get("HOST", "").strip() or "127.0.0.1"
    defaults: Fields = {}
    own = env.get("POD_IP", "").strip()
    if not own and host in WILDCARD_HOSTS:
        own = defaults["pod_ip"] = own_address()
    # Not validated here: Settings checks POD_IP, HOST and NODE_BASENAME and names the bad one.
    defaults["node_name"] = f"{basename}@{own or host}"
    return defaults


if __name__ == "__main__":
    environment = dict(os.environ)
    main(K8sNode, environment, **stage_defaults(environment))
