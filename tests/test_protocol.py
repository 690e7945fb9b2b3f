"""The Phoenix V2 JSON serializer: what decodes, what closes the socket and with which code."""

from __future__ import annotations

import json

import pytest

from shared import protocol
from shared.protocol import MAX_FRAME_BYTES, Frame, ProtocolError, decode

HEAD = '["1","2","rooms:lobby","new:msg",'


def frame_text(payload_json: str) -> str:
    return HEAD + payload_json + "]"


def test_decode_reads_the_five_fields_of_a_frame() -> None:
    frame = decode('["1","2","rooms:lobby","phx_join",{"user":"alice"}]')

    assert frame == Frame("1", "2", "rooms:lobby", "phx_join", {"user": "alice"})


def test_decode_accepts_null_refs() -> None:
    frame = decode('[null,null,"rooms:lobby","new:msg",{}]')

    assert frame.join_ref is None
    assert frame.ref is None


def test_decode_accepts_utf8_bytes() -> None:
    frame = decode('["1","2","rooms:lobby","new:msg",{"body":"привет"}]'.encode())

    assert frame.payload == {"body": "привет"}


def test_decode_accepts_a_frame_of_exactly_64_kib() -> None:
    head, tail = HEAD + '{"body":"', '"}]'
    text = head + "a" * (MAX_FRAME_BYTES - len(head) - len(tail)) + tail
    assert len(text.encode()) == MAX_FRAME_BYTES

    assert len(decode(text).payload["body"]) == MAX_FRAME_BYTES - len(head) - len(tail)


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        "",
        '["1","2","rooms:lobby","new:msg",{}',
        '{"topic":"rooms:lobby"}',
        '"a string"',
        "42",
        '["1","2","rooms:lobby","new:msg"]',
        '["1","2","rooms:lobby","new:msg",{},{}]',
        "[]",
        '[1,"2","rooms:lobby","new:msg",{}]',
        '["1",2,"rooms:lobby","new:msg",{}]',
        '["1","2",3,"new:msg",{}]',
        '["1","2","","new:msg",{}]',
        '["1","2",null,"new:msg",{}]',
        '["1","2","rooms:lobby",4,{}]',
        '["1","2","rooms:lobby","",{}]',
        '["1","2","rooms:lobby","new:msg",[]]',
        '["1","2","rooms:lobby","new:msg",null]',
        '["1","2","rooms:lobby","new:msg","body"]',
    ],
    ids=[
        "not-json",
        "empty",
        "truncated",
        "object",
        "string",
        "number",
        "four-elements",
        "six-elements",
        "empty-array",
        "int-join-ref",
        "int-ref",
        "int-topic",
        "empty-topic",
        "null-topic",
        "int-event",
        "empty-event",
        "array-payload",
        "null-payload",
        "string-payload",
    ],
)
def test_malformed_frame_is_rejected_with_1007(data: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        decode(data)

    assert raised.value.code == protocol.CLOSE_INVALID_DATA == 1007


def test_invalid_utf8_bytes_are_rejected_with_1007() -> None:
    with pytest.raises(ProtocolError) as raised:
        decode(b'["1","2","rooms:lobby","new:msg",{"body":"\xff\xfe"}]')

    assert raised.value.code == 1007


def test_deeply_nested_payload_is_rejected_with_1007() -> None:
    depth = 5000
    data = frame_text('{"a":' * depth + "1" + "}" * depth)
    assert len(data) < MAX_FRAME_BYTES

    with pytest.raises(ProtocolError) as raised:
        decode(data)

    assert raised.value.code == 1007


def test_frame_over_64_kib_is_rejected_with_1009() -> None:
    head, tail = HEAD + '{"body":"', '"}]'
    text = head + "a" * (MAX_FRAME_BYTES - len(head) - len(tail) + 1) + tail

    with pytest.raises(ProtocolError) as raised:
        decode(text)

    assert raised.value.code == protocol.CLOSE_TOO_BIG == 1009


def test_oversized_garbage_is_rejected_with_1009_before_parsing() -> None:
    with pytest.raises(ProtocolError) as raised:
        decode(b"\xff" * (MAX_FRAME_BYTES + 1))

    assert raised.value.code == 1009


def test_frame_over_64_kib_of_utf8_is_rejected_even_when_it_has_fewer_characters() -> None:
    # 40 000 two-byte characters: 80 000 bytes on the wire, 40 000 characters in a str.
    text = frame_text('{"body":"' + "é" * 40_000 + '"}')
    assert len(text) < MAX_FRAME_BYTES < len(text.encode())

    with pytest.raises(ProtocolError) as raised:
        decode(text)

    assert raised.value.code == 1009


def test_encode_writes_the_five_element_array() -> None:
    text = protocol.encode("1", "2", "rooms:lobby", "new:msg", {"body": "привет", "n": 1})

    assert json.loads(text) == ["1", "2", "rooms:lobby", "new:msg", {"body": "привет", "n": 1}]
    assert "привет" in text  # UTF-8, not \\u escapes


def test_encode_round_trips_through_decode() -> None:
    original = Frame("3", None, "rooms:lobby", "new:msg", {"user": "u", "body": "b"})

    text = protocol.encode(original.join_ref, original.ref, original.topic, original.event, original.payload)

    assert decode(text) == original


def test_reply_answers_with_the_frames_refs_and_topic() -> None:
    frame = Frame("1", "7", "rooms:lobby", "new:msg", {"body": "hi"})

    assert json.loads(protocol.reply(frame, "ok", {"msg": "hi"})) == [
        "1",
        "7",
        "rooms:lobby",
        "phx_reply",
        {"status": "ok", "response": {"msg": "hi"}},
    ]


def test_reply_without_response_carries_an_empty_object() -> None:
    frame = Frame(None, "8", "phoenix", "heartbeat", {})

    assert json.loads(protocol.reply(frame, "error")) == [
        None,
        "8",
        "phoenix",
        "phx_reply",
        {"status": "error", "response": {}},
    ]


def test_broadcast_carries_no_refs() -> None:
    assert json.loads(protocol.broadcast("rooms:lobby", "user:entered", {"user": None})) == [
        None,
        None,
        "rooms:lobby",
        "user:entered",
        {"user": None},
    ]
