"""Presence state and diffs in exactly the shapes Phoenix.Presence (and phoenix.js) use."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared import protocol
from shared.presence import Entry, Presence, diff, new_ref
from shared.tracker import PresenceTracker
from tests.helpers.waits import async_wait_until

LOBBY = "rooms:lobby"


def meta(ref: str, **extra: object) -> dict[str, object]:
    return {"phx_ref": ref, **extra}


def test_empty_presence_state_is_an_empty_object() -> None:
    assert Presence().state() == {}


def test_state_groups_metas_by_key() -> None:
    room = Presence()
    room.track("a@localhost", "alice", meta("r1", online_at=1))
    room.track("b@localhost", "alice", meta("r2", online_at=2))
    room.track("a@localhost", "bob", meta("r3", online_at=3))

    assert room.state() == {
        "alice": {"metas": [{"phx_ref": "r1", "online_at": 1}, {"phx_ref": "r2", "online_at": 2}]},
        "bob": {"metas": [{"phx_ref": "r3", "online_at": 3}]},
    }


def test_diff_has_joins_and_leaves_in_state_format() -> None:
    joined = Entry("a@localhost", "alice", meta("r1"))
    left = Entry("a@localhost", "bob", meta("r2"))

    assert diff([joined], [left]) == {
        "joins": {"alice": {"metas": [{"phx_ref": "r1"}]}},
        "leaves": {"bob": {"metas": [{"phx_ref": "r2"}]}},
    }


def test_empty_diff_has_both_keys() -> None:
    assert diff([], []) == {"joins": {}, "leaves": {}}


def test_untrack_removes_one_presence_and_returns_it() -> None:
    room = Presence()
    room.track("a@localhost", "alice", meta("r1"))
    room.track("a@localhost", "alice", meta("r2"))

    gone = room.untrack("r1")

    assert gone == Entry("a@localhost", "alice", {"phx_ref": "r1"})
    assert room.state() == {"alice": {"metas": [{"phx_ref": "r2"}]}}


def test_untrack_of_an_unknown_ref_returns_none() -> None:
    room = Presence()
    room.track("a@localhost", "alice", meta("r1"))

    assert room.untrack("nope") is None
    assert len(room) == 1


def test_drop_node_removes_every_entry_of_that_node_only() -> None:
    room = Presence()
    room.track("a@localhost", "alice", meta("r1"))
    room.track("b@localhost", "alice", meta("r2"))
    room.track("b@localhost", "bob", meta("r3"))
    room.track("a@localhost", "carol", meta("r4"))

    gone = room.drop_node("b@localhost")

    assert sorted(entry.meta["phx_ref"] for entry in gone) == ["r2", "r3"]
    assert room.of_node("b@localhost") == []
    assert room.state() == {
        "alice": {"metas": [{"phx_ref": "r1"}]},
        "carol": {"metas": [{"phx_ref": "r4"}]},
    }


def test_of_node_lists_the_entries_a_node_tracks() -> None:
    room = Presence()
    room.track("a@localhost", "alice", meta("r1"))
    room.track("b@localhost", "bob", meta("r2"))

    assert room.of_node("b@localhost") == [Entry("b@localhost", "bob", {"phx_ref": "r2"})]


def test_new_refs_are_unique_strings() -> None:
    refs = {new_ref() for _ in range(1000)}

    assert len(refs) == 1000
    assert all(isinstance(ref, str) and ref for ref in refs)


def test_encoded_state_is_the_state_as_json() -> None:
    room = Presence()
    assert room.encoded_state() == b"{}"

    room.track("a@localhost", "alice", meta("r1", online_at=1, name='"quoted" \u00e9'))
    room.track("a@localhost", "bob", meta("r2"))

    assert json.loads(room.encoded_state()) == room.state()


# Each step: track (key, ref) or untrack ref. Few keys and refs, so keys fill, empty and come back.
STEPS = st.lists(
    st.tuples(st.booleans(), st.sampled_from(["alice", "bob", "carol"]), st.sampled_from(["r1", "r2", "r3", "r4"])),
    max_size=40,
)


@given(steps=STEPS, encode_every=st.integers(min_value=1, max_value=5))
def test_encoded_state_follows_every_change(steps: list[tuple[bool, str, str]], encode_every: int) -> None:
    """The cached JSON is re-encoded piece by piece; whenever it is asked for, it must
    equal the state, however tracks and untracks came in between."""
    room = Presence()
    for n, (track, key, ref) in enumerate(steps):
        if track:
            room.track("a@localhost", key, meta(ref, n=n))
        else:
            room.untrack(ref)
        if n % encode_every == 0:
            assert json.loads(room.encoded_state()) == room.state()
    assert json.loads(room.encoded_state()) == room.state()


def test_joiner_state_is_the_last_encoding_plus_the_joiner_until_it_expires() -> None:
    room = Presence()
    room.track("a@localhost", "alice", meta("r1"))
    room.encoded_state()
    room.track("a@localhost", "bob", meta("r2"))
    room.track("a@localhost", "carol", meta("r3"))

    # The encoding of alice alone, with carol's own entry: bob comes in the batch's diff.
    assert json.loads(b"".join(room.joiner_state("carol", meta("r3")))) == {
        "alice": {"metas": [meta("r1")]},
        "carol": {"metas": [meta("r3")]},
    }
    room.expire()  # the batch went out: from now on the state as it is
    assert json.loads(b"".join(room.joiner_state("carol", meta("r3")))) == room.state()


def test_joiner_state_of_a_key_already_encoded_is_encoded_afresh() -> None:
    room = Presence()
    room.track("a@localhost", "alice", meta("r1"))
    room.encoded_state()
    room.track("a@localhost", "alice", meta("r2"))  # a second tab

    assert json.loads(b"".join(room.joiner_state("alice", meta("r2")))) == room.state()
    assert len(room.state()["alice"]["metas"]) == 2


async def test_a_presence_that_leaves_and_comes_back_within_one_batch_goes_out_as_a_join() -> None:
    """phoenix.js applies a diff's joins before its leaves, so a leave and a later join of
    the same presence in one diff would take it off every page, though it is there."""
    diffs: list[dict[str, Any]] = []
    tracker = PresenceTracker("a@localhost", lambda d: diffs.append(protocol.decode(d.frame).payload))
    bob = Entry("b@localhost", "bob", meta("r1", node="b@localhost"))
    tracker.apply_remote(LOBBY, [bob], [])
    await async_wait_until(lambda: len(diffs) == 1, what="the first diff")

    tracker.apply_remote(LOBBY, [], [bob])  # a peer's leave, then its full sync bringing bob back
    tracker.sync_node(LOBBY, "b@localhost", [bob])
    await async_wait_until(lambda: len(diffs) == 2, what="the second diff")

    assert diffs[1] == {"joins": {"bob": {"metas": [meta("r1", node="b@localhost")]}}, "leaves": {}}
    assert tracker.room(LOBBY).state() == {"bob": {"metas": [meta("r1", node="b@localhost")]}}


async def test_a_presence_that_joins_and_leaves_within_one_batch_goes_out_as_both() -> None:
    """A socket that joined within the window has the join in its presence_state: the
    leave must reach it too (PresenceBatch)."""
    diffs: list[dict[str, Any]] = []
    tracker = PresenceTracker("a@localhost", lambda d: diffs.append(protocol.decode(d.frame).payload))
    bob = Entry("b@localhost", "bob", meta("r1", node="b@localhost"))

    tracker.apply_remote(LOBBY, [bob], [])
    tracker.apply_remote(LOBBY, [], [bob])
    await async_wait_until(lambda: len(diffs) == 1, what="the diff")

    both = {"bob": {"metas": [meta("r1", node="b@localhost")]}}
    assert diffs == [{"joins": both, "leaves": both}]
