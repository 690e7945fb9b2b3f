"""Stage 3 in real containers: the image, Docker's DNS as `chat-nodes`, scaling and failures.

One Compose project of the learner's own stage3_k8s/compose.yaml (project `chatlab-test`,
so a learner's `chatlab` is left alone) runs for the whole module; the image is built once
from the repository's Dockerfile on a stand-in base (no registry is reachable here, and
nothing is ever pulled). Clients run on this machine and reach the nodes through the ports
Compose publishes on 127.0.0.1; inside the containers, `chatctl` is the only client. Each test first scales the chat
back to what it needs, so that none depends on what the one before it left.

Times (build, convergence, drops, rejoins) are printed and kept in
test-results/stage3-compose-timings.json; they are never asserted as performance.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from stage3_k8s import compose_lab
from stage3_k8s.compose_lab import CONVERGE_DEADLINE, Lab, Node, ensure_secrets
from tests.helpers.containers import TEST_ENV, docker_unavailable, stand_in_images
from tests.helpers.phoenix import LOBBY, JoinError, PhoenixClient, Push, unique
from tests.helpers.ports import port_open
from tests.helpers.results import report_timing
from tests.helpers.waits import run_async

PROJECT = "chatlab-test"
IMAGE = "chatlab:test"
NODE_DOWN_AFTER = 3.0
TIMINGS = "stage3-compose-timings.json"
DEADLINE = 30.0
ROLLING_SOCKETS = 999  # a third on each of three containers

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]


def timing(name: str, seconds: float, **details: object) -> None:
    report_timing(name, seconds, into=TIMINGS, **details)


def docker(*args: str, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=True)


def ws_url(node: Node) -> str:
    return f"ws://127.0.0.1:{node.port}/socket/websocket?vsn=2.0.0"


def logged_events(container: str) -> list[dict[str, object]]:
    """The node's JSON log lines (it logs JSON when stdout is not a terminal)."""
    result = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=30, check=True)
    events = []
    for line in (result.stdout + result.stderr).splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


@dataclass
class Built:
    base: str
    base_seconds: float
    image_seconds: float


@pytest.fixture(scope="module")
def built() -> Built:
    # Beyond a daemon (the marker): Compose v2, and the stand-in bases or root to build them.
    if reason := docker_unavailable():
        pytest.skip(reason)  # a failure under CI=true (tests/helpers/skip_rule.py)
    base, base_seconds = stand_in_images()
    image_seconds = Lab(PROJECT).build(base, IMAGE)
    timing("compose_base_image_build", base_seconds, base=base)
    timing("compose_image_build", image_seconds, image=IMAGE)
    return Built(base, base_seconds, image_seconds)


@pytest.fixture(scope="module")
def lab(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    env_file = ensure_secrets(tmp_path_factory.mktemp("compose") / "compose.env")
    env = {**TEST_ENV, "CHAT_IMAGE": IMAGE, "NODE_DOWN_AFTER": str(NODE_DOWN_AFTER), "HISTORY_SIZE": "10000"}
    project = Lab(PROJECT, env_file, env)
    try:
        yield project
    finally:
        project.down()


def scaled(lab: Lab, count: int) -> list[Node]:
    """`docker compose up --scale chat=count`, then until every node lists exactly all `count`."""
    lab.up(count)
    return lab.wait_converged(count)[1]


# The image ------------------------------------------------------------------------------------


def test_the_image_builds_from_the_repositorys_dockerfile(built: Built) -> None:
    (image,) = json.loads(docker("image", "inspect", IMAGE).stdout)
    config = image["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["python", "-m", "stage3_k8s"]
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    # Built on the stand-in, not the pinned default: the base argument reached both stages.
    (base,) = json.loads(docker("image", "inspect", built.base).stdout)
    assert image["RootFS"]["Layers"][: len(base["RootFS"]["Layers"])] == base["RootFS"]["Layers"]


# A cluster of containers ----------------------------------------------------------------------


def test_three_containers_find_each_other_through_dockers_dns(lab: Lab) -> None:
    started = time.monotonic()
    lab.up(3)
    up_seconds = time.monotonic() - started
    took, nodes = lab.wait_converged(3)
    timing("compose_converge_3_10_4_to_3", up_seconds + took, compose_up_s=round(up_seconds, 3))
    # No POD_IP is set: each node took the address its container's host name resolves to.
    views = lab.views(nodes)
    for node in nodes:
        view = views[node.name]
        assert view is not None and view[0] == node.name
        assert sorted(view) == sorted(n.name for n in nodes)


def test_a_message_from_a_client_of_container_1_reaches_a_client_of_container_3(lab: Lab) -> None:
    first, _, third = scaled(lab, 3)

    async def scenario() -> tuple[dict[str, object], str]:
        async with PhoenixClient(ws_url(first)) as alice, PhoenixClient(ws_url(third)) as bob:
            await alice.join(LOBBY, {"user": "alice"})
            since = await bob.join(LOBBY, {"user": "bob"})
            body = unique("across-containers")
            reply = await alice.message(body, user="alice")
            assert reply.ok, reply
            return (await bob.wait_for_message(body, DEADLINE, since=since)).payload, body

    payload, body = run_async(scenario)
    assert payload["body"] == body
    assert payload["node"] == first.name


def test_chatctl_nodes_runs_in_a_container_through_compose_exec(lab: Lab) -> None:
    nodes = scaled(lab, 3)
    result = lab.compose("exec", "-T", "--index", "2", "chat", "python", "-m", "stage2_cluster.chatctl", "nodes")
    lines = result.stdout.splitlines()
    second = next(n for n in nodes if n.number == 2)
    assert lines[0] == f"{second.name} (self)"
    assert sorted(lines[1:]) == sorted(n.name for n in nodes if n is not second)


def test_docker_exec_chatctl_console_evaluates_node_list_inside_the_container(lab: Lab) -> None:
    """`iex --remsh` in a container: the image's chatctl, its CONSOLE_PORT and its cookie (from the env)."""
    nodes = scaled(lab, 3)
    first = nodes[0]
    result = docker("exec", "-i", first.container, "chatctl", "console", stdin="node_self()\nsorted(node_list())\n")
    assert result.stdout.splitlines() == [repr(first.name), repr(sorted(n.name for n in nodes if n is not first))]
    assert result.stderr == ""


def test_the_containers_console_is_not_reachable_at_its_address(lab: Lab) -> None:
    """From this machine, the container's own address answers on the HTTP port, not on the console's."""
    node = scaled(lab, 3)[0]
    assert port_open(4000, node.ip)
    assert not port_open(4100, node.ip)
    inside = docker("exec", node.container, "python", "-c", LISTENING).stdout.split()
    assert [address for address in inside if address.endswith(":4100")] == ["127.0.0.1:4100"]


# What a container listens on, from /proc/net/tcp (the image has no ss or netstat).
LISTENING = """
import socket, struct
for line in open('/proc/net/tcp').read().splitlines()[1:]:
    local, state = line.split()[1], line.split()[3]
    if state == '0A':
        address, port = local.split(':')
        print(f"{socket.inet_ntoa(struct.pack('<I', int(address, 16)))}:{int(port, 16)}")
"""


def test_the_node_runs_as_uid_10001_on_a_read_only_root_with_the_pods_limits(lab: Lab) -> None:
    node = scaled(lab, 3)[0]
    identity = lab.compose("exec", "-T", "chat", "id", "-u").stdout.strip()
    assert identity == "10001"
    write = lab.compose("exec", "-T", "chat", "sh", "-c", "touch /probe", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr + write.stdout
    assert lab.compose("exec", "-T", "chat", "sh", "-c", "touch /tmp/probe").returncode == 0
    (info,) = json.loads(docker("inspect", node.container).stdout)
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Memory"] == 256 * 2**20  # the Deployment's limit
    published = info["NetworkSettings"]["Ports"]["4000/tcp"]
    assert {p["HostIp"] for p in published} == {"127.0.0.1"}


def test_the_launcher_prints_each_url_and_no_log_shows_a_secret(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    """What `make stage3-compose NODES=3` runs, on the module's project: build, up, wait, URLs."""
    compose_lab.up(lab, 3)
    out = capsys.readouterr()
    nodes = lab.nodes()
    assert "every node lists all 3 after " in out.out
    for node in nodes:
        assert re.search(rf"^{node.container}  {node.name} +{node.url}$", out.out, re.MULTILINE)
    secrets = dict(line.split("=", 1) for line in lab.env_file.read_text().splitlines())
    logs = lab.compose("logs", "--no-color").stdout  # every container's: Redis and the nodes, which log REDIS_URL
    assert "redis reachable" in logs
    for value in secrets.values():
        assert value not in out.out + out.err + logs


# Scaling --------------------------------------------------------------------------------------


def test_scaling_3_to_10_to_4_converges_each_time(lab: Lab) -> None:
    scaled(lab, 3)
    for count in (10, 4):
        started = time.monotonic()
        lab.up(count)
        up_seconds = time.monotonic() - started
        took, nodes = lab.wait_converged(count)
        assert len({n.name for n in nodes}) == count
        timing(f"compose_converge_3_10_4_to_{count}", up_seconds + took, compose_up_s=round(up_seconds, 3))


# Failures -------------------------------------------------------------------------------------


def drop_time(lab: Lab, peers: list[Node], gone: str, since: float, deadline: float) -> float:
    """Seconds from `since` until no peer lists `gone`."""
    while True:
        views = lab.views(peers)
        if all(view is not None and gone not in view for view in views.values()):
            return time.monotonic() - since
        if time.monotonic() - since > deadline:
            raise AssertionError(f"peers still list {gone} after {deadline}s: {views}")
        time.sleep(0.05)


def drop_reasons(peers: list[Node], gone: str, since_epoch: float) -> dict[str, list[object]]:
    """Per peer, why it logged `gone` as disconnected after `since_epoch` (time.time()), in order."""
    return {
        peer.name: [
            event.get("reason")
            for event in logged_events(peer.container)
            if event.get("event") == "node disconnected"
            and event.get("peer") == gone
            and float(event.get("ts", 0)) >= since_epoch  # type: ignore[arg-type]
        ]
        for peer in peers
    }


def test_docker_stop_sends_clients_elsewhere_with_1001_and_peers_drop_it_at_once(lab: Lab) -> None:
    nodes = scaled(lab, 3)
    stopped, peers = nodes[1], [nodes[0], nodes[2]]

    async def scenario() -> tuple[list[int | None], float, list[str], float]:
        clients = [await PhoenixClient(ws_url(stopped)).open() for _ in range(5)]
        moved: list[PhoenixClient] = []
        try:
            for n, client in enumerate(clients):
                await client.join(LOBBY, {"user": f"stop-{n}"})
            signalled, signalled_epoch = time.monotonic(), time.time()
            stop = asyncio.create_task(asyncio.to_thread(docker, "stop", stopped.container))
            codes = [await client.wait_closed(DEADLINE) for client in clients]
            dropped = await asyncio.to_thread(drop_time, lab, peers, stopped.name, signalled, DEADLINE)
            await stop
            for n, _ in enumerate(clients):
                moved.append(await PhoenixClient(ws_url(peers[n % 2])).open())
                await moved[-1].join(LOBBY, {"user": f"stop-{n}"})
            body = unique("after-stop")
            assert (await moved[0].message(body, user="stop-0")).ok
            seen = [(await client.wait_for_message(body, DEADLINE)).payload["node"] for client in moved]
            return codes, dropped, seen, signalled_epoch
        finally:
            for client in [*clients, *moved]:
                await client.close()

    try:
        codes, dropped, seen, signalled_epoch = run_async(scenario)
        timing("compose_docker_stop_dropped_by_peers", dropped)
        assert codes == [1001] * 5
        assert set(seen) == {peers[0].name}  # every moved client, on either peer, got it
        # At once: the stopping node said goodbye; no peer waited for its heartbeats to stop.
        reasons = drop_reasons(peers, stopped.name, signalled_epoch)
        assert all(found[:1] == ["peer disconnected us"] for found in reasons.values()), reasons
    finally:
        docker("start", stopped.container)
    lab.wait_converged(3)


def test_docker_kill_is_dropped_by_its_peers_within_node_down_after(lab: Lab) -> None:
    nodes = scaled(lab, 3)
    killed, peers = nodes[2], nodes[:2]
    try:
        signalled, signalled_epoch = time.monotonic(), time.time()
        docker("kill", killed.container)
        # Heartbeats are checked every second: NODE_DOWN_AFTER, plus that second, plus a poll.
        dropped = drop_time(lab, peers, killed.name, signalled, NODE_DOWN_AFTER + 2.0)
        reasons = drop_reasons(peers, killed.name, signalled_epoch)
        timing("compose_docker_kill_dropped_by_peers", dropped, reasons=sorted({str(r[0]) for r in reasons.values()}))
        assert all(found and "peer disconnected us" not in found for found in reasons.values()), reasons  # no goodbye
    finally:
        docker("start", killed.container)
    lab.wait_converged(3)


# A rolling restart under load -----------------------------------------------------------------


class CrowdSocket:
    """A lean Phoenix client for a crowd of ~1000 on this one machine.

    Every join sends a presence_diff to every socket in the room, so a rolling restart of
    1000 sockets is a million frames here; a client that decodes them all, as the project's
    PhoenixClient (shared/client.py) does, makes this process the bottleneck being
    measured. This one decodes only its replies and the chat messages, and keeps only
    their ids.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.ids: list[str] = []
        self.replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._refs = itertools.count(1)
        self._join_ref = ""
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def join(self, params: dict[str, Any]) -> None:
        self._ws = await connect(self.url, proxy=None, open_timeout=DEADLINE, compression=None, max_size=2**22)
        self._reader = asyncio.create_task(self._read())
        self._join_ref = str(next(self._refs))
        reply = await self._request(self._join_ref, "phx_join", params)
        if reply["status"] != "ok":
            raise JoinError(f"join refused: {reply}")

    async def push(self, body: str, user: str) -> dict[str, Any]:
        return await self._request(str(next(self._refs)), "new:msg", {"user": user, "body": body})

    async def _request(self, ref: str, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        future = self.replies[ref] = asyncio.get_running_loop().create_future()
        try:
            await self._ws.send(json.dumps([self._join_ref, ref, LOBBY, event, payload]))
            async with asyncio.timeout(DEADLINE):
                return await future
        finally:
            self.replies.pop(ref, None)
            if future.done() and not future.cancelled():
                future.exception()  # the close that failed it also failed the send: one error is enough

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                if '"new:msg"' in raw:  # type: ignore[operator]
                    self.ids.append(json.loads(raw)[4]["id"])
                elif '"phx_reply"' in raw:  # type: ignore[operator]
                    _join, ref, _topic, _event, payload = json.loads(raw)
                    future = self.replies.pop(ref, None)
                    if future is not None and not future.done():
                        future.set_result(payload)
        except ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd else None
        finally:
            if self.close_code is None:  # a 1000 or 1001 ends the iteration without raising
                self.close_code = self._ws.close_code
            self.closed.set()
            for future in self.replies.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"closed ({self.close_code})"))

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader


@dataclass
class Member:
    """One user's socket, moved to another container whenever its own goes away."""

    user: str
    number: int  # the Compose number of the container it is on
    socket: CrowdSocket
    ids: list[str] = field(default_factory=list)  # every message id, over every socket it had
    close_codes: list[int | None] = field(default_factory=list)

    def seen(self) -> list[str]:
        return [*self.ids, *self.socket.ids]


@dataclass
class Rolling:
    members: list[Member]
    pushes: list[Push]
    history: dict[str, str]  # id -> body, as a new client's join replays it
    rejoin_seconds: dict[str, float]  # container -> from `docker restart` to all its sockets rejoined


# A connection refused or cut before the handshake ends: under load, or a container going away.
TRANSIENT = (OSError, InvalidHandshake, ConnectionError, TimeoutError, JoinError)


async def joined(node: Node, params: dict[str, Any]) -> CrowdSocket:
    socket = CrowdSocket(ws_url(node))
    try:
        await socket.join(params)
    except BaseException:
        await socket.close()
        raise
    return socket


async def join_soon(pick: Callable[[], Node], params: dict[str, Any], gate: asyncio.Semaphore) -> CrowdSocket:
    """Join on the node `pick` names, again on what it names then after a transient failure."""
    end = time.monotonic() + DEADLINE
    while True:
        try:
            async with gate:
                return await joined(pick(), params)
        except TRANSIENT:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)


async def full_history(node: Node) -> dict[str, str]:
    """Every stored message, as a new client's join replays it (HISTORY_SIZE holds them all)."""
    async with PhoenixClient(ws_url(node), timeout=DEADLINE) as reader:
        since = await reader.join(LOBBY, {"user": "reader"})
        marker = unique("history-end")
        assert (await reader.message(marker, user="reader")).ok
        await reader.wait_for_message(marker, DEADLINE, since=since)
        return {m["id"]: m["body"] for m in reader.messages(since=since) if m["body"] != marker}


async def play_rolling_restart(lab: Lab, nodes: list[Node]) -> Rolling:
    ports = {node.number: node for node in nodes}
    restarting: set[int] = set()
    done = asyncio.Event()
    gate = asyncio.Semaphore(50)  # joins in flight at once

    async def first_join(n: int) -> Member:
        node = nodes[n % len(nodes)]
        return Member(f"user-{n}", node.number, await join_soon(lambda: node, {"user": f"user-{n}"}, gate))

    members = list(await asyncio.gather(*(first_join(n) for n in range(ROLLING_SOCKETS))))
    pushes: list[Push] = []

    async def keep_joined(member: Member) -> None:
        """On a close, rejoin on another container, catching up after the last message seen."""
        while True:
            closed = asyncio.create_task(member.socket.closed.wait())
            finished = asyncio.create_task(done.wait())
            await asyncio.wait({closed, finished}, return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            finished.cancel()
            if done.is_set():
                return
            member.close_codes.append(member.socket.close_code)
            seen = member.seen()
            params: dict[str, Any] = {"user": member.user}
            if seen:
                params["last_seen_id"] = seen[-1]

            def elsewhere(member: Member = member) -> Node:
                """A container that is not restarting, the members of one spread over all
                of them, as a load balancer in front of them would spread them."""
                up = [n for n in sorted(ports) if n not in restarting]
                return ports[up[int(member.user.rsplit("-", 1)[1]) % len(up)]]

            socket = await join_soon(elsewhere, params, gate)
            member.ids, member.socket = seen, socket
            member.number = next(n for n, node in ports.items() if ws_url(node) == socket.url)

    async def publish(member: Member) -> None:
        """One push at a time, every half second, through every move."""
        while not done.is_set():
            push = Push(f"{member.user} {unique()}", time.monotonic())
            pushes.append(push)
            with contextlib.suppress(ConnectionError, ConnectionClosed, TimeoutError, OSError):
                reply = await member.socket.push(push.body, member.user)
                push.replied, push.status, push.response = time.monotonic(), reply["status"], reply["response"]
            await asyncio.sleep(0.5)

    keepers = [asyncio.create_task(keep_joined(member)) for member in members]
    publishers = [asyncio.create_task(publish(member)) for member in members[:3]]
    rejoin_seconds: dict[str, float] = {}
    try:
        for node in nodes:
            restarting.add(node.number)
            started = time.monotonic()
            restart = asyncio.create_task(asyncio.to_thread(docker, "restart", node.container))
            deadline = started + 60
            while any(m.number == node.number or m.socket.closed.is_set() for m in members):
                assert time.monotonic() < deadline, "sockets not all rejoined elsewhere within 60s"
                await asyncio.sleep(0.05)
            rejoin_seconds[node.container] = time.monotonic() - started
            await restart
            _took, running = await asyncio.to_thread(lab.wait_converged, 3, CONVERGE_DEADLINE)
            ports = {n.number: n for n in running}  # a restarted container may publish another port
            restarting.discard(node.number)
        await asyncio.sleep(1.0)  # the publishers push a few more on the restarted cluster
        done.set()
        await asyncio.gather(*publishers, *keepers)
        history = await full_history(next(iter(ports.values())))
        return Rolling(members, pushes, history, rejoin_seconds)
    finally:
        done.set()
        for task in [*keepers, *publishers]:
            task.cancel()
        await asyncio.gather(*(member.socket.close() for member in members))


def test_a_rolling_restart_under_1000_sockets_loses_no_acknowledged_message(lab: Lab) -> None:
    nodes = scaled(lab, 3)
    started = time.monotonic()
    rolling = run_async(lambda: play_rolling_restart(lab, nodes))
    acked = [p for p in rolling.pushes if p.status == "ok"]
    lost = [p.body for p in acked if rolling.history.get(p.response["id"]) != p.body]
    acked_ids = {p.response["id"] for p in acked}
    short = sum(1 for m in rolling.members if not acked_ids <= set(m.seen()))
    timing(
        "compose_rolling_restart_all_rejoined",
        sum(rolling.rejoin_seconds.values()),
        sockets=len(rolling.members),
        per_container={k: round(v, 3) for k, v in rolling.rejoin_seconds.items()},
        whole_test_s=round(time.monotonic() - started, 1),
        pushes=len(rolling.pushes),
        acked=len(acked),
        lost=len(lost),
        members_missing_an_acked_message=short,
    )
    assert len(acked) >= 20, "the publishers kept publishing through the restarts"
    codes = collections.Counter(code for m in rolling.members for code in m.close_codes)
    assert set(codes) == {1001} and all(m.close_codes for m in rolling.members), codes
    assert lost == []


# Redis keeps the history ----------------------------------------------------------------------


def test_a_new_redis_container_on_the_volume_keeps_every_acknowledged_message(lab: Lab) -> None:
    nodes = scaled(lab, 3)

    async def send(count: int) -> list[tuple[str, str]]:
        async with PhoenixClient(ws_url(nodes[0])) as writer:
            await writer.join(LOBBY, {"user": "writer"})
            sent = []
            for n in range(count):
                body = unique(f"before-redis-restart-{n}")
                reply = await writer.message(body, user="writer")
                assert reply.ok, reply
                sent.append((reply.response["id"], body))
            return sent

    sent = run_async(lambda: send(10))  # within RATE_LIMIT's burst
    # Not just a restart: a new container, which has nothing but the named volume's append-only file.
    lab.compose("up", "--detach", "--no-build", "--no-deps", "--force-recreate", "redis")

    def ready() -> bool:
        with httpx.Client(timeout=2, trust_env=False) as http:
            return all(http.get(f"{node.url}/readyz").status_code == 200 for node in nodes)

    end = time.monotonic() + DEADLINE
    while not ready():
        assert time.monotonic() < end, "nodes not ready again after Redis restarted"
        time.sleep(0.2)
    history = run_async(lambda: full_history(nodes[2]))
    assert [history.get(message_id) for message_id, _ in sent] == [body for _, body in sent]
