"""The Quart app through its test client: HTTP routes, JSON errors and the WebSocket handshake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient
from quart.testing.connections import WebsocketDisconnectError, WebsocketResponseError

from shared.app import create_app
from shared.node import ChatNode
from shared.settings import Settings

NODE = "a@localhost"
LOBBY = "rooms:lobby"
WS_PATH = "/socket/websocket?vsn=2.0.0"
DEADLINE = 5.0


def make_app(**settings: Any) -> tuple[Quart, ChatNode]:
    chat = ChatNode(Settings(**{"node_name": NODE, "ping_interval": 0, **settings}))
    return create_app(chat), chat


@pytest.fixture
async def served() -> AsyncIterator[tuple[QuartClient, ChatNode]]:
    app, chat = make_app()
    async with app.test_app() as test_app:  # runs while_serving: the node starts and stops
        yield test_app.test_client(), chat


async def receive(ws: Any) -> Any:
    async with asyncio.timeout(DEADLINE):
        return json.loads(await ws.receive())


async def refusal(ws: Any) -> WebsocketResponseError:
    """The HTTP response that refused the upgrade."""
    with pytest.raises(WebsocketResponseError) as raised:
        async with asyncio.timeout(DEADLINE):
            await ws.receive()
    return raised.value


# HTTP --------------------------------------------------------------------------------------


async def test_index_shows_the_node_the_nodes_and_the_redis_line(served: tuple[QuartClient, ChatNode]) -> None:
    client, chat = served

    response = await client.get("/")

    assert response.status_code == 200
    page = await response.get_data(as_text=True)
    assert f'<dd id="self">{NODE}</dd>' in page
    assert f'<dd id="nodes">[{NODE}]</dd>' in page
    assert chat.broker.status in page


async def test_healthz_answers_200(served: tuple[QuartClient, ChatNode]) -> None:
    client, _ = served

    response = await client.get("/healthz")

    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok", "node": NODE}


async def test_readyz_answers_200_while_serving(served: tuple[QuartClient, ChatNode]) -> None:
    client, _ = served

    response = await client.get("/readyz")

    assert response.status_code == 200
    assert (await response.get_json())["ready"] is True


async def test_readyz_answers_503_while_draining(served: tuple[QuartClient, ChatNode]) -> None:
    client, chat = served

    await chat.drain(timeout=DEADLINE)
    response = await client.get("/readyz")

    assert response.status_code == 503
    body = await response.get_json()
    assert body["ready"] is False
    assert body["draining"] is True


async def test_api_nodes_lists_self_first(served: tuple[QuartClient, ChatNode]) -> None:
    client, _ = served

    response = await client.get("/api/nodes")

    assert response.status_code == 200
    body = await response.get_json()
    assert list(body) == ["self", "nodes"]
    assert body == {"self": NODE, "nodes": [NODE]}


async def test_metrics_is_prometheus_text_with_the_chat_counters(served: tuple[QuartClient, ChatNode]) -> None:
    client, _ = served

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = await response.get_data(as_text=True)
    for name in (
        "chat_connections",
        "chat_joins_total",
        "chat_messages_in_total",
        "chat_messages_out_total",
        "chat_deliveries_total",
        "chat_drops_total",
    ):
        assert f"\n{name} " in text, name
    assert "\nchat_cluster_nodes 1.0\n" in text
    assert "\nchat_redis_up 1.0\n" in text


async def test_metrics_count_a_connection_a_join_and_a_message(served: tuple[QuartClient, ChatNode]) -> None:
    client, _ = served

    async with client.websocket(WS_PATH) as ws:
        await ws.send(json.dumps(["1", "1", LOBBY, "phx_join", {"user": "alice"}]))
        assert (await receive(ws))[3] == "phx_reply"
        await ws.send(json.dumps(["1", "2", LOBBY, "new:msg", {"user": "alice", "body": "hi"}]))
        while (await receive(ws))[1] != "2":
            pass
        text = await (await client.get("/metrics")).get_data(as_text=True)

    assert "\nchat_connections 1.0\n" in text
    assert "\nchat_joins_total 1.0\n" in text
    assert "\nchat_messages_in_total 1.0\n" in text


async def test_unknown_route_answers_json_404(served: tuple[QuartClient, ChatNode]) -> None:
    client, _ = served

    response = await client.get("/no/such/page")

    assert response.status_code == 404
    assert response.content_type == "application/json"
    body = await response.get_json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str) and body["error"]


async def test_wrong_method_answers_json_405_with_allow(served: tuple[QuartClient, ChatNode]) -> None:
    client, _ = served

    response = await client.post("/healthz", json={})

    assert response.status_code == 405
    assert response.content_type == "application/json"
    assert list(await response.get_json()) == ["error"]
    assert "GET" in response.headers.get("Allow", "")


# WebSocket -----------------------------------------------------------------------------


async def test_websocket_join_and_message_round_trip(served: tuple[QuartClient, ChatNode]) -> None:
    client, _ = served

    async with client.websocket(WS_PATH) as ws:
        await ws.send(json.dumps(["1", "1", LOBBY, "phx_join", {"user": "alice"}]))
        assert await receive(ws) == ["1", "1", LOBBY, "phx_reply", {"status": "ok", "response": {}}]
        await ws.send(json.dumps(["1", "2", LOBBY, "new:msg", {"user": "alice", "body": "hi"}]))
        frames = [await receive(ws)]
        while frames[-1][1] != "2":
            frames.append(await receive(ws))

    [broadcast] = [f for f in frames if f[3] == "new:msg" and f[0] is None]
    assert {k: broadcast[4][k] for k in ("user", "body", "node")} == {"user": "alice", "body": "hi", "node": NODE}
    assert frames[-1] == [
        "1",
        "2",
        LOBBY,
        "phx_reply",
        {"status": "ok", "response": {"msg": "hi", "id": broadcast[4]["id"]}},
    ]


async def test_websocket_without_origin_is_accepted(served: tuple[QuartClient, ChatNode]) -> None:
    client, _ = served

    async with client.websocket(WS_PATH) as ws:
        await ws.send(json.dumps([None, "1", "phoenix", "heartbeat", {}]))

        assert await receive(ws) == [None, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}]


async def test_websocket_from_the_same_host_is_accepted(served: tuple[QuartClient, ChatNode]) -> None:
    client, _ = served

    async with client.websocket(WS_PATH, headers={"Origin": "http://localhost"}) as ws:
        await ws.send(json.dumps([None, "1", "phoenix", "heartbeat", {}]))

        assert (await receive(ws))[3] == "phx_reply"


async def test_websocket_from_another_origin_is_refused_with_403(served: tuple[QuartClient, ChatNode]) -> None:
    client, chat = served

    async with client.websocket(WS_PATH, headers={"Origin": "http://evil.example"}) as ws:
        refused = await refusal(ws)

    assert refused.response.status_code == 403
    assert list(await refused.response.get_json()) == ["error"]
    assert chat.sockets == set()


async def test_websocket_from_a_listed_origin_is_accepted() -> None:
    app, _ = make_app(allowed_origins=("http://chat.example",))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with client.websocket(WS_PATH, headers={"Origin": "http://chat.example"}) as ws:
            await ws.send(json.dumps([None, "1", "phoenix", "heartbeat", {}]))

            assert (await receive(ws))[3] == "phx_reply"


async def test_websocket_from_an_unlisted_origin_is_refused_even_from_the_same_host() -> None:
    app, _ = make_app(allowed_origins=("http://chat.example",))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with client.websocket(WS_PATH, headers={"Origin": "http://localhost"}) as ws:
            refused = await refusal(ws)

    assert refused.response.status_code == 403


async def test_websocket_from_any_origin_is_accepted_with_a_star() -> None:
    app, _ = make_app(allowed_origins=("*",))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with client.websocket(WS_PATH, headers={"Origin": "http://anywhere.example"}) as ws:
            await ws.send(json.dumps([None, "1", "phoenix", "heartbeat", {}]))

            assert (await receive(ws))[3] == "phx_reply"


@pytest.mark.parametrize("vsn", ["1.0.0", "3.0.0", "2"])
async def test_websocket_with_a_vsn_other_than_2_x_is_refused(served: tuple[QuartClient, ChatNode], vsn: str) -> None:
    client, chat = served

    async with client.websocket(f"/socket/websocket?vsn={vsn}") as ws:
        refused = await refusal(ws)

    assert refused.response.status_code == 400
    assert "vsn" in (await refused.response.get_json())["error"]
    assert chat.sockets == set()


async def test_websocket_without_vsn_is_served_as_2_0_0(served: tuple[QuartClient, ChatNode]) -> None:
    client, _ = served

    async with client.websocket("/socket/websocket") as ws:
        await ws.send(json.dumps([None, "1", "phoenix", "heartbeat", {}]))

        assert (await receive(ws))[3] == "phx_reply"


async def test_websocket_while_draining_is_refused_with_503(served: tuple[QuartClient, ChatNode]) -> None:
    client, chat = served
    await chat.drain(timeout=DEADLINE)

    async with client.websocket(WS_PATH) as ws:
        refused = await refusal(ws)

    assert refused.response.status_code == 503


async def test_websocket_bad_frame_is_closed_with_1007_not_1000(served: tuple[QuartClient, ChatNode]) -> None:
    client, chat = served

    async with client.websocket(WS_PATH) as ws:
        await ws.send("not a frame")
        with pytest.raises(WebsocketDisconnectError) as closed:
            async with asyncio.timeout(DEADLINE):
                await ws.receive()

    assert closed.value.args[0] == 1007
    assert chat.sockets == set()


async def test_websocket_is_closed_with_1001_on_drain(served: tuple[QuartClient, ChatNode]) -> None:
    client, chat = served

    async with client.websocket(WS_PATH) as ws:
        await ws.send(json.dumps(["1", "1", LOBBY, "phx_join", {"user": "alice"}]))
        assert (await receive(ws))[3] == "phx_reply"
        drained = asyncio.create_task(chat.drain(timeout=DEADLINE))
        with pytest.raises(WebsocketDisconnectError) as closed:
            async with asyncio.timeout(DEADLINE):
                while True:
                    await ws.receive()
        async with asyncio.timeout(DEADLINE):
            assert await drained == 1

    assert closed.value.args[0] == 1001
    assert chat.sockets == set()


async def test_the_node_closes_a_silent_websocket_with_1001(served: tuple[QuartClient, ChatNode]) -> None:
    client, chat = served

    async with client.websocket(WS_PATH) as ws:
        await ws.send(json.dumps(["1", "1", LOBBY, "phx_join", {"user": "alice"}]))
        assert (await receive(ws))[3] == "phx_reply"
        [sock] = chat.sockets
        sock.idle_timeout = 0.05  # the node's sweep, once a second, finds it silent
        with pytest.raises(WebsocketDisconnectError) as closed:
            async with asyncio.timeout(DEADLINE):
                while True:
                    await ws.receive()

    assert closed.value.args[0] == 1001
    assert chat.sockets == set()


async def test_plain_http_to_the_socket_path_gets_426_or_405(served: tuple[QuartClient, ChatNode]) -> None:
    client, _ = served

    get = await client.get(WS_PATH)
    post = await client.post(WS_PATH, json={})

    assert get.status_code == 426
    assert get.headers["Upgrade"] == "websocket"
    assert list(await get.get_json()) == ["error"]
    assert post.status_code == 405
    assert post.headers["Allow"] == "GET"
    assert list(await post.get_json()) == ["error"]
