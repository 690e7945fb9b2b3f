"""Stage 2's settings: the core's, plus what a node of a Redis-backed cluster reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

from shared.settings import MIN_SECRET_LENGTH, ConfigError, Fields, Reader, Settings, number, secret


@dataclass(frozen=True, slots=True)
class ClusterSettings(Settings):
    DISCOVERY_MODES: ClassVar[tuple[str, ...]] = ("manual", "redis", "gossip")

    discovery: str = "redis"
    redis_url: str | None = field(default=None, repr=False)  # may carry a password: see redact_url
    cluster_cookie: str | None = field(default=None, repr=False)
    node_down_after: float = 5.0  # seconds without a heartbeat before peers drop a node
    gossip_secret: str | None = field(default=None, repr=False)  # DISCOVERY=gossip: encrypts the packets

    @classmethod
    def read(cls, get: Reader, base: Settings) -> Fields:
        assert isinstance(base, ClusterSettings)
        return {
            **super(ClusterSettings, cls).read(get, base),  # explicit: slots=True makes a new class
            "redis_url": _redis_url(get("REDIS_URL"), base.redis_url),
            "cluster_cookie": get("CLUSTER_COOKIE") or base.cluster_cookie,
            "node_down_after": number("NODE_DOWN_AFTER", get("NODE_DOWN_AFTER"), base.node_down_after, 0.5, 600),
            "gossip_secret": secret("GOSSIP_SECRET", get("GOSSIP_SECRET"), base.gossip_secret),
        }

    def check(self) -> None:
        cookie = self.cluster_cookie
        if cookie is None:
            raise ConfigError("CLUSTER_COOKIE", "required for a clustered node")
        if len(cookie) < MIN_SECRET_LENGTH or not cookie.isprintable():
            raise ConfigError("CLUSTER_COOKIE", f"must be at least {MIN_SECRET_LENGTH} printable characters")
        if self.redis_url is None:
            raise ConfigError("REDIS_URL", "required for a clustered node, e.g. redis://127.0.0.1:6379/0")

    @property
    def own_ip(self) -> str | None:
        """The address peers reach a node at that listens on every address; stage 2 runs on
        one machine and knows none (127.0.0.1 stands in), stage 3 knows its pod's."""
        return None

    @property
    def address(self) -> str:
        """The HTTP address peers reach this node at (`host:port`, `[ipv6]:port`)."""
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = self.own_ip or "127.0.0.1"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def _redis_url(raw: str | None, default: str | None) -> str | None:
    if raw is None:
        return default
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ConfigError(
            "REDIS_URL", f"must be redis://host:port[/db], rediss:// or unix://path, got {redact_url(raw)!r}"
        )
    return raw


def redact_url(url: str) -> str:
    """`url` fit for a log line or an error message: a password in it becomes `***`.

    The one place REDIS_URL is made printable; nothing prints the URL any other way."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))
