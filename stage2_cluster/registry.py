"""The registry, epmd's job: which node names are taken, and at what address each serves.

Two kinds of keys in Redis:

- `chat:alive:<name>` is a node's claim on its name: its boot id (lines.py), with an expiry
  of NODE_DOWN_AFTER that every heartbeat renews. Only the node that holds the claim
  renews it, so a second node started under a live node's name is refused, and the
  claim of a node that died expires by itself;
- `chat:registry` maps every name that ever registered to its address; entries whose
  claim has been gone long enough are pruned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.broker import BrokerUnavailable

REGISTRY = "chat:registry"

# Take or renew the claim on a name, and register its address, in one step: nothing
# else can take the name between the check and the write. Returns nothing when the claim
# is ours, else the holder's boot id and the milliseconds its claim has left.
CLAIM_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {holder, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return false
"""

# Give up a claim when stopping, if it is still ours.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def alive_key(node: str) -> str:
    return f"chat:alive:{node}"


@dataclass(frozen=True, slots=True)
class Holder:
    """Another incarnation that holds the name we asked for."""

    boot: str
    expires_in: float  # seconds its claim lasts unless renewed


class Registry(Protocol):
    """What membership and discovery ask of the registry; raises BrokerUnavailable."""

    async def claim(self, name: str, boot: str, address: str, ttl: float) -> Holder | None:
        """Take or renew `name` for `boot`; the other holder if it is not ours."""
        ...

    async def release(self, name: str, boot: str) -> None: ...

    async def lookup(self, name: str) -> str | None:
        """The address `name` registered, claimed or not."""
        ...

    async def live(self) -> dict[str, str]:
        """Name -> address of every node whose claim is alive."""
        ...

    async def prune(self, keep: float, besides: str) -> list[str]:
        """Forget the entries whose claim has been gone for `keep` seconds; the names forgotten."""
        ...


class RedisRegistry:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._gone_since: dict[str, float] = {}  # entries without a claim: since when

    async def claim(self, name: str, boot: str, address: str, ttl: float) -> Holder | None:
        try:
            held = await self._claim(keys=[alive_key(name), REGISTRY], args=[boot, int(ttl * 1000), name, address])
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(str(error)) from None
        if not held:
            return None
        holder, pttl = held
        return Holder(str(holder), max(int(pttl), 0) / 1000)

    async def release(self, name: str, boot: str) -> None:
        try:
            await self._release(keys=[alive_key(name)], args=[boot])
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(str(error)) from None

    async def lookup(self, name: str) -> str | None:
        try:
            address = await self.client.hget(REGISTRY, name)
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(str(error)) from None
        return None if address is None else str(address)

    async def live(self) -> dict[str, str]:
        entries, claims = await self._entries()
        return {name: entries[name] for name, boot in claims.items() if boot is not None}

    async def prune(self, keep: float, besides: str) -> list[str]:
        """Every node does it, so that the hash does not grow with every node that ever ran;
        a node that comes back registers again within a heartbeat."""
        _, claims = await self._entries()
        now = time.monotonic()
        dead = [name for name, boot in claims.items() if boot is None and name != besides]
        gone = {name: self._gone_since.get(name, now) for name in dead}
        expired = [name for name, since in gone.items() if now - since > keep]
        if expired:
            try:
                await self.client.hdel(REGISTRY, *expired)
            except (RedisError, OSError) as error:
                raise BrokerUnavailable(str(error)) from None
        self._gone_since = {name: since for name, since in gone.items() if name not in expired}
        return expired

    async def _entries(self) -> tuple[dict[str, str], dict[str, str | None]]:
        """Every registry entry, and each name's claim (None: none)."""
        try:
            entries = {str(k): str(v) for k, v in (await self.client.hgetall(REGISTRY)).items()}
            names = list(entries)
            # The broker's client decodes replies (decode_responses=True); redis-py types them `bytes | str`.
            keys = [alive_key(name) for name in names]
            claims = cast("list[str | None]", await self.client.mget(keys)) if names else []
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(str(error)) from None
        return entries, dict(zip(names, claims, strict=True))
