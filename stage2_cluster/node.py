"""A clustered node: the shared core plus Redis, membership, discovery and the node API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from shared.node import ChatNode
from shared.presence import Entry
from stage2_cluster import discovery
from stage2_cluster.api import bp as api_bp
from stage2_cluster.broker import RedisBroker
from stage2_cluster.cluster import Cluster
from stage2_cluster.settings import ClusterSettings


class ClusterNode(ChatNode):
    blueprints = (api_bp,)
    settings_class = ClusterSettings
    settings: ClusterSettings

    def __init__(self, settings: ClusterSettings) -> None:
        assert settings.redis_url is not None, "ClusterSettings.check requires REDIS_URL"
        self.redis = RedisBroker(settings.redis_url, settings.node_name, settings.history_size, membership=self)
        super().__init__(settings, self.redis, replicate=self.replicate_presence)
        self.cluster = Cluster(settings, self.redis, self.metrics, self.hub)
        self._discovery: asyncio.Task[None] | None = None

    def nodes(self) -> list[str]:
        return self.cluster.nodes()

    # The broker and the hub were built before the cluster, so they ask the node, and the
    # node's cluster answers: the broker's Membership, and the hub's replicate.

    def targets(self) -> list[str]:
        return self.cluster.targets()

    def on_control(self, kind: str, data: str) -> None:
        self.cluster.on_control(kind, data)

    def on_health(self, healthy: bool) -> None:
        self.cluster.on_health(healthy)

    def on_bad_line(self) -> None:
        self.cluster.on_bad_line()

    def replicate_presence(self, topic: str, joins: list[Entry], leaves: list[Entry]) -> None:
        self.cluster.replicate_presence(topic, joins, leaves)

    def console_namespace(self) -> dict[str, object]:
        async def node_connect(name: str, address: str | None = None) -> bool:
            """Erlang's `Node.connect/1`: connect to `name` (from the registry, or at "host:port")
            and to its peers, with this node's cookie; raises ConnectError saying why not."""
            await self.cluster.connect(name, address)
            return True

        return {**super().console_namespace(), "cluster": self.cluster, "node_connect": node_connect}

    def discovery_loop(self) -> Coroutine[Any, Any, None] | None:
        """The loop that finds peers for DISCOVERY; a later stage overrides it to add its own."""
        return discovery.for_settings(self.settings, self.cluster)

    async def start(self) -> None:
        await super().start()
        self.spawn(self.cluster.heartbeat_forever())
        strategy = self.discovery_loop()
        if strategy is not None:
            self._discovery = self.spawn(strategy)

    async def stop(self) -> None:
        await self.drain()
        # Stop finding peers before saying goodbye, or discovery would connect them again.
        if self._discovery is not None:
            self._discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._discovery
        await self.cluster.close()
        await super().stop()
