"""DISCOVERY=dns the way a pod does it: the system resolver, a pod's resolv.conf, no overrides.

tests/test_stage3_dns.py points each node at a test DNS server with DNS_NAMESERVER. Here
nothing is pointed anywhere: each pod is a network namespace (tests/helpers/netns.py) whose
/etc/resolv.conf is the one the kubelet writes into a pod of the namespace `chatlab`,
where the manifests put the chat (k8s/base/kustomization.yaml),

    nameserver <the cluster DNS>
    search chatlab.svc.cluster.local svc.cluster.local cluster.local
    options ndots:5

and the node asks for the short name `chat-nodes`, as libcluster's `service: "chat-nodes"`
does. The cluster DNS, in the hub namespace, knows one name only,
`chat-nodes.chatlab.svc.cluster.local`, and answers NXDOMAIN for everything else, as
CoreDNS does for a bare `chat-nodes.`: so the nodes find each other only if the search
list is applied. Redis is a real redis-server next to it.

`ip netns exec NS` bind-mounts every file of /etc/netns/NS/ over its namesake in /etc
for the command it runs; that is how each namespace gets its own resolv.conf, and why the
test writes /etc/netns/<its namespaces>/ and removes them in the end.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from stage3_k8s.deploy.config import NAMESPACE
from tests.helpers.netns import FETCH_VIEWS, SEND_AND_RECEIVE, Network, Spawned
from tests.helpers.node import NodeProcess
from tests.helpers.redis_server import redis_server_binary
from tests.helpers.waits import wait_until

COOKIE = "stage3-netns-cookie-" + secrets.token_hex(8)
SERVICE = "chat-nodes"
NAMESPACE = NAMESPACE  # "chatlab": the Kubernetes namespace the manifests put the chat in
SERVICE_FQDN = f"{SERVICE}.{NAMESPACE}.svc.cluster.local"
NODE_PORT = 4000  # every pod has a network namespace, hence a port space, of its own
REDIS_PORT = 6379
PODS = 3
CONVERGE_DEADLINE = 20.0  # polls every second; a connect takes well under one
ETC_NETNS = Path("/etc/netns")

pytestmark = [pytest.mark.timeout(90), pytest.mark.netns]

# A pod's /etc/resolv.conf, as the kubelet writes it (dnsPolicy: ClusterFirst).
RESOLV_CONF = """\
nameserver {nameserver}
search {namespace}.svc.cluster.local svc.cluster.local cluster.local
options ndots:5
"""

# In the hub namespace: the cluster DNS, on port 53 since resolv.conf cannot name a port.
# One line per query, so that the test can see which names the nodes asked for.
CLUSTER_DNS = """
import sys
from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

address, name, ips = sys.argv[1], sys.argv[2], sys.argv[3:]

class HeadlessService(BaseResolver):
    def resolve(self, request, handler):
        qname = str(request.q.qname)
        print(f"query {qname} {QTYPE[request.q.qtype]} from {handler.client_address[0]}", flush=True)
        reply = request.reply()
        if qname.rstrip(".").lower() != name:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            for ip in ips:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=5))
        return reply

server = DNSServer(HeadlessService(), address=address, port=53, logger=DNSLogger(logf=lambda _line: None))
print("cluster dns ready", flush=True)
server.start()
"""

# In a pod's namespace: what the resolver makes of /etc/resolv.conf there, and its answer
# for the short name, which is what the node asks.
RESOLVE = """
import json, dns.resolver
resolver = dns.resolver.Resolver()
answer = resolver.resolve("chat-nodes", "A", search=True)
print(json.dumps({
    "nameservers": resolver.nameservers,
    "search": [str(domain) for domain in resolver.search],
    "ndots": resolver.ndots,
    "chat-nodes": sorted(record.address for record in answer),
}))
"""

# In the hub namespace, asking the cluster DNS directly: its answer for a name given as is.
ASK_DIRECTLY = """
import sys, dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = [sys.argv[1]]
try:
    print(" ".join(sorted(record.address for record in resolver.resolve(sys.argv[2], "A"))))
except dns.resolver.NXDOMAIN:
    print("NXDOMAIN")
"""


@contextlib.contextmanager
def pod_resolv_conf(namespaces: list[str], nameserver: str) -> Iterator[None]:
    """/etc/netns/<ns>/resolv.conf for each of our namespaces, all removed on the way out."""
    made_etc_netns = not ETC_NETNS.exists()
    made: list[Path] = []
    try:
        for ns in namespaces:
            folder = ETC_NETNS / ns
            folder.mkdir(parents=True)  # never an existing one: the names are unique to this run
            made.append(folder)
            (folder / "resolv.conf").write_text(RESOLV_CONF.format(nameserver=nameserver, namespace=NAMESPACE))
        yield
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        if made_etc_netns:
            with contextlib.suppress(OSError):  # not empty: someone else's namespaces use it now
                ETC_NETNS.rmdir()


@dataclass
class PodNetwork:
    net: Network
    dns: Spawned
    pods: list[NodeProcess]

    def address(self, pod: NodeProcess) -> str:
        return f"{pod.host}:{pod.port}"

    def names(self) -> set[str]:
        return {f"chat@{pod.host}" for pod in self.pods}

    def views(self) -> dict[str, dict[str, object] | None]:
        return json.loads(self.net.python(self.net.hub, FETCH_VIEWS, *map(self.address, self.pods)))

    def wait_one_cluster(self) -> None:
        """Until each pod calls itself chat@<its ip>, lists itself first, and lists exactly all the pods."""
        expected = self.names()

        def one_cluster() -> bool:
            seen = self.views()
            return all(
                view is not None
                and view["self"] == f"chat@{address.split(':')[0]}"
                and view["nodes"][0] == view["self"]
                and set(view["nodes"]) == expected
                for address, view in seen.items()
            )

        try:
            wait_until(one_cluster, CONVERGE_DEADLINE, f"one cluster of {sorted(expected)}", step=0.2)
        except TimeoutError as error:
            raise AssertionError(f"{error}; the pods say:\n{json.dumps(self.views(), indent=1)}") from None

    def queries(self) -> list[tuple[str, str, str]]:
        """(name, type, client address) of every query the cluster DNS has had so far."""
        found = []
        for line in list(self.dns.lines):
            if line.startswith("query "):
                _query, name, qtype, _from, client = line.split()
                found.append((name, qtype, client))
        return found


@pytest.fixture(scope="module")
def pod_network() -> Iterator[PodNetwork]:
    with Network(hosts=PODS) as net, pod_resolv_conf([host.ns for host in net.hosts], net.hub_ip):
        redis = [redis_server_binary(), "--port", str(REDIS_PORT), "--bind", net.hub_ip]
        redis += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        net.spawn(net.hub, redis, ready="Ready to accept connections")
        pod_ips = [host.ip for host in net.hosts]
        dns = net.spawn(net.hub, [sys.executable, "-c", CLUSTER_DNS, net.hub_ip, SERVICE_FQDN, *pod_ips], ready="ready")
        pods = [
            NodeProcess(
                "stage3_k8s",
                {
                    "REDIS_URL": f"redis://{net.hub_ip}:{REDIS_PORT}/0",
                    "CLUSTER_COOKIE": COOKIE,
                    "DISCOVERY": "dns",
                    "DNS_SERVICE": SERVICE,
                    "DNS_NAMESERVER": "",  # empty is unset: the system resolver, reading resolv.conf
                    "DNS_POLL_INTERVAL": "1",
                    "POD_IP": host.ip,  # NODE_NAME is left to its stage 3 default, chat@$POD_IP
                    "PING_INTERVAL": "0",
                    "NO_PROXY": "*",  # node-to-node HTTP stays on the bridge whatever the environment says
                },
                host=host.ip,
                port=NODE_PORT,
                prefix=net.prefix(host.ns),
            )
            for host in net.hosts
        ]
        try:
            with ThreadPoolExecutor(len(pods)) as pool:
                for started in [pool.submit(pod.start) for pod in pods]:
                    started.result()
            yield PodNetwork(net, dns, pods)
        finally:
            for pod in pods:
                pod.stop()


def test_each_pod_namespace_reads_a_pod_resolv_conf(pod_network: PodNetwork) -> None:
    net = pod_network.net
    for host in net.hosts:
        seen = json.loads(net.python(host.ns, RESOLVE))
        assert seen["nameservers"] == [net.hub_ip]
        assert seen["search"] == [f"{NAMESPACE}.svc.cluster.local.", "svc.cluster.local.", "cluster.local."]
        assert seen["ndots"] == 5
        assert seen["chat-nodes"] == sorted(h.ip for h in net.hosts)


def test_pods_using_the_system_resolver_form_one_cluster_named_after_their_ips(pod_network: PodNetwork) -> None:
    pod_network.wait_one_cluster()
    assert pod_network.names() == {f"chat@{host.ip}" for host in pod_network.net.hosts}


def test_the_nodes_find_each_other_only_through_the_search_list(pod_network: PodNetwork) -> None:
    net = pod_network.net
    # The cluster DNS does not know the name as the node is given it...
    assert net.python(net.hub, ASK_DIRECTLY, net.hub_ip, f"{SERVICE}.").split() == ["NXDOMAIN"]
    assert net.python(net.hub, ASK_DIRECTLY, net.hub_ip, f"{SERVICE_FQDN}.").split() == sorted(
        host.ip for host in net.hosts
    )
    # ...so every node asked, through the system resolver, for the name the search list made.
    pod_ips = {pod.host for pod in pod_network.pods}
    wait_until(
        lambda: pod_ips <= {client for _name, _type, client in pod_network.queries()},
        CONVERGE_DEADLINE,
        "a query from every pod",
    )
    asked = {(name, qtype) for name, qtype, client in pod_network.queries() if client in pod_ips}
    # ndots:5 puts the search list before the bare name, and its first domain answers.
    assert asked == {(f"{SERVICE_FQDN}.", "A")}


def test_a_message_typed_on_one_pod_reaches_a_user_on_another(pod_network: PodNetwork) -> None:
    pod_network.wait_one_cluster()
    sender, receiver = pod_network.pods[0], pod_network.pods[-1]
    body = "across namespaces " + secrets.token_hex(4)
    out = pod_network.net.python(
        pod_network.net.hub, SEND_AND_RECEIVE, pod_network.address(sender), pod_network.address(receiver), body
    )
    got = json.loads(out)
    assert got["body"] == body
    assert got["user"] == "ann"
    assert got["node"] == f"chat@{sender.host}"
