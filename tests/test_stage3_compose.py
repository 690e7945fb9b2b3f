"""Stage 3 in real containers: the image, Docker's DNS as `chat-nodes`, scaling and failures.

One Compose project of the learner's own stage3_k8s/compose.yaml (project `chatlab-test`,
so a learner's `chatlab` is left alone) runs for the whole module; the image is built once
from the repository's Dockerfile on a stand-in base (no registry is reachable here, and
nothing is ever pulled). Clients run on this machine and reach the nodes through the ports
Compose publishes on 127.0.0.1; the image ships no client. Each test first scales the chat
back to what it needs, so that none depends on what the one before it left.

Times (build, convergence, drops, rejoins) are printed and kept in
test-results/stage3-compose-timings.json; they are never asserted as performance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from stage3_k8s.compose_lab import CONVERGE_DEADLINE, Lab, Node, ensure_secrets
from tests.cluster import LOBBY, JoinError, PhoenixClient, Push, report_timing, run_async, unique
from tests.containers import TEST_ENV, docker_unavailable, stand_in_images

PROJECT = "chatlab-test"
IMAGE = "chatlab:test"
NODE_DOWN_AFTER = 3.0
TIMINGS = "stage3-compose-timings.json"
DEADLINE = 30.0
ROLLING_SOCKETS = 999  # a third on each of three containers

pytestmark = pytest.mark.timeout(600)


def timing(name: str, seconds: float, **details: object) -> None:
    report_timing(name, seconds, into=TIMINGS, **details)


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=True)


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
    # Skipped here, not at collection: a skipped test is a report, which CI=true fails.
    if reason := docker_unavailable():
        pytest.skip(reason)
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
    nodes = scaled(lab, 3)
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


def drop_reasons(peers: list[Node], gone: str, since_epoch: float) -> set[object]:
    """Why the peers logged `gone` as disconnected after `since_epoch` (time.time())."""
    return {
        event.get("reason")
        for peer in peers
        for event in logged_events(peer.container)
        if event.get("event") == "node disconnected"
        and event.get("peer") == gone
        and float(event.get("ts", 0)) >= since_epoch  # type: ignore[arg-type]
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
        assert drop_reasons(peers, stopped.name, signalled_epoch) == {"peer disconnected us"}
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
        timing("compose_docker_kill_dropped_by_peers", dropped, reasons=sorted(map(str, reasons)))
        assert "peer disconnected us" not in reasons  # killed: no goodbye was said
    finally:
        docker("start", killed.container)
    lab.wait_converged(3)


# A rolling restart under load -----------------------------------------------------------------


@dataclass
class Member:
    """One user's socket, moved to another container whenever its own goes away."""

    user: str
    number: int  # the Compose number of the container it is on
    client: PhoenixClient
    past: list[PhoenixClient] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [m["id"] for c in [*self.past, self.client] for m in c.messages()]


@dataclass
class Rolling:
    members: list[Member]
    pushes: list[Push]
    history: dict[str, str]  # id -> body, as a new client's join replays it
    rejoin_seconds: dict[str, float]  # container -> from `docker restart` to all its sockets rejoined


async def open_member(n: int, node: Node, gate: asyncio.Semaphore) -> Member:
    async with gate:
        client = await PhoenixClient(ws_url(node), timeout=DEADLINE).open()
        await client.join(LOBBY, {"user": f"user-{n}"})
        return Member(f"user-{n}", node.number, client)


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
    gate = asyncio.Semaphore(50)
    members = list(await asyncio.gather(*(open_member(n, nodes[n % 3], gate) for n in range(ROLLING_SOCKETS))))
    pushes: list[Push] = []

    async def keep_joined(member: Member) -> None:
        """On a close, rejoin on another container, catching up after the last message seen."""
        while True:
            closed = asyncio.create_task(member.client.closed.wait())
            finished = asyncio.create_task(done.wait())
            await asyncio.wait({closed, finished}, return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            finished.cancel()
            if done.is_set():
                return
            member.close_codes.append(member.client.close_code)
            seen = member.ids()
            while True:
                target = next(n for n in sorted(ports, key=lambda k: (k <= member.number, k)) if n not in restarting)
                params: dict[str, object] = {"user": member.user}
                if seen:
                    params["last_seen_id"] = seen[-1]
                try:
                    async with gate:
                        client = await PhoenixClient(ws_url(ports[target]), timeout=DEADLINE).open()
                        try:
                            await client.join(LOBBY, params)
                        except BaseException:
                            await client.close()
                            raise
                except (OSError, InvalidHandshake, ConnectionError, TimeoutError, JoinError):
                    await asyncio.sleep(0.2)
                    continue
                member.past.append(member.client)
                member.client, member.number = client, target
                break

    async def publish(member: Member) -> None:
        """One acknowledged push at a time, every half second, across every move."""
        while not done.is_set():
            client = member.client
            push = Push(f"{member.user} {unique()}", time.monotonic())
            pushes.append(push)
            with contextlib.suppress(ConnectionError, ConnectionClosed, TimeoutError, OSError):
                reply = await client.message(push.body, user=member.user, deadline=5.0)
                push.replied, push.status, push.response = reply.at, reply.status, reply.response
            await asyncio.sleep(0.5)

    keepers = [asyncio.create_task(keep_joined(member)) for member in members]
    publishers = [asyncio.create_task(publish(member)) for member in members[:3]]
    rejoin_seconds: dict[str, float] = {}
    try:
        for node in nodes:
            restarting.add(node.number)
            started = time.monotonic()
            restart = asyncio.create_task(asyncio.to_thread(docker, "restart", node.container))
            await asyncio.sleep(0)
            deadline = started + 60
            while any(m.number == node.number or m.client.closed.is_set() for m in members):
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
        for member in members:
            for client in [*member.past, member.client]:
                await client.close()


def test_a_rolling_restart_under_1000_sockets_loses_no_acknowledged_message(lab: Lab) -> None:
    nodes = scaled(lab, 3)
    rolling = run_async(lambda: play_rolling_restart(lab, nodes))
    acked = [p for p in rolling.pushes if p.status == "ok"]
    lost = [p.body for p in acked if rolling.history.get(p.response["id"]) != p.body]
    acked_ids = {p.response["id"] for p in acked}
    short = sum(1 for m in rolling.members if not acked_ids <= set(m.ids()))
    timing(
        "compose_rolling_restart_all_rejoined",
        sum(rolling.rejoin_seconds.values()),
        sockets=len(rolling.members),
        per_container={k: round(v, 3) for k, v in rolling.rejoin_seconds.items()},
        pushes=len(rolling.pushes),
        acked=len(acked),
        lost=len(lost),
        members_missing_an_acked_message=short,
    )
    assert len(acked) >= 20, "the publishers kept publishing through the restarts"
    assert all(codes and set(codes) <= {1001} for codes in (m.close_codes for m in rolling.members))
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
