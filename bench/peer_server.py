"""The command line both peers share: serve an ASGI app made for one Redis on uvicorn."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import uvicorn


def serve(create_app: Callable[[str], Any], description: str) -> None:
    """Parse --host/--port/--redis-url and run `create_app(redis_url)` until stopped."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    uvicorn.run(create_app(args.redis_url), host=args.host, port=args.port, log_level="warning", access_log=False)
