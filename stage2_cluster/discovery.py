"""Automatic discovery, libcluster's job: find nodes and connect to them.

`redis`: nodes announce themselves in the registry (registry.py) and each node connects
to every node whose claim is alive. `gossip` and `dns` live in their own modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from shared.broker import BrokerUnavailable
from shared.settings import NODE_NAME_RE
from stage2_cluster.handshake import Handshake
from stage2_cluster.registry import Registry
from stage2_cluster.settings import ClusterSettings

POLL_INTERVAL = 1.0


async def redis_registry(handshake: Handshake, registry: Registry) -> None:
    while True:
        try:
            for name, address in (await registry.live()).items():
                if name != handshake.name and name not in handshake.membership.peers and NODE_NAME_RE.fullmatch(name):
                    handshake.connect_soon(name, address, source="registry")
        except BrokerUnavailable:
            pass  # Redis away: the subscription already reports it; try again next round
        await asyncio.sleep(POLL_INTERVAL)


def for_settings(
    settings: ClusterSettings, handshake: Handshake, registry: Registry
) -> Coroutine[Any, Any, None] | None:
    if settings.discovery == "redis":
        return redis_registry(handshake, registry)
    if settings.discovery == "gossip":
        from stage2_cluster.gossip import gossip

        return gossip(settings, handshake)
    return None
