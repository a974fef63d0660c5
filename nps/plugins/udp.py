# -*- test-case-name: test.test_datagrams,test.test_e2e_udp -*-
"""The C{udp} mode: a public UDP port on the server, a UDP target on the client side.

Server side, each public peer address (C{ip:port}) gets its own mux stream
to the tunnel's npc; its datagrams travel in that stream framed by
L{nps.protocols.datagrams} (u16 length + payload), and the framed replies
coming back are sent to that peer.  On the npc side each stream gets its
own UDP socket, "connected" to the target, so replies from anyone else are
ignored by the kernel.

Sessions end after L{IDLE_TIMEOUT} seconds without a datagram either way
(on both sides; the environment variable C{NPS_UDP_IDLE_TIMEOUT}, in
seconds, overrides it, e.g. for tests).  At most L{MAX_PEERS} peers have a
session at a time per tunnel; datagrams of further peers are dropped.  A
stream that is backed up (its mux window used up, or the bridge full)
makes us drop that peer's datagrams rather than buffer them: UDP may lose
packets, and one slow peer must not hold back the others.
"""
from __future__ import annotations

import itertools
import os
import socket
from typing import Any, Callable, Mapping

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IListeningPort, IProtocol, IPushProducer, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from nps.access import SourceRefused
from nps.config import format_host_port, parse_host_port
from nps.interfaces import IProxyMode
from nps.model import Tunnel
from nps.protocols.datagrams import DatagramFrameError, DatagramParser, encode_datagram

__all__ = ["IDLE_TIMEOUT", "IDLE_TIMEOUT_ENV", "MAX_PEERS", "PublicUdpProtocol", "UdpMode", "udp"]

#: Seconds without a datagram (either way) after which a peer's session ends.
IDLE_TIMEOUT = 60.0
#: Environment variable overriding L{IDLE_TIMEOUT} (seconds, > 0), read by nps and npc.
IDLE_TIMEOUT_ENV = "NPS_UDP_IDLE_TIMEOUT"
#: Peers with a session at the same time, per tunnel.
MAX_PEERS = 1024
#: Datagrams a new peer may send before its stream is attached (then dropped).
MAX_PENDING = 16
#: Socket receive buffer we ask for (best effort): bursts of datagrams wait there.
RECEIVE_BUFFER = 1024 * 1024
#: At most one line per interval for each kind of repeated complaint.
LOG_INTERVAL = 10.0
#: Largest datagram we read from a UDP socket.
MAX_PACKET = 65535
#: Seconds the datagrams of a peer refused by deny_ips/ip_limit are dropped before it is checked again.
REFUSED_HOLD = 5.0

Opener = Callable[[dict[str, Any]], IStreamClientEndpoint]

_log = Logger()


def idle_timeout_from_env(environ: Mapping[str, str] | None = None) -> float:
    """L{IDLE_TIMEOUT}, or the value of C{NPS_UDP_IDLE_TIMEOUT} when it is a positive number."""
    environ = os.environ if environ is None else environ
    text = environ.get(IDLE_TIMEOUT_ENV, "").strip()
    if not text:
        return IDLE_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        _log.warn("ignoring {name}={value!r}: expected a positive number of seconds; using {default}",
                  name=IDLE_TIMEOUT_ENV, value=text, default=IDLE_TIMEOUT)
        return IDLE_TIMEOUT
    return value


class _Throttle:
    """Lets one log line through per C{interval}; counts those held back."""

    def __init__(self, clock: IReactorTime, interval: float = LOG_INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._next = float("-inf")
        self._held = 0

    def allow(self) -> int | None:
        """C{None}: stay quiet; otherwise log now (the number held back since the last line)."""
        now = self._clock.seconds()
        if now < self._next:
            self._held += 1
            return None
        self._next = now + self._interval
        held, self._held = self._held, 0
        return held


def _enlarge_receive_buffer(transport: Any) -> None:
    """Ask for a bigger receive buffer on a UDP port (best effort)."""
    sock = getattr(transport, "socket", None)
    if sock is None:
        return
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RECEIVE_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    except OSError:
        pass


@implementer(IPushProducer)
class DatagramStream(Protocol):
    """The protocol on a mux stream that carries framed datagrams.

    It is registered as the stream's streaming producer, so the stream
    pauses it while the stream is backed up; datagrams sent meanwhile are
    dropped (and counted).  An idle timer closes the stream after
    C{idle_timeout} seconds without a datagram either way.

    Subclasses implement L{deliver} (a datagram from the stream) and
    L{closed} (the stream is gone).
    """

    log = Logger()
    transport: Any

    def __init__(self, clock: IReactorTime, idle_timeout: float, remote: str, target: str) -> None:
        self._clock = clock
        self.idle_timeout = idle_timeout
        self.remote = remote
        self.target = target
        self._parser = DatagramParser()
        self._paused = False
        self.ended = False
        self._lost = False
        self.close_reason = ""
        self._last_activity = clock.seconds()
        self._idle_call: Any = None
        #: Datagrams taken from the stream / written to it / dropped.
        self.from_stream = 0
        self.to_stream = 0
        self.dropped = 0

    # -- Protocol --------------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self._last_activity = self._clock.seconds()
        self._idle_call = self._clock.callLater(self.idle_timeout, self._check_idle)

    def dataReceived(self, data: bytes) -> None:
        try:
            datagrams = self._parser.feed(data)
        except DatagramFrameError as e:
            self.log.warn("udp {remote} -> {target}: bad datagram framing on the stream: {error}; resetting it",
                          remote=self.remote, target=self.target, error=str(e))
            self.close(f"bad datagram framing: {e}", reset=True)
            return
        if datagrams:
            self._last_activity = self._clock.seconds()
        for datagram in datagrams:
            if self.ended:
                return
            self.from_stream += 1
            self.deliver(datagram)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lost:
            return
        self._lost = self.ended = True
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        if not self.close_reason:
            self.close_reason = reason.getErrorMessage() if reason is not None else "closed"
        try:
            self._parser.finish()
        except DatagramFrameError as e:
            self.log.info("udp {remote} -> {target}: {error}", remote=self.remote, target=self.target, error=str(e))
        self.closed()

    # -- IPushProducer: the stream tells us when it is backed up ---------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False

    def stopProducing(self) -> None:
        """The stream is going away; L{connectionLost} follows."""

    # -- our API ---------------------------------------------------------------

    @property
    def backed_up(self) -> bool:
        """True while the stream asked us to stop sending."""
        return self._paused

    def send_datagram(self, datagram: bytes) -> bool:
        """Frame C{datagram} into the stream; False if it was dropped."""
        if self.ended or self.transport is None or self._paused:
            self.dropped += 1
            return False
        try:
            frame = encode_datagram(datagram)
        except DatagramFrameError:
            self.dropped += 1
            return False
        self._last_activity = self._clock.seconds()
        self.to_stream += 1
        self.transport.write(frame)
        return True

    def close(self, reason: str, reset: bool = False) -> None:
        """End the session: close (or reset) the stream."""
        if self.ended:
            return
        self.close_reason = reason
        transport = self.transport
        if transport is None:
            self.connectionLost(Failure(ConnectionError(reason)))
            return
        do_reset = getattr(transport, "reset", None) if reset else None
        if do_reset is not None:
            do_reset(reason)
        else:
            transport.loseConnection()

    def deliver(self, datagram: bytes) -> None:
        """A datagram arrived on the stream."""
        raise NotImplementedError

    def closed(self) -> None:
        """The stream is gone (C{close_reason} says why)."""

    def _check_idle(self) -> None:
        self._idle_call = None
        if self.ended:
            return
        idle = self._clock.seconds() - self._last_activity
        if idle >= self.idle_timeout:
            self.log.info("udp {remote} -> {target}: idle for {idle:.0f}s; session expired",
                          remote=self.remote, target=self.target, idle=idle)
            self.close(f"idle for {idle:.0f}s")
        else:
            self._idle_call = self._clock.callLater(self.idle_timeout - idle, self._check_idle)


class _Prebuilt(Factory):
    """Hands out one protocol made in advance."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


# -- server side ----------------------------------------------------------------


class PeerSession(DatagramStream):
    """One public peer's session on the server: its datagrams go into its stream."""

    def __init__(self, public: "PublicUdpProtocol", addr: tuple[str, int], remote: str, target: str) -> None:
        super().__init__(public.clock, public.idle_timeout, remote, target)
        self.public = public
        self.addr = addr
        self._pending: list[bytes] | None = []

    def connectionMade(self) -> None:
        super().connectionMade()
        pending, self._pending = self._pending, None
        for datagram in pending or ():
            self.send_datagram(datagram)

    def send_datagram(self, datagram: bytes) -> bool:
        if self._pending is not None:  # the stream is not attached yet
            if len(self._pending) < MAX_PENDING:
                self._pending.append(datagram)
                return True
            self.dropped += 1
            return False
        return super().send_datagram(datagram)

    def deliver(self, datagram: bytes) -> None:
        self.public.send_to(self, datagram)

    def closed(self) -> None:
        self._pending = None
        self.public.session_closed(self)


class PublicUdpProtocol(DatagramProtocol):
    """A tunnel's public UDP port on the server: one session (stream) per peer."""

    log = Logger()
    transport: Any
    noisy = False

    def __init__(self, clock: IReactorTime, tunnel: Tunnel, opener: Opener,
                 idle_timeout: float = IDLE_TIMEOUT, max_peers: int = MAX_PEERS) -> None:
        if not tunnel.targets:
            raise ValueError(f"udp tunnel {tunnel.id} has no target_addr")
        self.clock = clock
        self.tunnel = tunnel
        self.opener = opener
        self.idle_timeout = idle_timeout
        self.max_peers = max_peers
        self.sessions: dict[tuple[str, int], PeerSession] = {}
        self._targets = itertools.cycle(tunnel.targets)
        self._stopped = False
        self._full_log = _Throttle(clock)
        self._fail_log = _Throttle(clock)
        self._send_log = _Throttle(clock)
        #: Peers refused by deny_ips/ip_limit: their datagrams are dropped until the time given.
        self._refused: dict[tuple[str, int], float] = {}

    def startProtocol(self) -> None:
        self._stopped = False
        _enlarge_receive_buffer(self.transport)

    def stopProtocol(self) -> None:
        """The port is closing: end every session."""
        self._stopped = True
        for session in list(self.sessions.values()):
            session.close("tunnel closed")

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        key = (str(addr[0]), int(addr[1]))
        session = self.sessions.get(key)
        if session is None:
            if self._refused and self._refused.get(key, 0.0) > self.clock.seconds():
                return
            session = self._open(key)
            if session is None:
                return
        session.send_datagram(datagram)

    def _open(self, addr: tuple[str, int]) -> PeerSession | None:
        if self._stopped:
            return None
        remote = format_host_port(addr[0], addr[1])
        if len(self.sessions) >= self.max_peers:
            held = self._full_log.allow()
            if held is not None:
                self.log.warn("tunnel {tunnel}: udp peer {remote} dropped: {max} peers already have a session "
                              "({held} more drops not logged)", tunnel=self.tunnel.id, remote=remote,
                              max=self.max_peers, held=held)
            return None
        target = next(self._targets)
        link = {"mode": "udp", "target": target, "remote": remote, "tunnel": self.tunnel.id}
        session = PeerSession(self, addr, remote, target)
        self.sessions[addr] = session
        try:
            d = self.opener(link).connect(_Prebuilt(session))
        except Exception as e:  # an opener that raises instead of failing its Deferred
            d = fail(e)
        d.addErrback(self._open_failed, session)
        if self.sessions.get(addr) is not session:
            return None
        self.log.info("tunnel {tunnel}: udp {remote} -> {target}: session opened",
                      tunnel=self.tunnel.id, remote=remote, target=target)
        return session

    def _open_failed(self, failure: Failure, session: PeerSession) -> None:
        held = self._fail_log.allow()
        if held is not None:
            self.log.info("tunnel {tunnel}: udp {remote} -> {target} failed: {reason} "
                          "({held} more failures not logged)", tunnel=self.tunnel.id, remote=session.remote,
                          target=session.target, reason=failure.getErrorMessage(), held=held)
        session.ended = True
        self._forget(session)
        if failure.check(SourceRefused):
            if len(self._refused) >= self.max_peers:
                self._refused.clear()
            self._refused[session.addr] = self.clock.seconds() + REFUSED_HOLD

    def _forget(self, session: PeerSession) -> None:
        if self.sessions.get(session.addr) is session:
            del self.sessions[session.addr]

    def send_to(self, session: PeerSession, datagram: bytes) -> None:
        """Send a reply to the session's peer (dropped, with a log line, if the socket refuses)."""
        transport = self.transport
        if transport is None:
            session.dropped += 1
            return
        try:
            transport.write(datagram, session.addr)
        except (OSError, MessageLengthError) as e:
            session.dropped += 1
            held = self._send_log.allow()
            if held is not None:
                self.log.warn("tunnel {tunnel}: udp reply of {size} bytes to {remote} dropped: {error} "
                              "({held} more not logged)", tunnel=self.tunnel.id, size=len(datagram),
                              remote=session.remote, error=str(e), held=held)

    def session_closed(self, session: PeerSession) -> None:
        """A peer's stream ended."""
        if self.sessions.get(session.addr) is not session:
            return
        del self.sessions[session.addr]
        self.log.info("tunnel {tunnel}: udp {remote} -> {target}: session closed ({reason}); "
                      "{sent} datagrams from the peer, {received} replies, {dropped} dropped",
                      tunnel=self.tunnel.id, remote=session.remote, target=session.target,
                      reason=session.close_reason, sent=session.to_stream, received=session.from_stream,
                      dropped=session.dropped)


# -- client (npc) side ------------------------------------------------------------


class _TargetSocket(DatagramProtocol):
    """The npc's UDP socket towards one target, for one session."""

    noisy = False

    def __init__(self, session: "TargetSession") -> None:
        self.session = session

    def startProtocol(self) -> None:
        _enlarge_receive_buffer(self.transport)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.session.send_datagram(datagram)

    def connectionRefused(self) -> None:
        """ICMP port unreachable from the target: UDP carries on (the target may come up)."""
        self.session.refused += 1


class TargetSession(DatagramStream):
    """npc side: datagrams from the stream go to the target and its replies come back."""

    def __init__(self, clock: IReactorTime, idle_timeout: float, remote: str, target: str) -> None:
        super().__init__(clock, idle_timeout, remote, target)
        self.socket = _TargetSocket(self)
        self.port: Any = None
        self.refused = 0
        self._send_log = _Throttle(clock)

    def deliver(self, datagram: bytes) -> None:
        port = self.port
        if port is None:
            self.dropped += 1
            return
        try:
            port.write(datagram)
        except (OSError, MessageLengthError) as e:
            self.dropped += 1
            held = self._send_log.allow()
            if held is not None:
                self.log.warn("udp {remote} -> {target}: datagram of {size} bytes dropped: {error} "
                              "({held} more not logged)", remote=self.remote, target=self.target,
                              size=len(datagram), error=str(e), held=held)

    def closed(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            port.stopListening()
        self.log.debug("udp {remote} -> {target}: session closed ({reason}); {sent} datagrams sent, "
                       "{received} received, {dropped} dropped", remote=self.remote, target=self.target,
                       reason=self.close_reason, sent=self.to_stream, received=self.from_stream,
                       dropped=self.dropped)


def bind_target(reactor: Any, session: TargetSession, ip: str, port: int) -> TargetSession:
    """Open the session's UDP socket, connected to C{ip:port}."""
    interface = "::" if isIPv6Address(ip) else "0.0.0.0"
    udp_port = reactor.listenUDP(0, session.socket, interface=interface, maxPacketSize=MAX_PACKET)
    try:
        udp_port.connect(ip, port)
    except Exception:
        udp_port.stopListening()
        raise
    session.port = udp_port
    return session


# -- the plugin ---------------------------------------------------------------------


@implementer(IPlugin, IProxyMode)
class UdpMode:
    """The C{mode=udp} plugin.

    @ivar idle_timeout: seconds of silence that end a session; C{None} means
        L{IDLE_TIMEOUT} or C{$NPS_UDP_IDLE_TIMEOUT}.
    """

    name = "udp"

    def __init__(self, idle_timeout: float | None = None, max_peers: int = MAX_PEERS) -> None:
        self.idle_timeout = idle_timeout
        self.max_peers = max_peers

    def _idle_timeout(self) -> float:
        return self.idle_timeout if self.idle_timeout is not None else idle_timeout_from_env()

    def listen(self, reactor: Any, tunnel: Tunnel, opener: Opener) -> Deferred[IListeningPort]:
        protocol = PublicUdpProtocol(reactor, tunnel, opener, self._idle_timeout(), self.max_peers)
        return maybeDeferred(reactor.listenUDP, tunnel.server_port, protocol,
                             interface=tunnel.server_ip or "", maxPacketSize=MAX_PACKET)

    def serve(self, reactor: Any, link: dict[str, Any]) -> Deferred[IProtocol]:
        target = str(link.get("target", ""))
        remote = str(link.get("remote", ""))
        try:
            host, port = parse_host_port(target)
        except ValueError as e:
            return fail(e)
        resolved: Deferred[str]
        if isIPAddress(host) or isIPv6Address(host):
            resolved = succeed(host)
        else:
            resolved = reactor.resolve(host)  # in the resolver's thread, not the reactor's
        session = TargetSession(reactor, self._idle_timeout(), remote, target)
        return resolved.addCallback(lambda ip: bind_target(reactor, session, ip, port))


udp = UdpMode()
