"""Property-based fuzzing of the frame decoder, the socket router and the room channel.

Hypothesis generates sequences of frames, valid and near-valid (wrong types in any slot,
stale join refs, users and bodies at and past their limits, bad `last_seen_id`s), and
garbage (not JSON, lone surrogates, binary frames, huge numbers, deep nesting, frames
at and past 64 KiB). A reference model written from the SPEC's "Channel protocol"
section predicts what each frame must get back; the test drives `PhoenixSocket`
in-process, in memory, and checks every frame against it:

- the node never crashes: the only exception ever raised is ProtocolError, with 1007
  (unparseable or wrongly shaped) or 1009 (over 64 KiB), exactly when the model says;
- every other frame gets exactly the replies and pushes the SPEC defines, in order;
- only valid messages are stored, and another member of the room receives exactly the
  stored ones, nothing else.

Runs are seeded (the same examples every time) and count the frames they send;
at least 10 000 go through the router in `make test`, far more under `make soak`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import shared.hub
import shared.socket
import shared.tracker
from shared import protocol
from shared.broker import MemoryBroker
from shared.node import ChatNode
from shared.protocol import MAX_FRAME_BYTES, ProtocolError
from shared.settings import Settings
from shared.socket import PhoenixSocket
from tests.helpers.results import record

LOBBY = "rooms:lobby"
NODE = "fuzz@localhost"
HISTORY = 100
ID_RE = re.compile(r"[0-9]{1,15}-[0-9]{1,15}", re.ASCII)  # the SPEC's message id, digits 0-9 only

ROUTER_EXAMPLES, ROUTER_FRAMES = 600, (15, 30)  # >= 10 000 frames through handle()
RUN_EXAMPLES, RUN_FRAMES = 150, (1, 12)


# The SPEC, as a model ----------------------------------------------------------------------------


class Any_:
    """Matches any value of `kind` that passes `check`, e.g. an id or a timestamp the node chose."""

    def __init__(self, kind: type, check: Any = None) -> None:
        self.kind, self.check = kind, check

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.kind) and (self.check is None or self.check(other))

    def __repr__(self) -> str:
        return f"<any {self.kind.__name__}>"


ANY_ID = Any_(str, lambda value: ID_RE.fullmatch(value) is not None)
ANY_TS = Any_(int, lambda value: value > 0)
ANY_REASON = Any_(str, bool)
ANY_STATE = Any_(dict)


def reply(frame: list[Any], status: str, response: dict[str, Any] | None = None) -> list[Any]:
    return [frame[0], frame[1], frame[2], "phx_reply", {"status": status, "response": response or {}}]


def error(frame: list[Any], reason: Any = ANY_REASON) -> list[Any]:
    return reply(frame, "error", {"reason": reason})


def valid_user(value: Any) -> str | None:
    """The user a message or join carries, or None when the SPEC refuses it (strings of at most 32
    characters, SYSTEM in any case reserved for the server)."""
    if not isinstance(value, str) or len(value.strip()) > 32 or value.strip().casefold() == "system":
        return None
    return value.strip() or "anonymous"


def valid_body(value: Any) -> str | None:
    """1..2000 characters after trimming, a string."""
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= 2000:
        return None
    return value.strip()


@dataclass
class Stored:
    id: str
    user: str
    body: str
    client_msg_id: str | None = None


@dataclass
class Model:
    """What the SPEC says the node holds: the room's history, the socket's join, its rate-limit tokens."""

    burst: int
    stored: list[Stored] = field(default_factory=list)
    join_ref: Any = None  # the socket's join of the lobby; None when not joined
    joined: bool = False
    tokens: int = 0

    def fresh_socket(self) -> None:
        self.join_ref, self.joined, self.tokens = None, False, self.burst


def decoded(data: str | bytes) -> list[Any] | int:
    """The frame as the SPEC reads it, or the close code it must get (1007 or 1009)."""
    if isinstance(data, bytes):
        return 1007  # binary frames are refused
    if len(data.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES:
        return 1009
    try:
        value = orjson.loads(data)  # RFC 8259 JSON, as strict as the wire format
    except orjson.JSONDecodeError:
        return 1007
    if not (isinstance(value, list) and len(value) == 5):
        return 1007
    join_ref, ref, topic, event, payload = value
    if any(item is not None and not isinstance(item, str) for item in (join_ref, ref)):
        return 1007
    if not (isinstance(topic, str) and topic and isinstance(event, str) and event and isinstance(payload, dict)):
        return 1007
    return value


def expect(model: Model, frame: list[Any]) -> tuple[list[list[Any]], list[list[Any]], Stored | None]:
    """(frames to the socket, frames to another member of the room, the message stored) for one decoded frame."""
    join_ref, _ref, topic, event, payload = frame
    model.tokens -= 1  # every frame costs a token, heartbeats and refused frames too
    if model.tokens < 0:
        model.tokens = max(model.tokens, -model.burst)
        return [error(frame, "rate_limited")], [], None
    if topic == "phoenix" and event == "heartbeat":
        return [reply(frame, "ok")], [], None
    if event == "phx_join":
        out: list[list[Any]] = []
        if topic == LOBBY and model.joined:
            out.append([model.join_ref, model.join_ref, LOBBY, "phx_close", {}])  # the old join closes first
            model.joined = False
        if topic != LOBBY:
            return [*out, error(frame, "unauthorized" if topic.startswith("rooms:") else "unmatched topic")], [], None
        user = payload.get("user")
        if user is not None and valid_user(user) is None:
            return [*out, error(frame)], [], None
        last_seen_id = payload.get("last_seen_id")
        if last_seen_id is not None and not (isinstance(last_seen_id, str) and ID_RE.fullmatch(last_seen_id)):
            return [*out, error(frame)], [], None
        model.joined, model.join_ref = True, join_ref
        entered = [None, None, LOBBY, "user:entered", {"user": None if user is None else valid_user(user)}]
        history = model.stored[-HISTORY:]
        if last_seen_id is not None:
            seen = tuple(map(int, last_seen_id.split("-")))
            history = [m for m in history if tuple(map(int, m.id.split("-"))) > seen]
        replay = [[join_ref, None, LOBBY, "new:msg", message_payload(m)] for m in history]
        pushes = [
            [join_ref, None, LOBBY, "join", {"status": "connected"}],
            [join_ref, None, LOBBY, "presence_state", ANY_STATE],
        ]
        return [*out, reply(frame, "ok"), entered, *pushes, *replay], [entered], None
    if topic != LOBBY or not model.joined:
        return [error(frame, "unmatched topic")], [], None
    if join_ref != model.join_ref:
        return [], [], None  # a stale join_ref: ignored
    if event == "phx_leave":
        model.joined = False
        return [reply(frame, "ok"), [join_ref, join_ref, LOBBY, "phx_close", {}]], [], None
    if event != "new:msg":
        return [error(frame)], [], None
    user, body = valid_user(payload.get("user")), valid_body(payload.get("body"))
    if "user" not in payload or user is None or body is None:
        return [error(frame)], [], None
    client_msg_id = payload.get("client_msg_id")
    if client_msg_id is not None and not (isinstance(client_msg_id, str) and 1 <= len(client_msg_id) <= 64):
        return [error(frame)], [], None
    # The same user's client_msg_id still in history: that message, stored and broadcast once.
    if client_msg_id is not None:
        for kept in model.stored[-HISTORY:]:
            if (kept.user, kept.client_msg_id) == (user, client_msg_id):
                return [reply(frame, "ok", {"msg": kept.body, "id": kept.id})], [], None
    message = Stored("", user, body, client_msg_id)
    broadcast = [None, None, LOBBY, "new:msg", {"id": ANY_ID, "user": user, "body": body, "node": NODE, "ts": ANY_TS}]
    return [broadcast, reply(frame, "ok", {"msg": body, "id": ANY_ID})], [broadcast], message


def message_payload(message: Stored) -> dict[str, Any]:
    return {"id": message.id, "user": message.user, "body": message.body, "node": NODE, "ts": ANY_TS}


# Frames ------------------------------------------------------------------------------------------

# Most slots are drawn from pools of values chosen for what they test (one draw each, so
# that tens of thousands of frames generate in seconds); free text and arbitrary JSON
# come in too, less often.
ODD_JSON: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64 + 1,
    10**30,
    -(10**30),
    0.5,
    -1e308,
    1e-320,
    "",
    "x",
    [],
    {},
    [None],
    ["alice"],
    {"user": "alice"},
    {"": {"": {"": []}}},
    [[[[[[[[[[[]]]]]]]]]]],
    {"nested": [1, {"deeper": [2, {"deepest": None}]}]},
    [1, "two", 3.0, None, True, {"six": 6}],
]
JSON_VALUES = st.sampled_from(ODD_JSON) | st.recursive(
    st.none() | st.integers() | st.text(max_size=6), lambda inner: st.lists(inner, max_size=3), max_leaves=4
)
REFS = st.sampled_from([None, "1", "2", "3", "1", "2", "", "10", " 1", "1 "]) | st.sampled_from(ODD_JSON)
TOPICS = st.sampled_from(
    [LOBBY] * 6
    + ["rooms:secret", "rooms:", "rooms:lobby:x", "phoenix", "lobby", "ROOMS:LOBBY", " rooms:lobby", "rooms:lobby\n"]
) | st.text(min_size=1, max_size=12)
EVENTS = st.sampled_from(
    ["new:msg"] * 5 + ["phx_join"] * 3 + ["phx_leave", "heartbeat", "shout", "phx_reply", "phx_close", "new:msg "]
) | st.text(min_size=1, max_size=8)
TRICKY_TEXT = [
    "",
    " ",
    "  \t\n ",
    "a",
    "a" * 32,
    " " + "a" * 32 + " ",
    "a" * 33,
    "x" * 2000,
    "  " + "x" * 2000 + "\n",
    "x" * 2001,
    "<script>alert(1)</script>",
    "<b>bold</b> &amp; \"quotes\" 'single'",
    "\u202eRTL override\u202c",
    "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "zero\u200bwidth\u200d\ufeff",
    "\u200b",
    "\u0000nul\u001f",
    "\u3000ideographic space\u3000",
    "\u2028line separator\u2029",
    "\u0085next line",
    "\u00e9" * 40,
    "\U0001f642" * 33,
    "e\u0301" * 20,
    "Averyveryverylongwordwithoutanyspaces" * 50,
    "anonymous",
    "SYSTEM",
]
TEXT = st.sampled_from(TRICKY_TEXT) | st.sampled_from(TRICKY_TEXT) | st.text(max_size=40)
USERS = TEXT | st.sampled_from(ODD_JSON)
BODIES = TEXT | TEXT | st.sampled_from(ODD_JSON)
# A few ids, so that retries of the same one come up often; then ones at and past the limits.
CLIENT_MSG_IDS = st.sampled_from(["c1", "c2", "x" * 64, "", "x" * 65]) | st.sampled_from(ODD_JSON)
SEEN_IDS = st.sampled_from(
    [
        "0-0",
        "1-0",
        "99999999999999-0",
        "999999999999999-999999999999999",
        "1-2-3",
        "",
        "yesterday",
        "\u0661-\u0660",  # Arabic-Indic digits
        "\uff11-\uff10",  # fullwidth digits
        "9" * 16 + "-0",
        "1-0\n",
        " 1-0",
        "-1-0",
        "1_0-0",
    ]
) | st.sampled_from(ODD_JSON)


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    shape = draw(st.integers(0, 15))
    if shape & 1:
        payload["user"] = draw(USERS)
    if shape & 6:
        payload["body"] = draw(BODIES)
    if shape == 8:
        payload["last_seen_id"] = draw(SEEN_IDS)
    if shape in (3, 7, 11):  # with a user of a small pool too, so that retries by the same user come up
        payload["user"] = draw(st.sampled_from(["dora", "eve"]) | USERS)
        payload["client_msg_id"] = draw(CLIENT_MSG_IDS)
    if shape == 15:
        payload[draw(st.sampled_from(["extra", "", "user ", "Body", "id", "node"]))] = draw(JSON_VALUES)
    return payload


@st.composite
def frame_values(draw: st.DrawFn) -> Any:
    """A frame-shaped value; sometimes one slot of the wrong type, or the wrong shape (near-valid)."""
    event = draw(EVENTS)
    join_ref = draw(REFS)
    value: list[Any] = [
        join_ref,
        join_ref if event == "phx_join" else draw(REFS),
        draw(TOPICS),
        event,
        draw(payloads()),
    ]
    if value[2] == "phoenix":
        value[3] = "heartbeat"
    mutation = draw(st.integers(0, 19))
    if mutation == 0:
        value[draw(st.integers(0, 4))] = draw(JSON_VALUES)  # a slot of any type
    elif mutation == 1:
        value = value[: draw(st.integers(0, 4))] if draw(st.booleans()) else [*value, draw(JSON_VALUES)]
    elif mutation == 2:
        return draw(JSON_VALUES)  # any JSON at all
    return value


def deep(depth: int) -> str:
    return json.dumps(["1", "9", LOBBY, "new:msg", {"user": "u", "body": None}]).replace(
        "null", "[" * depth + "]" * depth
    )


def sized(size: int, filler: str) -> str:
    """A valid new:msg frame of exactly `size` bytes (filler of 1, 2 or 4 bytes a character)."""
    head, tail = json.dumps(["1", "9", LOBBY, "new:msg", {"user": "u", "body": ""}])[:-3], '"}]'
    room = size - len(head.encode()) - len(tail.encode())
    width = len(filler.encode())
    return head + filler * (room // width) + "x" * (room % width) + tail


GARBAGE: st.SearchStrategy[str | bytes] = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["", "[", "]", "null", "{}", "[]", '"x"', "NaN", "[1e999]", '["1","1","phoenix","heartbeat",{}] x']
    ),
    st.binary(max_size=20),
    st.sampled_from([b'[null,"1","phoenix","heartbeat",{}]']),  # a valid frame, but sent as a binary frame
    st.sampled_from([b"\xff\xfe\xfd", b'["1","1","rooms:lobby","phx_join",{"user":"\xc3\x28"}]']),
    st.sampled_from(
        [
            '["1","2","rooms:lobby","new:msg",{"user":"u","body":"\ud800"}]',  # a lone surrogate in the text
            '["1","2","rooms:lobby","new:msg",{"user":"u","body":"\\ud800"}]',  # ...and escaped
            '["1","2","rooms:lobby","new:msg",{"user":"u","body":1e999}]',
            '["1","2","rooms:lobby","new:msg",{"user":"u","body":-1e400}]',
            '["1","2","rooms:lobby","new:msg",{"user":"u","body":123456789012345678901234567890}]',
            '["1","2","rooms:lobby","new:msg",{"user":"u","body":"x","body":"y"}]',  # a duplicate key
            '["1","2","rooms:lobby","new:msg",{"user":"u","body":"\\u0000"}]',
        ]
    ),
    st.sampled_from([10, 255, 1023, 1024, 1025, 20_000]).map(deep),
    st.builds(sized, st.integers(MAX_FRAME_BYTES - 4, MAX_FRAME_BYTES + 4), st.sampled_from(["x", "é", "🙂"])),
)


@st.composite
def raw_frames(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.integers(0, 11))
    if kind == 0:
        return draw(GARBAGE)
    value = draw(frame_values())
    return json.dumps(value, ensure_ascii=draw(st.booleans()))


# Driving the socket ------------------------------------------------------------------------------


class FrozenTime:
    """Stands in for the `time` module inside shared.socket: the rate limit's clock never moves."""

    def monotonic(self) -> float:
        return 1000.0

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def frozen_socket_clock() -> Iterator[None]:
    """The rate limit's clock stopped, and the node's batches (room events, presence) sent on the
    next turn of the loop instead of after some milliseconds: each frame's effects can then be
    checked before the next frame."""
    hub, tracker = shared.hub, shared.tracker
    saved = shared.socket.time, hub.EVENT_BATCH_SECONDS, tracker.PRESENCE_BATCH_SECONDS, hub.FLUSH_COST_FACTOR
    shared.socket.time = FrozenTime()  # type: ignore[assignment]
    hub.EVENT_BATCH_SECONDS = tracker.PRESENCE_BATCH_SECONDS = hub.FLUSH_COST_FACTOR = 0
    try:
        yield
    finally:
        shared.socket.time, hub.EVENT_BATCH_SECONDS, tracker.PRESENCE_BATCH_SECONDS, hub.FLUSH_COST_FACTOR = saved


async def batches_sent() -> None:
    """Let the loop run the node's batch timers (due at once, see frozen_socket_clock)."""
    for _ in range(3):
        await asyncio.sleep(0)


def take(sock: PhoenixSocket) -> list[list[Any]]:
    frames = [json.loads(frame) for frame in sock.outbox.frames]
    sock.outbox.frames.clear()
    sock.outbox.bytes = 0
    for frame in frames:
        if frame[3] == "presence_diff":  # sent on a timer: checked for shape, not expected frame by frame
            assert set(frame[4]) == {"joins", "leaves"}, frame
    return [frame for frame in frames if frame[3] != "presence_diff"]


def matches(got: list[list[Any]], want: list[list[Any]]) -> bool:
    if got == want:
        return True
    # The SPEC does not order a new:msg's reply and its broadcast to the sender.
    return len(want) == 2 and want[0][3] == "new:msg" and got == [want[1], want[0]]


async def make_node(burst: int) -> ChatNode:
    config = Settings(node_name=NODE, ping_interval=0, history_size=HISTORY, rate_limit=(10.0, burst))
    broker = MemoryBroker(HISTORY)
    node = ChatNode(config, broker)
    await broker.start(node.hub.deliver)
    return node


async def observer(node: ChatNode) -> PhoenixSocket:
    other = node.new_socket()
    await other.handle(json.dumps(["o", "o", LOBBY, "phx_join", {"user": "observer"}]))
    await batches_sent()
    take(other)
    return other


async def play(frames: list[str | bytes], burst: int, counter: list[int]) -> None:
    node = await make_node(burst)
    model = Model(burst)
    model.fresh_socket()
    other = await observer(node)
    sock = node.new_socket()
    observed: list[dict[str, Any]] = []
    for data in frames:
        counter[0] += 1
        value = decoded(data)
        if isinstance(value, int):
            with pytest.raises(ProtocolError) as closed:
                await sock.handle(data)
            assert closed.value.code == value, (data[:200], closed.value)
            await batches_sent()
            # The socket closes: it leaves its room, and the client connects again.
            for channel in list(sock.channels.values()):
                sock._leave(channel)
            take(sock)
            observed += [f[4] for f in take(other) if f[3] == "new:msg"]
            sock = node.new_socket()
            model.fresh_socket()
            continue
        want_socket, want_other, message = expect(model, value)
        await sock.handle(data)
        await batches_sent()
        got_socket, got_other = take(sock), take(other)
        assert matches(got_socket, want_socket), (value, got_socket, want_socket)
        assert matches(got_other, want_other), (value, got_other, want_other)
        if message is not None:
            message.id = next(f[4]["id"] for f in got_socket if f[3] == "new:msg")
            model.stored.append(message)
        observed += [f[4] for f in got_other if f[3] == "new:msg"]
    # Only valid messages were stored, exactly those the model expected; the other member got exactly them.
    history = (await node.broker.history(LOBBY, None)).messages
    assert [(m.id, m.user, m.body) for m in history] == [(m.id, m.user, m.body) for m in model.stored[-HISTORY:]]
    for m in history:
        assert valid_user(m.user) == m.user and valid_body(m.body) == m.body and ID_RE.fullmatch(m.id)
    assert [(p["id"], p["user"], p["body"]) for p in observed] == [(m.id, m.user, m.body) for m in model.stored]


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# Hypothesis slows down as one run's tree of explored choices grows, so a long fuzz runs
# as chunks of CHUNK examples, each with a fixed seed of its own: the same frames on every
# run (as derandomize would give), in time linear in the number of frames.
CHUNK = 100


def run_router_fuzz(examples: int, sizes: tuple[int, int]) -> int:
    counter = [0]
    with asyncio.Runner() as runner, frozen_socket_clock():
        for chunk in range(max(1, examples // CHUNK)):

            @seed(chunk)
            @fuzz_settings(min(CHUNK, examples))
            @given(st.lists(raw_frames(), min_size=sizes[0], max_size=sizes[1]), st.sampled_from([20, 1_000_000]))
            def check(frames: list[str | bytes], burst: int) -> None:
                runner.run(play(frames, burst, counter))

            check()
    return counter[0]


@pytest.mark.slow  # its 10 000 frames take seconds: `make test` runs it, not `make test-fast`
def test_every_fuzzed_frame_gets_the_spec_reply_and_nothing_invalid_is_stored_or_broadcast() -> None:
    started = time.monotonic()
    frames = run_router_fuzz(ROUTER_EXAMPLES, ROUTER_FRAMES)
    record(
        "fuzz_router",
        examples=ROUTER_EXAMPLES,
        frames=frames,
        seconds=round(time.monotonic() - started, 1),
        crashes=0,
        invalid_stored=0,
        invalid_broadcast=0,
    )
    assert frames >= 10_000


# Through run(): close codes and clean-up ----------------------------------------------------------


async def serve(frames: list[str | bytes], counter: list[int]) -> None:
    """Feed the frames to `run()` as the Quart route does: it must end with the code of the first fatal one."""
    node = await make_node(1_000_000)
    other = await observer(node)
    sock = node.new_socket()
    incoming: asyncio.Queue[str | bytes] = asyncio.Queue()
    for data in frames:
        incoming.put_nowait(data)
    fatal = next((code for data in frames if isinstance(code := decoded(data), int)), None)
    finished = asyncio.Event()

    async def receive() -> str | bytes:
        if incoming.empty():
            finished.set()
        return await incoming.get()

    async def send(frame: str) -> None:
        json.loads(frame)  # everything sent is valid JSON

    task = asyncio.create_task(sock.run(receive, send))
    async with asyncio.timeout(10):
        if fatal is None:
            await finished.wait()  # every frame handled; the client now goes quiet
            sock.close(1001)
        code = await task
    counter[0] += len(frames)
    assert code == (fatal if fatal is not None else 1001)
    assert sock.channels == {}
    assert all(channel.socket is not sock for channel in node.hub.members.get(LOBBY, ()))  # type: ignore[attr-defined]
    for m in (await node.broker.history(LOBBY, None)).messages:
        assert valid_user(m.user) == m.user and valid_body(m.body) == m.body
    for f in (json.loads(frame) for frame in other.outbox.frames):
        if f[3] == "new:msg":
            assert valid_user(f[4]["user"]) == f[4]["user"] and valid_body(f[4]["body"]) == f[4]["body"]


def run_serve_fuzz(examples: int) -> int:
    counter = [0]
    with asyncio.Runner() as runner, frozen_socket_clock():
        for chunk in range(max(1, examples // CHUNK)):

            @seed(1000 + chunk)
            @fuzz_settings(min(CHUNK, examples))
            @given(st.lists(raw_frames(), min_size=RUN_FRAMES[0], max_size=RUN_FRAMES[1]))
            def check(frames: list[str | bytes]) -> None:
                runner.run(serve(frames, counter))

            check()
    return counter[0]


def test_run_closes_with_the_spec_code_of_the_first_fatal_frame_and_leaves_the_room() -> None:
    frames = run_serve_fuzz(RUN_EXAMPLES)
    record("fuzz_run", examples=RUN_EXAMPLES, frames=frames)
    assert frames >= RUN_EXAMPLES


# The decoder alone -----------------------------------------------------------------------------------


@seed(2000)
@fuzz_settings(1000)
@given(raw_frames() | GARBAGE)
def test_the_decoder_returns_a_frame_or_raises_protocol_error_as_the_spec_says(data: str | bytes) -> None:
    want = decoded(data)
    if isinstance(data, bytes):
        return  # the router refuses binary frames before decoding (checked above)
    if isinstance(want, int):
        with pytest.raises(ProtocolError) as refused:
            protocol.decode(data)
        assert refused.value.code == want
    else:
        frame = protocol.decode(data)
        assert [frame.join_ref, frame.ref, frame.topic, frame.event, frame.payload] == want


# Soak: the same properties, ten times the frames -----------------------------------------------------


@pytest.mark.soak
@pytest.mark.timeout(1200)
def test_soak_fuzz_100k_frames() -> None:
    started = time.monotonic()
    frames = run_router_fuzz(ROUTER_EXAMPLES * 10, ROUTER_FRAMES)
    record(
        "soak_fuzz_router", examples=ROUTER_EXAMPLES * 10, frames=frames, seconds=round(time.monotonic() - started, 1)
    )
    assert frames >= 100_000
