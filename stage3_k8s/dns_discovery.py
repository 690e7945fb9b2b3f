"""DISCOVERY=dns: libcluster's `Kubernetes.DNS` strategy, in Python.

A headless Service (`clusterIP: None`) has no virtual IP: its DNS name answers with
one A record per pod behind it. So the pods of the chat find each other by asking
for `chat-nodes` every DNS_POLL_INTERVAL seconds, like libcluster does with
`service: "chat-nodes", application_name: "chat"`:

- each address in the answer is a node named `NODE_BASENAME@<ip>` (`chat@10.244.0.7`),
  serving on the same PORT as we do, as every pod of a Deployment does;
- every poll connects to all of them, so a peer that was dropped (a network blip,
  a missed heartbeat) is connected again on the next poll;
- a node that was in the previous answer and is gone from this one (scaled down,
  evicted) is disconnected at once, without waiting for its heartbeats to stop.

Only an answer counts. A timeout or a failing DNS server changes nothing: a DNS hiccup
says nothing about the pods, and dropping the whole cluster over one would be worse
than keeping a dead peer for the few seconds its missing heartbeats take.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from shared import logs
from stage3_k8s.settings import K8sSettings

if TYPE_CHECKING:
    from stage2_cluster.handshake import Handshake

log = logs.get("dns")

QUERY_TIMEOUT = 1.0  # one try against one server...
LOOKUP_LIFETIME = 2.0  # ...and the whole lookup, retries and search list included


class LookupFailed(Exception):
    """No answer this time (timeout, SERVFAIL, no server): nothing can be concluded."""


def make_resolver(settings: K8sSettings) -> dns.asyncresolver.Resolver:
    """The system resolver, or only DNS_NAMESERVER when it is set.

    In a pod, /etc/resolv.conf lists the namespace's search domains, so the short name
    `chat-nodes` finds the Service of our own namespace. DNS_NAMESERVER replaces that
    configuration entirely (server and search list): the name is then asked as given.
    """
    if settings.dns_nameserver is None:
        resolver = dns.asyncresolver.Resolver()
    else:
        host, port = settings.dns_nameserver
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)]
        resolver.domain = dns.name.root  # not the machine's own domain, which dnspython would guess
    resolver.timeout = QUERY_TIMEOUT
    resolver.lifetime = LOOKUP_LIFETIME
    return resolver


async def lookup(resolver: dns.asyncresolver.Resolver, service: str) -> list[str]:
    """The A records of `service`, sorted; [] when DNS says the name has none."""
    try:
        # search=True: dnspython ignores the search list by default, pods need it.
        answer = await resolver.resolve(service, "A", search=True)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []  # an answer: no pod behind the Service
    except dns.exception.DNSException as error:
        raise LookupFailed(f"{type(error).__name__}: {error}") from None
    return sorted({rdata.address for rdata in answer}, key=ipaddress.ip_address)


def address_of(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class DnsDiscovery:
    def __init__(
        self, handshake: Handshake, settings: K8sSettings, resolver: dns.asyncresolver.Resolver | None = None
    ) -> None:
        self.handshake = handshake
        self.settings = settings
        self.resolver = resolver or make_resolver(settings)
        # Our own A record is in the answer too, named like a peer: never connect to it.
        self.own_ips = {ip for ip in (settings.pod_ip, settings.host) if ip}
        self.listed: dict[str, str] = {}  # the previous answer: node name -> address
        self.failing = False

    def peers_in(self, ips: list[str]) -> dict[str, str]:
        basename, port = self.settings.node_basename, self.settings.port
        return {f"{basename}@{ip}": address_of(ip, port) for ip in ips if ip not in self.own_ips}

    async def poll_once(self) -> None:
        try:
            ips = await lookup(self.resolver, self.settings.dns_service)
        except LookupFailed as error:
            if not self.failing:  # one line per outage, not one per poll
                log.warning(
                    "dns lookup failed: keeping the cluster as it is",
                    service=self.settings.dns_service,
                    reason=str(error),
                )
            self.failing = True
            return
        if self.failing:
            log.info("dns lookup answers again", service=self.settings.dns_service)
            self.failing = False
        listed = self.peers_in(ips)
        if listed.keys() != self.listed.keys():
            log.info("dns answer changed", service=self.settings.dns_service, peers=sorted(listed))
        gone = [name for name in self.listed if name not in listed and name in self.handshake.membership.peers]
        self.listed = listed
        for name, address in listed.items():
            self.handshake.connect_soon(name, address, source="dns")
        if gone:
            # Concurrently: each goodbye to a vanished pod may wait for its HTTP timeout.
            await asyncio.gather(*(self.handshake.disconnect(name, reason="gone from DNS") for name in gone))

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.settings.dns_poll_interval)
