"""The peer system: python-socketio with AsyncRedisManager, served by uvicorn.

The same job as a ChatLab node, without history, presence or validation: a client
sends `join` (acknowledged once it is in the "lobby" room), and `new:msg` is
broadcast to every member of the room on every process through Redis, then
acknowledged. Run two of these on one Redis for the two-node workloads:

    python -m bench.peer_socketio --port 5000 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
from typing import Any

import socketio
import uvicorn

ROOM = "lobby"


def create_app(redis_url: str) -> socketio.ASGIApp:
    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=socketio.AsyncRedisManager(redis_url),
        logger=False,
        engineio_logger=False,
    )

    @sio.on("join")
    async def join(sid: str, data: Any) -> str:
        await sio.enter_room(sid, ROOM)
        return "ok"

    @sio.on("new:msg")
    async def new_msg(sid: str, data: Any) -> str:
        await sio.emit("new:msg", data, room=ROOM)
        return "ok"

    return socketio.ASGIApp(sio)


def main() -> None:
    parser = argparse.ArgumentParser(description="python-socketio + AsyncRedisManager on uvicorn (bench peer)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.redis_url),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
