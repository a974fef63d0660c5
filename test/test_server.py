# -*- test-case-name: test.test_server -*-
"""In-process integration: NpsServer and NpcService on the real reactor over loopback."""
from __future__ import annotations

import socket
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from nps.client import NpcService
from nps.config import ServerConfig
from nps.model import Tunnel
from nps.modes import load_modes
from nps.server import NpsServer
from nps.store import Store


try:
    from .inprocess import Collect, Echo, wait_for  # type: ignore[import-not-found]
except ImportError:
    from inprocess import Collect, Echo, wait_for  # type: ignore[no-redef]


class ServerClientTests(TestCase):
    """A real server and client in one process, talking over 127.0.0.1."""

    timeout = 60

    def setUp(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="nps-test-")
        self.echo_port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(self.echo_port.stopListening)
        self.echo_addr = f"127.0.0.1:{self.echo_port.getHost().port}"
        self.fatal: list[tuple[int, str]] = []

    def start_server(self, port: int = 0, **config: Any) -> NpsServer:
        settings = ServerConfig(path=None, bridge_ip="127.0.0.1", bridge_port=port, data_dir=self.data_dir,
                                **config)
        server = NpsServer(settings, reactor, load_modes())
        server.privilegedStartService()
        server.startService()
        self.addCleanup(lambda: server.stopService() if server.running else None)
        return server

    def start_client(self, server: NpsServer, vkey: str, tunnels: tuple[Tunnel, ...] = (),
                     port: int | None = None) -> NpcService:
        client = NpcService(reactor, "127.0.0.1", port or server.bridge_address.port, vkey, load_modes(),
                            tunnels=tunnels, on_fatal=lambda code, msg: self.fatal.append((code, msg)),
                            max_retry_delay=0.5)
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        return client

    def add_client(self, remark: str = "c") -> Any:
        store = Store(self.data_dir)
        try:
            return store.add_client(remark=remark)
        finally:
            store.close()

    def add_tunnel(self, client_id: int, port: int, target: str) -> Tunnel:
        store = Store(self.data_dir)
        try:
            return store.add_tunnel(client_id, "tcp", port, [target], server_ip="127.0.0.1")
        finally:
            store.close()

    def free_port(self) -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])

    @inlineCallbacks
    def roundtrip(self, port: int, payload: bytes):  # type: ignore[no-untyped-def]
        user = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), user)
        user.transport.write(payload)
        yield wait_for(lambda: len(user.received) >= len(payload))
        user.transport.loseConnection()
        yield user.closed
        return user.received

    @inlineCallbacks
    def test_server_tunnel_relays_and_counts(self):  # type: ignore[no-untyped-def]
        """A stored tcp tunnel forwards bytes both ways; tunnel and client counters see them."""
        record = self.add_client()
        port = self.free_port()
        tunnel = self.add_tunnel(record.id, port, self.echo_addr)
        server = self.start_server()
        self.start_client(server, record.vkey)
        yield wait_for(lambda: record.id in server.sessions and tunnel.id in server.tunnels
                       and server.tunnels[tunnel.id].port is not None)
        payload = bytes(range(256)) * 4000
        received = yield self.roundtrip(port, payload)
        self.assertEqual(received, payload)
        counter = server.tunnels[tunnel.id].counter
        yield wait_for(lambda: counter.bytes_out == len(payload))
        self.assertEqual((counter.bytes_in, counter.bytes_out, counter.connections),
                         (len(payload), len(payload), 1))
        client_counter = server.client_counters[record.id]
        self.assertEqual((client_counter.bytes_in, client_counter.bytes_out), (len(payload), len(payload)))

    @inlineCallbacks
    def test_tunnel_added_and_deleted_live(self):  # type: ignore[no-untyped-def]
        """A tunnel added to the store by another process opens without restart; deleting it closes the port."""
        record = self.add_client()
        server = self.start_server()
        self.start_client(server, record.vkey)
        yield wait_for(lambda: record.id in server.sessions)
        port = self.free_port()
        tunnel = self.add_tunnel(record.id, port, self.echo_addr)
        yield server.refresh()
        yield wait_for(lambda: tunnel.id in server.tunnels and server.tunnels[tunnel.id].port is not None)
        received = yield self.roundtrip(port, b"live")
        self.assertEqual(received, b"live")
        store = Store(self.data_dir)
        store.delete_tunnel(tunnel.id)
        store.close()
        yield server.refresh()
        self.assertNotIn(tunnel.id, server.tunnels)
        yield deferLater(reactor, 0.05, lambda: None)
        with self.assertRaises(Exception):
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collect())

    @inlineCallbacks
    def test_offline_client_closes_user_connection(self):  # type: ignore[no-untyped-def]
        """A user of a tunnel whose client is offline is disconnected at once."""
        record = self.add_client()
        port = self.free_port()
        tunnel = self.add_tunnel(record.id, port, self.echo_addr)
        server = self.start_server()
        yield wait_for(lambda: tunnel.id in server.tunnels and server.tunnels[tunnel.id].port is not None)
        user = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), user)
        yield user.closed
        self.assertEqual(user.received, b"")

    @inlineCallbacks
    def test_config_mode_registration(self):  # type: ignore[no-untyped-def]
        """With public_vkey, npc.conf tunnels open on connect; refused ones get reasons; the npc is listed
        as a public session with its open tunnel; all of it goes away when it leaves."""
        server = self.start_server(public_vkey="a-long-public-key-for-tests", allow_ports=((20000, 60000),))
        good_port = self.free_port()
        while not 20000 <= good_port <= 60000:
            good_port = self.free_port()
        tunnels = (
            Tunnel(0, 0, "tcp", server_port=good_port, server_ip="127.0.0.1", targets=(self.echo_addr,),
                   remark="good"),
            Tunnel(0, 0, "tcp", server_port=1000, server_ip="127.0.0.1", targets=(self.echo_addr,),
                   remark="not-allowed"),
            Tunnel(0, 0, "nosuchmode", server_port=good_port + 1, remark="bad-mode"),
        )
        client = self.start_client(server, "a-long-public-key-for-tests", tunnels)
        yield wait_for(lambda: any(t.tunnel.remark == "good" and t.port is not None
                                   for t in server.tunnels.values()))
        self.assertEqual({t.tunnel.remark for t in server.tunnels.values()}, {"good"})
        received = yield self.roundtrip(good_port, b"config-mode")
        self.assertEqual(received, b"config-mode")
        sessions: list[Any] = []
        for _ in range(200):  # the store write happens off the reactor thread
            sessions = yield server.store.call("list_public_sessions")
            if sessions and sessions[0]["tunnels"] == 1:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(sessions), 1)
        self.assertEqual(sessions[0]["tunnels"], 1)
        self.assertEqual(sessions[0]["remote_addr"].split(":")[0], "127.0.0.1")
        yield client.stopService()
        yield wait_for(lambda: not server.tunnels)
        remaining = yield server.store.call("list_public_sessions")
        self.assertEqual(remaining, [])

    @inlineCallbacks
    def test_wrong_vkey_is_fatal_for_npc(self):  # type: ignore[no-untyped-def]
        """npc with an unknown vkey stops with exit code 1 and says why; the server keeps serving."""
        record = self.add_client()
        server = self.start_server()
        self.start_client(server, "not-a-key")
        yield wait_for(lambda: self.fatal)
        self.assertEqual(self.fatal[0][0], 1)
        self.assertIn("wrong vkey", self.fatal[0][1])
        self.start_client(server, record.vkey)
        yield wait_for(lambda: record.id in server.sessions)

    @inlineCallbacks
    def test_same_vkey_replaces_old_session(self):  # type: ignore[no-untyped-def]
        """A second npc with the same vkey takes over; the first is told and stops."""
        record = self.add_client()
        server = self.start_server()
        first = self.start_client(server, record.vkey)
        yield wait_for(lambda: record.id in server.sessions)
        old = server.sessions[record.id]
        second = self.start_client(server, record.vkey)
        yield wait_for(lambda: record.id in server.sessions and server.sessions[record.id] is not old
                       and self.fatal)
        self.assertIn("same vkey", self.fatal[0][1])
        yield wait_for(lambda: not first.running)
        self.assertTrue(second.running)

    @inlineCallbacks
    def test_client_comes_back_after_server_restart(self):  # type: ignore[no-untyped-def]
        """Stopping and restarting the server on the same port: npc reconnects by itself."""
        record = self.add_client()
        port = self.free_port()
        tunnel = self.add_tunnel(record.id, port, self.echo_addr)
        server = self.start_server()
        bridge_port = server.bridge_address.port
        self.start_client(server, record.vkey)
        yield wait_for(lambda: record.id in server.sessions)
        yield server.stopService()
        server2 = self.start_server(port=bridge_port)
        yield wait_for(lambda: record.id in server2.sessions and tunnel.id in server2.tunnels
                       and server2.tunnels[tunnel.id].port is not None, timeout=20)
        received = yield self.roundtrip(port, b"again")
        self.assertEqual(received, b"again")
        self.assertEqual(self.fatal, [])

    @inlineCallbacks
    def test_disabled_client_is_dropped_and_comes_back_when_enabled(self):  # type: ignore[no-untyped-def]
        """Disabling a client in the store disconnects it and marks it offline; npc keeps retrying
        and is back once the client is enabled again."""
        record = self.add_client()
        server = self.start_server()
        self.start_client(server, record.vkey)
        yield wait_for(lambda: record.id in server.sessions)
        store = Store(self.data_dir)
        try:
            store.update_client(record.id, enabled=False)
            yield server.refresh()
            self.assertNotIn(record.id, server.sessions)
            for _ in range(100):
                if not store.get_client(record.id).online:
                    break
                yield deferLater(reactor, 0.05, lambda: None)
            self.assertFalse(store.get_client(record.id).online)
            store.update_client(record.id, enabled=True)
        finally:
            store.close()
        yield server.refresh()
        yield wait_for(lambda: record.id in server.sessions, timeout=20)
        self.assertEqual(self.fatal, [])

    @inlineCallbacks
    def test_config_mode_npc_serves_only_its_own_file_paths(self):  # type: ignore[no-untyped-def]
        """An npc with an npc.conf serves only the local_path of its own file tunnels, even when the
        server defines another file tunnel for it."""
        shared = tempfile.mkdtemp(prefix="nps-shared-")
        with open(f"{shared}/hello.txt", "w") as f:
            f.write("shared file")
        record = self.add_client()
        foreign_port, own_port = self.free_port(), self.free_port()
        store = Store(self.data_dir)
        try:
            store.add_tunnel(record.id, "file", foreign_port, server_ip="127.0.0.1", local_path="/etc")
        finally:
            store.close()
        server = self.start_server()
        own = Tunnel(0, 0, "file", server_port=own_port, server_ip="127.0.0.1", local_path=shared, remark="own")
        self.start_client(server, record.vkey, (own,))
        yield wait_for(lambda: len([t for t in server.tunnels.values() if t.port is not None]) == 2)
        answer = yield self.roundtrip_until_closed(own_port, b"GET /hello.txt HTTP/1.0\r\n\r\n")
        self.assertIn(b"shared file", answer)
        refused = yield self.roundtrip_until_closed(foreign_port, b"GET /passwd HTTP/1.0\r\n\r\n")
        self.assertEqual(refused, b"")

    @inlineCallbacks
    def roundtrip_until_closed(self, port: int, request: bytes):  # type: ignore[no-untyped-def]
        user = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), user)
        user.transport.write(request)
        yield user.closed
        return user.received

    @inlineCallbacks
    def test_access_log_line_per_connection(self):  # type: ignore[no-untyped-def]
        """Each tunneled connection ends with one nps.access event: who, where, bytes each way, how it ended."""
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "nps.access":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        record = self.add_client()
        port = self.free_port()
        tunnel = self.add_tunnel(record.id, port, self.echo_addr)
        server = self.start_server()
        self.start_client(server, record.vkey)
        yield wait_for(lambda: record.id in server.sessions and tunnel.id in server.tunnels
                       and server.tunnels[tunnel.id].port is not None)
        yield self.roundtrip(port, b"x" * 1000)
        yield wait_for(lambda: events)
        event = events[0]
        self.assertEqual((event["client"], event["tunnel"], event["mode"]), (record.id, tunnel.id, "tcp"))
        self.assertEqual((event["bytes_in"], event["bytes_out"]), (1000, 1000))
        self.assertEqual(event["target"], self.echo_addr)
        self.assertEqual(event["ended"], "closed")
        self.assertTrue(event["remote"].startswith("127.0.0.1:"))

    @inlineCallbacks
    def test_graceful_stop_drains_open_connections(self):  # type: ignore[no-untyped-def]
        """Stopping the server closes its ports at once but waits for open connections (up to
        drain_timeout) before telling clients to go; new users are refused meanwhile."""
        record = self.add_client()
        port = self.free_port()
        tunnel = self.add_tunnel(record.id, port, self.echo_addr)
        server = self.start_server()
        server.drain_timeout = 20.0
        self.start_client(server, record.vkey)
        yield wait_for(lambda: record.id in server.sessions and tunnel.id in server.tunnels
                       and server.tunnels[tunnel.id].port is not None)
        user = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), user)
        user.transport.write(b"before")
        yield wait_for(lambda: user.received == b"before")
        stopped = server.stopService()
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertFalse(stopped.called)
        with self.assertRaises(Exception):
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collect())
        user.transport.write(b" during")
        yield wait_for(lambda: user.received == b"before during")
        user.transport.loseConnection()
        yield user.closed
        yield wait_for(lambda: stopped.called, timeout=10)

    @inlineCallbacks
    def test_npc_reload_adds_and_removes_tunnels_keeping_the_rest(self):  # type: ignore[no-untyped-def]
        """Re-registering (npc reloaded npc.conf) opens new tunnels, closes removed ones and leaves
        unchanged ones -- and their open connections -- alone."""
        key = "a-long-public-key-for-reload-tests"
        server = self.start_server(public_vkey=key)
        keep_port, drop_port, new_port = self.free_port(), self.free_port(), self.free_port()

        def tcp(port: int, remark: str) -> Tunnel:
            return Tunnel(0, 0, "tcp", server_port=port, server_ip="127.0.0.1", targets=(self.echo_addr,),
                          remark=remark)

        wanted = [tcp(keep_port, "keep"), tcp(drop_port, "drop")]
        client = NpcService(reactor, "127.0.0.1", server.bridge_address.port, key, load_modes(),
                            tunnels=wanted, on_fatal=lambda code, msg: self.fatal.append((code, msg)),
                            reload_tunnels=lambda: list(wanted))
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        yield wait_for(lambda: {t.tunnel.remark for t in server.tunnels.values() if t.port} == {"keep", "drop"})
        kept_ids = {t.tunnel.remark: i for i, t in server.tunnels.items()}
        user = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", keep_port), user)
        user.transport.write(b"one")
        yield wait_for(lambda: user.received == b"one")
        wanted[:] = [tcp(keep_port, "keep"), tcp(new_port, "new")]
        client.reload()
        yield wait_for(lambda: {t.tunnel.remark for t in server.tunnels.values() if t.port} == {"keep", "new"})
        self.assertIn(kept_ids["keep"], server.tunnels)
        user.transport.write(b" two")
        yield wait_for(lambda: user.received == b"one two")
        received = yield self.roundtrip(new_port, b"new port")
        self.assertEqual(received, b"new port")
        user.transport.loseConnection()
        yield user.closed

    @inlineCallbacks
    def test_server_reload_applies_a_new_public_vkey(self):  # type: ignore[no-untyped-def]
        """SIGHUP's reload re-reads nps.conf: a changed public_vkey lets the new key in, without a restart."""
        conf = f"{self.data_dir}/nps.conf"
        bridge_port = self.free_port()
        base = f"bridge_ip=127.0.0.1\nbridge_port={bridge_port}\ndata_dir={self.data_dir}\n"
        with open(conf, "w") as f:
            f.write(base + "public_vkey=the-first-public-key-0000\n")
        from nps.config import load_server_config

        settings = load_server_config(conf)
        server = NpsServer(settings, reactor, load_modes())
        server.privilegedStartService()
        server.startService()
        self.addCleanup(lambda: server.stopService() if server.running else None)
        with open(conf, "w") as f:
            f.write(base + "public_vkey=the-second-public-key-111\n")
        yield server.reload()
        self.start_client(server, "the-second-public-key-111")
        yield wait_for(lambda: any(s.public for s in server.sessions.values()))
        self.assertEqual(self.fatal, [])

    @inlineCallbacks
    def test_secret_tunnel_visitor(self):  # type: ignore[no-untyped-def]
        """A secret tunnel opens no public port; a visitor npc with the password reaches the target
        through the server, and a wrong password is refused."""
        from nps.visitor import Visitor

        provider_record, visitor_record = self.add_client("provider"), self.add_client("visitor")
        server = self.start_server()
        secret = Tunnel(0, 0, "secret", password="ssh2-secret", targets=(self.echo_addr,), remark="ssh_secret")
        self.start_client(server, provider_record.vkey, (secret,))
        yield wait_for(lambda: any(t.tunnel.mode == "secret" for t in server.tunnels.values()))
        good_port, bad_port = self.free_port(), self.free_port()
        visitor = NpcService(reactor, "127.0.0.1", server.bridge_address.port, visitor_record.vkey, load_modes(),
                             visitors=[Visitor("ssh2-secret", good_port), Visitor("wrong", bad_port)],
                             on_fatal=lambda code, msg: self.fatal.append((code, msg)))
        visitor.privilegedStartService()
        visitor.startService()
        self.addCleanup(visitor.stopService)
        yield wait_for(lambda: visitor_record.id in server.sessions)
        received = yield self.roundtrip(good_port, b"through the secret")
        self.assertEqual(received, b"through the secret")
        refused = yield self.roundtrip_until_closed(bad_port, b"hello?")
        self.assertEqual(refused, b"")
        counter = next(t.counter for t in server.tunnels.values() if t.tunnel.mode == "secret")
        self.assertEqual(counter.bytes_in, len(b"through the secret"))

    @inlineCallbacks
    def test_max_conn_and_flow_limit_are_enforced(self):  # type: ignore[no-untyped-def]
        """The server refuses connections past a client's max_conn; once its flow_limit is used up the
        open connection ends and new ones are refused."""
        record = self.add_client()
        store = Store(self.data_dir)
        try:
            store.update_client(record.id, max_conn=1, flow_limit=1)
        finally:
            store.close()
        port = self.free_port()
        tunnel = self.add_tunnel(record.id, port, self.echo_addr)
        server = self.start_server()
        self.start_client(server, record.vkey)
        yield wait_for(lambda: record.id in server.sessions and tunnel.id in server.tunnels
                       and server.tunnels[tunnel.id].port is not None)
        first = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), first)
        first.transport.write(b"one")
        yield wait_for(lambda: first.received == b"one")
        second = yield self.roundtrip_until_closed(port, b"two")
        self.assertEqual(second, b"")
        first.transport.loseConnection()
        yield first.closed
        yield wait_for(lambda: server.client_counters[record.id].open == 0)
        big = b"x" * (600 * 1024)  # echoed: 1.2 MB of traffic in all; the quota ends it on the way
        received = yield self.roundtrip_until_closed(port, big)
        self.assertLess(len(received), len(big))
        yield wait_for(lambda: server.client_counters[record.id].open == 0)
        after = yield self.roundtrip_until_closed(port, b"more")
        self.assertEqual(after, b"")
        self.assertIn("flow_limit", server.limit_reached(record.id))
