# -*- test-case-name: test.test_legacy_server -*-
"""In-process: NPS 0.26 connections on our bridge port (bounds, keys, sessions), and our -proto=0.26 npc."""
from __future__ import annotations

import socket
import struct
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

import nps.bridge.server as bridge_server
from nps.config import ServerConfig
from nps.legacy.client import LegacyNpcService
from nps.legacy.server import expand_ports, tunnels_from_task
from nps.modes import load_modes
from nps.protocols import legacy_handshake as lh
from nps.server import NpsServer
from nps.store import Store

try:
    from .inprocess import Collect, Echo, wait_for  # type: ignore[import-not-found]
except ImportError:
    from inprocess import Collect, Echo, wait_for  # type: ignore[no-redef]


class LegacyServerTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="nps-legacy-")
        echo = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        self.echo_addr = f"127.0.0.1:{echo.getHost().port}"

    def start_server(self, **config: Any) -> NpsServer:
        settings = ServerConfig(path=None, bridge_ip="127.0.0.1", bridge_port=0, data_dir=self.data_dir,
                                legacy_bridge=True, **config)
        server = NpsServer(settings, reactor, load_modes())
        server.privilegedStartService()
        server.startService()
        self.addCleanup(lambda: server.stopService() if server.running else None)
        return server

    def store(self) -> Store:
        store = Store(self.data_dir)
        self.addCleanup(store.close)
        return store

    @inlineCallbacks
    def connect(self, server: NpsServer):  # type: ignore[no-untyped-def]
        user = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.bridge_address.port), user)
        return user

    @inlineCallbacks
    def test_stalled_handshake_is_closed(self):  # type: ignore[no-untyped-def]
        """An old client that sends "TST" and stops is closed when the bridge's handshake timer runs out."""
        self.patch(bridge_server, "HANDSHAKE_TIMEOUT", 0.3)
        server = self.start_server()
        user = yield self.connect(server)
        user.transport.write(b"TST")
        yield user.closed
        self.assertEqual(user.received, b"")

    @inlineCallbacks
    def test_stalled_register_request_is_closed(self):  # type: ignore[no-untyped-def]
        """After "rgst" the request itself is still under the handshake timer: a client that stops is closed."""
        self.patch(bridge_server, "HANDSHAKE_TIMEOUT", 0.5)
        client = self.store().add_client(remark="r", vkey="legacy-key-stall")
        server = self.start_server()
        user = yield self.connect(server)
        user.transport.write(lh.client_hello() + lh.md5_hex(client.vkey) + lh.WORK_REGISTER + b"\x01")
        yield user.closed
        self.assertEqual(user.received, lh.server_version_proof() + lh.ACCEPTED)
        self.assertEqual(_pending(server), 0)

    @inlineCallbacks
    def test_unfinished_handshakes_are_capped(self):  # type: ignore[no-untyped-def]
        """Legacy handshakes count towards the cap: past it, a new connection is dropped at once."""
        self.patch(bridge_server, "MAX_PENDING_HANDSHAKES", 2)
        server = self.start_server()
        first = yield self.connect(server)
        first.transport.write(b"TST")
        second = yield self.connect(server)
        second.transport.write(b"TST")
        yield wait_for(lambda: _pending(server) == 2)
        third = yield self.connect(server)
        yield third.closed
        self.assertTrue(first.transport.connected and second.transport.connected)
        for user in (first, second):
            user.transport.loseConnection()
            yield user.closed
        yield wait_for(lambda: _pending(server) == 0)

    @inlineCallbacks
    def test_key_check_and_public_key_limits(self):  # type: ignore[no-untyped-def]
        """A right key gets "sucs", a wrong one "vkey"; the public key may not open a signal connection."""
        store = self.store()
        client = store.add_client(remark="r", vkey="legacy-key-1")
        server = self.start_server(public_vkey="a-public-key-of-some-length")
        for vkey, answer in ((client.vkey, lh.ACCEPTED), ("nope", lh.REJECTED)):
            user = yield self.connect(server)
            user.transport.write(lh.client_hello() + lh.md5_hex(vkey))
            yield wait_for(lambda: len(user.received) >= 36)
            self.assertEqual(user.received, lh.server_version_proof() + answer)
            user.transport.loseConnection()
        user = yield self.connect(server)
        user.transport.write(lh.client_hello() + lh.md5_hex("a-public-key-of-some-length") + lh.WORK_MAIN)
        yield user.closed
        self.assertEqual(user.received, lh.server_version_proof() + lh.ACCEPTED)

    @inlineCallbacks
    def test_pipelined_register_for_a_client_added_later(self):  # type: ignore[no-untyped-def]
        """A client added after start (found after a store refresh) may pipeline its whole rgst request."""
        server = self.start_server()
        client = self.store().add_client(remark="late", vkey="legacy-key-late")
        user = yield self.connect(server)
        user.transport.write(lh.client_hello() + lh.md5_hex(client.vkey) + lh.WORK_REGISTER
                             + struct.pack("<i", 2))
        yield user.closed
        self.assertEqual(user.received, lh.server_version_proof() + lh.ACCEPTED)
        self.assertIn("127.0.0.1", server.policy.registered)

    @inlineCallbacks
    def test_wrong_core_version_is_refused(self):  # type: ignore[no-untyped-def]
        """A client of another NPS core version is told nothing and closed."""
        server = self.start_server()
        user = yield self.connect(server)
        user.transport.write(lh.client_hello(core="0.25.0"))
        yield user.closed
        self.assertEqual(user.received, b"")

    @inlineCallbacks
    def test_our_legacy_npc_and_replacement(self):  # type: ignore[no-untyped-def]
        """Our -proto=0.26 npc serves a tunnel; a second one with the same vkey replaces the first."""
        store = self.store()
        client = store.add_client(remark="r", vkey="legacy-key-2")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        store.add_tunnel(client.id, "tcp", port, [self.echo_addr], server_ip="127.0.0.1")
        server = self.start_server()
        npcs = []
        for _ in range(2):
            npc = LegacyNpcService(reactor, "127.0.0.1", server.bridge_address.port, client.vkey, load_modes())
            npc.startService()
            self.addCleanup(npc.stopService)
            npcs.append(npc)
            yield wait_for(lambda: npc.online and client.id in server.sessions)
        self.assertIn("legacy 0.26", server.sessions[client.id].version)
        # The replaced npc would log in again and replace the other (as NPS's npc does): stop it.
        yield npcs[0].stopService()
        yield wait_for(lambda: npcs[1].online and client.id in server.sessions)
        user = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), user)
        user.transport.write(b"x" * 300_000)
        yield wait_for(lambda: len(user.received) >= 300_000)
        user.transport.loseConnection()


def _pending(server: NpsServer) -> int:
    factory = server._bridge_port.factory
    return int(factory.pending)


def test_expand_ports() -> None:
    """NPS port lists expand, bounded; bad entries are named."""
    assert expand_ports("9001-9003, 10001") == [9001, 9002, 9003, 10001]
    for bad in ("x", "5-1", "0", "1-70000"):
        try:
            expand_ports(bad)
        except ValueError as e:
            assert repr(bad) in str(e) or "range" in str(e)
        else:
            raise AssertionError(bad)
    try:
        expand_ports("1-1000")
    except ValueError as e:
        assert "more than" in str(e)


def test_tunnels_from_task() -> None:
    """An NPS task record from an npc.conf becomes our tunnels: one per port, ranges mapped pairwise."""
    ids = iter(range(-1, -100, -1))
    (one,) = tunnels_from_task({"Mode": "tcp", "Ports": "8000", "Remark": "t",
                                "Target": {"TargetStr": "10.0.0.1:22\n2222"}}, 3, ids)
    assert (one.server_port, one.targets, one.client_id) == (8000, ("10.0.0.1:22", "127.0.0.1:2222"), 3)
    many = tunnels_from_task({"Mode": "tcp", "Ports": "9001-9002", "Remark": "r", "TargetAddr": "10.1.1.1",
                              "Target": {"TargetStr": "8001-8002"}}, 3, ids)
    assert [(t.server_port, t.targets, t.remark) for t in many] == [
        (9001, ("10.1.1.1:8001",), "r_9001"), (9002, ("10.1.1.1:8002",), "r_9002")]
    (secret,) = tunnels_from_task({"Mode": "secret", "Password": "p", "Target": {"TargetStr": "1.2.3.4:5"}}, 3, ids)
    assert secret.password == "p" and secret.server_port == 0
    for record, message in (({"Ports": "1"}, "no Mode"), ({"Mode": "tcp"}, "no server_port"),
                            ({"Mode": "tcp", "Ports": "1-2", "Target": {"TargetStr": "5"}}, "target ports")):
        try:
            tunnels_from_task(record, 3, ids)
        except ValueError as e:
            assert message in str(e)
        else:
            raise AssertionError(record)


def test_legacy_bridge_key() -> None:
    """legacy_bridge is off unless nps.conf says true; bad values are errors naming the key."""
    from nps.config import ConfigError, parse_server_config

    assert parse_server_config("", "nps.conf").legacy_bridge is False
    assert parse_server_config("legacy_bridge=true\n", "nps.conf").legacy_bridge is True
    try:
        parse_server_config("legacy_bridge=maybe\n", "nps.conf")
    except ConfigError as e:
        assert "legacy_bridge" in str(e)
    else:
        raise AssertionError("accepted legacy_bridge=maybe")


def test_conf_conversation() -> None:
    """The client side of NPS's conf conversation: client record (public key), domains, tasks, one-time vkey."""
    import json
    import struct

    from nps.config import parse_client_config
    from nps.legacy.client import LegacyRefused, conf_conversation

    config = parse_client_config(
        "[common]\nserver_addr=127.0.0.1:1\nvkey=pub\ncrypt=true\n"
        "[web]\nhost=a.example.test\ntarget_addr=127.0.0.1:80\nheader_X-A=b\n"
        "[t]\nmode=tcp\nserver_port=9001-9002\ntarget_port=8001-8002\ntarget_ip=10.0.0.1\n", "npc.conf")

    def blob(out: bytes) -> tuple[bytes, dict[str, object]]:
        (size,) = struct.unpack_from("<i", out, 4)
        return out[:4], json.loads(out[8:8 + size])

    talk = conf_conversation(config)
    assert next(talk) == (b"", 1)
    out, need = talk.send(b"\x01")
    flag, record = blob(out)
    assert (flag, need, record["Cnf"]) == (b"conf", 1, {"U": "", "P": "", "Compress": False, "Crypt": True})
    assert talk.send(b"\x01") == (b"", 16)
    out, _ = talk.send(b"onetimevkey12345")
    flag, record = blob(out)
    assert flag == b"host" and record["Host"] == "a.example.test" and record["HeaderChange"] == "X-A:b\n"
    out, _ = talk.send(b"\x01")
    flag, record = blob(out)
    assert flag == b"task" and record["Ports"] == "9001-9002" and record["TargetAddr"] == "10.0.0.1"
    assert record["Target"] == {"TargetStr": "8001-8002", "LocalProxy": False}
    try:
        talk.send(b"\x01")
    except StopIteration as stop:
        assert stop.value == "onetimevkey12345"
    else:
        raise AssertionError("conversation did not end")
    talk = conf_conversation(config)
    next(talk)
    talk.send(b"\x00")  # a private key: no client record
    try:
        talk.send(b"\x00")  # the domain is refused
    except LegacyRefused as e:
        assert "[web]" in str(e)
    else:
        raise AssertionError("refusal not raised")
