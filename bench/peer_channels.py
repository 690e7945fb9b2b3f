"""The second peer: Django Channels with channels_redis's RedisChannelLayer, served by uvicorn.

The same job as the python-socketio peer, written the way the Channels tutorial writes a
chat: one `AsyncWebsocketConsumer` per socket, `group_add` on join and `group_send` for
every message, the group message turned into a frame by each consumer. No history,
presence or validation. The wire format is plain JSON text frames on `/ws/chat/`:

    client: {"event":"join","ref":0,"payload":{"user":"s1"}}
    server: {"ref":0,"status":"ok"}                        (the socket is in group "lobby")
    client: {"event":"new:msg","ref":1,"payload":{"user":"p0","body":"..."}}
    server: {"event":"new:msg","payload":{"user":"p0","body":"..."}}   (to every member)
    server: {"ref":1,"status":"ok"}

Run two of these on one Redis for the two-node workloads:

    python -m bench.peer_channels --port 5000 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import json
from typing import Any

import django
from django.conf import settings

from bench.peer_server import serve

GROUP = "lobby"
CAPACITY = 1000  # see docs/benchmarks.md, "The peers"


def create_app(redis_url: str) -> Any:
    # A settings module of its own would be a second file for three settings.
    settings.configure(
        DEBUG=False,
        INSTALLED_APPS=["channels"],
        # The layer the channels_redis README sets up first. One option changed: `capacity`
        # (100 by default) bounds both a process's inbox in Redis and each consumer's queue
        # in the process; past it, messages are dropped. W1 and W2 send 100 and 500
        # messages, so at 100 a server that falls behind loses them instead of catching up.
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [redis_url], "capacity": CAPACITY},
            }
        },
    )
    django.setup()
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path

    class ChatConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels ships no types
        async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
            frame = json.loads(text_data or "{}")
            event = frame.get("event")
            if event == "join":
                await self.channel_layer.group_add(GROUP, self.channel_name)
            elif event == "new:msg":
                await self.channel_layer.group_send(GROUP, {"type": "chat.message", "payload": frame.get("payload")})
            else:
                return
            await self.send(text_data=json.dumps({"ref": frame.get("ref"), "status": "ok"}))

        async def chat_message(self, message: dict[str, Any]) -> None:
            await self.send(text_data=json.dumps({"event": "new:msg", "payload": message["payload"]}))

        async def disconnect(self, code: int) -> None:
            await self.channel_layer.group_discard(GROUP, self.channel_name)

    return ProtocolTypeRouter({"websocket": URLRouter([path("ws/chat/", ChatConsumer.as_asgi())])})


def main() -> None:
    serve(create_app, "Django Channels + channels_redis on uvicorn (bench peer)")


if __name__ == "__main__":
    main()
