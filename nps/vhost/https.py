# -*- test-case-name: test.test_e2e_https -*-
"""
The HTTPS side of the domain proxy (C{https_proxy_port}).

The ClientHello is read (not answered) to learn the server name.  Then:

 - pass-through (default, C{https_just_proxy=true}): a stream to the client
   that owns the name, the ClientHello replayed, raw bytes both ways.  TLS
   ends at the client's service, so ALPN and HTTP/2 pass untouched.
 - termination (the host has C{cert_file}, or C{https_just_proxy=false}):
   our TLS with that host's certificate (or the default one) on the same
   connection, then the HTTP vhost protocol with scheme C{https}.

A ClientHello without a name, for an unknown name, or not a ClientHello at
all gets a log line and a closed connection.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from nps.config import format_host_port
from nps.protocols.tlshello import ClientHello, ClientHelloParser, TlsHelloError
from nps.relay import Relay, RelayFactory
from nps.vhost.registry import Route

if TYPE_CHECKING:
    from nps.vhost.service import VhostService

__all__ = ["VhostTlsFactory", "VhostTlsProtocol", "HELLO_TIMEOUT"]

#: Seconds a new connection has to send its ClientHello.
HELLO_TIMEOUT = 15.0


class VhostTlsProtocol(Relay):
    """One connection on the HTTPS vhost port."""

    log = Logger()
    factory: "VhostTlsFactory"
    transport: Any

    def __init__(self) -> None:
        super().__init__()
        self._parser = ClientHelloParser()
        self._buffer = bytearray()
        self._mode = "sniff"  # sniff, relay, starting, terminate, closed
        self._inner: Any = None
        self._timer: IDelayedCall | None = None
        self._remote = ""

    def connectionMade(self) -> None:
        super().connectionMade()
        peer = self.transport.getPeer()
        self._remote = format_host_port(getattr(peer, "host", "?"), getattr(peer, "port", 0))
        self._timer = self.factory.clock.callLater(self.factory.hello_timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        mode = self._mode
        if mode == "relay":
            Relay.dataReceived(self, data)
        elif mode == "terminate":
            self._inner.dataReceived(data)
        elif mode == "starting":
            self._buffer += data
        elif mode == "sniff":
            self._buffer += data
            try:
                hello = self._parser.feed(data)
            except TlsHelloError as e:
                self._give_up("bad ClientHello: {}".format(e))
                return
            if hello is not None:
                self._cancel_timer()
                self._route(hello)

    def readConnectionLost(self) -> None:
        if self._mode == "relay":
            Relay.readConnectionLost(self)
        elif self._mode == "terminate" and hasattr(self._inner, "readConnectionLost"):
            self._inner.readConnectionLost()
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        if self._mode == "sniff" and self._buffer:
            self.log.info("vhost https {remote}: closed before a complete ClientHello ({n} bytes)",
                          remote=self._remote, n=len(self._buffer))
        mode, self._mode = self._mode, "closed"
        if mode == "terminate" and self._inner is not None:
            self._inner.connectionLost(reason)
        else:
            Relay.connectionLost(self, reason)

    # -- routing -----------------------------------------------------------------

    def _route(self, hello: ClientHello) -> None:
        service = self.factory.service
        name = hello.server_name
        if name is None:
            if not service.just_proxy and service.has_default_cert:
                self._terminate(None)
                return
            self._give_up("ClientHello without a server name (SNI)")
            return
        route = service.registry.lookup_name(name, "https")
        if route is None:
            self._give_up(f"no site for server name {name!r}")
            return
        if route.host.cert_file or not service.just_proxy:
            self._terminate(route)
        else:
            self._pass_through(route, hello)

    def _pass_through(self, route: Route, hello: ClientHello) -> None:
        service = self.factory.service
        target = service.registry.next_target(route)
        if target is None:
            self._give_up(f"every target of {route.host.host} is down (health checks)")
            return
        self._mode = "relay"
        failure = service.open_stream(route, target, self._remote, RelayFactory(self))
        if failure is not None:
            self._give_up(f"{route.host.host}: {failure}")
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        Relay.dataReceived(self, data)

    def _terminate(self, route: Route | None) -> None:
        service = self.factory.service
        if route is not None and route.host.cert_file:
            cert, key = route.host.cert_file, route.host.key_file
        else:
            cert, key = service.default_cert
        if not cert:
            self._give_up(f"no certificate for {route.host.host if route else 'a client without SNI'} "
                          "(set the host's cert_file/key_file or https_default_cert_file/key_file)")
            return
        self._mode = "starting"
        self.transport.pauseProducing()
        service.tls_factory(cert, key).addCallbacks(self._start_tls, self._no_tls, errbackArgs=(cert,))

    def _start_tls(self, tls_factory: Any) -> None:
        if self._mode != "starting":
            return
        inner = tls_factory.buildProtocol(self.transport.getPeer())
        self._inner = inner
        self._mode = "terminate"
        inner.makeConnection(self.transport)
        data = bytes(self._buffer)
        self._buffer.clear()
        inner.dataReceived(data)
        if self._mode == "terminate":
            self.transport.resumeProducing()

    def _no_tls(self, failure: Failure, cert: str) -> None:
        if self._mode == "starting":
            self._give_up(f"cannot use certificate {cert}: {failure.getErrorMessage()}")

    def _give_up(self, why: str) -> None:
        self.log.info("vhost https {remote}: {why}; closing", remote=self._remote, why=why)
        self._cancel_timer()
        self._mode = "closed"
        self._buffer.clear()
        self.transport.loseConnection()

    def _timed_out(self) -> None:
        self._timer = None
        if self._mode == "sniff":
            self._give_up("no complete ClientHello in time")

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class VhostTlsFactory(Factory):
    noisy = False
    protocol = VhostTlsProtocol  # type: ignore[assignment]

    def __init__(self, service: "VhostService") -> None:
        self.service = service
        self.clock = service.reactor
        self.hello_timeout = HELLO_TIMEOUT
