"""The fast path (shared/transport.py): frames built once, written straight to the socket."""

from __future__ import annotations

import asyncio
import json
import socket
import sys

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import websockets
from wsproto.frame_protocol import FrameProtocol, Opcode

from shared.outbox import Budget, Outbox
from shared.transport import HIGH_WATER, Spliced, text_frame
from tests.helpers.h2c import websocket_request
from tests.helpers.metrics import metric
from tests.helpers.node import NodeProcess


def parse(frame: bytes) -> tuple[Opcode, str]:
    """Read `frame` back with wsproto, as a client would."""
    reader = FrameProtocol(client=True, extensions=[])
    reader.receive_bytes(frame)
    (parsed,) = list(reader.received_frames())
    return parsed.opcode, parsed.payload


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_a_text_frame_round_trips_at_every_length_encoding(size: int) -> None:
    text = "x" * size
    assert parse(text_frame(text)) == (Opcode.TEXT, text)


def test_a_text_frame_counts_utf8_bytes_not_characters() -> None:
    text = "é" * 100  # 200 bytes: needs the 16-bit length form
    frame = text_frame(text)
    assert frame[1] == 126
    assert parse(frame) == (Opcode.TEXT, text)


def fast_path_connections(node: NodeProcess) -> float:
    return metric(httpx.get(node.url + "/metrics", timeout=5).text, "chat_fast_path_connections")


async def test_a_real_server_writes_broadcasts_on_the_fast_path_to_a_deflate_client(stage1_node: NodeProcess) -> None:
    # The client offers permessage-deflate and Hypercorn accepts it; frames written
    # directly are uncompressed, which RFC 7692 allows, so the client must read them.
    async with (
        websockets.connect(stage1_node.ws_url, compression="deflate") as alice,
        websockets.connect(stage1_node.ws_url, compression="deflate") as bob,
    ):
        assert alice.protocol.extensions, "the client should have negotiated permessage-deflate"
        for ws, user in ((alice, "alice"), (bob, "bob")):
            await ws.send(json.dumps(["1", "1", "rooms:lobby", "phx_join", {"user": user}]))
        assert fast_path_connections(stage1_node) == 2
        await alice.send(json.dumps(["1", "2", "rooms:lobby", "new:msg", {"user": "alice", "body": "héllo"}]))
        async with asyncio.timeout(10):
            while True:
                frame = json.loads(await bob.recv())
                if frame[3] == "new:msg" and frame[4]["body"] == "héllo":
                    break
    assert frame[:3] == [None, None, "rooms:lobby"]
    assert frame[4]["user"] == "alice"


def h2c_websocket(port: int) -> tuple[list[tuple[str, str]], list[object]]:
    """Open a WebSocket over cleartext HTTP/2 (RFC 8441), send one heartbeat, and return the
    response headers and the heartbeat's answer as a WebSocket frame inside h2 DATA."""
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        headers: list[tuple[str, str]] = []
        data = b""
        stream_id = None

        def read() -> list[h2.events.Event]:
            received = sock.recv(65536)
            assert received, "the node closed the connection"
            events = conn.receive_data(received)
            sock.sendall(conn.data_to_send())
            return events

        while stream_id is None or not data.startswith(b"\x81") or len(data) < 2 + (data[1] & 0x7F):
            for event in read():
                if isinstance(event, h2.events.RemoteSettingsChanged) and stream_id is None:
                    stream_id = conn.get_next_available_stream_id()
                    conn.send_headers(stream_id, websocket_request(port))
                    sock.sendall(conn.data_to_send())
                elif isinstance(event, h2.events.ResponseReceived):  # accepted: frames may follow
                    headers = list(event.headers)  # type: ignore[arg-type]
                    heartbeat = b'[null,"1","phoenix","heartbeat",{}]'
                    conn.send_data(event.stream_id, bytes([0x81, 0x80 | len(heartbeat)]) + b"\0\0\0\0" + heartbeat)
                    sock.sendall(conn.data_to_send())
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    data += event.data
                elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise AssertionError(f"the node ended the stream: {event}")
        return headers, json.loads(data[2 : 2 + (data[1] & 0x7F)])


def test_a_websocket_over_h2c_is_served_through_asgi_not_the_fast_path(stage1_node: NodeProcess) -> None:
    # The fast path writes HTTP/1.1 WebSocket frames to the transport; under HTTP/2 that
    # would corrupt the connection, so such a socket is served through ASGI (h2 DATA frames).
    headers, reply = h2c_websocket(stage1_node.port)
    assert (":status", "200") in headers
    assert reply == [None, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}]


class RecordingTransport:
    """A transport that keeps every object written, to tell a shared one from a copy."""

    def __init__(self, buffered: int = 0) -> None:
        self.writes: list[bytes] = []
        self.buffered = buffered

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered


def texts(data: bytes) -> list[str]:
    reader = FrameProtocol(client=True, extensions=[])
    reader.receive_bytes(data)
    return [frame.payload for frame in reader.received_frames()]


def burst(shared: bytes) -> list[str | Spliced]:
    state = Spliced(b'["1",null,"t","presence_state",', shared, b"}]")
    return ['["1",null,"t","join",{}]', state, '["1",null,"t","x",1]']


def outbox(transport: RecordingTransport) -> Outbox:
    box = Outbox(Budget(10**9), 10**9, lambda: None, lambda error: None)
    box.transport = transport
    return box


def test_a_large_shared_part_is_written_as_it_is_to_every_socket() -> None:
    shared = b"{" + b",".join(b'"u%d":{"metas":[{"phx_ref":"r%d"}]}' % (n, n) for n in range(3000))
    assert len(shared) > HIGH_WATER
    transports = [RecordingTransport(), RecordingTransport()]
    for transport in transports:
        assert outbox(transport).put_all(burst(shared))
    for transport in transports:
        assert any(data is shared for data in transport.writes)  # the very object, not a copy
        frames = texts(b"".join(transport.writes))
        assert json.loads(frames[1])[4] == json.loads(shared + b"}")
        assert [json.loads(frame)[3] for frame in frames] == ["join", "presence_state", "x"]


def test_a_small_shared_part_goes_out_in_the_one_write() -> None:
    transport = RecordingTransport()
    assert outbox(transport).put_all(burst(b'{"a":{"metas":[]}'))
    [data] = transport.writes
    assert [json.loads(frame)[3] for frame in texts(data)] == ["join", "presence_state", "x"]


def test_a_busy_transport_queues_a_spliced_frame_as_its_text() -> None:
    box = outbox(RecordingTransport(buffered=HIGH_WATER))
    assert box.put_all(burst(b'{"a":{"metas":[]}'))
    assert box.frames[1] == '["1",null,"t","presence_state",{"a":{"metas":[]}}]'


def test_a_burst_whose_own_bytes_pass_high_water_is_queued_not_written() -> None:
    """Counted in bytes, not characters: 30 000 characters of 3 bytes each pass 64 KiB."""
    transport = RecordingTransport()
    box = outbox(transport)
    frames = [f'["1",null,"t","x","{"€" * 30_000}"]', *burst(b"{" + b"x" * (2 * HIGH_WATER))]
    assert box.put_all(frames)
    assert transport.writes == [] and len(box.frames) == 4


async def stalled_outboxes(budget: Budget, count: int) -> list[Outbox]:
    """Served outboxes of clients that read nothing: each transport is full, each send waits."""
    never = asyncio.Event()

    async def send(frame: str) -> None:
        await never.wait()

    boxes = [Outbox(budget, 10**9, lambda: None, lambda error: None) for _ in range(count)]
    for box in boxes:
        box.serve(send, RecordingTransport(buffered=HIGH_WATER))
    return boxes


async def test_a_broadcast_queued_for_many_slow_sockets_counts_once_in_the_node_budget() -> None:
    budget = Budget(10**9)
    boxes = await stalled_outboxes(budget, 3)
    broadcast = "x" * 1000  # one string, handed to every socket, as Hub.deliver does
    size = sys.getsizeof(broadcast)

    for box in boxes:
        assert box.put(broadcast, text_frame(broadcast))
    await asyncio.sleep(0)  # each writer takes it and waits in send
    assert budget.used == size
    assert boxes[0].put("".join(["x"] * 1000))  # equal text, another string: its own bytes
    assert budget.used == 2 * size

    boxes[0].stop()
    assert budget.used == size, "the others still hold the broadcast"
    boxes[1].stop()
    boxes[2].stop()
    assert budget.used == 0


async def test_the_budget_refuses_new_bytes_past_it_but_not_another_queue_of_what_it_holds() -> None:
    broadcast = "y" * 1000
    budget = Budget(sys.getsizeof(broadcast) + 10)
    first, second = await stalled_outboxes(budget, 2)

    assert first.put(broadcast)
    assert not first.put("z" * 1000), "new bytes past the budget"
    assert second.put(broadcast), "the same string again costs nothing more"
    first.stop()
    second.stop()
    assert budget.used == 0
