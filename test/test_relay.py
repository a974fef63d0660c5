# -*- test-case-name: test.test_relay -*-
"""Tests for L{nps.relay}: splicing two transports with backpressure and half-close.

First the two halves over plain in-memory transports, then the real path of a
tunnelled connection: user transport, L{Relay}, mux stream, L{Mux}, L{Mux},
mux stream, L{Relay}, backend transport.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, ITCPTransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import directlyProvides

from nps.mux import INITIAL_WINDOW, LINGER, OUTBUF_HIGH
from nps.relay import Relay, RelayFactory, join, tune_socket

sys.path.insert(0, str(Path(__file__).parent))
from test_mux import Pair, pattern  # noqa: E402  (same directory; test/ is not a package)


class TCPish(StringTransport):
    """A StringTransport that, like TCP, can shut down only its write side."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


def spliced(first: str = "a") -> tuple[Relay, TCPish, Relay, TCPish]:
    """Relay C{a} and its far half C{b} (built by L{RelayFactory}), each on its own transport, joined."""
    a = Relay()
    b = RelayFactory(a).buildProtocol(None)
    ta, tb = TCPish(), TCPish()
    if first == "a":
        a.makeConnection(ta)
        b.makeConnection(tb)
    else:
        b.makeConnection(tb)
        a.makeConnection(ta)
    return a, ta, b, tb


# -- two halves over in-memory transports ----------------------------------------------


def test_relay_is_half_closeable() -> None:
    """L{Relay} provides IHalfCloseableProtocol, so a FIN is not turned into a full close by the transport."""
    assert IHalfCloseableProtocol.providedBy(Relay())


def test_factory_links_both_halves() -> None:
    """RelayFactory builds the far half pointing at the near half, and points the near half back at it."""
    a = Relay()
    factory = RelayFactory(a)
    b = factory.buildProtocol(None)
    assert isinstance(b, Relay)
    assert b.peer is a and a.peer is b and b.factory is factory


@pytest.mark.parametrize("first", ["a", "b"])
def test_join_registers_each_transport_as_the_others_producer(first: str) -> None:
    """Once both halves are connected, whichever came first, each transport is the other's streaming producer."""
    a, ta, b, tb = spliced(first)
    assert a.joined and b.joined
    assert ta.producer is tb and ta.streaming is True
    assert tb.producer is ta and tb.streaming is True


def test_no_join_until_both_are_connected() -> None:
    """A half whose peer has no transport yet does not register anything."""
    a = Relay()
    RelayFactory(a).buildProtocol(None)
    ta = TCPish()
    a.makeConnection(ta)
    assert not a.joined and ta.producer is None


def test_join_resumes_a_paused_side() -> None:
    """The accepting side, paused until its peer is connected, is resumed by the join."""
    a = Relay()
    b = RelayFactory(a).buildProtocol(None)
    ta, tb = TCPish(), TCPish()
    a.makeConnection(ta)
    ta.pauseProducing()  # what PublicTcpProtocol does while the stream opens
    b.makeConnection(tb)
    assert ta.producerState == "producing" and tb.producerState == "producing"


def test_join_twice_is_harmless() -> None:
    """join() on an already joined pair does nothing (no second producer registration)."""
    a, ta, b, tb = spliced()
    join(a, b)
    join(b, a)
    assert ta.producer is tb


def test_bytes_flow_both_ways() -> None:
    """Bytes received on either side are written, unchanged and in order, to the other transport."""
    a, ta, b, tb = spliced()
    a.dataReceived(b"GET / HTTP/1.1\r\n")
    a.dataReceived(b"\r\n")
    b.dataReceived(b"HTTP/1.1 200 OK\r\n")
    assert tb.value() == b"GET / HTTP/1.1\r\n\r\n"
    assert ta.value() == b"HTTP/1.1 200 OK\r\n"


def test_full_side_pauses_the_other_reader() -> None:
    """When one transport's buffer is full it pauses its producer, which is the other transport."""
    a, ta, b, tb = spliced()
    assert tb.producer is not None
    tb.producer.pauseProducing()  # tb is full
    assert ta.producerState == "paused"
    assert tb.producerState == "producing"
    tb.producer.resumeProducing()  # tb drained
    assert ta.producerState == "producing"


def test_half_close_propagates_as_lose_write_connection() -> None:
    """A FIN on one side half-closes the other side's transport; the reverse direction keeps flowing."""
    a, ta, b, tb = spliced()
    a.readConnectionLost()
    assert tb.write_closed and not tb.disconnecting
    assert not ta.disconnecting
    b.dataReceived(b"still answering")
    assert ta.value() == b"still answering"


def test_half_close_to_a_transport_without_it_closes_fully() -> None:
    """If the peer transport cannot half-close, a FIN closes it fully."""
    a = Relay()
    b = RelayFactory(a).buildProtocol(None)
    ta, tb = TCPish(), StringTransport()
    a.makeConnection(ta)
    b.makeConnection(tb)
    a.readConnectionLost()
    assert tb.disconnecting


def test_fin_before_the_peer_exists_closes_our_side() -> None:
    """A FIN while the peer is not connected yet closes our own transport."""
    a = Relay()
    RelayFactory(a).buildProtocol(None)
    ta = TCPish()
    a.makeConnection(ta)
    a.readConnectionLost()
    assert ta.disconnecting


@pytest.mark.parametrize("closing", ["a", "b"])
def test_full_close_closes_the_peer(closing: str) -> None:
    """Losing either connection closes the other, and nothing more is written to the closed one."""
    a, ta, b, tb = spliced()
    gone, other, other_transport, gone_transport = (a, b, tb, ta) if closing == "a" else (b, a, ta, tb)
    gone.connectionLost(Failure(ConnectionLost("reset by peer")))
    assert other_transport.disconnecting
    assert not gone_transport.disconnecting
    other.dataReceived(b"late bytes")
    assert gone_transport.value() == b""


def test_peer_gone_before_we_connect() -> None:
    """If the near half is already gone when the far half connects, the far half closes at once."""
    a = Relay()
    b = RelayFactory(a).buildProtocol(None)
    ta, tb = TCPish(), TCPish()
    a.makeConnection(ta)
    a.connectionLost(Failure(ConnectionDone()))
    b.makeConnection(tb)
    assert tb.disconnecting
    assert not b.joined


def test_tune_socket_only_touches_tcp() -> None:
    """tune_socket sets TCP_NODELAY (and keepalive on request) on TCP transports and ignores the rest."""

    class FakeTCP(StringTransport):
        nodelay = keepalive = False

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.nodelay = enabled

        def setTcpKeepAlive(self, enabled: bool) -> None:
            self.keepalive = enabled

    tcp = FakeTCP()
    directlyProvides(tcp, ITCPTransport)
    tune_socket(tcp, keepalive=True)
    assert tcp.nodelay and tcp.keepalive
    plain = FakeTCP()
    tune_socket(plain)
    assert not plain.nodelay


def test_relay_over_iosim() -> None:
    """Two relay halves, each wired to a real client/server protocol pair through iosim, carry bytes end to end
    and a close on one end closes the other end."""
    from twisted.internet.protocol import Protocol

    class Recorder(Protocol):
        def __init__(self) -> None:
            self.data = b""
            self.lost = False

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
            self.lost = True

    user, backend = Recorder(), Recorder()
    near = Relay()
    far = RelayFactory(near).buildProtocol(None)
    user_pump = iosim.connect(near, iosim.makeFakeServer(near), user, iosim.makeFakeClient(user))
    backend_pump = iosim.connect(backend, iosim.makeFakeServer(backend), far, iosim.makeFakeClient(far))
    assert near.joined and far.joined

    def pump() -> None:
        for _ in range(10):
            user_pump.pump()
            backend_pump.pump()

    assert user.transport is not None and backend.transport is not None
    user.transport.write(b"hello backend")
    pump()
    assert backend.data == b"hello backend"
    backend.transport.write(b"hello user")
    pump()
    assert user.data == b"hello user"
    backend.transport.loseConnection()
    pump()
    assert user.lost


# -- the real path: relay, mux stream, mux, mux, mux stream, relay -------------------------


class Tunnel:
    """user transport <-> pub (Relay) <-> near stream <=mux=> far stream <-> s2 (Relay) <-> backend transport.

    Built the way C{nps.plugins.tcp} builds it: the public side pauses its transport until the stream
    is open; the stream side of the npc end is a Relay whose peer dials the backend.
    """

    def __init__(self) -> None:
        self.pair = Pair()
        self.user = TCPish()
        self.pub = Relay()
        self.pub.makeConnection(self.user)
        self.user.pauseProducing()
        # npc side: connect_target() builds the stream half and dials the backend first.
        self.s2 = Relay()
        self.back = RelayFactory(self.s2).buildProtocol(None)
        self.backend = TCPish()
        self.back.makeConnection(self.backend)
        # nps side: the opened stream gets the far half of the public relay.
        self.s1 = RelayFactory(self.pub).buildProtocol(None)
        self.near, _, self.far, _ = self.pair.open(opener_proto=cast(Any, self.s1), acceptor_proto=cast(Any, self.s2))

    def pump(self) -> None:
        self.pair.pump()


def test_tunnel_joins_everything() -> None:
    """After the stream opens, each TCP transport and its mux stream are each other's producers and the user
    side is reading again."""
    t = Tunnel()
    assert t.user.producer is t.near and t.near._producer is t.user
    assert t.backend.producer is t.far and t.far._producer is t.backend
    assert t.user.producerState == "producing"


def test_tunnel_bytes_flow_both_ways() -> None:
    """Bytes from the user reach the backend and the backend's answer reaches the user, several windows' worth."""
    t = Tunnel()
    upload = pattern(3 * INITIAL_WINDOW + 5)
    t.pub.dataReceived(upload)
    t.pump()
    assert t.backend.value() == upload
    t.back.dataReceived(b"thanks")
    t.pump()
    assert t.user.value() == b"thanks"


def test_tunnel_backpressure_reaches_the_user_socket() -> None:
    """A full backend socket pauses the far stream; the near stream's window runs out; the user socket is
    paused with bounded buffering; when the backend drains everything arrives in order and the user resumes."""
    t = Tunnel()
    assert t.backend.producer is t.far
    t.far.pauseProducing()  # what the backend transport does when its buffer is full
    chunk = 32 * 1024
    sent = bytearray()
    while t.user.producerState == "producing" and len(sent) < 10 * 1024 * 1024:
        data = pattern(chunk, len(sent))
        sent += data
        t.pub.dataReceived(data)  # the user socket read this
        t.pump()
    assert t.user.producerState == "paused"
    assert len(sent) <= INITIAL_WINDOW + OUTBUF_HIGH + chunk
    t.far.resumeProducing()  # the backend drained
    t.pump()
    assert t.backend.value() == bytes(sent)
    assert t.user.producerState == "producing"


def test_tunnel_half_close_both_ways() -> None:
    """The user's FIN reaches the backend as a write shutdown, the backend can still answer, and its FIN
    then shuts the user's write side; both stream ends finish."""
    t = Tunnel()
    t.pub.dataReceived(b"request")
    t.pub.readConnectionLost()  # user sent FIN
    t.pump()
    assert t.backend.value() == b"request"
    assert t.backend.write_closed and not t.backend.disconnecting
    t.back.dataReceived(b"response")
    t.back.readConnectionLost()  # backend sent FIN
    t.pump()
    assert t.user.value() == b"response"
    assert t.user.write_closed
    assert t.pair.client.stream_count == t.pair.server.stream_count == 0


def test_tunnel_backend_close_reaches_the_user() -> None:
    """When the backend connection is lost, the user gets the pending bytes and then its connection shut."""
    t = Tunnel()
    t.back.dataReceived(b"last words")
    t.back.connectionLost(Failure(ConnectionLost("backend reset")))
    t.pump()
    assert t.user.value() == b"last words"
    assert t.user.write_closed  # a FIN for the user; it may still finish sending


def test_tunnel_user_close_reaches_the_backend() -> None:
    """When the user connection is lost, the backend connection is closed."""
    t = Tunnel()
    t.pub.dataReceived(b"partial")
    t.pub.connectionLost(Failure(ConnectionDone()))
    t.pump()
    assert t.backend.value() == b"partial"
    assert t.backend.write_closed  # a FIN for the backend


def test_tunnel_bridge_loss_closes_both_ends() -> None:
    """Losing the bridge closes both the user and the backend connections."""
    t = Tunnel()
    t.pair.client.connection_lost("bridge down")
    t.pair.server.connection_lost("bridge down")
    assert t.user.disconnecting
    assert t.backend.disconnecting


def test_user_gone_during_a_big_download_releases_the_backend() -> None:
    """If the user disconnects while the backend is sending more than a window, the backend connection is
    eventually closed (not left paused forever) and no stream is leaked."""
    t = Tunnel()
    t.back.dataReceived(pattern(INITIAL_WINDOW + 2 * OUTBUF_HIGH))  # a big response is on its way
    t.pub.connectionLost(Failure(ConnectionLost("user went away")))
    t.pump()
    t.pair.clock.advance(LINGER)
    t.pump()
    assert t.backend.disconnecting or t.backend.producerState != "paused", "backend left paused forever"
    assert t.pair.client.stream_count == 0
    assert t.pair.server.stream_count == 0, "the npc-side stream leaks"


def test_bytes_before_the_far_side_connects_are_kept() -> None:
    """Data read before the far half is connected waits (reading paused) and goes out first at join."""
    a = Relay()
    b = RelayFactory(a).buildProtocol(None)
    ta, tb = TCPish(), TCPish()
    a.makeConnection(ta)
    a.dataReceived(b"early ")
    a.dataReceived(b"bytes")
    assert ta.producerState == "paused"
    b.makeConnection(tb)
    assert tb.value() == b"early bytes"
    assert ta.producerState == "producing"
    a.dataReceived(b" then more")
    assert tb.value() == b"early bytes then more"
