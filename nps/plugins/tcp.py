# -*- test-case-name: test.test_tcp_mode -*-
"""The C{tcp} mode: a public TCP port on the server, a TCP target on the client side."""
from __future__ import annotations

import itertools
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from nps.config import format_host_port, parse_host_port
from nps.connect import connect_tcp
from nps.interfaces import IProxyMode
from nps.model import Tunnel, describe_link
from nps.relay import Relay, RelayFactory

CONNECT_TIMEOUT = 10.0

Opener = Callable[[dict[str, Any]], IStreamClientEndpoint]


class PublicRelayProtocol(Relay):
    """A user connection on a tunnel's public port, relayed into a new stream to the client.

    Subclasses say what the stream is for in L{link_for}; the factory has
    C{tunnel} and C{opener}.
    """

    log = Logger()
    factory: Any

    def link_for(self, remote: str) -> dict[str, Any]:
        raise NotImplementedError

    def connectionMade(self) -> None:
        super().connectionMade()
        peer = self.transport.getPeer()
        link = self.link_for(format_host_port(peer.host, peer.port))
        link.setdefault("tunnel", self.factory.tunnel.id)
        d = self.factory.opener(link).connect(RelayFactory(self))
        if not d.called:
            self.transport.pauseProducing()  # until the stream side joins (which resumes it)
        d.addErrback(self._open_failed, link)

    def _open_failed(self, failure: Failure, link: dict[str, Any]) -> None:
        self.log.info("tunnel {tunnel}: {remote} -> {target} failed: {reason}",
                      tunnel=self.factory.tunnel.id, remote=link["remote"], target=describe_link(link),
                      reason=failure.getErrorMessage())
        self.transport.loseConnection()


class PublicTcpProtocol(PublicRelayProtocol):
    """A user connection on a tcp tunnel's port: the stream goes to the next target."""

    factory: "PublicTcpFactory"

    def link_for(self, remote: str) -> dict[str, Any]:
        return {"mode": "tcp", "target": self.factory.next_target(), "remote": remote}


class PublicTcpFactory(Factory):
    noisy = False
    protocol = PublicTcpProtocol  # type: ignore[assignment]

    def __init__(self, tunnel: Tunnel, opener: Opener) -> None:
        if not tunnel.targets:
            raise ValueError(f"tcp tunnel {tunnel.id} has no target_addr")
        self.tunnel = tunnel
        self.opener = opener
        self._targets = itertools.cycle(tunnel.targets)

    def next_target(self) -> str:
        """Round-robin over the tunnel's targets."""
        return next(self._targets)


@implementer(IPlugin, IProxyMode)
class TcpMode:
    name = "tcp"

    def listen(self, reactor: Any, tunnel: Tunnel, opener: Opener) -> Deferred[IListeningPort]:
        factory = PublicTcpFactory(tunnel, opener)
        return listen_public_tcp(reactor, tunnel, factory)

    def serve(self, reactor: Any, link: dict[str, Any]) -> Deferred[IProtocol]:
        return connect_target(reactor, str(link.get("target", "")))


def listen_public_tcp(reactor: Any, tunnel: Tunnel, factory: Any) -> Deferred[IListeningPort]:
    """Open a tunnel's public TCP port (C{server_ip}:C{server_port}); a failure to bind fails the Deferred."""
    return maybeDeferred(reactor.listenTCP, tunnel.server_port, factory, interface=tunnel.server_ip or "")


def connect_target(reactor: Any, target: str) -> Deferred[IProtocol]:
    """Dial C{target} and return the stream-side half of a relay to it."""
    try:
        host, port = parse_host_port(target)
    except ValueError as e:
        return fail(e)
    stream_side = Relay()
    d = connect_tcp(reactor, host, port, RelayFactory(stream_side), timeout=CONNECT_TIMEOUT)
    d.addCallback(lambda _: stream_side)
    return d


tcp = TcpMode()
