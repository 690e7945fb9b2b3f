"""Structured logs: one line per event, to stdout, carrying the node name.

On a terminal the line is readable (`12:00:01 info  a@localhost node ready port=4000`);
elsewhere it is one JSON object, ready for a log collector. A module logs with its
named level and the event's fields as keywords:

    log = logs.get("cluster")
    log.warning("connect failed", peer=name, reason=str(error))
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

LOGGER_NAME = "chat"
FIELD_LIMIT = 200  # characters of a field's value kept in a log line
# What logging's own calls take as keywords; every other keyword is a field of the event.
LOGGING_KEYWORDS = frozenset({"exc_info", "stack_info", "stacklevel", "extra"})


def clean(value: str, limit: int = FIELD_LIMIT) -> str:
    """`value` safe to write in a log line: at most `limit` characters (and a count of the
    rest), every unprintable character (newlines, ANSI escapes, bidi overrides) escaped.

    Fields often carry what a client sent (an Origin, a path, a node name from an
    unauthenticated request): without this, one request could forge log lines, drive
    the reader's terminal, or write megabytes per line."""
    if len(value) > limit:
        value = f"{value[:limit]}...(+{len(value) - limit} chars)"
    if value.isprintable():
        return value
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in value)


class _Formatter(logging.Formatter):
    def __init__(self, node: str, as_json: bool) -> None:
        super().__init__()
        self.node = node
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        # Every text field is cleaned here, whoever logs it, so no call site can forget.
        fields = {k: clean(v) if isinstance(v, str) else v for k, v in getattr(record, "fields", {}).items()}
        if self.as_json:
            line = {
                "ts": round(record.created, 3),
                "level": record.levelname.lower(),
                "node": self.node,
                "event": clean(record.getMessage(), 1000),
                **fields,
            }
            if record.exc_info:
                line["exc"] = self.formatException(record.exc_info)
            return json.dumps(line, default=str)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in fields.items())
        text = f"{stamp} {record.levelname.lower():5} {self.node} {clean(record.getMessage(), 1000)} {extras}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class Every:
    """At most one log line every `seconds` for an event a client can repeat at will (a
    refused handshake, a bad line on a Redis channel): the line says how many it stands for."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.count = 0  # events since the last line
        self._logged_at = -seconds

    def due(self) -> int:
        """Count one event; the number to report when a line is due now, else 0."""
        self.count += 1
        now = time.monotonic()
        if now - self._logged_at < self.seconds:
            return 0
        self._logged_at, count, self.count = now, self.count, 0
        return count


def loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: what escapes every task (a library raising where
    nothing catches it) becomes one log line, not asyncio's multi-line traceback on stderr."""
    error = context.get("exception")
    get("loop").error(
        clean(str(context.get("message", "unhandled exception in the event loop")), 1000),
        exc_info=(type(error), error, error.__traceback__) if isinstance(error, BaseException) else None,
        where=repr(context.get("task") or context.get("future") or context.get("handle")),
    )


def configure(node: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter(node, as_json=not sys.stdout.isatty()))
    for name in (LOGGER_NAME, "hypercorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


class Log(logging.LoggerAdapter[logging.Logger]):
    """A logger whose calls take the event's fields as keywords:
    `log.info("node ready", port=4000)` writes `node ready port=4000`."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        fields = {name: kwargs.pop(name) for name in list(kwargs) if name not in LOGGING_KEYWORDS}
        extra = dict(kwargs.get("extra") or {})
        extra["fields"] = {**extra.get("fields", {}), **fields}
        kwargs["extra"] = extra
        return msg, kwargs


def get(name: str) -> Log:
    return Log(logging.getLogger(f"{LOGGER_NAME}.{name}"))
