"""The Redis broker: history in Redis Streams, live delivery over per-node Pub/Sub channels.

Every node subscribes to one channel of its own, `chat:node:<name>`. Publishing a
message is one Lua script: XADD to the room's stream, then PUBLISH the encoded frame
to the channel of every node this node is connected to. Because the script runs
atomically, every node receives a room's messages in stream order: one total order
per room, the same on every node. Nodes that are not connected never see each
other's live messages, as with Phoenix PubSub over distributed Erlang.

The same channels carry the cluster's own traffic (heartbeats, presence) as control
lines, handed to the membership; lines.py parses every kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any, Protocol, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from shared import logs, protocol
from shared.broker import BrokerUnavailable, Deliver, Delivery
from shared.history import Replay, RoomHistory
from shared.messages import ChatMessage, Draft
from stage2_cluster import lines
from stage2_cluster.lines import BadLine
from stage2_cluster.settings import redact_url

log = logs.get("redis")

COMMAND_TIMEOUT = 2.0  # a paused Redis must turn into "unavailable", not a hung push
# Connections to Redis one node opens at most. Every command takes one for its round trip,
# the subscription keeps one. redis-py's default pool allows 100 and *raises* on the 101st,
# so 300 sockets pushing at once got 199 `unavailable` from a healthy Redis. This pool
# waits for a free connection instead. Redis runs one command at a time, so more
# connections add no throughput, only sockets: 50 keep it busy with round trips in flight,
# and 100 nodes stay far below its 10000 clients.
REDIS_POOL_SIZE = 50
# How long a command waits for a free connection before the client is told `unavailable`.
# Longer than COMMAND_TIMEOUT: in a burst the wait is mostly this node's own loop fanning
# out the burst's messages, not Redis; a stuck Redis still frees every connection within
# COMMAND_TIMEOUT. Half the Phoenix client's 10 s push timeout, so the answer still counts.
REDIS_POOL_WAIT = 5.0
WATCHDOG_INTERVAL = 1.0  # PING the subscription this often...
WATCHDOG_DEADLINE = 3.0  # ...and call it dead when nothing came back for this long
BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0)
BAD_LINE_LOG_EVERY = 1.0  # seconds: a flood of garbage costs one warning a second, the counter counts all

# The script writes the `m` line of lines.py.
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


# A join's history read. The node keeps a copy of each room's stream (its messages and their
# encoded payloads), known by its span: the length, first and last id. Streams here are only
# ever appended to (ids always grow) and trimmed from the oldest, so two states with the same
# span are the same: any node's append changes the last id. The script compares spans in
# Redis on every join, so a joiner never gets a stale copy, whoever wrote to the room; when
# they differ it returns what came after the copy's last id (ARGV[2]; all of it when '').
READ_SCRIPT = """
local n = redis.call('XLEN', KEYS[1])
local span = tostring(n)
if n > 0 then
  span = span .. ' ' .. redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
    .. ' ' .. redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
end
if span == ARGV[1] then
  return {span}
end
if ARGV[2] ~= '' then
  return {span, redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+')}
end
return {span, redis.call('XRANGE', KEYS[1], '-', '+')}
"""


def _extended(history: RoomHistory, entries: list[Any]) -> RoomHistory:
    """`history` with READ_SCRIPT's stream entries appended, each payload encoded once."""
    for entry_id, flat in entries:
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        history.append(ChatMessage(entry_id, fields["user"], fields["body"], fields["node"], int(fields["ts"])))
    return history


def _frame_parts(topic: str, draft: Draft, node: str) -> tuple[str, str]:
    """The encoded new:msg frame around the two values only Redis knows (id and ts)."""
    head = protocol.encode(None, None, topic, "new:msg", {"id": ""})
    prefix = head[: -len('"}]')]  # ...{"id":"
    fields = orjson.dumps({"user": draft.user, "body": draft.body, "node": node}).decode()
    middle = '",' + fields[1:-1] + ',"ts":'
    return prefix, middle


class Membership(Protocol):
    """What the broker asks of the cluster it serves (`stage2_cluster.membership.Membership`)."""

    def targets(self) -> list[str]:
        """The nodes whose channels a message goes to, this one first."""
        ...

    def on_control(self, line: lines.Control) -> None:
        """A control line from our channel (heartbeat, presence)."""
        ...

    def on_health(self, healthy: bool) -> None: ...

    def on_bad_line(self) -> None:
        """A line on our channel was dropped (it is counted in /metrics)."""
        ...


class Alone:
    """The membership of a broker that serves no cluster: it publishes to itself only."""

    def __init__(self, node: str) -> None:
        self.node = node

    def targets(self) -> list[str]:
        return [self.node]

    def on_control(self, line: lines.Control) -> None:
        pass

    def on_health(self, healthy: bool) -> None:
        pass

    def on_bad_line(self) -> None:
        pass


class RedisBroker:
    def __init__(self, url: str, node: str, history_size: int, membership: Membership | None = None) -> None:
        self.url = url
        self.node = node
        self.membership = membership or Alone(node)
        self.history_size = history_size
        # encoding_errors="replace": bytes that are not UTF-8 (we never publish any) become
        # U+FFFD and fail parsing as a bad line, instead of raising inside redis-py's reader.
        options: dict[str, Any] = {
            "socket_timeout": COMMAND_TIMEOUT,
            "socket_connect_timeout": COMMAND_TIMEOUT,
            "decode_responses": True,
            "encoding_errors": "replace",
        }
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_POOL_SIZE,
            timeout=REDIS_POOL_WAIT,
            # One retry at once, on a new connection, for a broken connection only: one left in
            # the pool from a Redis that went away (a restart, a new container) fails its next
            # command once and reconnects, instead of answering `unavailable` while Redis is
            # back. Not on a timeout, where the command may have run (a message stored twice);
            # and no more retries or backoff, which would keep a push waiting while Redis is down.
            retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
            **options,
        )
        self.client = aioredis.Redis.from_pool(pool)  # the client closes the pool with it
        # The subscription has a connection of its own, without that retry: redis-py would
        # reconnect and subscribe again unseen, and what was published meanwhile (Pub/Sub
        # keeps nothing) would never be read back from the streams (_subscribe_forever).
        self._subscriber = aioredis.Redis.from_pool(aioredis.ConnectionPool.from_url(url, **options))
        self._script = self.client.register_script(PUBLISH_SCRIPT)
        self._read_script = self.client.register_script(READ_SCRIPT)
        self._copies: dict[str, RoomHistory] = {}  # per topic, the last copy of its stream read (READ_SCRIPT)
        # Per topic, the read every join shares until it starts, and the one under way (history)
        self._next_read: dict[str, asyncio.Task[RoomHistory]] = {}
        self._reading: dict[str, asyncio.Task[RoomHistory]] = {}
        self._deliver: Deliver | None = None
        self._task: asyncio.Task[None] | None = None
        self._healthy: bool | None = None  # None until the first attempt, so that one is logged too
        # Per topic, the newest stored message handed to the hub: after a reconnect the
        # messages published while we were not subscribed are read back from the stream
        # (Pub/Sub does not keep them), and a message never goes out twice.
        self._last_ids: dict[str, tuple[int, int]] = {}
        self._holding = 0  # catch-ups running: live stored messages wait in _held meanwhile
        self._held: list[tuple[str, str, str]] = []
        self.heard_at = 0.0  # time.monotonic() of the last reply on the subscription
        self.bad_lines = 0
        self._bad_line_log = logs.Every(BAD_LINE_LOG_EVERY)
        # Broadcasts for peers not yet sent, and the one task sending them, in order.
        self._outgoing: list[tuple[list[str], str]] = []
        self._sender: asyncio.Task[None] | None = None

    # Broker interface --------------------------------------------------------------

    @property
    def available(self) -> bool:
        # The task test is belt and braces: _subscribe_forever only ends when stopped.
        return self._healthy is True and self._task is not None and not self._task.done()

    @property
    def status(self) -> str:
        where = self.client.connection_pool.connection_kwargs
        address = f"{where.get('host', '')}:{where.get('port', '')}" if "host" in where else where.get("path", "")
        return f"connected ({address})" if self._healthy else f"unreachable ({address}), retrying"

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._task = asyncio.create_task(self._subscribe_forever())

    async def stop(self) -> None:
        for task in (self._task, self._sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.client.aclose()
        await self._subscriber.aclose()

    async def publish(self, topic: str, draft: Draft, node: str) -> ChatMessage:
        prefix, middle = _frame_parts(topic, draft, node)
        channels = [node_channel(name) for name in self.membership.targets()]
        client_msg_id = draft.client_msg_id or ""
        args: list[str | int] = [self.history_size, draft.user, draft.body, node, topic, prefix, middle]
        args += [client_msg_id, *channels]
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
        """Our own sockets first, then the other nodes, as Phoenix.PubSub dispatches locally
        before forwarding; `exclude` is one of ours, so peers need not know it.

        Peers' copies are not awaited: what is broadcast while a round trip is under way
        goes in the next one, in order, one pipeline (a join storm's `user:entered` cost one
        round trip per batch, not one per join, and no join waits for Redis to hear it).
        Lost if Redis cannot be reached, as an event is (it is not stored)."""
        frame = protocol.broadcast(topic, event, payload)
        self._deliver_to_hub(Delivery(topic, frame, exclude=exclude))
        peers = [name for name in self.membership.targets() if name != self.node]
        if peers:
            self._outgoing.append((peers, lines.broadcast(topic, frame)))
            if self._sender is None:
                self._sender = asyncio.get_running_loop().create_task(self._send_outgoing())

    async def _send_outgoing(self) -> None:
        try:
            while self._outgoing:
                batch, self._outgoing = self._outgoing, []
                try:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for nodes, line in batch:
                            for name in nodes:
                                pipe.publish(node_channel(name), line)
                        await pipe.execute()
                except (RedisError, OSError) as error:
                    log.warning("broadcasts dropped: redis unavailable", count=len(batch), error=str(error))
        finally:
            self._sender = None

    async def history(self, topic: str, after: str | None) -> Replay:
        """The room's history after `after`, read from the stream after this call began.

        Joins share reads: a join waits for the next read of its room to start, and every
        join that arrives before it starts gets its result, so a storm of N joins costs a
        read per round trip, not N. The next read starts only when the one under way ends,
        so it is never older than a join that shares it (which subscribed before calling):
        what that read misses reaches the join live."""
        read = self._next_read.get(topic)
        if read is None:
            read = self._next_read[topic] = asyncio.ensure_future(self._read_next(topic, self._reading.get(topic)))
        # shield: a join that gives up (its socket closed) does not cancel the others' read
        return (await asyncio.shield(read)).after(after)

    async def _read_next(self, topic: str, previous: asyncio.Task[RoomHistory] | None) -> RoomHistory:
        if previous is not None:
            await asyncio.wait([previous])
        this = self._reading[topic] = self._next_read.pop(topic)  # from now on, joins wait for the next
        try:
            return await self._read(topic)
        finally:
            if self._reading.get(topic) is this:
                del self._reading[topic]

    async def _read(self, topic: str) -> RoomHistory:
        kept = self._copies.get(topic)
        try:
            if kept is not None:
                span = kept.span()
                newest = span.split(" ")[-1] if " " in span else ""
                result = await self._read_script(keys=[stream_key(topic)], args=[span, newest])
                if len(result) == 2:  # the stream moved on: the copy and what came after it...
                    kept = _extended(kept.copy(), result[1])
                    if kept.span() != result[0]:  # ...unless it was trimmed or rewritten otherwise
                        kept = None
            if kept is None:
                result = await self._read_script(keys=[stream_key(topic)], args=["", ""])
                kept = _extended(RoomHistory(self.history_size), result[1])
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(str(error)) from None
        self._copies[topic] = kept
        return kept

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
            log.info("redis reachable" if healthy else "redis unreachable", url=redact_url(self.url))
            self.membership.on_health(healthy)

    async def _subscribe_forever(self) -> None:
        attempt = 0
        while True:
            try:
                await self._subscribe_once()
                attempt = 0
            except (RedisError, OSError, TimeoutError) as error:
                log.warning("subscription lost", error=str(error) or type(error).__name__)
            except Exception:
                # A bug must not leave the node subscribed to nothing while /readyz says 200:
                # log it, report not ready, and subscribe again like after any other loss.
                log.exception("subscription crashed", channel=node_channel(self.node))
            self._set_health(False)
            delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            attempt += 1
            await asyncio.sleep(delay * (0.5 + random.random()))  # jitter: nodes don't retry in lockstep

    async def _subscribe_once(self) -> None:
        # redis-py's health_check_interval only pings when we read; a peer that stops
        # answering (SIGSTOP, a dropped link) keeps the socket open and get_message just
        # returns None. So we PING ourselves and give up when no reply comes back.
        pubsub = self._subscriber.pubsub()
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
                        try:
                            self._dispatch(message["data"])
                        except BadLine as error:
                            self._drop_bad_line(message["data"], str(error))
                if now >= next_ping:
                    next_ping = now + WATCHDOG_INTERVAL
                    async with asyncio.timeout(COMMAND_TIMEOUT):
                        await pubsub.ping()
                if now - last_heard > WATCHDOG_DEADLINE:
                    raise TimeoutError("no reply from redis on the subscription")
        finally:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated

    async def catch_up(self) -> int:
        """Deliver what the stream holds past the last message delivered, for a peer regained.

        Live messages arriving meanwhile are held and delivered after it, so that sockets
        still get one room's messages in stream order; any the read had are skipped."""
        self._holding += 1
        try:
            return await self._catch_up()
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(str(error)) from None
        finally:
            self._holding -= 1
            if not self._holding:
                held, self._held = self._held, []
                for topic, message_id, frame in held:
                    self._deliver_stored(topic, message_id, frame)

    async def _catch_up(self) -> int:
        """Deliver what was stored in rooms we deliver to while we were not subscribed.

        Called once subscribed again (and by `catch_up`): anything published from then on
        reaches us live (and is skipped by `_deliver_stored` if the stream read already had
        it). Only messages of nodes we send to, as live delivery follows connections."""
        senders = set(self.membership.targets())
        delivered = 0
        for topic, (ms, seq) in list(self._last_ids.items()):
            # decode_responses=True: every reply is text, though redis-py types it `bytes | str`.
            entries = cast(
                "list[tuple[str, dict[str, str]]]",
                await self.client.xrange(stream_key(topic), min=f"({ms}-{seq}", max="+"),
            )
            for entry_id, fields in entries:
                if fields.get("node") not in senders:
                    continue
                try:
                    message = ChatMessage(entry_id, fields["user"], fields["body"], fields["node"], int(fields["ts"]))
                except (KeyError, ValueError):
                    continue  # not written by the publish script: an XADD of someone with Redis access
                delivered += self._deliver_stored(
                    topic, entry_id, protocol.broadcast(topic, "new:msg", message.payload())
                )
        return delivered

    def _deliver_stored(self, topic: str, message_id: str, frame: str) -> bool:
        ms, _, seq = message_id.partition("-")
        key = (int(ms), int(seq))
        last = self._last_ids.get(topic)
        if last is not None and key <= last:
            return False  # already delivered by a catch-up
        self._last_ids[topic] = key
        self._deliver_to_hub(Delivery(topic, frame, message_id))
        return True

    def _dispatch(self, raw: str) -> None:
        """Hand one line to the hub or the membership; BadLine for anything we would never send."""
        line = lines.parse(raw)
        if isinstance(line, lines.Stored):
            if self._holding:
                self._held.append((line.topic, line.message_id, line.frame))
            else:
                self._deliver_stored(line.topic, line.message_id, line.frame)
        elif isinstance(line, lines.Broadcast):
            self._deliver_to_hub(Delivery(line.topic, line.frame))
        else:
            self.membership.on_control(line)

    def _drop_bad_line(self, line: str, reason: str) -> None:
        self.bad_lines += 1
        self.membership.on_bad_line()
        if self._bad_line_log.due():
            log.warning(
                "bad line on our channel dropped",
                channel=node_channel(self.node),
                reason=reason,
                line=line,  # the formatter cuts and escapes it
                dropped=self.bad_lines,
            )

    def _deliver_to_hub(self, delivery: Delivery) -> None:
        if self._deliver is not None:
            self._deliver(delivery)
