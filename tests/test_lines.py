"""The lines on a node's Redis channel (stage2_cluster/lines.py): what we write parses back
to the same typed line, and anything else is a BadLine, never another exception."""

from __future__ import annotations

import pytest

from shared.presence import Entry
from stage2_cluster import lines
from stage2_cluster.lines import BadLine

BOOT = "0123456789abcdef"
ALICE = Entry("a@x", "alice", {"phx_ref": "r1", "node": "a@x"})


def test_every_kind_we_write_parses_back() -> None:
    assert lines.parse(lines.heartbeat("a@x", BOOT)) == lines.Heartbeat("a@x", BOOT)
    change = lines.parse(lines.presence_change("a@x", BOOT, "rooms:lobby", [ALICE], []))
    assert change == lines.PresenceChange("a@x", BOOT, "rooms:lobby", [ALICE], [])
    sync = lines.parse(lines.sync("a@x", BOOT, {"rooms:lobby": [ALICE]}, want_reply=True))
    assert sync == lines.Sync("a@x", BOOT, {"rooms:lobby": [ALICE]}, want_reply=True)
    assert lines.parse(lines.broadcast("rooms:lobby", "[1]")) == lines.Broadcast("rooms:lobby", "[1]")
    assert lines.parse("m rooms:lobby 1-0 [2]") == lines.Stored("rooms:lobby", "1-0", "[2]")


def test_an_empty_sync_names_no_topic() -> None:
    assert lines.parse(lines.sync("a@x", BOOT, {}, want_reply=False)) == lines.Sync("a@x", BOOT, {}, False)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "q boom",
        "h a@x",  # a heartbeat without its boot id (the format before incarnations)
        f"h not-a-name {BOOT}",
        "h a@x 0123",
        "h a@x " + "G" * 16,
        'p {"node": "a@x", "topic": "t", "joins": [], "leaves": []}',
        f'p {{"node": "a@x", "boot": "{BOOT}", "joins": [], "leaves": []}}',
        f'p {{"node": "a@x", "boot": "{BOOT}", "topic": "t", "joins": [["alice", {{}}]], "leaves": []}}',
        f's {{"node": "a@x", "boot": "{BOOT}", "topics": []}}',
        f's {{"node": "a@x", "boot": "{BOOT}", "topics": {{"t": "all"}}}}',
        "s [1]",
        "s not json",
        "m rooms:lobby x [1]",
        "m rooms:lobby 1-0 not-a-frame",
        "b rooms:lobby",
    ],
)
def test_a_line_we_would_never_send_is_a_bad_line(line: str) -> None:
    with pytest.raises(BadLine):
        lines.parse(line)
