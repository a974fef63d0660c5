# -*- test-case-name: test.test_relay -*-
"""Splice two connections together with backpressure and half-close.

A L{Relay} is the protocol on one side; its C{peer} is the L{Relay} on the
other.  Once both are connected each transport is registered as the
streaming producer of the other, so a full side pauses the reader of the
opposite side and memory stays bounded.  A FIN on one side becomes a
half-close on the other; a full close of either closes both.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from nps.fastwrite import enlarge_reads, writer_for


def tune_socket(transport: Any, keepalive: bool = False) -> None:
    """TCP_NODELAY (and optionally SO_KEEPALIVE) on TCP transports; no-op otherwise."""
    if ITCPTransport.providedBy(transport):
        enlarge_reads(transport)
        transport.setTcpNoDelay(True)
        if keepalive:
            transport.setTcpKeepAlive(True)


@implementer(IHalfCloseableProtocol)
class Relay(Protocol):
    """One half of a relay; forwards bytes to C{peer.transport}."""

    transport: Any
    peer: "Relay | None" = None
    joined = False
    gone = False

    def connectionMade(self) -> None:
        tune_socket(self.transport)
        peer = self.peer
        if peer is None:
            return
        if peer.gone:
            self.transport.loseConnection()
        elif peer.transport is not None and peer.connected:
            join(self, peer)

    _write_peer: Any = None
    _early: list[bytes]

    def __init__(self) -> None:
        self._early = []

    def dataReceived(self, data: bytes) -> None:
        write = self._write_peer
        if write is not None:
            write(data)
            return
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.connected and not peer.gone:
            peer.transport.write(data)
        elif not self.joined and not self.gone and (peer is None or not peer.gone):
            # The far side is not connected yet: keep the bytes for join(), and stop
            # reading until then (at most one read's worth is held).
            self._early.append(data)
            self.transport.pauseProducing()

    def readConnectionLost(self) -> None:
        peer = self.peer
        if peer is None or peer.gone or peer.transport is None:
            self.transport.loseConnection()
            return
        lose_write = getattr(peer.transport, "loseWriteConnection", None)
        if lose_write is not None:
            lose_write()
        else:
            peer.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Our write side was shut; nothing to do until reads end too."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        self._write_peer = None
        if self.peer is not None:
            self.peer._write_peer = None
        self.connected = False
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.gone:
            peer.transport.loseConnection()


def join(a: Relay, b: Relay) -> None:
    """Register each transport as the other's producer and start reading both."""
    if a.joined:
        return
    a.joined = b.joined = True
    ta: Any = a.transport
    tb: Any = b.transport
    ta.registerProducer(tb, True)
    tb.registerProducer(ta, True)
    a._write_peer = writer_for(tb)
    b._write_peer = writer_for(ta)
    for side in (a, b):
        early, side._early = side._early, []
        for data in early:
            side._write_peer(data)
    for transport in (ta, tb):
        resume = getattr(transport, "resumeProducing", None)
        if resume is not None:
            resume()


class RelayFactory(Factory):
    """Builds the far half of a relay whose near half is C{peer}."""

    noisy = False
    def __init__(self, peer: Relay) -> None:
        self._peer = peer

    def buildProtocol(self, addr: Any) -> Relay:
        relay = Relay()
        relay.factory = self
        relay.peer = self._peer
        self._peer.peer = relay
        return relay
