# -*- test-case-name: test.test_e2e_plugin -*-
"""A third-party proxy mode used by the tests: C{mode=shout}.

It lives outside the nps package, in a directory that only needs to be on
C{sys.path} (its C{nps/plugins/} folder has no C{__init__.py}).  The server
side relays a public TCP port into a stream; npc answers every chunk it
receives in upper case, prefixed with its own process id, so a test can
tell that the client side really ran in npc.
"""
from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.plugin import IPlugin
from zope.interface import implementer

from nps.interfaces import IProxyMode
from nps.relay import Relay, RelayFactory


class _User(Relay):
    def connectionMade(self) -> None:
        super().connectionMade()
        link = {"mode": "shout", "tunnel": self.factory.tunnel.id}
        d = self.factory.opener(link).connect(RelayFactory(self))
        d.addErrback(lambda _: self.transport.loseConnection())


class _Shouter(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"%d:" % os.getpid() + data.upper())


@implementer(IPlugin, IProxyMode)
class ShoutMode:
    name = "shout"

    def listen(self, reactor: Any, tunnel: Any, opener: Any) -> Deferred[IListeningPort]:
        factory = Factory.forProtocol(_User)
        factory.tunnel = tunnel  # type: ignore[attr-defined]
        factory.opener = opener  # type: ignore[attr-defined]
        return maybeDeferred(reactor.listenTCP, tunnel.server_port, factory, interface=tunnel.server_ip)

    def serve(self, reactor: Any, link: dict[str, Any]) -> Deferred[IProtocol]:
        return succeed(_Shouter())


shout = ShoutMode()
