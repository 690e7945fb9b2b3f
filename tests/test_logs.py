"""Log lines: one per event, whatever a client puts in the fields (shared/logs.py)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from shared import logs

HOSTILE = "http://evil.example\n12:00:00 info  a@localhost node ready\x1b[31m\x9b2J\u202e" + "x" * 10_000


def line(as_json: bool, **fields: object) -> str:
    record = logging.LogRecord("chat.test", logging.INFO, __file__, 1, "websocket refused", None, None)
    record.fields = fields
    return logs._Formatter("a@localhost", as_json=as_json).format(record)


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "terminal"])
def test_a_hostile_field_stays_on_one_short_line_without_control_characters(as_json: bool) -> None:
    text = line(as_json, origin=HOSTILE)

    assert len(text.splitlines()) == 1
    assert text.isprintable()
    assert len(text) < 400
    shown = json.loads(text)["origin"] if as_json else text.partition("origin=")[2]
    assert shown.startswith("http://evil.example\\n12:00:00 info  a@localhost node ready\\x1b[31m\\x9b2J\\u202e")
    assert shown.endswith(f"...(+{len(HOSTILE) - logs.FIELD_LIMIT} chars)")


def test_a_plain_field_is_kept_as_it_is() -> None:
    assert logs.clean("http://localhost:4000") == "http://localhost:4000"
    assert logs.clean("привет 🙂") == "привет 🙂"


def test_fields_that_are_not_text_are_left_to_the_format() -> None:
    assert json.loads(line(True, sockets=3, peers=["b@localhost"]))["peers"] == ["b@localhost"]


def test_an_exception_nothing_caught_is_one_json_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What escapes every task reaches the loop's handler: one line, the traceback inside it."""
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    for name in (logs.LOGGER_NAME, "hypercorn.error"):  # configure() changes these: put them back after
        logger = logging.getLogger(name)
        for attribute in ("handlers", "level", "propagate"):
            monkeypatch.setattr(
                logger, attribute, list(logger.handlers) if attribute == "handlers" else getattr(logger, attribute)
            )
    logs.configure("a@localhost")
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(logs.loop_exception)
        loop.call_soon(lambda: 1 / 0)
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()

    out = capsys.readouterr()
    assert out.err == ""
    (text,) = out.out.splitlines()
    record = json.loads(text)
    assert record["level"] == "error" and "ZeroDivisionError" in record["exc"]


def test_every_lets_one_line_through_a_second_and_counts_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    every = logs.Every(1.0)

    assert [every.due() for _ in range(5)] == [1, 0, 0, 0, 0]
    now[0] += 1.0
    assert every.due() == 5


def test_a_call_takes_its_level_by_name_and_the_fields_as_keywords(caplog: pytest.LogCaptureFixture) -> None:
    log = logs.get("test")

    with caplog.at_level(logging.INFO, logger="chat.test"):
        log.warning("connect failed", peer="b@localhost", reason="refused")
        log.info("older style", extra={"fields": {"sockets": 3}}, left=0)

    assert [(r.levelname, r.getMessage(), getattr(r, "fields", None)) for r in caplog.records] == [
        ("WARNING", "connect failed", {"peer": "b@localhost", "reason": "refused"}),
        ("INFO", "older style", {"sockets": 3, "left": 0}),
    ]
