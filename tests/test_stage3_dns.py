"""DISCOVERY=dns for real, without Kubernetes: the parts a cluster would play are stood in for.

- the headless Service `chat-nodes` is a small DNS server whose A records a test rewrites,
  as the endpoints controller does when pods come and go;
- each pod is a `python -m stage3_k8s` process bound to its own loopback address
  (127.0.0.2, 127.0.0.3, ...), all on the same port, with POD_IP set to that address;
- Redis is a real redis-server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest

from stage3_k8s.__main__ import stage_defaults
from stage3_k8s.dns_discovery import DnsDiscovery
from stage3_k8s.settings import K8sSettings
from tests.helpers.dns import HeadlessService, Pod, pod_ip, port_free_on_all
from tests.helpers.phoenix import LOBBY, PhoenixClient
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.slow

COOKIE = "stage3-test-cookie-0123456789"
SERVICE = "chat-nodes"
CONVERGE_DEADLINE = 25.0


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """An empty Redis for each test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="module")
def service() -> Iterator[HeadlessService]:
    dns_server = HeadlessService()
    dns_server.server.start_thread()
    try:
        yield dns_server
    finally:
        dns_server.server.stop()
        dns_server.server.server.server_close()


@pytest.fixture
def dns(service: HeadlessService) -> HeadlessService:
    """The shared DNS server, with no records and answering."""
    service.publish([])
    service.mode = "answer"
    return service


@dataclass
class Deployment:
    """Pods as processes: `scale(n)` publishes n addresses in DNS and runs n nodes, like a ReplicaSet."""

    dns: HeadlessService
    redis_url: str
    port: int
    pods: dict[int, Pod] = field(default_factory=dict)

    def env(self, index: int) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis_url,
            "CLUSTER_COOKIE": COOKIE,
            "DISCOVERY": "dns",
            "POD_IP": pod_ip(index),  # NODE_NAME is left to its stage 3 default, chat@$POD_IP
            "DNS_SERVICE": SERVICE,
            "DNS_NAMESERVER": self.dns.nameserver,
            "DNS_POLL_INTERVAL": "0.5",
            "NODE_DOWN_AFTER": "2",
            "PING_INTERVAL": "0",
        }

    def scale(self, replicas: int) -> None:
        wanted = set(range(replicas))
        # The address is published before the pod serves (publishNotReadyAddresses), so
        # peers first fail to reach a new pod and must retry on a later poll.
        self.dns.publish([pod_ip(index) for index in sorted(wanted)])
        new = {
            index: Pod("stage3_k8s", self.env(index), host=pod_ip(index), port=self.port)
            for index in wanted - self.pods.keys()
        }
        gone = [self.pods.pop(index) for index in sorted(self.pods.keys() - wanted)]
        self.pods.update(new)  # before starting, so that stop_all ends them whatever happens
        with ThreadPoolExecutor(max_workers=max(len(new) + len(gone), 1)) as pool:
            futures = [pool.submit(node.start) for node in new.values()] + [pool.submit(node.stop) for node in gone]
            for future in futures:
                future.result()

    def names(self) -> set[str]:
        return {f"chat@{pod_ip(index)}" for index in self.pods}

    def stop_all(self) -> None:
        pods, self.pods = list(self.pods.values()), {}
        with ThreadPoolExecutor(max_workers=max(len(pods), 1)) as pool:
            for future in [pool.submit(node.stop) for node in pods]:
                future.result()


@pytest.fixture
def deployment(dns: HeadlessService, redis_url: str) -> Iterator[Deployment]:
    pods = Deployment(dns, redis_url, port_free_on_all(10))
    try:
        yield pods
    finally:
        pods.stop_all()


def views(pods: Deployment) -> dict[str, object]:
    """What each pod's GET /api/nodes says (its `self` and its node list), or why it said nothing."""
    seen: dict[str, object] = {}
    for index, node in pods.pods.items():
        try:
            seen[pod_ip(index)] = httpx.get(node.url + "/api/nodes", timeout=2).json()
        except httpx.HTTPError as error:
            seen[pod_ip(index)] = repr(error)
    return seen


def wait_one_cluster(pods: Deployment, deadline: float = CONVERGE_DEADLINE) -> None:
    """Until every pod lists exactly the running pods, itself first."""
    expected = pods.names()
    end = time.monotonic() + deadline
    while True:
        seen = views(pods)
        if all(
            isinstance(view, dict)
            and view["self"] == f"chat@{ip}"
            and view["nodes"][0] == view["self"]
            and set(view["nodes"]) == expected
            for ip, view in seen.items()
        ):
            return
        if time.monotonic() > end:
            raise AssertionError(
                f"no single cluster of {sorted(expected)} after {deadline}s:\n" + json.dumps(seen, indent=1)
            )
        time.sleep(0.1)


# The cluster, end to end ---------------------------------------------------------------------


def test_pods_listed_in_dns_form_one_cluster(deployment: Deployment) -> None:
    deployment.scale(3)
    wait_one_cluster(deployment)


async def test_a_message_typed_on_one_pod_reaches_a_user_on_another(deployment: Deployment) -> None:
    deployment.scale(2)
    await asyncio.to_thread(wait_one_cluster, deployment)
    sender, receiver = deployment.pods[0], deployment.pods[1]
    async with PhoenixClient(sender.ws_url) as ann, PhoenixClient(receiver.ws_url) as bob:
        await ann.join(LOBBY, {"user": "ann"})
        await bob.join(LOBBY, {"user": "bob"})
        assert (await ann.message("hello across pods", user="ann")).ok
        got = await bob.wait_for_message("hello across pods")
    assert got.payload["user"] == "ann"
    assert got.payload["node"] == f"chat@{pod_ip(0)}"


def test_a_peer_dropped_by_hand_is_connected_again_by_the_next_poll(deployment: Deployment) -> None:
    deployment.scale(2)
    wait_one_cluster(deployment)
    peer = f"chat@{pod_ip(1)}"
    answer = httpx.delete(
        f"{deployment.pods[0].url}/api/nodes/{peer}", headers={"Authorization": f"Bearer {COOKIE}"}, timeout=5
    )
    assert answer.status_code == 200
    assert answer.json()["nodes"] == [f"chat@{pod_ip(0)}"]
    wait_one_cluster(deployment, deadline=5.0)


def test_scaling_3_to_10_to_4_converges_each_time(deployment: Deployment) -> None:
    for replicas in (3, 10, 4):
        deployment.scale(replicas)
        # Exactly the running pods: the ones scaled away have left every list.
        wait_one_cluster(deployment)


# The discovery loop on its own, against the same DNS server ---------------------------------


class FakeMembership:
    def __init__(self, peers: list[str]) -> None:
        self.peers: dict[str, str] = dict.fromkeys(peers, "")


class FakeCluster:
    """What DnsDiscovery uses of stage 2's Handshake (and its membership), recording the calls."""

    def __init__(self, peers: list[str] = ()) -> None:  # type: ignore[assignment]
        self.membership = FakeMembership(list(peers))
        self.peers = self.membership.peers
        self.connects: list[tuple[str, str]] = []
        self.disconnects: list[tuple[str, str]] = []

    def connect_soon(self, name: str, address: str, *, source: str) -> None:
        self.connects.append((name, address))
        self.peers[name] = address

    async def disconnect(self, name: str, reason: str) -> bool:
        self.disconnects.append((name, reason))
        return self.peers.pop(name, None) is not None


def discovery_for(dns_server: HeadlessService, cluster: FakeCluster) -> DnsDiscovery:
    settings = K8sSettings(
        host=pod_ip(0),
        port=4000,
        node_basename="chat",
        dns_service=SERVICE,
        dns_nameserver=("127.0.0.1", dns_server.port),
    )
    return DnsDiscovery(cluster, settings)  # type: ignore[arg-type]


async def test_every_address_in_dns_but_our_own_is_connected_each_poll(dns: HeadlessService) -> None:
    cluster = FakeCluster()
    discovery = discovery_for(dns, cluster)
    dns.publish([pod_ip(0), pod_ip(1), pod_ip(2)])
    await discovery.poll_once()
    await discovery.poll_once()
    expected = [(f"chat@{pod_ip(1)}", f"{pod_ip(1)}:4000"), (f"chat@{pod_ip(2)}", f"{pod_ip(2)}:4000")]
    assert cluster.connects == expected * 2  # asked again every poll; Cluster ignores known peers
    assert cluster.disconnects == []


async def test_a_node_gone_from_dns_is_disconnected_at_once(dns: HeadlessService) -> None:
    cluster = FakeCluster()
    discovery = discovery_for(dns, cluster)
    dns.publish([pod_ip(0), pod_ip(1), pod_ip(2)])
    await discovery.poll_once()
    dns.publish([pod_ip(0), pod_ip(1)])
    await discovery.poll_once()
    assert cluster.disconnects == [(f"chat@{pod_ip(2)}", "gone from DNS")]


async def test_a_peer_never_seen_in_dns_is_left_alone(dns: HeadlessService) -> None:
    # A new pod connects to us as soon as it reads our address; our own DNS answer may
    # not list it yet. Dropping it would make it flap, so only nodes that leave DNS go.
    newcomer = f"chat@{pod_ip(5)}"
    cluster = FakeCluster([newcomer])
    discovery = discovery_for(dns, cluster)
    dns.publish([pod_ip(0), pod_ip(1)])
    await discovery.poll_once()
    await discovery.poll_once()
    assert cluster.disconnects == []
    assert newcomer in cluster.peers


@pytest.mark.parametrize("failure", ["servfail", "silent"])
async def test_a_dns_failure_disconnects_no_one(dns: HeadlessService, failure: str) -> None:
    cluster = FakeCluster()
    discovery = discovery_for(dns, cluster)
    dns.publish([pod_ip(0), pod_ip(1)])
    await discovery.poll_once()
    dns.mode = failure
    await discovery.poll_once()
    assert cluster.disconnects == []
    assert discovery.failing
    dns.mode = "answer"
    dns.publish([pod_ip(0)])
    await discovery.poll_once()  # an answer again: now the change counts
    assert cluster.disconnects == [(f"chat@{pod_ip(1)}", "gone from DNS")]


# The node's defaults ---------------------------------------------------------------------------


def test_the_node_is_named_after_its_pod_address() -> None:
    assert stage_defaults({"POD_IP": "10.244.0.7"}) == {"node_name": "chat@10.244.0.7"}
    assert stage_defaults({"POD_IP": "10.244.0.7", "NODE_BASENAME": "lv"})["node_name"] == "lv@10.244.0.7"
    assert stage_defaults({"HOST": "127.0.0.3"})["node_name"] == "chat@127.0.0.3"
    assert stage_defaults({})["node_name"] == "chat@127.0.0.1"


def test_without_pod_ip_a_node_on_every_address_takes_its_host_names_address() -> None:
    """As in a container or a pod: /etc/hosts maps the host name to the address peers use."""
    own = socket.gethostbyname(socket.gethostname())
    for wildcard in ("0.0.0.0", "::"):
        defaults = stage_defaults({"HOST": wildcard})
        assert defaults == {"node_name": f"chat@{own}", "pod_ip": own}
        settings = K8sSettings.from_env(
            {"HOST": wildcard, "CLUSTER_COOKIE": COOKIE, "REDIS_URL": "redis://redis:6379/0"}, **defaults
        )
        assert (settings.pod_ip, settings.node_name) == (own, f"chat@{own}")


def test_an_explicit_pod_ip_wins_over_the_host_names_address() -> None:
    assert stage_defaults({"HOST": "0.0.0.0", "POD_IP": "10.244.0.7"}) == {
        "node_name": "chat@10.244.0.7",
    }


def test_a_bad_pod_ip_stops_the_node_with_one_line_naming_it(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, "CLUSTER_COOKIE": COOKIE, "POD_IP": "not-an-ip"}
    node = Pod("stage3_k8s", env)
    with pytest.raises(RuntimeError) as failure:
        node.start()
    assert node.wait(10) == 2
    assert "POD_IP: must be an IP address, got 'not-an-ip'" in str(failure.value)
