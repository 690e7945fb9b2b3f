"""The peer system: python-socketio with AsyncRedisManager, served by uvicorn.

The same job as a ChatLab node, without history, presence or validation: a client
sends `join` (acknowledged once it is in the "lobby" room), and `new:msg` is
broadcast to every member of the room on every process through Redis, then
acknowledged. Run two of these on one Redis for the two-node workloads:

    python -m bench.peer_socketio --port 5000 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

from typing import Any

import socketio

from bench.peer_server import serve

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
    serve(create_app, "python-socketio + AsyncRedisManager on uvicorn (bench peer)")


if __name__ == "__main__":
    main()
