"""The stage 3 node: the stage 2 cluster node, plus DISCOVERY=dns."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from stage2_cluster.node import ClusterNode
from stage3_k8s.dns_discovery import DnsDiscovery
from stage3_k8s.settings import K8sSettings


class K8sNode(ClusterNode):
    settings_class = K8sSettings
    settings: K8sSettings

    def discovery_loop(self) -> Coroutine[Any, Any, None] | None:
        if self.settings.discovery == "dns":
            return DnsDiscovery(self.handshake, self.settings).run()
        return super().discovery_loop()
