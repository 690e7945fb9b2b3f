"""One typed settings object, read from the environment once at start.

Every value is checked here so that a bad variable stops the node with one clear
line naming it, instead of a stack trace later on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

MIN_SECRET_LENGTH = 16  # CLUSTER_COOKIE, GOSSIP_SECRET
# Blank means "the default" for every variable but these: their default is "off", which is
# not what someone who wrote `CONSOLE_PORT=` (or Compose's `${CONSOLE_PORT}` of an unset
# variable) meant, so a blank one stops the node instead of silently serving nothing.
BLANK_IS_AN_ERROR = frozenset({"CONSOLE_PORT"})
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9_\-.]{1,64}@[A-Za-z0-9_\-.:]{1,255}$")
# Which stage has each DISCOVERY mode: a node refuses a mode of another stage by naming it.
DISCOVERY_HOMES = {
    "none": "stage 1 (python -m stage1_dev)",
    "manual": "stage 2 (python -m stage2_cluster)",
    "redis": "stage 2 (python -m stage2_cluster)",
    "gossip": "stage 2 (python -m stage2_cluster)",
    "dns": "stage 3 (python -m stage3_k8s)",
}


class ConfigError(ValueError):
    """A bad environment variable; str() is the one line shown to the user."""

    def __init__(self, var: str, problem: str) -> None:
        super().__init__(f"{var}: {problem}")
        self.var = var


Reader = Callable[[str], "str | None"]
# Field name -> value, for the settings' constructor: each value has its field's type
# (read() and the stages' defaults make sure), which a dict of many fields cannot say.
Fields = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Settings:
    """What the core reads. A stage subclasses it for the variables it adds (stage 2:
    `stage2_cluster.settings`, stage 3: `stage3_k8s.settings`), extending `read` and `check`."""

    DISCOVERY_MODES: ClassVar[tuple[str, ...]] = ("none",)

    port: int = 4000
    host: str = "127.0.0.1"
    node_name: str = "nonode@nohost"
    discovery: str = "none"
    ping_interval: float = 5.0
    history_size: int = 100
    allowed_origins: tuple[str, ...] = ()  # empty = same host as the request
    rate_limit: tuple[float, int] = (10.0, 20)  # per second, burst
    max_connections: int = 1000  # sockets one node holds; docs/protocol.md shows the memory arithmetic
    entered_names: int = 10  # user:entered by name per room and batch; the rest summed (docs/protocol.md)
    console_port: int | None = None  # the remote console (shared/console.py); None: no console

    @classmethod
    def from_env(cls, env: Mapping[str, str], **stage_defaults: Any) -> Self:
        """Build settings from `env`; a stage passes its own defaults (e.g. node_name)."""
        base = cls(**stage_defaults)

        def get(var: str) -> str | None:
            value = env.get(var)
            if var in BLANK_IS_AN_ERROR and value is not None:
                return value.strip()
            return None if value is None or value.strip() == "" else value.strip()

        settings = cls(**cls.read(get, base))
        settings.check()
        return settings

    @classmethod
    def read(cls, get: Reader, base: Settings) -> Fields:
        """Each field from its variable (or `base`'s value when unset), checked on the way."""
        return {
            "port": int(number("PORT", get("PORT"), base.port, 1, 65535, integer=True)),
            "host": _host(get("HOST"), base.host),
            "node_name": _node_name(get("NODE_NAME"), base.node_name),
            "discovery": cls._discovery(get("DISCOVERY"), base.discovery),
            "ping_interval": number("PING_INTERVAL", get("PING_INTERVAL"), base.ping_interval, 0, 3600),
            "history_size": int(
                number("HISTORY_SIZE", get("HISTORY_SIZE"), base.history_size, 0, 100_000, integer=True)
            ),
            "allowed_origins": _origins(get("ALLOWED_ORIGINS"), base.allowed_origins),
            "rate_limit": _rate_limit(get("RATE_LIMIT"), base.rate_limit),
            "max_connections": int(
                number("MAX_CONNECTIONS", get("MAX_CONNECTIONS"), base.max_connections, 1, 1_000_000, integer=True)
            ),
            "entered_names": int(
                number("ENTERED_NAMES", get("ENTERED_NAMES"), base.entered_names, 0, 1000, integer=True)
            ),
            "console_port": _console_port(get("CONSOLE_PORT"), base.console_port),
        }

    def check(self) -> None:
        """What no single variable can say alone; a stage adds its own rules."""

    @classmethod
    def _discovery(cls, raw: str | None, default: str) -> str:
        if raw is None:
            return default
        if raw in cls.DISCOVERY_MODES:
            return raw
        modes = ", ".join(cls.DISCOVERY_MODES)
        if raw in DISCOVERY_HOMES:
            raise ConfigError("DISCOVERY", f"{raw} is a mode of {DISCOVERY_HOMES[raw]}; this node has {modes}")
        raise ConfigError("DISCOVERY", f"must be one of {modes}, got {raw!r}")


def number(var: str, raw: str | None, default: float, low: float, high: float, *, integer: bool = False) -> float:
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


def _console_port(raw: str | None, default: int | None) -> int | None:
    if raw is None:
        return default
    return int(number("CONSOLE_PORT", raw, 0, 1, 65535, integer=True))


def _host(raw: str | None, default: str) -> str:
    if raw is None:
        return default
    if not re.fullmatch(r"[A-Za-z0-9_\-.:]{1,255}", raw):
        raise ConfigError("HOST", f"must be an IP address or host name, got {raw!r}")
    return raw


def ip(var: str, raw: str | None, default: str | None) -> str | None:
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


def secret(var: str, raw: str | None, default: str | None) -> str | None:
    if raw is None:
        return default
    if len(raw) < MIN_SECRET_LENGTH or not raw.isprintable():
        raise ConfigError(var, f"must be at least {MIN_SECRET_LENGTH} printable characters")
    return raw


def host_port(var: str, raw: str | None, default: tuple[str, int] | None) -> tuple[str, int] | None:
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
