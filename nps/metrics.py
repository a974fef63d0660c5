# -*- test-case-name: test.test_metrics -*-
"""
Prometheus metrics for C{nps} and C{npc}.

Each server or client has its own L{CollectorRegistry} (never the global
one, so tests and several services in one process do not mix).  Most values
are read from the service's state at scrape time by a custom collector; the
one thing nothing else counts, handshake failures on the bridge, is a real
L{Counter} fed by L{ServerStats.handshake_failed}.

Scrapes run in the reactor thread (see L{nps.debug.MetricsPage}), so the
collectors may read the services' dicts without locks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from nps.client import NpcService
    from nps.server import NpsServer

__all__ = ["HANDSHAKE_FAILURE_REASONS", "ServerStats", "ClientStats", "handshake_failure_reason"]

#: The C{reason} label values of C{nps_handshake_failures_total}.
HANDSHAKE_FAILURE_REASONS = (
    "wrong_vkey",
    "bad_magic_or_version",
    "timeout",
    "too_many_pending",
    "closed_early",
    "rejected",
)


def handshake_failure_reason(error: Exception) -> str:
    """
    The C{reason} label for a L{nps.protocols.handshake.HandshakeError}.

    @return: C{"wrong_vkey"} for a bad or unknown key, else
        C{"bad_magic_or_version"} (not an nps peer, another protocol
        version, a malformed auth message).
    """
    return "wrong_vkey" if str(error) == "wrong vkey" else "bad_magic_or_version"


class ServerStats:
    """
    The metrics of one L{NpsServer}.

    @ivar registry: what C{/metrics} exposes.
    """

    def __init__(self, server: "NpsServer") -> None:
        self.registry = CollectorRegistry()
        self._handshake_failures = Counter(
            "nps_handshake_failures", "Bridge connections that failed before a session started, by reason.",
            ["reason"], registry=self.registry,
        )
        for reason in HANDSHAKE_FAILURE_REASONS:
            self._handshake_failures.labels(reason)  # exported as 0 from the start
        self.registry.register(_ServerCollector(server))

    def handshake_failed(self, reason: str) -> None:
        """
        Count one failed bridge handshake.

        @param reason: one of L{HANDSHAKE_FAILURE_REASONS}.
        """
        self._handshake_failures.labels(reason).inc()


class _ServerCollector(Collector):
    """Reads sessions, tunnels and counters of an L{NpsServer} at scrape time."""

    def __init__(self, server: "NpsServer") -> None:
        self._server = server

    def describe(self) -> Iterable[Metric]:
        return []  # names are only known at scrape time; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        server = self._server
        sessions = list(server.sessions.values())
        yield GaugeMetricFamily("nps_clients_online", "npc sessions connected now.", value=len(sessions))
        yield GaugeMetricFamily("nps_streams_open", "Mux streams open over all sessions.",
                                value=sum(s.mux.stream_count for s in sessions if s.mux is not None))
        rtt = GaugeMetricFamily("nps_bridge_rtt_seconds", "Last measured bridge ping round trip.",
                                labels=["client"])
        for session in sessions:
            if session.mux is not None and session.mux.rtt is not None:
                rtt.add_metric([str(session.client_id)], session.mux.rtt)
        yield rtt

        client_bytes = CounterMetricFamily(
            "nps_client_bytes", "Bytes through a client's tunnels (in: users to targets, out: back).",
            labels=["client", "direction"])
        for client_id, counter in sorted(server.client_counters.items()):
            client_bytes.add_metric([str(client_id), "in"], counter.bytes_in)
            client_bytes.add_metric([str(client_id), "out"], counter.bytes_out)
        yield client_bytes

        labels = ["tunnel", "client", "mode"]
        tunnel_bytes = CounterMetricFamily("nps_tunnel_bytes", "Bytes through an open tunnel.",
                                           labels=labels + ["direction"])
        connections = CounterMetricFamily("nps_tunnel_connections", "Connections through an open tunnel.",
                                          labels=labels)
        for tunnel_id, running in sorted(server.tunnels.items()):
            tunnel = running.tunnel
            values = [str(tunnel_id), str(tunnel.client_id), tunnel.mode]
            tunnel_bytes.add_metric(values + ["in"], running.counter.bytes_in)
            tunnel_bytes.add_metric(values + ["out"], running.counter.bytes_out)
            connections.add_metric(values, running.counter.connections)
        yield tunnel_bytes
        yield connections


class ClientStats:
    """
    The metrics of one L{NpcService}.

    @ivar registry: what npc's C{/metrics} exposes.
    """

    def __init__(self, client: "NpcService") -> None:
        self.registry = CollectorRegistry()
        self._reconnects = Counter("npc_reconnects", "Sessions established after the first one.",
                                   registry=self.registry)
        self.registry.register(_ClientCollector(client))

    def reconnected(self) -> None:
        """Count one session established after an earlier one."""
        self._reconnects.inc()


class _ClientCollector(Collector):
    """Reads an L{NpcService}'s current session at scrape time."""

    def __init__(self, client: "NpcService") -> None:
        self._client = client

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        mux: Any = self._client.current.mux if self._client.current is not None else None
        yield GaugeMetricFamily("npc_connected", "1 while a session with the server is up.",
                                value=1 if mux is not None else 0)
        yield GaugeMetricFamily("npc_streams_open", "Mux streams open on the session.",
                                value=mux.stream_count if mux is not None else 0)
        rtt = GaugeMetricFamily("npc_bridge_rtt_seconds", "Last measured bridge ping round trip.")
        if mux is not None and mux.rtt is not None:
            rtt.add_metric([], mux.rtt)
        yield rtt
