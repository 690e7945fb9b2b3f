"""Structured logs: one line per event, to stdout, carrying the node name.

On a terminal the line is readable (`12:00:01 info  a@localhost node ready port=4000`);
elsewhere it is one JSON object, ready for a log collector.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "chat"


class _Formatter(logging.Formatter):
    def __init__(self, node: str, as_json: bool) -> None:
        super().__init__()
        self.node = node
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        if self.as_json:
            line = {
                "ts": round(record.created, 3),
                "level": record.levelname.lower(),
                "node": self.node,
                "event": record.getMessage(),
                **fields,
            }
            if record.exc_info:
                line["exc"] = self.formatException(record.exc_info)
            return json.dumps(line, default=str)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in fields.items())
        text = f"{stamp} {record.levelname.lower():5} {self.node} {record.getMessage()} {extras}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(node: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter(node, as_json=not sys.stdout.isatty()))
    for name in (LOGGER_NAME, "hypercorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


def event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, message, extra={"fields": fields})


def untrusted(text: str, limit: int = 120) -> str:
    """A value someone else chose, fit for a log line: cut at `limit` characters, control
    and non-ASCII characters escaped, so it cannot forge lines or flood them."""
    escaped = text[:limit].encode("unicode_escape").decode("ascii")
    return escaped[:limit] + "..." if len(text) > limit or len(escaped) > limit else escaped
