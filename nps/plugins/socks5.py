# -*- test-case-name: test.test_socks5 -*-
"""The C{socks5} mode: a SOCKS5 proxy on the server whose connections leave from the client.

Server side, each user connection runs the sans-io handshake of
L{nps.protocols.socks5}.  A CONNECT opens one stream to the npc with the
requested C{host:port} as target (names are resolved by the npc), and the
reply waits for the npc's answer.  A UDP ASSOCIATE opens a UDP port on the
server and one stream (link mode C{socks5_udp}) that carries the datagrams,
each framed as u16 length + SOCKS UDP header + data; the association ends
with its TCP control connection.

Client side, C{socks5} streams are dialled like C{tcp} ones, and
C{socks5_udp} streams are served by L{UdpRelayClient}, which sends the
datagrams from its own UDP sockets and frames the answers back.
"""
from __future__ import annotations

import enum
import time
from typing import Any, Callable

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProtocol, IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from nps.accounts import accounts_for, check
from nps.config import format_host_port
from nps.interfaces import IProxyMode
from nps.model import Tunnel
from nps.plugins.tcp import connect_target, listen_public_tcp
from nps.protocols.socks5 import (
    Command,
    DatagramFramer,
    Reply,
    Request,
    Send,
    ServerHandshake,
    Socks5Error,
    decode_udp,
    encode_reply,
    encode_udp,
    frame_datagram,
    reply_for_error,
)
from nps.relay import Relay

#: Seconds a client has to complete greeting, authentication and request.
HANDSHAKE_TIMEOUT = 15.0
#: Largest UDP datagram read (Twisted's default of 8192 would truncate).
MAX_UDP_PACKET = 65535
#: npc side: seconds a resolved name is reused, and how many names are kept.
DNS_CACHE_SECONDS = 60.0
DNS_CACHE_SIZE = 256
#: npc side: name lookups in flight per association (more datagrams are dropped).
MAX_PENDING_LOOKUPS = 32

Opener = Callable[[dict[str, Any]], IStreamClientEndpoint]


class _Phase(enum.Enum):
    HANDSHAKE = "handshake"
    CONNECTING = "connecting"
    RELAYING = "relaying"
    UDP = "udp"
    CLOSED = "closed"


class Socks5ServerProtocol(Relay):
    """A user connection on the socks5 port: handshake, then a relay or a UDP association."""

    log = Logger()
    factory: "Socks5Factory"

    phase = _Phase.HANDSHAKE
    #: How the connection ended, for the log (a reply code name or a reason).
    outcome = ""
    _timer: IDelayedCall | None = None
    _association: "UdpAssociation | None" = None
    _remote = ""

    def connectionMade(self) -> None:
        super().connectionMade()
        peer = self.transport.getPeer()
        self._remote = format_host_port(peer.host, peer.port)
        self._machine = ServerHandshake(self.factory.check)
        self._timer = self.factory.reactor.callLater(HANDSHAKE_TIMEOUT, self._handshake_timed_out)

    # -- handshake ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.phase is _Phase.HANDSHAKE:
            self._handshake(data)
        elif self.phase in (_Phase.CONNECTING, _Phase.RELAYING):
            super().dataReceived(data)
        # UDP: the control connection carries nothing more; CLOSED: ignore.

    def _handshake(self, data: bytes) -> None:
        try:
            events = self._machine.feed(data)
        except Socks5Error as e:
            self._refuse(str(e), e.out)
            return
        for event in events:
            if isinstance(event, Send):
                self.transport.write(event.data)
            elif isinstance(event, Request):
                self._cancel_timer()
                if event.command == Command.CONNECT:
                    self._connect(event)
                else:
                    self._associate(event)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        self._refuse(f"no complete request within {HANDSHAKE_TIMEOUT:g}s (stuck in {self._machine.state})")

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _refuse(self, message: str, out: bytes = b"") -> None:
        """Log why, send C{out} (a refusal reply) and close this connection only."""
        self._cancel_timer()
        if self.phase is _Phase.CLOSED:
            return
        self.log.info("socks5 tunnel {tunnel}: {remote} refused: {message}",
                      tunnel=self.factory.tunnel.id, remote=self._remote, message=message)
        self.phase = _Phase.CLOSED
        self.outcome = message
        if out:
            self.transport.write(out)
        self.transport.loseConnection()

    def _link(self, mode: str, target: str) -> dict[str, Any]:
        return {"mode": mode, "target": target, "remote": self._remote, "tunnel": self.factory.tunnel.id}

    # -- CONNECT --------------------------------------------------------------------

    def _connect(self, request: Request) -> None:
        self.phase = _Phase.CONNECTING
        target = format_host_port(request.host, request.port)
        self._target = target
        if request.rest:
            self._early.append(request.rest)
        try:
            d = self.factory.opener(self._link("socks5", target)).connect(_StreamSideFactory(self))
        except Exception as e:  # an opener that raises instead of failing its Deferred
            d = fail(e)
        d.addCallbacks(self._stream_attached, self._open_failed)

    def _stream_attached(self, stream_side: "_StreamSide") -> None:
        opened = getattr(stream_side.transport, "opened", None)
        if opened is None:  # not a mux stream (tests, or a transport that is connected already)
            self._connected()
            return
        opened.addCallbacks(self._opened, self._open_failed)

    def _opened(self, result: Any) -> None:
        # None: the server's own errback took the failure; the reason arrives
        # through the stream side's connectionLost, right after this.
        if result is not None:
            self._connected()

    def _connected(self) -> None:
        if self.phase is not _Phase.CONNECTING:
            return
        self.phase = _Phase.RELAYING
        self.outcome = "connected"
        self.transport.write(encode_reply(Reply.SUCCEEDED))

    def _open_failed(self, failure: Failure) -> None:
        """connect() failed (client offline) or the npc refused the stream."""
        if self.phase is not _Phase.CONNECTING:
            return
        self.stream_refused(failure.getErrorMessage())

    def stream_refused(self, reason: str) -> None:
        """The stream for our CONNECT ended before it was accepted: reply and close."""
        if self.phase is not _Phase.CONNECTING:
            return
        code = reply_for_error(reason)
        self._refuse(f"CONNECT {self._target} failed ({code.name}): {reason}", encode_reply(code))

    # -- UDP ASSOCIATE ------------------------------------------------------------

    def _associate(self, request: Request) -> None:
        self.phase = _Phase.UDP
        association = UdpAssociation(self, request.host, request.port)
        self._association = association
        try:
            association.start()
        except Exception as e:
            self._refuse(f"UDP ASSOCIATE failed: {e}", encode_reply(Reply.GENERAL_FAILURE))

    def associated(self, host: str, port: int) -> None:
        """The association's stream is open: tell the client where to send."""
        if self.phase is _Phase.UDP:
            self.outcome = "udp associate"
            self.log.info("socks5 tunnel {tunnel}: {remote} UDP associate on {address}",
                          tunnel=self.factory.tunnel.id, remote=self._remote, address=format_host_port(host, port))
            self.transport.write(encode_reply(Reply.SUCCEEDED, host, port))

    def association_failed(self, reason: str) -> None:
        if self.phase is _Phase.UDP:
            self._refuse(f"UDP ASSOCIATE failed: {reason}", encode_reply(reply_for_error(reason)))

    def association_ended(self, reason: str) -> None:
        if self.phase is _Phase.UDP:
            self.log.info("socks5 tunnel {tunnel}: {remote} UDP association ended: {reason}",
                          tunnel=self.factory.tunnel.id, remote=self._remote, reason=reason)
            self.phase = _Phase.CLOSED
            self.transport.loseConnection()

    # -- end ----------------------------------------------------------------------

    def readConnectionLost(self) -> None:
        if self.phase in (_Phase.CONNECTING, _Phase.RELAYING):
            super().readConnectionLost()
        elif self.phase is _Phase.HANDSHAKE:
            self._handshake_cut()
            self.transport.loseConnection()
        else:
            self.transport.loseConnection()

    def _handshake_cut(self) -> None:
        """The client went away mid-handshake: worth a line if it had sent anything."""
        if self.phase is _Phase.HANDSHAKE and self._machine.buffered:
            self.log.info("socks5 tunnel {tunnel}: {remote} closed with an incomplete {state} "
                          "({n} bytes)", tunnel=self.factory.tunnel.id, remote=self._remote,
                          state=self._machine.state, n=self._machine.buffered)
            self.phase = _Phase.CLOSED

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        self._handshake_cut()
        self.phase = _Phase.CLOSED
        association, self._association = self._association, None
        if association is not None:
            association.close()
            self.log.info("socks5 tunnel {tunnel}: {remote} UDP association closed: {received} datagrams "
                          "from the client, {sent} answers, {dropped} dropped", tunnel=self.factory.tunnel.id,
                          remote=self._remote, received=association.received, sent=association.sent,
                          dropped=association.dropped)
        super().connectionLost(reason)


class _StreamSide(Relay):
    """The stream half of a CONNECT relay; reports a refusal to the user side."""

    peer: Socks5ServerProtocol

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.peer.stream_refused(reason_text(reason))  # no-op once connected
        super().connectionLost(reason)


class _StreamSideFactory(Factory):
    noisy = False

    def __init__(self, user_side: Socks5ServerProtocol) -> None:
        self._user_side = user_side

    def buildProtocol(self, addr: Any) -> _StreamSide:
        side = _StreamSide()
        side.factory = self
        side.peer = self._user_side
        self._user_side.peer = side
        return side


# -- UDP association, server side ---------------------------------------------------


@implementer(IPushProducer)
class UdpAssociation:
    """One UDP ASSOCIATE: a UDP port on the server and a C{socks5_udp} stream to the npc.

    Datagrams are accepted only from the control connection's IP (and the
    port the client named, if any; else the first port seen).  The UDP
    port is the streaming producer of the stream, so a full stream stops
    reading datagrams (the kernel then drops them) instead of buffering.
    """

    log = Logger()

    def __init__(self, control: Socks5ServerProtocol, host: str, port: int) -> None:
        self._control = control
        self._factory = control.factory
        peer = control.transport.getPeer()
        self._client_ip = _normal_ip(peer.host)
        self._client_port = port or None
        self._udp: Any = None
        self._stream: Any = None
        self._closed = False
        self.received = self.sent = self.dropped = 0

    def start(self) -> None:
        """Open the UDP port and the stream (raises if the port cannot be opened)."""
        tunnel = self._factory.tunnel
        interface = tunnel.server_ip or ""
        local = self._control.transport.getHost()
        if isIPv6Address(local.host) and interface in ("", "0.0.0.0"):
            interface = "::"
        self._udp = self._factory.reactor.listenUDP(0, _UdpServerSide(self), interface=interface,
                                                    maxPacketSize=MAX_UDP_PACKET)
        d = self._factory.opener(self._control._link("socks5_udp", "socks5-udp")).connect(_UdpStreamFactory(self))
        d.addCallbacks(self._attached, self._failed)

    def _attached(self, protocol: "_UdpStreamSide") -> None:
        stream: Any = protocol.transport
        if self._closed:
            stream.loseConnection()
            return
        self._stream = stream
        self._stream.registerProducer(self, True)
        opened = getattr(self._stream, "opened", None)
        if opened is None:
            self._ready(self._stream)
        else:
            opened.addCallbacks(self._ready, self._failed)

    def _ready(self, result: Any) -> None:
        if result is None or self._closed:
            return  # refused: the stream side's connectionLost reports it
        bound = self._udp.getHost()
        host = bound.host
        if host in ("0.0.0.0", "::", ""):
            host = self._control.transport.getHost().host
        self._control.associated(_normal_ip(host), bound.port)

    def _failed(self, failure: Failure) -> None:
        self.stream_lost(failure.getErrorMessage())

    def stream_lost(self, reason: str) -> None:
        if self._closed:
            return
        if self._stream is not None and getattr(self._stream, "opened", None) is not None \
                and not self._stream.opened.called:
            self._control.association_failed(reason)
        elif self._control.outcome == "udp associate":
            self._control.association_ended(f"stream closed: {reason}")
        else:
            self._control.association_failed(reason)
        self.close()

    # -- datagrams ----------------------------------------------------------------

    def from_client(self, packet: bytes, addr: tuple[str, int]) -> None:
        """A datagram arrived on our UDP port."""
        host, port = _normal_ip(addr[0]), addr[1]
        if host != self._client_ip or (self._client_port is not None and port != self._client_port):
            self.dropped += 1
            self.log.debug("socks5 UDP: dropped a datagram from {addr}, not the client", addr=addr)
            return
        if self._stream is None or self._closed:
            self.dropped += 1
            return
        try:
            datagram = decode_udp(packet)
        except Socks5Error as e:
            self.dropped += 1
            self.log.info("socks5 UDP: dropped a bad datagram from {addr}: {message}", addr=addr, message=str(e))
            return
        if datagram.frag != 0:
            self.dropped += 1
            self.log.debug("socks5 UDP: dropped a fragment from {addr}", addr=addr)
            return
        self._client_port = port
        self.received += 1
        self._stream.write(frame_datagram(packet))

    def to_client(self, packet: bytes) -> None:
        """A framed answer arrived from the npc: send it to the client as it is."""
        if self._closed or self._client_port is None:
            self.dropped += 1
            return
        try:
            self._udp.write(packet, (self._client_ip, self._client_port))
            self.sent += 1
        except OSError as e:
            self.dropped += 1
            self.log.debug("socks5 UDP: cannot send to the client: {error}", error=e)

    # -- IPushProducer (for the stream) ---------------------------------------------

    def pauseProducing(self) -> None:
        if self._udp is not None and not self._closed:
            self._udp.stopReading()

    def resumeProducing(self) -> None:
        if self._udp is not None and not self._closed:
            self._udp.startReading()

    def stopProducing(self) -> None:
        self.stream_lost("stream closed")

    def close(self) -> None:
        """End the association: close the UDP port and the stream (idempotent)."""
        if self._closed:
            return
        self._closed = True
        udp, self._udp = self._udp, None
        if udp is not None:
            udp.stopListening()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.unregisterProducer()
            stream.loseConnection()
        self._control.association_ended("closed")


class _UdpServerSide(DatagramProtocol):
    noisy = False

    def __init__(self, association: UdpAssociation) -> None:
        self._association = association

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self._association.from_client(datagram, addr)


class _UdpStreamSide(Protocol):
    """The association's stream, server side: framed answers from the npc."""

    def __init__(self, association: UdpAssociation) -> None:
        self._association = association
        self._framer = DatagramFramer()

    def dataReceived(self, data: bytes) -> None:
        for packet in self._framer.feed(data):
            self._association.to_client(packet)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._association.stream_lost(reason_text(reason))


class _UdpStreamFactory(Factory):
    noisy = False

    def __init__(self, association: UdpAssociation) -> None:
        self._association = association

    def buildProtocol(self, addr: Any) -> _UdpStreamSide:
        return _UdpStreamSide(self._association)


def reason_text(reason: Failure) -> str:
    """The peer's own words for a stream that ended (without Twisted's C{ConnectionLost} preamble)."""
    args: tuple[Any, ...] = getattr(reason.value, "args", ())
    if len(args) == 1 and isinstance(args[0], str) and args[0]:
        return args[0]
    return reason.getErrorMessage()


def _normal_ip(host: str) -> str:
    """C{::ffff:1.2.3.4} -> C{1.2.3.4}, so a dual-stack socket's peers compare equal."""
    if host.lower().startswith("::ffff:") and isIPAddress(host[7:]):
        return host[7:]
    return host


class Socks5Factory(Factory):
    noisy = False
    protocol = Socks5ServerProtocol  # type: ignore[assignment]

    def __init__(self, reactor: Any, tunnel: Tunnel, opener: Opener) -> None:
        self.reactor = reactor
        self.tunnel = tunnel
        self.opener = opener
        accounts = accounts_for(tunnel)
        self.check: Callable[[str, str], bool] | None = None
        if accounts:
            self.check = lambda user, password: check(accounts, user, password)


# -- client (npc) side ----------------------------------------------------------------


@implementer(IPushProducer)
class UdpRelayClient(Protocol):
    """npc side of a C{socks5_udp} stream: sends datagrams out and frames the answers back.

    It owns up to two UDP sockets (IPv4 and IPv6, opened on first use);
    names are resolved with the reactor's resolver and cached briefly.
    The sockets are the stream's producer: a full stream stops reading them.
    """

    log = Logger()
    transport: Any

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._framer = DatagramFramer()
        self._sockets: dict[int, Any] = {}
        self._names: dict[str, tuple[str, float]] = {}
        self._lookups = 0
        self._paused = False
        self._closed = False

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        for packet in self._framer.feed(data):
            self._send(packet)

    def _send(self, packet: bytes) -> None:
        try:
            datagram = decode_udp(packet)
        except Socks5Error as e:
            self.log.info("socks5 UDP: dropped a bad datagram from the server: {message}", message=str(e))
            return
        if datagram.frag != 0:
            return
        host = datagram.host
        if isIPAddress(host) or isIPv6Address(host):
            self._send_to(host, datagram.port, datagram.data)
            return
        cached = self._names.get(host)
        if cached is not None and cached[1] > time.monotonic():
            self._send_to(cached[0], datagram.port, datagram.data)
            return
        if self._lookups >= MAX_PENDING_LOOKUPS:
            return
        self._lookups += 1
        d = maybeDeferred(self._reactor.resolve, host)

        def resolved(ip: str) -> None:
            if len(self._names) >= DNS_CACHE_SIZE:
                self._names.clear()
            self._names[host] = (ip, time.monotonic() + DNS_CACHE_SECONDS)
            self._send_to(ip, datagram.port, datagram.data)

        def failed(failure: Failure) -> None:
            self.log.info("socks5 UDP: cannot resolve {host}: {message}", host=host, message=failure.getErrorMessage())

        def done(_: Any) -> None:
            self._lookups -= 1

        d.addCallbacks(resolved, failed).addBoth(done)

    def _send_to(self, ip: str, port: int, data: bytes) -> None:
        if self._closed:
            return
        family = 6 if ":" in ip else 4
        sock = self._sockets.get(family)
        try:
            if sock is None:
                sock = self._reactor.listenUDP(0, _UdpClientSide(self), interface="::" if family == 6 else "0.0.0.0",
                                               maxPacketSize=MAX_UDP_PACKET)
                self._sockets[family] = sock
                if self._paused:
                    sock.stopReading()
            sock.write(data, (ip, port))
        except Exception as e:  # EAGAIN, EMSGSIZE, no IPv6...: UDP may drop
            self.log.debug("socks5 UDP: cannot send to {ip}:{port}: {error}", ip=ip, port=port, error=e)

    def answer(self, data: bytes, addr: Any) -> None:
        """A datagram from C{addr}: frame it back to the server."""
        if self._closed:
            return
        try:
            framed = frame_datagram(encode_udp(_normal_ip(addr[0]), addr[1], data))
        except ValueError:
            return  # too large for a frame
        self.transport.write(framed)

    def pauseProducing(self) -> None:
        self._paused = True
        for sock in self._sockets.values():
            sock.stopReading()

    def resumeProducing(self) -> None:
        self._paused = False
        for sock in self._sockets.values():
            sock.startReading()

    def stopProducing(self) -> None:
        self._close_sockets()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._close_sockets()

    def _close_sockets(self) -> None:
        self._closed = True
        sockets, self._sockets = self._sockets, {}
        for sock in sockets.values():
            sock.stopListening()


class _UdpClientSide(DatagramProtocol):
    noisy = False

    def __init__(self, relay: UdpRelayClient) -> None:
        self._relay = relay

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self._relay.answer(datagram, addr)


# -- the plugins ------------------------------------------------------------------------


@implementer(IPlugin, IProxyMode)
class Socks5Mode:
    """C{mode=socks5}: a SOCKS5 proxy port on the server."""

    name = "socks5"

    def listen(self, reactor: Any, tunnel: Tunnel, opener: Opener) -> Deferred[IListeningPort]:
        factory = Socks5Factory(reactor, tunnel, opener)
        return listen_public_tcp(reactor, tunnel, factory)

    def serve(self, reactor: Any, link: dict[str, Any]) -> Deferred[IProtocol]:
        return connect_target(reactor, str(link.get("target", "")))


@implementer(IPlugin, IProxyMode)
class Socks5UdpMode:
    """The UDP relay streams of socks5 UDP associations (no npc.conf section uses it)."""

    name = "socks5_udp"

    def listen(self, reactor: Any, tunnel: Tunnel, opener: Opener) -> Deferred[IListeningPort]:
        return fail(ValueError("socks5_udp is internal to the socks5 mode and has no port of its own"))

    def serve(self, reactor: Any, link: dict[str, Any]) -> Deferred[IProtocol]:
        return succeed(UdpRelayClient(reactor))


socks5 = Socks5Mode()
socks5_udp = Socks5UdpMode()
