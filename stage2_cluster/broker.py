"""The Redis broker: history in Redis Streams, live delivery over per-node Pub/Sub channels.

Every node subscribes to one channel of its own, `chat:node:<name>`. Publishing a
message is one Lua script: XADD to the room's stream, then PUBLISH the encoded frame
to the channel of every node this node is connected to. Because the script runs
atomically, every node receives a room's messages in stream order: one total order
per room, the same on every node. Nodes that are not connected never see each
other's live messages, as with Phoenix PubSub over distributed Erlang.

The same channels carry the cluster's own traffic (heartbeats, presence, handshake
notices) as control messages, handed to `on_control`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import logs, protocol
from shared.broker import BrokerUnavailable, Deliver, Delivery
from shared.messages import ChatMessage, Draft

log = logs.get("redis")

COMMAND_TIMEOUT = 2.0  # a paused Redis must turn into "unavailable", not a hung push
WATCHDOG_INTERVAL = 1.0  # PING the subscription this often...
WATCHDOG_DEADLINE = 3.0  # ...and call it dead when nothing came back for this long
BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0)

# Wire format on a node channel: "<kind> <rest>". m = stored message, b = broadcast,
# anything else is cluster control traffic.
#
# A push with a client_msg_id (ARGV[8], '' when none) is looked up first in the room's
# hash KEYS[2] of (user, client_msg_id) -> id: if that id is still in the stream, the
# stored message is returned and nothing is added or published. In the same script, so
# two retries racing each other are stored once. Ids that left the stream are pruned
# whenever the hash grows past twice the history, so it stays in proportion to it.
PUBLISH_SCRIPT = """
local function before(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local field = nil
if ARGV[8] ~= '' then
  field = #ARGV[2] .. ':' .. ARGV[2] .. ARGV[8]
  local known = redis.call('HGET', KEYS[2], field)
  if known then
    local entry = redis.call('XRANGE', KEYS[1], known, known)
    if #entry == 1 then
      local stored = {}
      for i = 1, #entry[1][2], 2 do stored[entry[1][2][i]] = entry[1][2][i + 1] end
      return {known, stored['ts'], stored['body'], stored['node']}
    end
  end
end
local t = redis.call('TIME')
local ts = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*',
                      'user', ARGV[2], 'body', ARGV[3], 'node', ARGV[4], 'ts', ts)
if field then
  redis.call('HSET', KEYS[2], field, id)
  if redis.call('HLEN', KEYS[2]) > 2 * tonumber(ARGV[1]) + 16 then
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do
      if oldest[1] == nil or before(all[i + 1], oldest[1][1]) then
        redis.call('HDEL', KEYS[2], all[i])
      end
    end
  end
end
local line = 'm ' .. ARGV[5] .. ' ' .. id .. ' ' .. ARGV[6] .. id .. ARGV[7] .. ts .. '}]'
for i = 9, #ARGV do
  redis.call('PUBLISH', ARGV[i], line)
end
return {id, ts}
"""


def node_channel(node: str) -> str:
    return f"chat:node:{node}"


def stream_key(topic: str) -> str:
    return f"chat:room:{topic}"


def client_ids_key(topic: str) -> str:
    return f"chat:client-ids:{topic}"


def _frame_parts(topic: str, draft: Draft, node: str) -> tuple[str, str]:
    """The encoded new:msg frame around the two values only Redis knows (id and ts)."""
    head = protocol.encode(None, None, topic, "new:msg", {"id": ""})
    prefix = head[: -len('"}]')]  # ...{"id":"
    fields = orjson.dumps({"user": draft.user, "body": draft.body, "node": node}).decode()
    middle = '",' + fields[1:-1] + ',"ts":'
    return prefix, middle


class RedisBroker:
    def __init__(self, url: str, node: str, history_size: int) -> None:
        self.url = url
        self.node = node
        self.history_size = history_size
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=COMMAND_TIMEOUT, socket_connect_timeout=COMMAND_TIMEOUT, decode_responses=True
        )
        self._script = self.client.register_script(PUBLISH_SCRIPT)
        self._deliver: Deliver | None = None
        self._task: asyncio.Task[None] | None = None
        self._healthy: bool | None = None  # None until the first attempt, so that one is logged too
        # Per topic, the newest stored message handed to the hub: after a reconnect the
        # messages published while we were not subscribed are read back from the stream
        # (Pub/Sub does not keep them), and a message never goes out twice.
        self._last_ids: dict[str, tuple[int, int]] = {}
        self.heard_at = 0.0  # time.monotonic() of the last reply on the subscription
        self.targets: Callable[[], list[str]] = lambda: [self.node]
        self.on_control: Callable[[str, str], None] = lambda kind, data: None
        self.on_health: Callable[[bool], None] = lambda healthy: None

    # Broker interface --------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._healthy is True

    @property
    def status(self) -> str:
        where = self.client.connection_pool.connection_kwargs
        address = f"{where.get('host', '')}:{where.get('port', '')}" if "host" in where else where.get("path", "")
        return f"connected ({address})" if self._healthy else f"unreachable ({address}), retrying"

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._task = asyncio.create_task(self._subscribe_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()

    async def publish(self, topic: str, draft: Draft, node: str) -> ChatMessage:
        prefix, middle = _frame_parts(topic, draft, node)
        channels = [node_channel(name) for name in self.targets()]
        client_msg_id = draft.client_msg_id or ""
        args = [self.history_size, draft.user, draft.body, node, topic, prefix, middle, client_msg_id, *channels]
        try:
            result = await self._script(keys=[stream_key(topic), client_ids_key(topic)], args=args)
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(str(error)) from None
        if len(result) == 4:  # stored before under this client_msg_id: that message, not a new one
            message_id, ts, body, stored_by = result
            return ChatMessage(message_id, draft.user, body, stored_by, int(ts))
        message_id, ts = result
        return ChatMessage(message_id, draft.user, draft.body, node, int(ts))

    async def broadcast(self, topic: str, event: str, payload: dict[str, Any], *, exclude: object = None) -> None:
        # Our own sockets first, then the other nodes, as Phoenix.PubSub dispatches
        # locally before forwarding; `exclude` is one of ours, so peers need not know it.
        frame = protocol.broadcast(topic, event, payload)
        self._deliver_to_hub(Delivery(topic, frame, exclude=exclude))
        peers = [name for name in self.targets() if name != self.node]
        if peers:
            await self.send(peers, f"b {topic} {frame}")

    async def history(self, topic: str, after: str | None) -> list[ChatMessage]:
        start = "-" if after is None else f"({after}"
        try:
            entries = await self.client.xrange(stream_key(topic), min=start, max="+")
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(str(error)) from None
        return [
            ChatMessage(entry_id, fields["user"], fields["body"], fields["node"], int(fields["ts"]))
            for entry_id, fields in entries
        ]

    # Cluster transport -------------------------------------------------------------

    async def send(self, nodes: list[str], line: str) -> None:
        """Publish one line to the channels of `nodes`, in one round trip."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for name in nodes:
                    pipe.publish(node_channel(name), line)
                await pipe.execute()
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(str(error)) from None

    # The subscription --------------------------------------------------------------

    def _set_health(self, healthy: bool) -> None:
        if healthy != self._healthy:
            self._healthy = healthy
            logs.event(log, "redis reachable" if healthy else "redis unreachable", url=self.url)
            self.on_health(healthy)

    async def _subscribe_forever(self) -> None:
        attempt = 0
        while True:
            try:
                await self._subscribe_once()
                attempt = 0
            except (RedisError, OSError, TimeoutError) as error:
                logs.event(log, "subscription lost", level=30, error=str(error) or type(error).__name__)
            self._set_health(False)
            delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            attempt += 1
            await asyncio.sleep(delay * (0.5 + random.random()))  # jitter: nodes don't retry in lockstep

    async def _subscribe_once(self) -> None:
        # redis-py's health_check_interval only pings when we read; a peer that stops
        # answering (SIGSTOP, a dropped link) keeps the socket open and get_message just
        # returns None. So we PING ourselves and give up when no reply comes back.
        pubsub = self.client.pubsub()
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await pubsub.subscribe(node_channel(self.node))
                await self.client.ping()
                await self._catch_up()
            self._set_health(True)
            last_heard = self.heard_at = time.monotonic()
            next_ping = last_heard + WATCHDOG_INTERVAL
            while True:
                # Every reply counts as hearing from Redis, our PONGs included: with
                # decoded RESP3 replies redis-py hands a PONG over as a message of type
                # "P", which ignore_subscribe_messages=True would swallow, and a node
                # with no traffic on its channel would call Redis dead every 3 s.
                message = await pubsub.get_message(timeout=WATCHDOG_INTERVAL)
                now = time.monotonic()
                if message is not None:
                    last_heard = self.heard_at = now
                    if message["type"] == "message":
                        self._dispatch(message["data"])
                if now >= next_ping:
                    next_ping = now + WATCHDOG_INTERVAL
                    async with asyncio.timeout(COMMAND_TIMEOUT):
                        await pubsub.ping()
                if now - last_heard > WATCHDOG_DEADLINE:
                    raise TimeoutError("no reply from redis on the subscription")
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await pubsub.aclose()

    async def _catch_up(self) -> None:
        """Deliver what was stored in rooms we deliver to while we were not subscribed.

        Called once subscribed again: anything published from now on reaches us live
        (and is skipped by `_deliver_stored` if the stream read already had it). Only
        messages of nodes we are connected to, as live delivery follows connections."""
        senders = set(self.targets())
        for topic, (ms, seq) in list(self._last_ids.items()):
            entries = await self.client.xrange(stream_key(topic), min=f"({ms}-{seq}", max="+")
            for entry_id, fields in entries:
                if fields["node"] not in senders:
                    continue
                message = ChatMessage(entry_id, fields["user"], fields["body"], fields["node"], int(fields["ts"]))
                self._deliver_stored(topic, entry_id, protocol.broadcast(topic, "new:msg", message.payload()))

    def _deliver_stored(self, topic: str, message_id: str, frame: str) -> None:
        ms, _, seq = message_id.partition("-")
        key = (int(ms), int(seq))
        last = self._last_ids.get(topic)
        if last is not None and key <= last:
            return  # already delivered by the catch-up after a reconnect
        self._last_ids[topic] = key
        self._deliver_to_hub(Delivery(topic, frame, message_id))

    def _dispatch(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "m":
            topic, message_id, frame = rest.split(" ", 2)
            self._deliver_stored(topic, message_id, frame)
        elif kind == "b":
            topic, frame = rest.split(" ", 1)
            self._deliver_to_hub(Delivery(topic, frame))
        else:
            self.on_control(kind, rest)

    def _deliver_to_hub(self, delivery: Delivery) -> None:
        if self._deliver is not None:
            self._deliver(delivery)
