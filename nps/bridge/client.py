# -*- test-case-name: test.test_bridge -*-
"""The npc end of the bridge: handshake, then a L{Mux} serving the server's streams."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from nps import PROTOCOL_VERSION, __version__
from nps.mux import Mux
from nps.protocols.handshake import ClientHandshake, HandshakeError
from nps.relay import tune_socket

if TYPE_CHECKING:
    from nps.client import NpcService

HANDSHAKE_TIMEOUT = 10.0


class BridgeRefused(Exception):
    """The server refused us (wrong vkey, disabled client, version mismatch)."""


class BridgeClientProtocol(Protocol):
    """npc's connection to the server's bridge port."""

    log = Logger()
    factory: "BridgeClientFactory"
    transport: Any
    mux: Mux | None = None
    #: The session's stream secret (crypt), from the handshake's key exchange.
    secret: bytes | None = None

    def __init__(self) -> None:
        #: Fires with this protocol once authenticated (ClientService's prepareConnection).
        self.ready: Deferred[BridgeClientProtocol] = Deferred()
        self._handshake: ClientHandshake | None = None
        self.welcome: dict[str, Any] = {}

    def connectionMade(self) -> None:
        tune_socket(self.transport, keepalive=True)
        service = self.factory.service
        info: dict[str, Any] = {"version": __version__, "remark": service.remark, "role": "client"}
        if service.crypt:
            info["crypt"] = True
        if service.compress:
            info["compress"] = True
        self._handshake = ClientHandshake(service.vkey, PROTOCOL_VERSION, info, key_exchange=True)
        self.transport.write(self._handshake.hello())
        self._timer = self.factory.reactor.callLater(HANDSHAKE_TIMEOUT, self._timeout)

    def _timeout(self) -> None:
        self._fail(BridgeRefused(f"server did not finish the handshake in {HANDSHAKE_TIMEOUT:.0f}s"))

    def _fail(self, error: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(error)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.mux is not None:
            self.mux.data_received(data)
            return
        handshake = self._handshake
        if handshake is None:
            return
        try:
            out, result = handshake.feed(data)
        except HandshakeError as e:
            self._handshake = None
            self._cancel_timer()
            self._fail(BridgeRefused(str(e)))
            return
        if out:
            self.transport.write(out)
        if result is None:
            return
        self._handshake = None
        self._cancel_timer()
        self.welcome = result.message
        self.secret = result.secret
        service = self.factory.service
        self.mux = Mux(
            self.transport,
            self.factory.reactor,
            is_client=True,
            on_stream=service.stream_opened,
            on_control=service.control_received,
            ping_interval=float(result.message.get("ping_interval", 5.0)),
            idle_timeout=service.idle_timeout,
            name="server",
        )
        self.ready.callback(self)
        if result.rest and self.mux is not None:
            self.mux.data_received(result.rest)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        if not self.ready.called:
            self.ready.errback(BridgeRefused(f"connection closed during handshake: {reason.getErrorMessage()}"))
        if self.mux is not None:
            self.mux.connection_lost(reason.getErrorMessage())
            self.factory.service.session_lost(self, self.mux.close_reason)
        self.factory.service.bridge_closed(self)

    _timer: Any = None


class BridgeClientFactory(Factory):
    noisy = False
    protocol = BridgeClientProtocol  # type: ignore[assignment]

    def __init__(self, service: "NpcService", reactor: Any) -> None:
        self.service = service
        self.reactor = reactor
