"""A clustered node: the shared core plus Redis, membership, discovery and the node API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from shared.metrics import Metrics
from shared.node import ChatNode
from stage2_cluster import discovery
from stage2_cluster.api import bp as api_bp
from stage2_cluster.broker import RedisBroker
from stage2_cluster.handshake import Handshake
from stage2_cluster.membership import Membership
from stage2_cluster.registry import RedisRegistry
from stage2_cluster.settings import ClusterSettings


class ClusterNode(ChatNode):
    blueprints = (api_bp,)
    settings_class = ClusterSettings
    settings: ClusterSettings

    def __init__(self, settings: ClusterSettings) -> None:
        assert settings.redis_url is not None, "ClusterSettings.check requires REDIS_URL"
        metrics = Metrics()
        # The membership first: the broker asks it where messages go and hands it control
        # lines, the tracker hands it presence changes; it is attached to them once they exist.
        self.membership = Membership(settings, metrics)
        self.redis = RedisBroker(settings.redis_url, settings.node_name, settings.history_size, self.membership)
        super().__init__(settings, self.redis, replicate=self.membership.replicate_presence, metrics=metrics)
        self.registry = RedisRegistry(self.redis.client)
        self.membership.attach(self.redis, self.tracker, self.registry, self.spawn)
        self.handshake = Handshake(settings, metrics, self.membership, self.registry, self.spawn)
        self._discovery: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def nodes(self) -> list[str]:
        return self.membership.nodes()

    def console_namespace(self) -> dict[str, object]:
        async def node_connect(name: str, address: str | None = None) -> bool:
            """Erlang's `Node.connect/1`: connect to `name` (from the registry, or at "host:port")
            and to its peers, with this node's cookie; raises ConnectError saying why not."""
            await self.handshake.connect(name, address)
            return True

        # `cluster` is who this node is connected to (its peers, its name); `handshake` connects.
        extra = {"cluster": self.membership, "handshake": self.handshake, "registry": self.registry}
        return {**super().console_namespace(), **extra, "node_connect": node_connect}

    def discovery_loop(self) -> Coroutine[Any, Any, None] | None:
        """The loop that finds peers for DISCOVERY; a later stage overrides it to add its own."""
        return discovery.for_settings(self.settings, self.handshake, self.registry)

    async def claim(self) -> None:
        await self.membership.claim_name()

    async def start(self) -> None:
        await super().start()
        self._heartbeat = self.spawn(self.membership.heartbeat_forever())
        strategy = self.discovery_loop()
        if strategy is not None:
            self._discovery = self.spawn(strategy)

    async def stop(self) -> None:
        await self.drain()
        # Stop finding peers before saying goodbye, or discovery would connect them again;
        # and stop beating before giving up our name, or the next beat would claim it again.
        for task in (self._discovery, self._heartbeat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.handshake.close()
        await self.membership.release_name()
        await super().stop()
