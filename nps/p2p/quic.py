# -*- test-case-name: test.test_p2p_quic -*-
"""QUIC on a Twisted UDP port: aioquic's sans-io C{QuicConnection} driven by reactor timers.

Every QUIC stream is a Twisted transport (L{QuicStream}: C{ITransport},
C{IPushProducer}, C{IConsumer}), so the relays and bridge protocols that run
over mux streams run over QUIC streams unchanged.

Backpressure both ways:
  - sending: a stream pauses the producer registered on it while more than
    L{SEND_HIGH} bytes wait unacknowledged, and resumes it below L{SEND_LOW};
  - receiving: the peer's credit (MAX_STREAM_DATA) follows what our protocol
    has taken, not what arrived (L{_Connection} replaces aioquic's rule, which
    doubles the window as data arrives), so a paused protocol holds back only
    its own sender and at most L{STREAM_WINDOW} bytes wait for it.
"""
from __future__ import annotations

import datetime
import hashlib
import socket
from collections import deque
from typing import Any, Callable, Iterable

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.packet import QuicFrameType, pull_quic_header
from aioquic.quic.recovery import QuicPacketPacer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

import attrs

from nps.streambase import StreamTransport

#: Credit a stream grants beyond what its protocol has taken.
STREAM_WINDOW = 4 * 1024 * 1024
#: Connection-wide credit (all streams together), raised as data arrives.
CONNECTION_WINDOW = 16 * 1024 * 1024
SEND_HIGH = 2 * 1024 * 1024
SEND_LOW = 512 * 1024
#: UDP payload size: fits a 1500-byte MTU with IPv4/IPv6 and UDP headers.
DATAGRAM_SIZE = 1400
SOCKET_BUFFER = 4 * 1024 * 1024
#: Seconds of sending a paced burst may cover: our timers wake about once per
#: millisecond (epoll's resolution), so pacing finer than that only idles the link.
PACING_BURST = 0.002
#: Name inside the self-signed certificates (checked by the peer that pins it).
CERT_NAME = "nps-p2p"
ALPN = "nps-p2p/1"
#: QUIC application error codes.
ERR_NONE, ERR_ABORTED, ERR_REFUSED = 0, 1, 2

Address = tuple[str, int]


def make_certificate(name: str = CERT_NAME, days: int = 3650) -> tuple[Any, Any, bytes]:
    """A fresh self-signed P-256 certificate for C{name}.

    @return: (certificate, private key, certificate PEM).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key, cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(pem: bytes) -> str:
    """SHA-256 of a PEM certificate's DER form, as hex (for logs)."""
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def server_configuration(cert: Any, key: Any, alpn: str = ALPN) -> QuicConfiguration:
    """QUIC settings for the accepting side, with its certificate."""
    config = _configuration(is_client=False, alpn=alpn)
    config.certificate = cert
    config.private_key = key
    return config


def client_configuration(pinned_pem: bytes | None, alpn: str = ALPN) -> QuicConfiguration:
    """QUIC settings for the connecting side.

    @param pinned_pem: the only certificate the peer may present (None: any;
        the caller then authenticates the peer some other way).
    """
    config = _configuration(is_client=True, alpn=alpn)
    if pinned_pem is None:
        import ssl

        config.verify_mode = ssl.CERT_NONE
    else:
        config.cadata = pinned_pem
        config.server_name = CERT_NAME
    return config


def _configuration(is_client: bool, alpn: str) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[alpn],
        idle_timeout=30.0,
        max_data=CONNECTION_WINDOW,
        max_stream_data=STREAM_WINDOW,
        max_datagram_size=DATAGRAM_SIZE,
        congestion_control_algorithm="cubic",
    )


def enlarge_buffers(port: Any) -> None:
    """Bigger kernel buffers on a UDP port: bursts of a fast stream must not be dropped."""
    sock = getattr(port, "socket", None)
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            pass


class _CoarsePacer(QuicPacketPacer):
    """aioquic's pacer with bursts of up to L{PACING_BURST} seconds at the pacing rate.

    aioquic allows at most 16 packets per burst, then waits for a timer; a
    reactor timer fires about a millisecond later at best, which capped a
    QUIC connection near 16 packets per millisecond however open its window.
    """

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        super().update_rate(congestion_window, smoothed_rtt)
        if self.bucket_max < PACING_BURST:
            self.bucket_max = PACING_BURST


class _Connection(QuicConnection):
    """A C{QuicConnection} whose stream credit follows what our protocols consumed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: stream id -> bytes our protocol has taken from that stream.
        self.consumed: dict[int, int] = {}
        self._loss._pacer = _CoarsePacer(max_datagram_size=self._max_datagram_size)

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        if not stream.max_stream_data_local:
            return  # our own unidirectional streams receive nothing
        wanted = self.consumed.get(stream.stream_id, 0) + STREAM_WINDOW
        # Grant in steps of a quarter window, so updates stay few.
        if wanted - stream.max_stream_data_local >= STREAM_WINDOW // 4:
            stream.max_stream_data_local = wanted
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local


@implementer(IAddress)
@attrs.frozen
class QuicStreamAddress:
    """One end of a QUIC stream: the stream id and the peer's UDP address."""

    stream_id: int
    host: str = ""
    port: int = 0


@implementer(ITransport, IPushProducer, IConsumer)
class QuicStream(StreamTransport):
    """One bidirectional QUIC stream; a transport for the protocol attached to it."""

    def __init__(self, session: "QuicSession", stream_id: int) -> None:
        self.session = session
        self.stream_id = stream_id
        self.protocol: IProtocol | None = None
        #: L{nps.stats.TrafficCounter}s to charge; C{bytes_in} = bytes we send.
        self.counters: list[Any] = []
        self._inbuf: deque[bytes] = deque()
        self._remote_fin = False
        self._eof_delivered = False
        self._local_fin = False
        self._full_close = False
        self._finished = False
        self._read_paused = False
        self._producer: Any = None
        self._producer_paused = False
        self._streaming = True
        self.on_close: Callable[["QuicStream", Failure], None] | None = None

    def __repr__(self) -> str:
        return f"<QuicStream {self.stream_id} {self.session.peer}>"

    @property
    def connected(self) -> bool:
        """True until the stream has ended (like a TCP transport's C{connected}; the mux reads it)."""
        return not self._finished

    # -- ITransport ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._local_fin or self._finished or not data:
            return
        for counter in self.counters:
            counter.bytes_in += len(data)
        self.session.conn.send_stream_data(self.stream_id, bytes(data), False)
        self.session.schedule_send()
        self._update_producer()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """Half-close: FIN after what was written; keep reading."""
        if self._local_fin or self._finished:
            return
        self._local_fin = True
        self.session.conn.send_stream_data(self.stream_id, b"", True)
        self.session.schedule_send()
        if self._eof_delivered:
            self._finish(Failure(ConnectionDone()))

    def loseConnection(self) -> None:
        """Close both directions: FIN after what was written, stop reading."""
        if self._finished or self._full_close:
            return
        self._full_close = True
        self.disconnecting = True
        self._inbuf.clear()
        if not self._remote_fin:
            try:
                self.session.conn.stop_stream(self.stream_id, ERR_NONE)
            except ValueError:
                pass
        self.loseWriteConnection()
        if not self._finished:
            self.session.reactor.callLater(0, self._finish, Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        self.reset()

    def reset(self, code: int = ERR_ABORTED) -> None:
        """Abort the stream both ways now."""
        if self._finished:
            return
        conn = self.session.conn
        conn.reset_stream(self.stream_id, code)
        if not self._remote_fin:
            try:
                conn.stop_stream(self.stream_id, code)
            except ValueError:
                pass
        self.session.schedule_send()
        self._finish(Failure(ConnectionAborted("stream reset")))

    def getPeer(self) -> QuicStreamAddress:
        host, port = self.session.peer
        return QuicStreamAddress(self.stream_id, host, port)

    def getHost(self) -> QuicStreamAddress:
        return QuicStreamAddress(self.stream_id)

    # setTcpNoDelay, IPushProducer, IConsumer and attach: see StreamTransport.

    def _unsent(self) -> int:
        """Bytes written but not yet acknowledged by the peer."""
        stream = self.session.conn._streams.get(self.stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def _update_producer(self) -> None:
        producer = self._producer
        if producer is None:
            return
        if not self._streaming:
            if self._unsent() < SEND_LOW:
                self.session.reactor.callLater(0, self._pull)
            return
        backlog = self._unsent()
        if not self._producer_paused and backlog > SEND_HIGH:
            self._producer_paused = True
            producer.pauseProducing()
        elif self._producer_paused and backlog < SEND_LOW:
            self._producer_paused = False
            producer.resumeProducing()

    def _pull(self) -> None:
        if self._producer is not None and not self._streaming and not self._finished:
            self._producer.resumeProducing()

    # -- called by the session --------------------------------------------------

    def unread(self, data: bytes) -> None:
        """Put bytes a protocol took back in front, for the protocol attached next."""
        if data:
            self._inbuf.appendleft(data)
            consumed = self.session.conn.consumed
            consumed[self.stream_id] = consumed.get(self.stream_id, 0) - len(data)

    def _on_data(self, data: bytes, end: bool) -> None:
        if self._finished or self._full_close:
            self._consume(len(data))
            return
        if data:
            for counter in self.counters:
                counter.bytes_out += len(data)
            self._inbuf.append(data)
        if end:
            self._remote_fin = True
        self._drain_inbuf()

    def _drain_inbuf(self) -> None:
        while self._inbuf and not self._read_paused and self.protocol is not None and not self._finished:
            data = self._inbuf.popleft()
            self._consume(len(data))
            self.protocol.dataReceived(data)
        if (self._remote_fin and not self._inbuf and not self._eof_delivered and self.protocol is not None
                and not self._finished):
            self._eof_delivered = True
            if self._local_fin:
                self._finish(Failure(ConnectionDone()))
            elif IHalfCloseableProtocol.providedBy(self.protocol):
                self.protocol.readConnectionLost()
            else:
                self.loseConnection()

    def _consume(self, size: int) -> None:
        consumed = self.session.conn.consumed
        consumed[self.stream_id] = consumed.get(self.stream_id, 0) + size
        self.session.schedule_send()

    def _on_reset(self) -> None:
        self._finish(Failure(ConnectionLost("the peer reset the stream")))

    def _finish(self, reason: Failure) -> None:
        if self._finished:
            return
        self._finished = True
        self.disconnected = True
        self._inbuf.clear()
        self.session.stream_done(self)
        self._producer = None
        if self.on_close is not None:
            self.on_close(self, reason)
        if self.protocol is not None:
            self.protocol.connectionLost(reason)


class QuicSession:
    """One QUIC connection on a L{QuicEndpoint}: drives the sans-io state machine."""

    log = Logger()

    def __init__(self, endpoint: "QuicEndpoint", conn: _Connection, peer: Address,
                 on_stream: Callable[[QuicStream], None] | None = None, name: str = "quic") -> None:
        self.endpoint = endpoint
        self.reactor = endpoint.reactor
        self.conn = conn
        self.peer = peer
        self.name = name
        self.on_stream = on_stream
        self.streams: dict[int, QuicStream] = {}
        #: Fires with this session once the TLS handshake is done.
        self.handshake: Deferred[QuicSession] = Deferred()
        #: Fires with the close reason once the connection is gone.
        self.closed: Deferred[str] = Deferred()
        self.close_reason = ""
        self._timer: IDelayedCall | None = None
        self._send_call: IDelayedCall | None = None
        self._done = False
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- driving aioquic ------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self._done:
            return
        self.bytes_received += len(data)
        self.conn.receive_datagram(data, addr, now=self.reactor.seconds())
        # Datagrams read in one go are handled together at the end of the reactor turn:
        # one round of events, acknowledgements and timer for the whole batch.
        self.schedule_send()

    def schedule_send(self) -> None:
        """Send what is pending at the end of this reactor turn (writes coalesce)."""
        if self._send_call is None and not self._done:
            self._send_call = self.reactor.callLater(0, self._send_now)

    def _send_now(self) -> None:
        self._send_call = None
        self.process()

    def process(self) -> None:
        """Handle aioquic's events, send its datagrams, re-arm its timer."""
        if self._done:
            return
        conn = self.conn
        event = conn.next_event()
        while event is not None:
            self._handle(event)
            if self._done:
                return
            event = conn.next_event()
        now = self.reactor.seconds()
        port = self.endpoint.transport
        for data, addr in conn.datagrams_to_send(now=now):
            self.bytes_sent += len(data)
            if port is None:
                continue
            try:
                port.write(data, addr)
            except OSError:
                pass  # a full socket buffer: QUIC's loss recovery resends
        for stream in list(self.streams.values()):
            if stream._producer is not None:
                stream._update_producer()
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.conn.get_timer()
        timer = self._timer
        if timer is not None and timer.active():
            if deadline is not None and abs(timer.getTime() - deadline) < 0.001:
                return  # already set for (about) that moment
            timer.cancel()
        self._timer = None
        if deadline is not None:
            delay = max(0.0, deadline - self.reactor.seconds())
            self._timer = self.reactor.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._done:
            return
        self.conn.handle_timer(now=self.reactor.seconds())
        self.process()

    def _handle(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                peer_bidi = 1 if self.conn._is_client else 0
                if event.stream_id % 4 != peer_bidi or self.on_stream is None:
                    # One of ours already gone, a unidirectional one, or we serve none.
                    self._discard(event.stream_id, len(event.data))
                    return
                stream = QuicStream(self, event.stream_id)
                self.streams[event.stream_id] = stream
                self.on_stream(stream)
            stream._on_data(event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._on_reset()
        elif isinstance(event, events.HandshakeCompleted):
            if not self.handshake.called:
                self.handshake.callback(self)
        elif isinstance(event, events.ConnectionTerminated):
            reason = event.reason_phrase or f"closed (code {event.error_code})"
            self._terminated(reason)

    def _discard(self, stream_id: int, size: int) -> None:
        consumed = self.conn.consumed
        consumed[stream_id] = consumed.get(stream_id, 0) + size

    def _terminated(self, reason: str) -> None:
        if self._done:
            return
        self._done = True
        self.close_reason = reason
        for call in (self._timer, self._send_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._send_call = None
        for stream in list(self.streams.values()):
            stream._finish(Failure(ConnectionLost(f"QUIC connection closed: {reason}")))
        self.streams.clear()
        if not self.handshake.called:
            self.handshake.errback(ConnectionLost(f"QUIC handshake failed: {reason}"))
        self.endpoint.session_gone(self)
        self.closed.callback(reason)

    # -- API ----------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return not self._done

    def open_stream(self) -> QuicStream:
        """A new bidirectional stream (the peer sees it when we first write)."""
        stream_id = self.conn.get_next_available_stream_id()
        stream = QuicStream(self, stream_id)
        self.streams[stream_id] = stream
        return stream

    def stream_done(self, stream: QuicStream) -> None:
        self.streams.pop(stream.stream_id, None)
        self.conn.consumed.pop(stream.stream_id, None)

    def ping(self) -> None:
        """Keep the path (and NAT mappings on it) alive."""
        if not self._done:
            self.conn.send_ping(0)
            self.process()

    def close(self, reason: str = "closed") -> None:
        """Close the connection (the peer is told) and end every stream."""
        if self._done:
            return
        self.conn.close(error_code=ERR_NONE, reason_phrase=reason)
        self.process()
        self._terminated(reason)


class QuicEndpoint(DatagramProtocol):
    """A UDP port carrying QUIC sessions (and, through C{on_other}, our own datagrams).

    @ivar accept_from: for a server endpoint, the only peer address a new
        session is accepted from (None: any address).
    """

    log = Logger()

    def __init__(self, reactor: Any, *, server_config: QuicConfiguration | None = None,
                 on_stream: Callable[[QuicStream], None] | None = None,
                 on_other: Callable[[bytes, Address], bool] | None = None,
                 on_session: Callable[[QuicSession], None] | None = None,
                 max_sessions: int = 1, name: str = "quic") -> None:
        self.reactor = reactor
        self.server_config = server_config
        self.on_stream = on_stream
        self.on_other = on_other
        self.on_session = on_session
        self.max_sessions = max_sessions
        self.name = name
        self.accept_from: Address | None = None
        self.sessions: dict[Address, QuicSession] = {}
        self.transport: Any = None
        self.dropped = 0

    def startProtocol(self) -> None:
        enlarge_buffers(self.transport)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        addr = (addr[0], addr[1])
        session = self.sessions.get(addr)
        if session is not None:
            session.datagram_received(data, addr)
            return
        if self.on_other is not None and self.on_other(data, addr):
            return
        if self.server_config is None or len(self.sessions) >= self.max_sessions:
            self.dropped += 1
            return
        if self.accept_from is not None and addr != self.accept_from:
            self.dropped += 1
            return
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        except ValueError:
            self.dropped += 1
            return
        if header.packet_type is None or header.packet_type.name != "INITIAL" or len(data) < 1200:
            self.dropped += 1
            return
        conn = _Connection(configuration=self.server_config,
                           original_destination_connection_id=header.destination_cid)
        session = QuicSession(self, conn, addr, on_stream=self.on_stream, name=self.name)
        self.sessions[addr] = session
        if self.on_session is not None:
            self.on_session(session)
        session.datagram_received(data, addr)

    def connect(self, addr: Address, config: QuicConfiguration,
                on_stream: Callable[[QuicStream], None] | None = None) -> QuicSession:
        """Start a client session to C{addr}; wait on its C{handshake}."""
        conn = _Connection(configuration=config)
        session = QuicSession(self, conn, addr, on_stream=on_stream, name=self.name)
        self.sessions[addr] = session
        conn.connect(addr, now=self.reactor.seconds())
        session.process()
        return session

    def session_gone(self, session: QuicSession) -> None:
        if self.sessions.get(session.peer) is session:
            del self.sessions[session.peer]

    def send(self, data: bytes, addr: Address, ttl: int = 0) -> None:
        """Send one of our own (non-QUIC) datagrams; errors are ignored like lost packets.

        @param ttl: if set, the IP TTL of this datagram only (low-TTL punching probes).
        """
        if self.transport is None:
            return
        sock = getattr(self.transport, "socket", None)
        try:
            if ttl and sock is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            self.transport.write(data, addr)
        except OSError:
            pass
        finally:
            if ttl and sock is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
                except OSError:
                    pass

    def close(self, reason: str = "closed") -> None:
        """Close every session and the port."""
        for session in list(self.sessions.values()):
            session.close(reason)
        if self.transport is not None:
            self.transport.stopListening()
