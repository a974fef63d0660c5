# -*- test-case-name: test.test_server -*-
"""The visitor side of secret tunnels: a local port on npc whose connections reach another
client's target through the server (C{npc -password=PW -local_type=secret -local_port=N})."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from nps.config import format_host_port
from nps.relay import Relay, RelayFactory

if TYPE_CHECKING:
    from nps.client import NpcService


@attrs.frozen
class Visitor:
    """One local port of a visitor npc."""

    password: str
    local_port: int
    local_ip: str = "127.0.0.1"
    kind: str = "secret"
    name: str = "secret"
    #: p2p only: the provider-side C{host:port} to reach (empty: the tunnel's first target).
    target: str = ""


class VisitorProtocol(Relay):
    """A local connection: opens a secret-visitor stream over npc's bridge session."""

    log = Logger()
    factory: "VisitorFactory"

    def connectionMade(self) -> None:
        super().connectionMade()
        visitor = self.factory.visitor
        service = self.factory.service
        if visitor.kind == "p2p":
            service.p2p.link_for(visitor).open(self)
        else:
            relay_through_server(service, visitor, self)


def relay_through_server(service: "NpcService", visitor: Visitor, local: Relay, target: str = "") -> None:
    """Carry local connection C{local} to the secret/p2p tunnel through the server (secret relay)."""
    current = service.current
    mux = current.mux if current is not None else None
    if mux is None:
        VisitorProtocol.log.warn("{kind} {name}: not connected to the server; closing the local connection",
                                 kind=visitor.kind, name=visitor.name)
        local.transport.loseConnection()
        return
    peer = local.transport.getPeer()
    link = {"mode": "secret", "password": visitor.password, "remote": format_host_port(peer.host, peer.port)}
    if target:
        link["target"] = target
    stream = mux.start_stream(link)
    assert stream.opened is not None

    def refused(failure: Failure) -> None:
        VisitorProtocol.log.warn("{kind} {name}: the server refused the visit: {reason}", kind=visitor.kind,
                                 name=visitor.name, reason=failure.getErrorMessage())

    stream.opened.addErrback(refused)
    stream.attach(RelayFactory(local).buildProtocol(None))


class VisitorFactory(Factory):
    noisy = False
    protocol = VisitorProtocol  # type: ignore[assignment]

    def __init__(self, service: "NpcService", visitor: Visitor) -> None:
        self.service = service
        self.visitor = visitor


def listen_visitor(reactor: Any, service: "NpcService", visitor: Visitor) -> Any:
    """Open a visitor's local port (raises CannotListenError at once if it is taken)."""
    return reactor.listenTCP(visitor.local_port, VisitorFactory(service, visitor), interface=visitor.local_ip)
