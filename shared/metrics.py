"""Prometheus metrics of one node, in a registry of its own so several apps can share a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.gc_collector import GCCollector


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge("chat_connections", "Open WebSocket connections", registry=r)
        self.fast_path = Gauge(
            "chat_fast_path_connections", "Open WebSocket connections written to directly (transport.py)", registry=r
        )
        self.joins = Counter("chat_joins", "Successful channel joins", registry=r)
        self.joins_refused = Counter(
            "chat_joins_refused", "Channel joins refused because the broker was unavailable", ["reason"], registry=r
        )
        self.messages_in = Counter("chat_messages_in", "new:msg pushes accepted from clients", registry=r)
        self.messages_rejected = Counter("chat_messages_rejected", "Client pushes refused", ["reason"], registry=r)
        self.messages_out = Counter("chat_messages_out", "Broadcasts fanned out to local sockets", registry=r)
        self.deliveries = Counter("chat_deliveries", "Frames queued to local sockets by broadcasts", registry=r)
        self.replay_bytes = Counter(
            "chat_replay_bytes", "Bytes of history payloads replayed to joining sockets", registry=r
        )
        self.drops = Counter("chat_drops", "Sockets disconnected for not keeping up", registry=r)
        self.cluster_nodes = Gauge("chat_cluster_nodes", "Nodes this node is connected to, itself included", registry=r)
        self.bad_peer_lines = Counter(
            "chat_bad_peer_lines", "Malformed lines on a Redis channel, dropped", ["channel"], registry=r
        )
        self.bad_peer_addresses = Counter(
            "chat_bad_peer_addresses",
            "Peer addresses refused as not host:port, by where they came from",
            ["source"],
            registry=r,
        )
        self.redis_up = Gauge("chat_redis_up", "1 while the configured Redis is reachable", registry=r)
        GCCollector(registry=r)  # python_gc_collections_total{generation}: the process's, shown per node

    def render(self) -> bytes:
        return generate_latest(self.registry)
