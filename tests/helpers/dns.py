"""Stand-ins for what Kubernetes plays in DNS discovery, on one machine: the headless
Service `chat-nodes` (a DNS server whose A records a test rewrites, as the endpoints
controller does when pods come and go) and pods on loopback addresses of their own
(127.0.0.2, 127.0.0.3, ...), all on the same port."""

from __future__ import annotations

import contextlib
import socket
import threading

from dnslib import QTYPE, RCODE, RR, A
from dnslib.dns import DNSError
from dnslib.server import DNSLogger, DNSServer

from tests.helpers.node import NodeProcess
from tests.helpers.ports import free_port

SERVICE = "chat-nodes"


def pod_ip(index: int) -> str:
    """The address of the index-th pod: 127.0.0.2, 127.0.0.3, ..."""
    return f"127.0.0.{index + 2}"


class Pod(NodeProcess):
    """A node process given longer to start: up to ten of them start at once on two cores."""

    def wait_ready(self, deadline: float = 60.0) -> None:
        super().wait_ready(deadline)


def port_free_on_all(count: int) -> int:
    """One TCP port free on every pod address, as every pod of a Deployment uses the same port."""
    for _ in range(50):
        port = free_port(pod_ip(0))
        with contextlib.ExitStack() as stack:
            try:
                for index in range(count):
                    s = stack.enter_context(socket.socket())
                    s.bind((pod_ip(index), port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on all pod addresses")


class HeadlessService:
    """A DNS server answering A records for `chat-nodes` from a list the test rewrites.

    `mode` lets a test break it: "servfail" answers SERVFAIL, "silent" never answers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ips: list[str] = []
        self.mode = "answer"
        self.port = free_port(kind=socket.SOCK_DGRAM)
        quiet = DNSLogger(logf=lambda _line: None)
        self.server = DNSServer(self, port=self.port, address="127.0.0.1", logger=quiet)

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def publish(self, ips: list[str]) -> None:
        with self._lock:
            self._ips = list(ips)

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]  # dnslib's resolver interface
        with self._lock:
            ips, mode = list(self._ips), self.mode
        if mode == "silent":
            raise DNSError("dropped on purpose")  # dnslib then sends nothing: the client times out
        reply = request.reply()
        if mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif str(request.q.qname).rstrip(".") != SERVICE or not ips:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            for ip in ips:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=0))
        return reply
