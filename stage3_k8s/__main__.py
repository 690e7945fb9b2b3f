"""`python -m stage3_k8s`: one pod of the chat (the image's entry point).

Its defaults are the pod's: peers come from DNS, and the node is named after the
pod's address, `chat@$POD_IP`, which is how its peers will name it when they read the
address in DNS. HOST stays 127.0.0.1 here; the image sets HOST=0.0.0.0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from shared.server import main
from stage3_k8s.node import K8sNode

WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def stage_defaults(env: Mapping[str, str]) -> dict[str, object]:
    """NODE_NAME defaults to NODE_BASENAME@POD_IP (else @HOST, else @127.0.0.1)."""
    basename = env.get("NODE_BASENAME", "").strip() or "chat"
    host = env.get("HOST", "").strip()
    own = env.get("POD_IP", "").strip() or (host if host not in WILDCARD_HOSTS else "127.0.0.1")
    # Not validated here: Settings checks POD_IP, HOST and NODE_BASENAME and names the bad one.
    return {"node_name": f"{basename}@{own}", "discovery": "dns"}


if __name__ == "__main__":
    environment = dict(os.environ)
    main(K8sNode, environment, clustered=True, **stage_defaults(environment))
