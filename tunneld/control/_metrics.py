"""Prometheus metrics of one control server, from a per-server registry.

Nothing is kept in prometheus-client's global registry (no module-level singletons):
a :class:`ControlCollector` reads the coordinator's and the relay's own counters at
scrape time, so the numbers have one source of truth.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tunneld.control._coordinator import Coordinator
from tunneld.control._stun import StunStats

__all__ = ["CONTENT_TYPE", "ControlCollector", "RelayStatsLike", "make_registry", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RelayStatsLike(Protocol):
    """What the DERP relay's ``stats`` exposes."""

    @property
    def clients_current(self) -> int: ...
    @property
    def clients_total(self) -> int: ...
    @property
    def packets_relayed(self) -> int: ...
    @property
    def bytes_relayed(self) -> int: ...
    @property
    def drops(self) -> Mapping[str, int]: ...


class ControlCollector(Collector):
    """Coordinator sessions and nodes; relay clients, packets, bytes and drops."""

    def __init__(
        self,
        coordinator: Coordinator,
        relay_stats: RelayStatsLike | None,
        stun_stats: StunStats | None = None,
    ) -> None:
        self._coordinator = coordinator
        self._relay = relay_stats
        self._stun = stun_stats

    def collect(self) -> Iterator[Metric]:
        coord = self._coordinator
        yield GaugeMetricFamily(
            "tunneld_coordinator_sessions",
            "Open coordinator sessions.",
            value=coord.sessions_current,
        )
        yield CounterMetricFamily(
            "tunneld_coordinator_sessions_opened",
            "Coordinator sessions accepted since start.",
            value=coord.stats.sessions_total,
        )
        yield GaugeMetricFamily(
            "tunneld_coordinator_nodes_online",
            "Nodes with a live coordinator session.",
            value=coord.nodes_online,
        )
        messages = CounterMetricFamily(
            "tunneld_coordinator_messages",
            "Coordinator requests received, by type.",
            labels=["type"],
        )
        for kind, count in sorted(coord.stats.messages.items()):
            messages.add_metric([kind], count)
        yield messages
        closes = CounterMetricFamily(
            "tunneld_coordinator_session_closes",
            "Coordinator sessions ended, by cause.",
            labels=["cause"],
        )
        for cause, count in sorted(coord.stats.closes.items()):
            closes.add_metric([cause], count)
        yield closes
        yield CounterMetricFamily(
            "tunneld_coordinator_peer_updates_sent",
            "Coordinator messages sent to nodes.",
            value=coord.stats.peer_updates_sent,
        )
        if self._stun is not None:
            yield CounterMetricFamily(
                "tunneld_stun_requests",
                "STUN binding requests answered.",
                value=self._stun.responses,
            )
            yield CounterMetricFamily(
                "tunneld_stun_bad_datagrams",
                "UDP datagrams on the STUN port that were not binding requests.",
                value=self._stun.bad_datagrams,
            )
        relay = self._relay
        if relay is None:
            return
        yield GaugeMetricFamily(
            "tunneld_relay_clients", "Connected DERP clients.", value=relay.clients_current
        )
        yield CounterMetricFamily(
            "tunneld_relay_clients_accepted",
            "DERP clients accepted since start.",
            value=relay.clients_total,
        )
        yield CounterMetricFamily(
            "tunneld_relay_packets_relayed",
            "Packets forwarded by the DERP relay.",
            value=relay.packets_relayed,
        )
        yield CounterMetricFamily(
            "tunneld_relay_bytes_relayed",
            "Payload bytes forwarded by the DERP relay.",
            value=relay.bytes_relayed,
        )
        drops = CounterMetricFamily(
            "tunneld_relay_drops", "Packets the relay dropped, by reason.", labels=["reason"]
        )
        for reason, count in sorted(relay.drops.items()):
            drops.add_metric([reason], count)
        yield drops


def make_registry(
    coordinator: Coordinator,
    relay_stats: RelayStatsLike | None,
    stun_stats: StunStats | None = None,
) -> CollectorRegistry:
    """A fresh registry holding only this server's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControlCollector(coordinator, relay_stats, stun_stats))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
