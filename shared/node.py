"""A running chat node: the pieces one process holds, and its lifetime.

Stage 1 uses it as is; stage 2 subclasses it to add the cluster (peers, registry,
node API) without touching the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import Coroutine
from typing import Any

from quart import Blueprint

from shared import logs, protocol
from shared.broker import Broker, Delivery, MemoryBroker
from shared.channel import Rooms, coalesce_entered
from shared.hub import Hub
from shared.messages import SYSTEM
from shared.metrics import Metrics
from shared.outbox import Budget
from shared.settings import Settings
from shared.socket import IDLE_TIMEOUT, OUTBOX_LIMIT, PhoenixSocket
from shared.tracker import PresenceTracker, Replicate

log = logs.get("node")
DRAIN_TIMEOUT = 10.0  # seconds to wait for sockets to flush and close on drain
IDLE_SWEEP_SECONDS = 1.0  # how often idle sockets are looked for
# Each connection's share of the node's outbox budget: MAX_CONNECTIONS of them bound what
# all slow sockets together may hold queued (docs/protocol.md, Limits).
OUTBOX_SHARE = 32 * 1024
# A full garbage collection once this many sockets have gone (or a quarter of those still
# open, when that is more), a tenth of a second after the last of them: a connection's
# objects hold cycles, and with full collections rare (server.tune_gc) the memory of a
# flood of sockets would wait for the next one instead of being reused by the next flood.
COLLECT_AFTER_CLOSED = 200
COLLECT_DELAY = 0.1


class ChatNode:
    # Blueprints a stage adds to the app (stage 2: the node API).
    blueprints: tuple[Blueprint, ...] = ()
    # What `python -m` reads from the environment for this kind of node; a stage extends it.
    settings_class: type[Settings] = Settings

    def __init__(
        self,
        settings: Settings,
        broker: Broker | None = None,
        replicate: Replicate | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.broker: Broker = broker or MemoryBroker(settings.history_size)
        self.hub = Hub(self.metrics, functools.partial(coalesce_entered, named=settings.entered_names))
        self.tracker = PresenceTracker(settings.node_name, self.hub.deliver, replicate)
        self.rooms = Rooms(settings.node_name, self.hub, self.tracker, self.broker, self.metrics)
        self.budget = Budget(settings.max_connections * OUTBOX_SHARE)
        self.sockets: set[PhoenixSocket] = set()
        self.draining = False
        self._no_sockets = asyncio.Event()
        self._no_sockets.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = 0  # sockets gone since the last full collection
        self._collection: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.settings.node_name

    def nodes(self) -> list[str]:
        """This node first, then the nodes it is connected to (`Node.list([:this, :visible])`)."""
        return [self.name]

    def new_socket(self, *, outbox_limit: int = OUTBOX_LIMIT, idle_timeout: float = IDLE_TIMEOUT) -> PhoenixSocket:
        """A socket for one client of this node."""
        return PhoenixSocket(
            self.rooms, self.budget, self.settings.rate_limit, outbox_limit=outbox_limit, idle_timeout=idle_timeout
        )

    def console_namespace(self) -> dict[str, object]:
        """What the remote console (shared/console.py) has at hand; a stage adds its own."""

        def node_self() -> str:
            """This node's name: Erlang's `node()`."""
            return self.name

        def node_list() -> list[str]:
            """The nodes this one is connected to, itself left out: Erlang's `Node.list()`."""
            return self.nodes()[1:]

        return {"node": self, "hub": self.hub, "cluster": None, "node_self": node_self, "node_list": node_list}

    @property
    def ready(self) -> bool:
        return not self.draining and self.broker.available

    async def claim(self) -> None:
        """Before serving: what must hold for this node to start at all (stage 2: its name is
        free); ConfigError if not."""

    async def start(self) -> None:
        await self.broker.start(self.hub.deliver)
        self.metrics.cluster_nodes.set(len(self.nodes()))
        self.spawn(self.ping_forever())
        self.spawn(self.close_idle_forever())

    async def stop(self) -> None:
        await self.drain()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.broker.stop()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a background task (a loop for the node's lifetime, or a send); a crash is
        logged, not swallowed, and whatever still runs is cancelled by stop()."""
        task = asyncio.create_task(coroutine)
        task.add_done_callback(_log_crash)
        task.add_done_callback(self._tasks.discard)
        self._tasks.add(task)
        return task

    async def ping_forever(self) -> None:
        """The original's demo timer: every PING_INTERVAL, `SYSTEM ping` to every joined socket.

        The original ran one timer per channel; one timer per node sends the same
        frames without a timer per socket.
        """
        interval = self.settings.ping_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            for topic in tuple(self.hub.members):
                self.hub.deliver(
                    Delivery(topic, protocol.broadcast(topic, "new:msg", {"user": SYSTEM, "body": "ping"}))
                )

    async def close_idle_forever(self) -> None:
        """Close the sockets that went silent (PhoenixSocket.close_if_idle)."""
        while True:
            await asyncio.sleep(IDLE_SWEEP_SECONDS)
            now = time.monotonic()
            for sock in tuple(self.sockets):
                sock.close_if_idle(now)

    def attach(self, sock: PhoenixSocket, *, fast: bool = False) -> None:
        self.sockets.add(sock)
        self._no_sockets.clear()
        self.metrics.connections.inc()
        self.metrics.fast_path.inc(fast)

    def detach(self, sock: PhoenixSocket, *, fast: bool = False) -> None:
        self.sockets.discard(sock)
        self.metrics.connections.dec()
        self.metrics.fast_path.dec(fast)
        if not self.sockets:
            self._no_sockets.set()
        self._closed += 1
        if self._collection is not None:
            self._collection.cancel()  # one collection for a burst of closes, after it
        elif self._closed < max(COLLECT_AFTER_CLOSED, len(self.sockets) // 4):
            return
        self._collection = asyncio.get_running_loop().call_later(COLLECT_DELAY, self._collect)

    def _collect(self) -> None:
        self._collection, self._closed = None, 0
        gc.collect()

    async def drain(self, timeout: float = DRAIN_TIMEOUT) -> int:  # noqa: ASYNC109 - the drain's own bound
        """Refuse new sockets, report not ready, and close open ones with 1001 so clients go elsewhere."""
        self.draining = True
        sockets = list(self.sockets)
        for sock in sockets:
            sock.close(protocol.CLOSE_GOING_AWAY)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._no_sockets.wait()
        if sockets:
            log.info("drained", sockets=len(sockets), left=len(self.sockets))
        return len(sockets)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task crashed", exc_info=task.exception())
