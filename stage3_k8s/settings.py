"""Stage 3's settings: stage 2's, plus what a pod reads to find its peers through DNS."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from shared.settings import ConfigError, Fields, Reader, Settings, host_port, ip, number
from stage2_cluster.settings import ClusterSettings


@dataclass(frozen=True, slots=True)
class K8sSettings(ClusterSettings):
    DISCOVERY_MODES: ClassVar[tuple[str, ...]] = (*ClusterSettings.DISCOVERY_MODES, "dns")

    discovery: str = "dns"
    dns_service: str = "chat-nodes"  # the headless Service whose A records are the peers
    node_basename: str = "chat"  # libcluster's application_name: peers are chat@<ip>
    pod_ip: str | None = None  # the downward API's status.podIP
    dns_poll_interval: float = 5.0
    dns_nameserver: tuple[str, int] | None = None  # for tests: a DNS server of their own

    @classmethod
    def read(cls, get: Reader, base: Settings) -> Fields:
        assert isinstance(base, K8sSettings)
        return {
            **super(K8sSettings, cls).read(get, base),  # explicit: slots=True makes a new class
            "dns_service": _dns_name(get("DNS_SERVICE"), base.dns_service),
            "node_basename": _basename(get("NODE_BASENAME"), base.node_basename),
            "pod_ip": ip("POD_IP", get("POD_IP"), base.pod_ip),
            "dns_poll_interval": number(
                "DNS_POLL_INTERVAL", get("DNS_POLL_INTERVAL"), base.dns_poll_interval, 0.1, 3600
            ),
            "dns_nameserver": host_port("DNS_NAMESERVER", get("DNS_NAMESERVER"), base.dns_nameserver),
        }

    @property
    def own_ip(self) -> str | None:
        return self.pod_ip


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
