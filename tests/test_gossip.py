"""DISCOVERY=gossip: nodes find each other by UDP multicast, like libcluster's Gossip.

The packet rules are checked in-process; the discovery itself runs for real: three or
four nodes, each in its own network namespace on a private bridge (tests/helpers/netns.py),
with Redis in the bridge's namespace. Everything the tests ask the nodes goes from
inside those namespaces, since the namespace the tests run in has no route to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.settings import ConfigError
from stage2_cluster import gossip
from stage2_cluster.settings import ClusterSettings
from stage3_k8s.settings import K8sSettings
from tests.helpers.netns import FETCH_VIEWS, SEND_AND_RECEIVE, SUBNET, Host, Network
from tests.helpers.node import NodeProcess
from tests.helpers.redis_server import redis_server_binary
from tests.helpers.waits import wait_until

COOKIE = "gossip-test-cookie-" + secrets.token_hex(8)
SECRET = "gossip-secret-" + secrets.token_hex(8)
NODE_PORT = 4000  # every node has a namespace, hence a port space, of its own
REDIS_PORT = 6379
CONVERGE_DEADLINE = 20.0  # heartbeats come every 1-5 s; a connect takes well under a second

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

# Inside a namespace: send raw datagrams to the gossip group, as anyone on the network could.
SEND_PACKETS = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for packet in sys.argv[2:]:
    sock.sendto(packet.encode(), ("233.252.1.32", 45892))
"""


# Inside a namespace: two gossip sockets on one host, as two nodes there would open them.
SAME_HOST = """
from stage2_cluster.gossip import GROUP, PORT, open_socket
first, second = open_socket("127.0.0.1"), open_socket("127.0.0.1")
for sock in (first, second):
    sock.settimeout(5)
first.sendto(b"hello", (GROUP, PORT))
print(first.recv(100).decode(), second.recv(100).decode())
"""


# Packets, in-process -------------------------------------------------------------------


def test_plain_heartbeat_round_trips_and_is_plain_json() -> None:
    codec = gossip.Codec(None)
    packet = codec.encode("a@10.0.0.1", "10.0.0.1:4000")
    assert json.loads(packet) == {"node": "a@10.0.0.1", "address": "10.0.0.1:4000"}
    assert codec.decode(packet) == ("a@10.0.0.1", "10.0.0.1:4000")


def test_encrypted_heartbeat_needs_the_same_secret() -> None:
    codec = gossip.Codec(SECRET)
    packet = codec.encode("a@10.0.0.1", "10.0.0.1:4000")
    assert b"a@10.0.0.1" not in packet
    assert codec.encode("a@10.0.0.1", "10.0.0.1:4000") != packet  # a fresh nonce every time
    assert codec.decode(packet) == ("a@10.0.0.1", "10.0.0.1:4000")
    assert gossip.Codec(SECRET + "x").decode(packet) is None
    assert gossip.Codec(None).decode(packet) is None
    tampered = bytearray(packet)
    tampered[-1] ^= 1
    assert codec.decode(bytes(tampered)) is None
    # A plaintext heartbeat, forged or from a node without the secret, is not accepted.
    assert codec.decode(gossip.Codec(None).encode("a@10.0.0.1", "10.0.0.1:4000")) is None
    assert codec.decode(b"") is None


@pytest.mark.parametrize(
    "packet",
    [
        b"not json",
        b"[1, 2]",
        b'{"node": "a@x"}',
        b'{"node": "no-at-sign", "address": "10.0.0.1:4000"}',
        b'{"node": "a@x", "address": "10.0.0.1"}',
        b'{"node": "a@x", "address": "10.0.0.1:0"}',
        b'{"node": "a@x", "address": "10.0.0.1:70000"}',
        b'{"node": "a@x", "address": "host/path:4000"}',
        b'{"node": "a@x", "address": "[not-v6]:4000"}',
        b'{"node": "a@x", "address": 4000}',
        b'{"node": "a@x", "address": "10.0.0.1:4000", "pad": "' + b"x" * 1024 + b'"}',
    ],
)
def test_invalid_packets_are_dropped(packet: bytes) -> None:
    assert gossip.Codec(None).decode(packet) is None


def test_the_group_is_joined_on_the_interface_of_host_or_pod_ip() -> None:
    assert gossip.interface_address(ClusterSettings(host="10.1.2.3")) == "10.1.2.3"
    assert gossip.interface_address(K8sSettings(host="0.0.0.0", pod_ip="10.9.9.9")) == "10.9.9.9"
    assert gossip.interface_address(ClusterSettings(host="0.0.0.0")) == "0.0.0.0"
    assert gossip.interface_address(ClusterSettings(host="localhost")) == "0.0.0.0"


def test_gossip_secret_setting() -> None:
    base = {"REDIS_URL": "redis://127.0.0.1:6379/0", "CLUSTER_COOKIE": COOKIE, "DISCOVERY": "gossip"}
    assert ClusterSettings.from_env(base).gossip_secret is None
    assert ClusterSettings.from_env({**base, "GOSSIP_SECRET": SECRET}).gossip_secret == SECRET
    assert SECRET not in repr(ClusterSettings.from_env({**base, "GOSSIP_SECRET": SECRET}))
    with pytest.raises(ConfigError) as error:
        ClusterSettings.from_env({**base, "GOSSIP_SECRET": "short"})
    assert error.value.var == "GOSSIP_SECRET"


# Real nodes in network namespaces --------------------------------------------------------


@contextlib.contextmanager
def gossip_cluster(secrets_by_host: list[str | None]) -> Iterator[tuple[Network, list[NodeProcess]]]:
    """Redis in the hub namespace and one gossiping node per host, each ended in the end."""
    with Network(hosts=len(secrets_by_host)) as net:
        redis = [redis_server_binary(), "--port", str(REDIS_PORT), "--bind", net.hub_ip]
        redis += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        net.spawn(net.hub, redis, ready="Ready to accept connections")
        nodes = [node_process(net, host, secret) for host, secret in zip(net.hosts, secrets_by_host, strict=True)]
        try:
            # Started side by side: each start waits for its node's "node ready" line.
            with ThreadPoolExecutor(len(nodes)) as pool:
                for started in [pool.submit(node.start) for node in nodes]:
                    started.result()
            yield net, nodes
        finally:
            for node in nodes:
                node.stop()


def node_process(net: Network, host: Host, secret: str | None) -> NodeProcess:
    env = {
        "NODE_NAME": f"chat@{host.ip}",
        "REDIS_URL": f"redis://{net.hub_ip}:{REDIS_PORT}/0",
        "CLUSTER_COOKIE": COOKIE,
        "DISCOVERY": "gossip",
        "GOSSIP_SECRET": secret or "",
        "PING_INTERVAL": "0",
        "NO_PROXY": "*",  # node-to-node HTTP stays on the bridge whatever the environment says
    }
    return NodeProcess("stage2_cluster", env, host=host.ip, port=NODE_PORT, prefix=net.prefix(host.ns))


def address(node: NodeProcess) -> str:
    return f"{node.host}:{node.port}"


def views(net: Network, nodes: list[NodeProcess]) -> dict[str, list[str] | None]:
    """Every node's /api/nodes list, asked from the hub namespace."""
    answers = json.loads(net.python(net.hub, FETCH_VIEWS, *map(address, nodes)))
    return {node: None if view is None else view["nodes"] for node, view in answers.items()}


def wait_for_views(net: Network, nodes: list[NodeProcess], expected: dict[str, set[str]]) -> None:
    def converged() -> bool:
        got = views(net, nodes)
        return all(set(got[address(node)] or ()) == expected[node.env["NODE_NAME"]] for node in nodes)

    wait_until(converged, CONVERGE_DEADLINE, f"node lists {expected}", step=0.2)


def logged(node: NodeProcess, event: str, **fields: object) -> bool:
    return any(line.get("event") == event and all(line.get(k) == v for k, v in fields.items()) for line in node.logs())


def wait_gossiping(nodes: list[NodeProcess]) -> None:
    """Until every node has joined the group: a packet sent before that is not heard."""
    wait_until(lambda: all(logged(node, "gossip started") for node in nodes), CONVERGE_DEADLINE, "gossip started")


def send_packets(net: Network, *packets: bytes) -> None:
    net.python(net.hub, SEND_PACKETS, net.hub_ip, *(packet.decode() for packet in packets))


@pytest.mark.netns
def test_three_nodes_find_each_other_and_forged_heartbeats_join_no_one() -> None:
    with gossip_cluster([None, None, None]) as (net, nodes):
        names = {node.env["NODE_NAME"] for node in nodes}
        wait_gossiping(nodes)
        for node in nodes:
            assert logged(node, "gossip started", interface=node.host, encrypted=False)
        wait_for_views(net, nodes, {name: names for name in names})

        # Live delivery follows the connections gossip made.
        body = "over the bridge " + secrets.token_hex(4)
        out = net.python(net.hub, SEND_AND_RECEIVE, address(nodes[0]), address(nodes[2]), body)
        received = json.loads(out)
        assert received["body"] == body and received["node"] == nodes[0].env["NODE_NAME"]

        # Anyone on the network can send plaintext heartbeats: one names a fake node at an
        # address where nothing listens, one claims a real node's address under a fake name.
        fake = {"node": f"evil@{net.hub_ip}", "address": f"{net.hub_ip}:9"}
        impostor = {"node": f"impostor@{SUBNET}.250", "address": address(nodes[1])}
        send_packets(net, json.dumps(fake).encode(), json.dumps(impostor).encode())
        wait_until(
            lambda: all(
                logged(node, "connect failed", peer=fake["node"])
                and logged(node, "connect failed", peer=impostor["node"])
                for node in nodes
            ),
            CONVERGE_DEADLINE,
            "every node tried the forged heartbeats and failed",
        )
        assert all(set(view or ()) == names for view in views(net, nodes).values())


@pytest.mark.netns
def test_gossip_secret_keeps_other_secrets_and_plaintext_out() -> None:
    with gossip_cluster([SECRET, SECRET, SECRET, SECRET + "-other"]) as (net, nodes):
        members, outsider = nodes[:3], nodes[3]
        names = {node.env["NODE_NAME"] for node in members}
        outsider_name = outsider.env["NODE_NAME"]
        wait_gossiping(nodes)
        for node in members:
            assert logged(node, "gossip started", encrypted=True)
        send_packets(net, json.dumps({"node": f"evil@{net.hub_ip}", "address": f"{net.hub_ip}:9"}).encode())

        wait_for_views(net, nodes, {**{name: names for name in names}, outsider_name: {outsider_name}})
        # The condition that makes "never connected" mean something: every member heard the
        # outsider's heartbeats (and the forged plaintext) and dropped them, and the outsider
        # heard and dropped the members'.
        wait_until(
            lambda: (
                all(
                    logged(node, "gossip packet dropped", sender=outsider.host)
                    and logged(node, "gossip packet dropped", sender=net.hub_ip)
                    for node in members
                )
                and all(logged(outsider, "gossip packet dropped", sender=node.host) for node in members)
            ),
            CONVERGE_DEADLINE,
            "the members and the outsider dropped each other's packets",
        )
        got = views(net, nodes)
        assert all(set(got[address(node)] or ()) == names for node in members)
        assert got[address(outsider)] == [outsider_name]
        for node in nodes:
            for line in node.logs():
                assert line.get("peer") not in (outsider_name, f"evil@{net.hub_ip}"), line
        assert not logged(outsider, "gossip discovered node")


@pytest.mark.netns
def test_nodes_on_one_host_hear_each_other_over_loopback() -> None:
    """Several nodes on one machine (`make stage2 DISCOVERY=gossip`): the multicast loop."""
    with Network(hosts=1) as net:
        assert net.python(net.hosts[0].ns, SAME_HOST).split() == ["hello", "hello"]


@pytest.mark.netns
def test_the_test_network_is_gone_afterwards() -> None:
    """Nothing of the namespaces, nor any process inside them, outlives a Network."""
    with Network(hosts=1) as net:
        sleeper = net.spawn(net.hosts[0].ns, ["sleep", "60"])
        names = list(net.namespaces)
    assert sleeper.proc.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout.split()
    assert not set(names) & set(listed)


class NoPeers:
    def __init__(self) -> None:
        self.peers: dict[str, object] = {}


class RefusingCluster:
    """Stands in for a Handshake whose every connect fails, recording how each was asked."""

    name = "a@10.0.0.1"

    def __init__(self) -> None:
        self.membership = NoPeers()
        self.peers = self.membership.peers
        self.quiet: list[bool] = []

    def connect_soon(self, name: str, address: str, *, source: str, quiet: bool = False) -> asyncio.Task[None]:
        self.quiet.append(quiet)
        return asyncio.create_task(asyncio.sleep(0))


async def test_a_node_that_stays_unconnected_is_retried_but_warned_of_once() -> None:
    cluster = RefusingCluster()
    listener = gossip.Listener(cluster, gossip.Codec(None))  # type: ignore[arg-type]
    heartbeat = gossip.Codec(None).encode("d@10.0.0.4", "10.0.0.4:4003")
    for _ in range(3):
        listener.datagram_received(heartbeat, ("10.0.0.4", 45892))
        await listener.pending["d@10.0.0.4"]
        await asyncio.sleep(0)  # the task's done callbacks run on the next turn of the loop
    assert cluster.quiet == [False, True, True]
    cluster.peers["d@10.0.0.4"] = object()  # it connected once its cookie was right
    listener.settled("d@10.0.0.4")
    assert listener.refused == set()
