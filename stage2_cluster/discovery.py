"""Automatic discovery, libcluster's job: find nodes and connect to them.

`redis`: nodes announce themselves in the registry (cluster.py) and each node connects
to every live entry it finds. `gossip` and `dns` live in their own modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from redis.exceptions import RedisError

from shared.settings import NODE_NAME_RE
from stage2_cluster.cluster import REGISTRY, Cluster, alive_key
from stage2_cluster.settings import ClusterSettings

POLL_INTERVAL = 1.0


async def redis_registry(cluster: Cluster) -> None:
    client = cluster.broker.client
    while True:
        try:
            # The client decodes replies (decode_responses=True), which its types cannot know.
            names = [
                name
                for name in await client.hkeys(REGISTRY)
                if isinstance(name, str) and name != cluster.name and name not in cluster.peers
            ]
            if names:
                alive = await client.mget([alive_key(name) for name in names])
                for name, address in zip(names, alive, strict=True):
                    if isinstance(address, str) and NODE_NAME_RE.fullmatch(name):
                        cluster.connect_soon(name, address, source="registry")
        except (RedisError, OSError):
            pass  # Redis away: the subscription already reports it; try again next round
        await asyncio.sleep(POLL_INTERVAL)


def for_settings(settings: ClusterSettings, cluster: Cluster) -> Coroutine[Any, Any, None] | None:
    if settings.discovery == "redis":
        return redis_registry(cluster)
    if settings.discovery == "gossip":
        from stage2_cluster.gossip import gossip

        return gossip(cluster)
    return None
