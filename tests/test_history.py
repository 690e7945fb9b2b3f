"""Message ids shaped like Redis stream ids, and the bounded per-room history."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from shared.history import IdClock, RoomHistory, parse_id
from shared.messages import ChatMessage


def message(message_id: str) -> ChatMessage:
    return ChatMessage(message_id, "u", f"body {message_id}", "nonode@nohost", int(message_id.split("-")[0]))


def test_ids_within_one_millisecond_increase_by_sequence() -> None:
    clock = IdClock()

    assert [clock.next(1000), clock.next(1000), clock.next(1000)] == ["1000-0", "1000-1", "1000-2"]


def test_a_new_millisecond_restarts_the_sequence() -> None:
    clock = IdClock()
    clock.next(1000)
    clock.next(1000)

    assert clock.next(1001) == "1001-0"


def test_ids_keep_increasing_when_the_clock_goes_back() -> None:
    clock = IdClock()
    first = clock.next(2000)

    second = clock.next(1999)

    assert parse_id(second) > parse_id(first)


def test_ids_from_the_real_clock_increase_strictly() -> None:
    clock = IdClock()

    ids = [parse_id(clock.next()) for _ in range(5000)]

    assert all(a < b for a, b in itertools.pairwise(ids))


def test_parse_id_gives_a_numerically_sortable_pair() -> None:
    assert parse_id("1700000000000-5") == (1700000000000, 5)
    assert parse_id("9-0") < parse_id("10-0")
    assert parse_id("10-9") < parse_id("10-10")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "1",
        "1-",
        "-1",
        "1-2-3",
        "1.5-0",
        "1-0.5",
        " 1-0",
        "1-0 ",
        "1-0\n",
        "a-0",
        "1_0",
        "+1-0",
        "1" * 16 + "-0",
    ],
)
def test_parse_id_rejects_garbage(value: str) -> None:
    with pytest.raises(ValueError):
        parse_id(value)


@pytest.mark.parametrize("value", [None, 1700000000000, ["1-0"], {"id": "1-0"}])
def test_parse_id_rejects_non_strings(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_id(value)


def test_after_none_returns_everything_oldest_first() -> None:
    history = RoomHistory(10)
    for message_id in ("1-0", "1-1", "2-0"):
        history.append(message(message_id))

    assert [m.id for m in history.after(None).messages] == ["1-0", "1-1", "2-0"]


def test_after_last_seen_id_returns_only_newer_messages() -> None:
    history = RoomHistory(10)
    for message_id in ("1-0", "1-1", "2-0", "10-0"):
        history.append(message(message_id))

    assert [m.id for m in history.after("1-1").messages] == ["2-0", "10-0"]


def test_after_the_newest_id_returns_nothing() -> None:
    history = RoomHistory(10)
    history.append(message("5-0"))

    assert history.after("5-0").messages == []


def test_after_an_id_that_is_not_stored_uses_id_order() -> None:
    history = RoomHistory(10)
    for message_id in ("1-0", "3-0"):
        history.append(message(message_id))

    assert [m.id for m in history.after("2-7").messages] == ["3-0"]
    assert [m.id for m in history.after("0-0").messages] == ["1-0", "3-0"]


def test_after_an_invalid_id_raises() -> None:
    history = RoomHistory(10)

    with pytest.raises(ValueError):
        history.after("yesterday")


def test_history_keeps_only_the_newest_size_messages() -> None:
    history = RoomHistory(3)
    for n in range(1, 6):
        history.append(message(f"{n}-0"))

    assert [m.id for m in history.after(None).messages] == ["3-0", "4-0", "5-0"]


def test_history_of_size_zero_keeps_nothing() -> None:
    history = RoomHistory(0)
    history.append(message("1-0"))

    assert history.after(None).messages == []


def full(size: int, first: int) -> RoomHistory:
    """A history of `size` holding messages first-0 .. first+size-1-0: full, older ones gone."""
    history = RoomHistory(size)
    for n in range(first - 2, first + size):
        history.append(message(f"{n}-0"))
    return history


def test_a_last_seen_id_older_than_a_full_history_is_told_it_is_truncated() -> None:
    replay = full(3, 10).after("7-0")

    assert replay.truncated
    assert [m.id for m in replay.messages] == ["10-0", "11-0", "12-0"]


@pytest.mark.parametrize("last_seen_id", [None, "10-0", "11-5", "12-0", "99-0"])
def test_a_last_seen_id_within_history_or_none_is_not_truncated(last_seen_id: str | None) -> None:
    assert not full(3, 10).after(last_seen_id).truncated


def test_a_history_that_never_lost_a_message_is_never_truncated() -> None:
    history = RoomHistory(10)
    for n in (5, 6):
        history.append(message(f"{n}-0"))

    assert not history.after("1-0").truncated
    assert not RoomHistory(0).after("1-0").truncated


def test_a_replay_carries_each_payload_encoded_once() -> None:
    history = RoomHistory(10)
    stored = message("5-0")
    history.append(stored)

    replay = history.after(None)

    assert [json.loads(p) for p in replay.payloads] == [stored.payload()]
    assert replay.size == len(replay.payloads[0])
    assert history.after(None).payloads[0] is replay.payloads[0]  # the same bytes, not encoded again


def test_a_copy_is_the_same_history_and_grows_apart() -> None:
    history = full(3, 10)

    copy = history.copy()
    copy.append(message("20-0"))

    assert history.span() == "3 10-0 12-0"
    assert copy.span() == "3 11-0 20-0"
    assert copy.after(None).payloads[0] is history.after(None).payloads[1]  # shared, not encoded again
    assert RoomHistory(3).span() == "0"
