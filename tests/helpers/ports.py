"""Free ports on the loopback interface, and whether something listens on one."""

from __future__ import annotations

import contextlib
import socket


def free_port(host: str = "127.0.0.1", kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port nothing is bound to on `host`, for TCP or (`socket.SOCK_DGRAM`) UDP."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(count: int, host: str = "127.0.0.1", *, also: int | None = None) -> int:
    """The first of `count` consecutive free ports (nodes a, b, .. of `make stage2`); with
    `also`, the `count` ports from first + `also` are free too (their consoles, at +100)."""
    for _ in range(100):
        first = free_port(host)
        wanted = [*range(first + 1, first + count)]
        if also is not None:
            wanted += range(first + also, first + also + count)
        with contextlib.ExitStack() as stack:
            try:
                for port in wanted:
                    stack.enter_context(socket.socket()).bind((host, port))
            except OSError:
                continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on `port`."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0
