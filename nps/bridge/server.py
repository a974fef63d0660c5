# -*- test-case-name: test.test_bridge -*-
"""The server end of the bridge: handshake, then a L{Mux} for the session."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from nps import PROTOCOL_VERSION
from nps.config import format_host_port
from nps.metrics import handshake_failure_reason
from nps.mux import Mux
from nps.protocols.handshake import Authenticated, HandshakeError, ServerHandshake, UnknownKey
from nps.relay import tune_socket

if TYPE_CHECKING:
    from nps.server import ClientSession, NpsServer

HANDSHAKE_TIMEOUT = 10.0
#: First byte of an NPS 0.26 client ("TST"); ours starts with 0x89.
LEGACY_FIRST_BYTE = b"T"
#: Connections still in their handshake; more are refused at once.
MAX_PENDING_HANDSHAKES = 256
#: Of those, at most this many from one source address (one flooder cannot lock everyone out).
MAX_PENDING_PER_SOURCE = 32


class SessionRejected(Exception):
    """The server refuses an authenticated peer; C{str()} goes to the client."""


class BridgeServerProtocol(Protocol):
    """One npc connection on the bridge port."""

    log = Logger()
    factory: "BridgeServerFactory"
    transport: Any
    mux: Mux | None = None
    session: "ClientSession | None" = None
    _handshake: ServerHandshake | None = None
    _timer: IDelayedCall | None = None
    #: The session's stream secret (crypt), when the npc made a key exchange.
    stream_secret: bytes | None = None
    #: An NPS 0.26 client (first byte C{T} of C{"TST"}): nps.legacy.server takes the bytes.
    _legacy: Any = None
    _first_seen = False
    _source = ""

    @property
    def peer(self) -> str:
        address = self.transport.getPeer()
        return format_host_port(address.host, address.port)

    def connectionMade(self) -> None:
        tune_socket(self.transport, keepalive=True)
        server = self.factory.server
        if self.factory.pending >= MAX_PENDING_HANDSHAKES:
            self.log.warn("bridge: too many unfinished handshakes; dropping {peer}", peer=self.peer)
            server.stats.handshake_failed("too_many_pending")
            self.transport.abortConnection()
            return
        source = str(getattr(self.transport.getPeer(), "host", ""))
        from_source = self.factory.pending_from.get(source, 0)
        if from_source >= MAX_PENDING_PER_SOURCE:
            self.log.warn("bridge: {source} already has {n} unfinished handshakes; dropping {peer}",
                          source=source, n=from_source, peer=self.peer)
            server.stats.handshake_failed("too_many_pending")
            self.transport.abortConnection()
            return
        self._source = source
        self.factory.pending_from[source] = from_source + 1
        self.factory.pending += 1
        self._handshake = ServerHandshake(PROTOCOL_VERSION, server.lookup_key)
        self._timer = self.factory.reactor.callLater(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def _end_handshake(self) -> None:
        if self._handshake is not None:
            self._handshake = None
            self.factory.pending -= 1
            left = self.factory.pending_from.get(self._source, 1) - 1
            if left > 0:
                self.factory.pending_from[self._source] = left
            else:
                self.factory.pending_from.pop(self._source, None)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _handshake_timeout(self) -> None:
        self._timer = None
        self.log.warn("bridge: {peer} did not finish the handshake in {t:.0f}s; closing",
                      peer=self.peer, t=HANDSHAKE_TIMEOUT)
        self.factory.server.stats.handshake_failed("timeout")
        self._end_handshake()
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.mux is not None:
            self.mux.data_received(data)
            return
        if self._legacy is not None:
            self._legacy.dataReceived(data)
            return
        handshake = self._handshake
        if handshake is None:
            return
        if not self._first_seen:
            self._first_seen = True
            if data[:1] == LEGACY_FIRST_BYTE:
                self._start_legacy(data)
                return
        try:
            out, result = handshake.feed(data)
        except UnknownKey:
            # Maybe a client added a moment ago by another process: look again once.
            self.transport.pauseProducing()
            self.factory.server.refresh().addBoth(lambda _: self._retry(handshake))
            return
        except HandshakeError as e:
            self._handshake_failed(handshake, e)
            return
        if out:
            self.transport.write(out)
        if result is not None:
            self._authenticated(handshake, result)

    def _retry(self, handshake: ServerHandshake) -> None:
        if self._handshake is not handshake or not self.connected:
            return
        self.transport.resumeProducing()
        try:
            result = handshake.retry()
        except HandshakeError as e:
            self._handshake_failed(handshake, e)
            return
        self._authenticated(handshake, result)

    def _handshake_failed(self, handshake: ServerHandshake, error: HandshakeError) -> None:
        self.log.warn("bridge: handshake from {peer} failed: {error}", peer=self.peer, error=str(error))
        self.factory.server.stats.handshake_failed(handshake_failure_reason(error))
        if error.out:
            self.transport.write(error.out)
        if handshake.hello_sent:
            self.transport.write(handshake.reject(str(error)))
        self._end_handshake()
        self.transport.loseConnection()

    def _authenticated(self, handshake: ServerHandshake, result: Authenticated) -> None:
        self._end_handshake()
        server = self.factory.server
        self.stream_secret = result.secret
        try:
            session, extra = server.attach(self, result.message)
        except SessionRejected as e:
            self.log.warn("bridge: refused {peer}: {error}", peer=self.peer, error=str(e))
            server.stats.handshake_failed("rejected")
            self.transport.write(handshake.reject(str(e)))
            self.transport.loseConnection()
            return
        self.transport.write(handshake.accept(extra))
        self.session = session
        self.mux = Mux(
            self.transport,
            self.factory.reactor,
            is_client=False,
            on_stream=lambda stream: server.stream_from_client(session, stream),
            on_control=lambda message: server.control_received(session, message),
            on_close=lambda reason: None,
            ping_interval=server.ping_interval,
            idle_timeout=server.idle_timeout,
            name=f"client {session.client_id}",
        )
        server.session_started(session)
        if result.rest:
            self.mux.data_received(result.rest)

    def _start_legacy(self, data: bytes) -> None:
        from nps.legacy.server import legacy_handler  # only loaded when an old npc shows up
        self._legacy = legacy_handler(self)
        if self._legacy is None:
            self._end_handshake()
            self.transport.loseConnection()
            return
        self._legacy.dataReceived(data)

    def legacy_handshake_done(self) -> None:
        """The NPS 0.26 handshake ended (either way): release its slot and timer."""
        self._end_handshake()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._legacy is not None:
            self._legacy.connectionLost()
        if self._handshake is not None:
            self.log.warn("bridge: {peer} closed the connection during the handshake ({reason})",
                          peer=self.peer, reason=reason.getErrorMessage())
            self.factory.server.stats.handshake_failed("closed_early")
        self._end_handshake()
        if self.mux is not None:
            self.mux.connection_lost(reason.getErrorMessage())
        if self.session is not None:
            self.factory.server.session_ended(self.session)


class BridgeServerFactory(Factory):
    noisy = False
    protocol = BridgeServerProtocol  # type: ignore[assignment]

    def __init__(self, server: "NpsServer", reactor: Any) -> None:
        self.server = server
        self.reactor = reactor
        self.pending = 0
        #: Unfinished handshakes per source address.
        self.pending_from: dict[str, int] = {}
