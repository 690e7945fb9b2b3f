"""Idempotent pushes: a `new:msg` with a `client_msg_id` is stored once per user while in history.

What a `client_msg_id` may be, then the case it exists for: a push that was stored but
answered `unavailable`, retried once Redis answers again. The broker's side (a retry, racing
retries, another user's same id, an id whose message left history) runs against every
broker in tests/test_broker_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from shared.messages import InvalidMessage, validate_draft
from stage2_cluster.broker import stream_key
from tests.helpers.cluster import Cluster
from tests.helpers.phoenix import LOBBY, PhoenixClient, Reply, unique
from tests.helpers.redis_server import RedisServer
from tests.helpers.results import record
from tests.helpers.waits import async_wait_until, run_async

pytestmark = pytest.mark.slow

DEADLINE = 10.0


@pytest.mark.parametrize("value", ["", "x" * 65, 7, ["c-1"], {"id": 1}])
def test_a_bad_client_msg_id_is_refused(value: object) -> None:
    with pytest.raises(InvalidMessage, match="client_msg_id must be a string of 1 to 64 characters"):
        validate_draft({"user": "alice", "body": "hi", "client_msg_id": value})


def test_a_client_msg_id_of_64_characters_is_accepted() -> None:
    assert validate_draft({"user": "alice", "body": "hi", "client_msg_id": "x" * 64}).client_msg_id == "x" * 64


# The retry it is for: `unavailable` for a push that was stored, then the same push again ----------


class ReplyEater:
    """A TCP proxy in front of Redis that can stop passing Redis's answers on: commands still
    run, but the node never hears back, so a push is stored and answered `unavailable` (as
    when Redis stalls after taking a command in). Deterministic, where a paused Redis may or
    may not run the command it had buffered."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.eating = False
        self._writers: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(DEADLINE)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        self._writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, answers: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    if not (answers and self.eating):
                        sink.write(data)
                        await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    def restore(self) -> None:
        """Answers pass again; connections that lost some start afresh."""

        def close_all() -> None:
            self.eating = False
            for writer in self._writers:
                writer.close()
            self._writers.clear()

        self._loop.call_soon_threadsafe(close_all)

    def close(self) -> None:
        """Every connection closed and every pipe ended before the loop stops: a transport
        left open raises a ResourceWarning, an error in whichever later test it surfaces."""

        async def shut() -> None:
            self.eating = False
            self._server.close()
            for writer in self._writers:
                writer.close()
            pipes = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(DEADLINE)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(DEADLINE)
        self._loop.close()


def test_a_push_answered_unavailable_but_stored_is_stored_once_when_retried() -> None:

    with RedisServer() as redis_server, Cluster(redis_server) as cluster:
        proxy = ReplyEater(redis_server.port)
        try:
            (node,) = cluster.start("a", REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0")
            body = f"retried {unique()}"
            push = {"user": "alice", "body": body, "client_msg_id": "r-1"}

            def stored() -> list[str]:
                with redis_server.client() as client:
                    return [entry_id for entry_id, fields in client.xrange(stream_key(LOBBY)) if fields["body"] == body]

            async def scenario() -> tuple[Reply, int, Reply, int]:
                async with PhoenixClient(node.ws_url) as client:
                    await client.join(LOBBY, {"user": "alice"})
                    # Delivered first, so the node's catch-up after its subscription comes back
                    # covers this room (it reads the stream after the last message it delivered).
                    before = await client.push(LOBBY, "new:msg", {"user": "alice", "body": f"before {unique()}"})
                    await client.wait_for_message(before.response["msg"], DEADLINE)
                    proxy.eating = True
                    try:
                        first = await client.push(LOBBY, "new:msg", push)
                        stored_by_first = len(stored())
                    finally:
                        proxy.restore()
                    await async_wait_until(lambda: cluster.ready(node), 30, "the node ready again")
                    retry = await client.push(LOBBY, "new:msg", push)  # as the page does after `unavailable`
                    # A second delivery, if there were one, comes before a later message: one order per room.
                    marker = f"marker {unique()}"
                    assert (await client.push(LOBBY, "new:msg", {"user": "alice", "body": marker})).ok
                    await client.wait_for_message(marker, DEADLINE)
                    return first, stored_by_first, retry, sum(1 for m in client.messages() if m["body"] == body)

            first, stored_by_first, retry, deliveries = run_async(scenario)
            ids = stored()
        finally:
            proxy.close()
    record(
        "retry_after_unavailable",
        first_reply=f"{first.status} {first.response}",
        stored_by_the_first=stored_by_first,
        retry_reply=f"{retry.status} {retry.response}",
        stored_in_the_end=len(ids),
        delivered_to_sender=deliveries,
    )
    assert first.response == {"reason": "unavailable"} and stored_by_first == 1  # answered so, yet stored
    assert retry.ok and retry.response == {"msg": body, "id": ids[0]}
    assert len(ids) == 1
    assert deliveries == 1
