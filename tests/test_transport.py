"""The fast path (shared/transport.py): frames built once, written straight to the socket."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from wsproto.frame_protocol import FrameProtocol, Opcode

from shared.transport import text_frame
from tests.support import NodeProcess


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
    for line in httpx.get(node.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("chat_fast_path_connections "):
            return float(line.split()[1])
    raise AssertionError("chat_fast_path_connections missing from /metrics")


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
