"""A clustered node: the shared core plus Redis, membership, discovery and the node API."""

from __future__ import annotations

from shared.node import ChatNode
from shared.settings import Settings
from stage2_cluster import discovery
from stage2_cluster.api import bp as api_bp
from stage2_cluster.broker import RedisBroker
from stage2_cluster.cluster import Cluster


class ClusterNode(ChatNode):
    blueprints = (api_bp,)

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None, "stage 2 settings require REDIS_URL"
        self.redis = RedisBroker(settings.redis_url, settings.node_name, settings.history_size)
        super().__init__(settings, self.redis)
        self.cluster = Cluster(self)

    def nodes(self) -> list[str]:
        return self.cluster.nodes()

    async def start(self) -> None:
        await super().start()
        self.spawn(self.cluster.heartbeat_forever())
        strategy = discovery.for_settings(self.settings, self.cluster)
        if strategy is not None:
            self.spawn(strategy)

    async def stop(self) -> None:
        await self.drain()
        await self.cluster.close()
        await super().stop()
