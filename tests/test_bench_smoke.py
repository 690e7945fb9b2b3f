"""The bench harness works: `python -m bench --smoke` runs W1-W5 against ChatLab and
both peers (python-socketio, Django Channels) at tiny sizes, and every workload produces
numbers with nothing lost. Correctness only: no figure here is compared with any speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.paths import ROOT

SYSTEMS = ["chatlab", "socketio", "channels"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=230,
    )
    reports = sorted(out.glob("*-smoke.json"))
    assert reports, f"no report written\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert (out / reports[-1].with_suffix(".png").name).stat().st_size > 0
    return proc, json.loads(reports[-1].read_text())


def test_smoke_run_passes_its_own_checks(smoke: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    proc, _ = smoke
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "÷ peer = ChatLab's figure divided by that peer's" in proc.stdout


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_workload_produces_numbers_and_loses_nothing(
    smoke: tuple[subprocess.CompletedProcess[str], dict], system: str
) -> None:
    _, report = smoke
    results = report["results"]
    for workload in ("W1", "W2"):
        outcome = results[workload][system]
        assert outcome["error"] is None, outcome
        m = outcome["metrics"]
        assert m["deliveries"] == m["deliveries_expected"] > 0
        assert m["lost"] == m["duplicates"] == m["rejected"] == m["unanswered"] == 0
        assert m["dropped_connections"] == 0
        for key in ("cpu_us_per_delivery", "p50_ms", "p99_ms"):
            assert isinstance(m[key], int | float) and m[key] >= 0, (workload, key, m[key])
        assert m["p50_ms"] <= m["p99_ms"]
    w3 = results["W3"][system]
    assert w3["error"] is None, w3
    assert w3["metrics"]["held"] == w3["metrics"]["connections"] > 0
    assert isinstance(w3["metrics"]["kb_per_connection"], int | float)
    w4 = results["W4"][system]
    assert w4["error"] is None, w4
    assert w4["metrics"]["max_held"] == report["sizes"]["w4_steps"][-1]
    for step in w4["metrics"]["steps"]:
        assert step["result"] == "held" and step["lost"] == 0, step
        assert step["join_ms_per_client"] > 0, step


@pytest.mark.parametrize("system", SYSTEMS)
def test_the_reconnect_storm_brings_every_client_back(
    smoke: tuple[subprocess.CompletedProcess[str], dict], system: str
) -> None:
    """W5: node a stops, every client is back on node b; what each missed is counted."""
    _, report = smoke
    w5 = report["results"]["W5"][system]
    assert w5["error"] is None, w5
    m = w5["metrics"]
    assert m["rejoined"] == m["clients"] == report["sizes"]["w5"]["clients"]
    assert m["rejoin_s"] > 0
    assert m["acknowledged"] == m["messages_sent"] > 0
    # Lost is counted, never assumed: at most every acknowledged message for every client.
    assert 0 <= m["lost"] <= m["acknowledged"] * m["clients"]
    assert 0 <= m["clients_missing_messages"] <= m["clients"]


def test_chatlab_loses_nothing_in_the_reconnect_storm(smoke: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    """Its clients come back with last_seen_id and catch up from history, each message once."""
    _, report = smoke
    m = report["results"]["W5"]["chatlab"]["metrics"]
    assert m["lost"] == m["clients_missing_messages"] == m["duplicates"] == 0
    assert isinstance(m["caught_up_s"], float) and m["caught_up_s"] >= m["rejoin_s"]


def test_the_table_compares_every_system(smoke: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    _, report = smoke
    assert report["systems"] == SYSTEMS
    assert report["header"][2:7] == [
        "ChatLab",
        "python-socketio",
        "Django Channels",
        "÷ python-socketio",
        "÷ Django Channels",
    ]
    workloads = {row[0].split()[0] for row in report["table"]}
    assert workloads == {"W1", "W2", "W3", "W4", "W5"}
    w4_joins = [row for row in report["table"] if row[1].startswith("join per client")]
    assert len(w4_joins) == len(report["sizes"]["w4_steps"])
    for row in report["table"]:
        assert "-" not in row[2:5], row  # every system has a figure in every row


def test_the_plot_has_a_panel_for_every_row(smoke: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    """Every row of the table is drawn, the ones ChatLab loses included."""
    from bench import plot

    _, report = smoke
    panels = plot.panels(report)
    assert [p.title for p in panels] == [f"{row[0].split()[0]}: {row[1]}" for row in report["table"]]
    for panel, row in zip(panels, report["table"], strict=True):
        assert panel.labels == row[2:5]  # the figures as printed, for all three systems
        assert panel.values == [float(cell.replace(",", "")) if cell[0].isdigit() else None for cell in row[2:5]]


async def test_the_client_reads_frames_split_anywhere() -> None:
    """The bare client's framing: any split of the byte stream gives the same deliveries."""
    import random

    from bench import loadgen

    gen = loadgen.Generator()
    traffic = loadgen.Traffic(50)
    gen.traffic = traffic
    stream = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    for seq in range(50):
        pad = "x" * (seq * 1500)  # 7-bit, 16-bit and 64-bit lengths
        payload = (
            f'[null,null,"rooms:lobby","new:msg",{{"user":"p","body":"{traffic.body(seq)}","pad":"{pad}"}}]'.encode()
        )
        n = len(payload)
        if n < 126:
            head = bytes((0x81, n))
        elif n < 65536:
            head = bytes((0x81, 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x81, 127)) + n.to_bytes(8, "big")
        stream += head + payload
    rng = random.Random(7)
    for _ in range(3):
        client = loadgen.PhoenixLoadClient(gen, "127.0.0.1", 1, "s", subscriber=True)
        pos = 0
        while pos < len(stream):
            step = rng.choice([1, 2, 3, 7, 100, 4096, 70000])
            client.data_received(stream[pos : pos + step])
            pos += step
        assert client.upgraded and client.opened.done()
        assert bytes(client.seen) == b"\x01" * 50
    assert traffic.received == 150 and traffic.duplicates == 0


def test_the_benchmarks_page_shows_the_last_full_run() -> None:
    """docs/benchmarks.md quotes the newest committed run: its table, its file, its plot."""
    from bench import plot

    runs = sorted(p for p in (ROOT / "bench" / "results").glob("*.json") if not p.stem.endswith("-smoke"))
    assert runs, "no full run in bench/results"
    last = runs[-1]
    page = (ROOT / "docs" / "benchmarks.md").read_text()

    assert plot.markdown(json.loads(last.read_text())) in page
    assert f"`bench/results/{last.name}`" in page
    assert f"(../bench/results/{last.stem}.png)" in page
    assert last.with_suffix(".png").stat().st_size > 0


def _frames(*texts: bytes) -> bytes:
    """The server's side of an upgraded connection: a 101 answer, then unmasked text frames."""
    out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    for text in texts:
        assert len(text) < 126
        out += bytes((0x81, len(text))) + text
    return out


async def test_the_channels_client_reads_acks_and_deliveries() -> None:
    from bench import loadgen

    gen = loadgen.Generator()
    traffic = loadgen.Traffic(3)
    gen.traffic = traffic
    client = loadgen.ChannelsClient(gen, "127.0.0.1", 1, "p0", subscriber=True)
    for seq in range(3):
        client.publish(traffic, seq)  # no transport yet: nothing is written, refs 1-3 are kept
    client.data_received(
        _frames(
            b'{"ref": 0, "status": "ok"}',
            f'{{"event": "new:msg", "payload": {{"user": "p0", "body": "{traffic.body(1)}"}}}}'.encode(),
            b'{"ref": 2, "status": "ok"}',
            b'{"ref": 3, "status": "error"}',
        )
    )
    assert client.joined.done() and client.joined.exception() is None
    assert bytes(client.seen) == b"\x00\x01\x00" and traffic.received == 1
    assert bytes(traffic.acked) == b"\x00\x01\x00"
    assert (traffic.acks_ok, traffic.acks_error) == (1, 1)


async def test_a_phoenix_client_rejoins_with_the_newest_id_it_saw() -> None:
    """W5: the id is read from broadcasts and from what the join replays, the newest kept."""
    from bench import loadgen

    gen = loadgen.Generator()
    old = loadgen.PhoenixLoadClient(gen, "127.0.0.1", 1, "s1", subscriber=True)
    old.track_last_seen = True
    old.data_received(
        _frames(
            b'["1",null,"rooms:lobby","new:msg",{"id":"1700000000002-0","body":"x"}]',
            b'[null,null,"rooms:lobby","new:msg",{"id":"1700000000010-1","body":"y"}]',
            b'[null,null,"rooms:lobby","new:msg",{"id":"1700000000009-5","body":"z"}]',
        )
    )
    assert old.last_seen == (1700000000010, 1)
    new = loadgen.PhoenixLoadClient(gen, "127.0.0.1", 2, "s1", subscriber=True)
    new.inherit(old)
    sent: list[str] = []
    new.send_text = sent.append  # type: ignore[method-assign]
    new.join()
    assert sent == ['["1","1","rooms:lobby","phx_join",{"user":"s1","last_seen_id":"1700000000010-1"}]']
