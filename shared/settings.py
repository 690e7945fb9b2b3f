"""One typed settings object, read from the environment once at start.

Every value is checked here so that a bad variable stops the node with one clear
line naming it, instead of a stack trace later on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

DISCOVERY_MODES = ("none", "manual", "redis", "gossip", "dns")
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9_\-.]{1,64}@[A-Za-z0-9_\-.:]{1,255}$")
MIN_COOKIE_LENGTH = 16


class ConfigError(ValueError):
    """A bad environment variable; str() is the one line shown to the user."""

    def __init__(self, var: str, problem: str) -> None:
        super().__init__(f"{var}: {problem}")
        self.var = var


@dataclass(frozen=True, slots=True)
class Settings:
    port: int = 4000
    host: str = "127.0.0.1"
    node_name: str = "nonode@nohost"
    redis_url: str | None = field(default=None, repr=False)  # may carry a password: see redact_url
    cluster_cookie: str | None = field(default=None, repr=False)
    discovery: str = "none"
    dns_service: str = "chat-nodes"
    node_basename: str = "chat"
    pod_ip: str | None = None
    dns_poll_interval: float = 5.0
    dns_nameserver: tuple[str, int] | None = None
    ping_interval: float = 5.0
    history_size: int = 100
    allowed_origins: tuple[str, ...] = ()  # empty = same host as the request
    rate_limit: tuple[float, int] = (10.0, 20)  # per second, burst
    node_down_after: float = 5.0  # seconds without a heartbeat before peers drop a node
    gossip_secret: str | None = field(default=None, repr=False)  # DISCOVERY=gossip: encrypts the packets

    @property
    def clustered(self) -> bool:
        return self.redis_url is not None or self.discovery != "none"

    @classmethod
    def from_env(cls, env: Mapping[str, str], **stage_defaults: object) -> Settings:
        """Build settings from `env`; a stage passes its own defaults (e.g. node_name)."""
        base = cls(**stage_defaults)  # type: ignore[arg-type]

        def get(var: str) -> str | None:
            value = env.get(var)
            return None if value is None or value.strip() == "" else value.strip()

        settings = cls(
            port=_port(get("PORT"), base.port),
            host=_host(get("HOST"), base.host),
            node_name=_node_name(get("NODE_NAME"), base.node_name),
            redis_url=_redis_url(get("REDIS_URL"), base.redis_url),
            cluster_cookie=get("CLUSTER_COOKIE") or base.cluster_cookie,
            discovery=_choice("DISCOVERY", get("DISCOVERY"), base.discovery, DISCOVERY_MODES),
            dns_service=_dns_name(get("DNS_SERVICE"), base.dns_service),
            node_basename=_basename(get("NODE_BASENAME"), base.node_basename),
            pod_ip=_ip("POD_IP", get("POD_IP"), base.pod_ip),
            dns_poll_interval=_number("DNS_POLL_INTERVAL", get("DNS_POLL_INTERVAL"), base.dns_poll_interval, 0.1, 3600),
            dns_nameserver=_hostport("DNS_NAMESERVER", get("DNS_NAMESERVER"), base.dns_nameserver),
            ping_interval=_number("PING_INTERVAL", get("PING_INTERVAL"), base.ping_interval, 0, 3600),
            history_size=int(_number("HISTORY_SIZE", get("HISTORY_SIZE"), base.history_size, 0, 100_000, integer=True)),
            allowed_origins=_origins(get("ALLOWED_ORIGINS"), base.allowed_origins),
            rate_limit=_rate_limit(get("RATE_LIMIT"), base.rate_limit),
            node_down_after=_number("NODE_DOWN_AFTER", get("NODE_DOWN_AFTER"), base.node_down_after, 0.5, 600),
            gossip_secret=_secret("GOSSIP_SECRET", get("GOSSIP_SECRET"), base.gossip_secret),
        )
        if settings.clustered:
            cookie = settings.cluster_cookie
            if cookie is None:
                raise ConfigError("CLUSTER_COOKIE", "required for a clustered node (REDIS_URL or DISCOVERY is set)")
            if len(cookie) < MIN_COOKIE_LENGTH or not cookie.isprintable():
                raise ConfigError("CLUSTER_COOKIE", f"must be at least {MIN_COOKIE_LENGTH} printable characters")
        return settings


def _port(raw: str | None, default: int) -> int:
    return int(_number("PORT", raw, default, 1, 65535, integer=True))


def _number(var: str, raw: str | None, default: float, low: float, high: float, *, integer: bool = False) -> float:
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(var, f"must be {kind} between {low:g} and {high:g}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(var, f"must be between {low:g} and {high:g}, got {raw!r}")
    return value


def _host(raw: str | None, default: str) -> str:
    if raw is None:
        return default
    if not re.fullmatch(r"[A-Za-z0-9_\-.:]{1,255}", raw):
        raise ConfigError("HOST", f"must be an IP address or host name, got {raw!r}")
    return raw


def _ip(var: str, raw: str | None, default: str | None) -> str | None:
    if raw is None:
        return default
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ConfigError(var, f"must be an IP address, got {raw!r}") from None


def _node_name(raw: str | None, default: str) -> str:
    if raw is None:
        return default
    if not NODE_NAME_RE.fullmatch(raw):
        raise ConfigError("NODE_NAME", f"must look like name@host (letters, digits, _ - .), got {raw!r}")
    return raw


def _basename(raw: str | None, default: str) -> str:
    if raw is None:
        return default
    if not re.fullmatch(r"[A-Za-z0-9_\-.]{1,64}", raw):
        raise ConfigError("NODE_BASENAME", f"must be letters, digits, _ - or ., got {raw!r}")
    return raw


def _dns_name(raw: str | None, default: str) -> str:
    if raw is None:
        return default
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?\.?", raw):
        raise ConfigError("DNS_SERVICE", f"must be a DNS name (letters, digits, - and .), got {raw!r}")
    return raw


def _secret(var: str, raw: str | None, default: str | None) -> str | None:
    if raw is None:
        return default
    if len(raw) < MIN_COOKIE_LENGTH or not raw.isprintable():
        raise ConfigError(var, f"must be at least {MIN_COOKIE_LENGTH} printable characters")
    return raw


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


def _choice(var: str, raw: str | None, default: str, choices: tuple[str, ...]) -> str:
    if raw is None:
        return default
    if raw not in choices:
        raise ConfigError(var, f"must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _hostport(var: str, raw: str | None, default: tuple[str, int] | None) -> tuple[str, int] | None:
    if raw is None:
        return default
    host, sep, port = raw.rpartition(":")
    if not sep:
        host, port = raw, "53"
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not 1 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError(var, f"must be ip:port, got {raw!r}") from None
    return host, number


def _origins(raw: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if raw is None:
        return default
    origins = tuple(item.strip().rstrip("/") for item in raw.split(",") if item.strip())
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ConfigError("ALLOWED_ORIGINS", f"each entry must be * or scheme://host[:port], got {origin!r}")
    return origins


def _rate_limit(raw: str | None, default: tuple[float, int]) -> tuple[float, int]:
    if raw is None:
        return default
    match = re.fullmatch(r"(\d+(?:\.\d+)?)/(\d+)", raw)
    if not match or float(match[1]) <= 0 or int(match[2]) < 1:
        raise ConfigError("RATE_LIMIT", f"must be <per second>/<burst> with both above zero, e.g. 10/20, got {raw!r}")
    return float(match[1]), int(match[2])
