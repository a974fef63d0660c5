# -*- test-case-name: test.test_tcp_mode -*-
"""Dial C{host:port} with the least machinery on the data path.

Endpoints wrap the protocol in C{_WrappingProtocol}, one more call on every
read for the life of the connection.  For IP literals we use
C{reactor.connectTCP} with a small factory instead; host names still go
through C{HostnameEndpoint} (resolution off the reactor thread, happy eyeballs).
"""
from __future__ import annotations

from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import ClientFactory, Factory
from twisted.python.failure import Failure

CONNECT_TIMEOUT = 10.0


class _OneShotFactory(ClientFactory):
    """Hands out one prepared protocol and reports the outcome on a Deferred."""

    noisy = False

    def __init__(self, protocol: Any, connected: Deferred[Any]) -> None:
        self._protocol = protocol
        self._connected = connected

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self._protocol
        connected = self._connected
        make_connection = protocol.makeConnection

        def made(transport: Any) -> None:
            # Fire after connectionMade, as endpoints do, then get out of the way.
            del protocol.makeConnection
            make_connection(transport)
            if not connected.called:
                connected.callback(protocol)

        protocol.makeConnection = made
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self._connected.called:
            self._connected.errback(reason)


def connect_tcp(reactor: Any, host: str, port: int, factory: Factory,
                timeout: float = CONNECT_TIMEOUT) -> Deferred[Any]:
    """Connect and fire with the protocol C{factory} builds (like C{endpoint.connect}).

    The factory is asked for its protocol up front, with C{addr=None}.
    """
    if not (isIPAddress(host) or isIPv6Address(host)):
        return HostnameEndpoint(reactor, host, port, timeout=timeout).connect(factory)
    protocol = factory.buildProtocol(None)
    connectors: list[Any] = []

    def cancel(_: Deferred[Any]) -> None:
        for connector in connectors:
            connector.disconnect()

    connected: Deferred[Any] = Deferred(cancel)
    if protocol is None:
        connected.errback(ConnectionRefusedError("factory refused to build a protocol"))
        return connected
    connectors.append(reactor.connectTCP(host, port, _OneShotFactory(protocol, connected), timeout=timeout))
    return connected
