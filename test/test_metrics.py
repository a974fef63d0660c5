# -*- test-case-name: test.test_metrics -*-
"""
The metrics and the debug listener (nps.metrics, nps.debug): in process with
the real reactor over loopback, plus one end-to-end run of C{nps --config}
scraped with curl.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
from typing import Any, Callable

import pytest
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from nps.client import NpcService
from nps.config import ServerConfig
from nps.debug import DebugService, ReactorLag, loopback_endpoint
from nps.metrics import HANDSHAKE_FAILURE_REASONS
from nps.modes import load_modes
from nps.server import NpsServer
from nps.store import Store

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus text page: (name, labels) -> value."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


try:
    from .inprocess import Collect, Echo, wait_for  # type: ignore[import-not-found]
except ImportError:
    from inprocess import Collect, Echo, wait_for  # type: ignore[no-redef]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LoopbackEndpointTests(TestCase):
    """Which addresses the debug listener accepts."""

    def test_loopback_only(self) -> None:
        """IPv4/IPv6 loopback and C{localhost} give an endpoint string; anything else gives None."""
        self.assertEqual(loopback_endpoint("127.0.0.1", 9999), "tcp:9999:interface=127.0.0.1")
        self.assertEqual(loopback_endpoint("127.0.0.2", 9999), "tcp:9999:interface=127.0.0.2")
        self.assertEqual(loopback_endpoint("localhost", 9999), "tcp:9999:interface=127.0.0.1")
        self.assertEqual(loopback_endpoint("::1", 9999), "tcp6:9999:interface=\\:\\:1")
        for host in ("0.0.0.0", "::", "10.0.0.1", "192.0.2.7", "example.com", ""):
            self.assertIsNone(loopback_endpoint(host, 9999), host)


class ReactorLagTests(TestCase):
    """The reactor-lag probe, on a L{Clock}."""

    def test_lag_measured_against_schedule(self) -> None:
        """A call that runs late reports how late; C{max} keeps the worst; on time reports 0."""
        clock = Clock()
        lag = ReactorLag(clock, interval=0.5)
        lag.startService()
        clock.advance(0.5)
        self.assertEqual((lag.last, lag.max, lag.samples), (0.0, 0.0, 1))
        clock.advance(0.8)  # due at 1.0, runs at 1.3 (a blocked reactor)
        self.assertAlmostEqual(lag.last, 0.3)
        self.assertAlmostEqual(lag.max, 0.3)
        clock.advance(0.2)  # LoopingCall keeps its grid: due at 1.5, runs at 1.5
        self.assertAlmostEqual(lag.last, 0.0)
        clock.advance(2.2)  # due at 2.0, runs at 3.7: more than one interval late
        self.assertAlmostEqual(lag.last, 1.7)
        self.assertAlmostEqual(lag.max, 1.7)
        self.assertEqual(set(lag.as_dict()), {"last_seconds", "max_seconds", "interval_seconds", "samples"})
        lag.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


class MetricsTests(TestCase):
    """A real server, client and debug listeners in one process over 127.0.0.1."""

    timeout = 60

    def setUp(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="nps-test-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.echo_port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(self.echo_port.stopListening)
        self.echo_addr = f"127.0.0.1:{self.echo_port.getHost().port}"
        self.fatal: list[tuple[int, str]] = []
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)

    def start_server(self, **config: Any) -> NpsServer:
        settings = ServerConfig(path=None, bridge_ip="127.0.0.1", bridge_port=0, data_dir=self.data_dir, **config)
        server = NpsServer(settings, reactor, load_modes())
        server.privilegedStartService()
        server.startService()
        self.addCleanup(lambda: server.stopService() if server.running else None)
        return server

    def start_client(self, server: NpsServer, vkey: str, **kwargs: Any) -> NpcService:
        client = NpcService(reactor, "127.0.0.1", server.bridge_address.port, vkey, load_modes(),
                            on_fatal=lambda code, msg: self.fatal.append((code, msg)), max_retry_delay=0.5,
                            **kwargs)
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        return client

    def add_client_and_tunnel(self) -> tuple[Any, Any, int]:
        port = free_port()
        store = Store(self.data_dir)
        try:
            record = store.add_client(remark="metrics")
            tunnel = store.add_tunnel(record.id, "tcp", port, [self.echo_addr], server_ip="127.0.0.1")
        finally:
            store.close()
        return record, tunnel, port

    @inlineCallbacks
    def get(self, port: int, path: str):  # type: ignore[no-untyped-def]
        """GET C{http://127.0.0.1:PORT/PATH}; fires with (status code, body)."""
        response = yield treq.get(f"http://127.0.0.1:{port}{path}", pool=self.pool, reactor=reactor)
        body = yield treq.content(response)
        return response.code, body

    @inlineCallbacks
    def scrape(self, port: int):  # type: ignore[no-untyped-def]
        code, body = yield self.get(port, "/metrics")
        self.assertEqual(code, 200)
        return parse_metrics(body.decode("utf-8"))

    @inlineCallbacks
    def test_metrics_count_traffic_sessions_and_failed_handshakes(self):  # type: ignore[no-untyped-def]
        """
        After traffic through a tunnel, C{/metrics} shows one client online,
        the exact bytes each way per client and per tunnel, one connection, the
        client's bridge RTT once measured, and a wrong-vkey handshake counted
        under its reason (every other reason present at 0).
        """
        record, tunnel, port = self.add_client_and_tunnel()
        debug_port = free_port()
        server = self.start_server(pprof_port=debug_port)
        self.start_client(server, record.vkey)
        yield wait_for(lambda: record.id in server.sessions and tunnel.id in server.tunnels
                       and server.tunnels[tunnel.id].port is not None)
        payload = bytes(range(256)) * 1000
        user = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), user)
        user.transport.write(payload)
        yield wait_for(lambda: len(user.received) >= len(payload))
        user.transport.loseConnection()
        yield user.closed
        counter = server.tunnels[tunnel.id].counter
        yield wait_for(lambda: counter.bytes_out == len(payload))

        self.start_client(server, "not-the-vkey")
        yield wait_for(lambda: self.fatal)

        samples = yield self.scrape(debug_port)
        self.assertEqual(sample(samples, "nps_clients_online"), 1)
        self.assertEqual(sample(samples, "nps_streams_open"), 0)
        client, tid = str(record.id), str(tunnel.id)
        for direction in ("in", "out"):
            self.assertEqual(sample(samples, "nps_client_bytes_total", client=client, direction=direction),
                             len(payload))
            self.assertEqual(sample(samples, "nps_tunnel_bytes_total", tunnel=tid, client=client, mode="tcp",
                                    direction=direction), len(payload))
        self.assertEqual(sample(samples, "nps_tunnel_connections_total", tunnel=tid, client=client, mode="tcp"), 1)
        self.assertEqual(sample(samples, "nps_handshake_failures_total", reason="wrong_vkey"), 1)
        for reason in HANDSHAKE_FAILURE_REASONS:
            if reason != "wrong_vkey":
                self.assertEqual(sample(samples, "nps_handshake_failures_total", reason=reason), 0, reason)

        # Not an nps peer at all: counted as bad_magic_or_version.
        with socket.create_connection(("127.0.0.1", server.bridge_address.port)) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.settimeout(0.01)
            yield wait_for(lambda: server.stats.registry.get_sample_value(
                "nps_handshake_failures_total", {"reason": "bad_magic_or_version"}) == 1)

        session = server.sessions[record.id]
        session.mux.rtt = 0.0125  # the first ping is 5 s away; set what it would measure
        samples = yield self.scrape(debug_port)
        self.assertEqual(sample(samples, "nps_bridge_rtt_seconds", client=client), 0.0125)

    @inlineCallbacks
    def test_debug_json_shows_sessions_streams_tunnels_and_lag(self):  # type: ignore[no-untyped-def]
        """
        C{/debug} is JSON with the session (remote address, version, open
        streams with their buffers and windows), the tunnel with its counters,
        and the reactor lag measured every 0.5 s.
        """
        record, tunnel, port = self.add_client_and_tunnel()
        debug_port = free_port()
        server = self.start_server(pprof_ip="127.0.0.1", pprof_port=debug_port)
        self.start_client(server, record.vkey)
        yield wait_for(lambda: record.id in server.sessions and tunnel.id in server.tunnels
                       and server.tunnels[tunnel.id].port is not None)
        user = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), user)
        self.addCleanup(lambda: user.transport.loseConnection())
        user.transport.write(b"hello")
        yield wait_for(lambda: user.received == b"hello")
        yield deferLater(reactor, 0.6, lambda: None)  # at least one lag sample

        code, body = yield self.get(debug_port, "/debug")
        self.assertEqual(code, 200)
        debug = json.loads(body)
        self.assertEqual(debug["service"], "nps")
        [session] = debug["sessions"]
        self.assertEqual(session["client_id"], record.id)
        self.assertTrue(session["remote"].startswith("127.0.0.1:"))
        self.assertTrue(session["version"])
        self.assertEqual(session["open_streams"], 1)
        [stream] = session["streams"]
        self.assertEqual(stream["target"], self.echo_addr)
        self.assertEqual((stream["buffered_in"], stream["buffered_out"]), (0, 0))
        self.assertGreater(stream["send_window"], 0)
        self.assertGreater(stream["recv_window"], 0)
        [listed] = debug["tunnels"]
        self.assertEqual((listed["id"], listed["mode"], listed["listening"]), (tunnel.id, "tcp", True))
        self.assertEqual(listed["traffic"], {"bytes_in": 5, "bytes_out": 5, "connections": 1})
        lag = debug["reactor_lag"]
        self.assertGreaterEqual(lag["samples"], 1)
        self.assertGreaterEqual(lag["max_seconds"], lag["last_seconds"])
        self.assertGreaterEqual(lag["last_seconds"], 0)

    @inlineCallbacks
    def test_non_loopback_pprof_ip_refused(self):  # type: ignore[no-untyped-def]
        """A C{pprof_ip} that is not loopback logs an error and nothing listens; the server still runs."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        debug_port = free_port()
        server = self.start_server(pprof_ip="0.0.0.0", pprof_port=debug_port)
        self.assertFalse([s for s in server if isinstance(s, DebugService)])
        errors = [e for e in events if e.get("log_namespace") == "nps.debug" and e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("loopback", errors[0]["log_format"])
        with self.assertRaises(ConnectionRefusedError):
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", debug_port), Protocol())
        self.assertTrue(server.running)

    def test_no_pprof_port_no_listener(self) -> None:
        """Without C{pprof_port} there is no debug listener (the default)."""
        server = self.start_server()
        self.assertFalse([s for s in server if isinstance(s, DebugService)])

    @inlineCallbacks
    def test_npc_debug_listener(self):  # type: ignore[no-untyped-def]
        """
        npc's C{pprof_addr} listener: C{/metrics} shows it connected with no
        streams and no reconnects; after the server drops it and it logs in
        again, C{npc_reconnects_total} is 1; C{/debug} shows its session.
        """
        record, tunnel, port = self.add_client_and_tunnel()
        server = self.start_server()
        debug_port = free_port()
        client = self.start_client(server, record.vkey, debug_addr=f"127.0.0.1:{debug_port}")
        yield wait_for(lambda: client.current is not None and client.current.mux is not None)
        samples = yield self.scrape(debug_port)
        self.assertEqual(sample(samples, "npc_connected"), 1)
        self.assertEqual(sample(samples, "npc_streams_open"), 0)
        self.assertEqual(sample(samples, "npc_reconnects_total"), 0)

        first = client.current
        first.transport.loseConnection()
        yield wait_for(lambda: client.current is not None and client.current is not first
                       and record.id in server.sessions)
        samples = yield self.scrape(debug_port)
        self.assertEqual(sample(samples, "npc_reconnects_total"), 1)

        code, body = yield self.get(debug_port, "/debug")
        debug = json.loads(body)
        self.assertEqual((debug["service"], debug["connected"]), ("npc", True))
        self.assertEqual(debug["session"]["client_id"], record.id)
        self.assertIn("reactor_lag", debug)

    def test_npc_non_loopback_refused(self) -> None:
        """An npc C{pprof_addr} on a non-loopback host logs an error and adds no listener."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        client = NpcService(reactor, "127.0.0.1", 1, "k", {}, debug_addr="0.0.0.0:9999")
        self.assertFalse([s for s in client if isinstance(s, DebugService)])
        self.assertTrue([e for e in events if e.get("log_namespace") == "nps.debug"
                         and e["log_level"].name == "error"])


@pytest.mark.e2e
def test_e2e_nps_metrics_with_curl(nps_server: Callable[..., Any], npc_client: Callable[..., Any]) -> None:
    """
    A real C{nps --config} with C{pprof_port} set serves C{/metrics} and
    C{/debug} on 127.0.0.1: curl sees the connected npc and a bad handshake.
    """
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    debug_port = support.free_port()
    server = nps_server(public_vkey="metrics-e2e-public-key-0123456789", extra={"pprof_port": debug_port})
    support.wait_for_port("127.0.0.1", debug_port, 30, proc=server.proc)
    npc_client(f"-server={server.bridge_addr}", "-vkey=metrics-e2e-public-key-0123456789", "-type=tcp")
    with socket.create_connection(("127.0.0.1", server.bridge_port)) as s:
        s.sendall(b"SSH-2.0-not-nps\r\n")
        s.settimeout(10)
        s.recv(100)  # the server closes it

    def scrape() -> Samples:
        out = subprocess.run([curl, "-sf", f"http://127.0.0.1:{debug_port}/metrics"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        return parse_metrics(out)

    samples = support.until(lambda: (lambda s: s if sample(s, "nps_clients_online") == 1 else None)(scrape()),
                            timeout=30, what="npc online in /metrics")
    assert sample(samples, "nps_handshake_failures_total", reason="bad_magic_or_version") == 1
    assert sample(samples, "nps_streams_open") == 0
    out = subprocess.run([curl, "-sf", f"http://127.0.0.1:{debug_port}/debug"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    debug = json.loads(out)
    assert [s["public"] for s in debug["sessions"]] == [True]
    assert {"last_seconds", "max_seconds"} <= set(debug["reactor_lag"])
    assert not [line for line in server.log_text().splitlines() if "pprof" in line and "not supported" in line]
