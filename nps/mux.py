# -*- test-case-name: test.test_mux -*-
"""Many streams over one bridge connection, each stream a Twisted transport.

A L{Mux} sits on a connected transport (the bridge) and speaks the framing
of L{nps.protocols.frames}.  Each L{MuxStream} provides C{ITransport},
C{IPushProducer} and C{IConsumer}, so an ordinary C{Protocol} runs over it
and a relay can splice it to a TCP connection with producers registered both
ways.

Flow control is per stream: the receiver grants credit (C{WINDOW_UPDATE})
only after its protocol has taken the bytes, i.e. while the stream is not
paused by its consumer.  A slow reader therefore holds back only its own
sender, and at most one window of data waits in memory for it.  When the
bridge transport itself is full, each stream that writes pauses its own
producer until the bridge drains.
"""
from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable, Iterable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nps.corking import CorkedWriter
from nps.protocols.frames import (
    MAX_DATA_CHUNK,
    Flag,
    Frame,
    FrameError,
    FrameParser,
    FrameType,
    GoAwayCode,
    encode,
    encode_header,
)
from nps.streambase import BridgeProducer, LinkStreamTransport
from nps.streambase import StreamRefused as StreamRefused  # re-exported: what a refused open fails with
from nps.streambase import StreamAddress as StreamAddress  # re-exported: streams' address type

_DATA, _WINDOW_UPDATE, _PING, _GO_AWAY, _CONTROL = (int(t) for t in FrameType)
_SYN, _ACK, _FIN, _RST = int(Flag.SYN), int(Flag.ACK), int(Flag.FIN), int(Flag.RST)

INITIAL_WINDOW = 256 * 1024
MAX_WINDOW = 4 * 1024 * 1024
#: Bytes a stream buffers beyond its send window before pausing its producer.
OUTBUF_HIGH = 64 * 1024
#: Largest frame L{MuxStream.writeSequence} sends unjoined: a full chunk plus a
#: little (an encrypted record's header and tag), well under MAX_DATA_FRAME.
MAX_SEQUENCE_FRAME = MAX_DATA_CHUNK + 4096
MAX_STREAMS = 65536
OPEN_TIMEOUT = 30.0
#: How long a stream closed by us waits for the peer's FIN before it is forgotten.
LINGER = 30.0
MAX_REASON = 1024


class StreamError(Exception):
    """A stream ended abnormally."""


@implementer(ITransport, IPushProducer, IConsumer)
class MuxStream(LinkStreamTransport):
    """One multiplexed stream; a transport for the protocol attached to it."""

    log = Logger()

    def __init__(self, mux: "Mux", stream_id: int, link: dict[str, Any]) -> None:
        self.mux = mux
        self.stream_id = stream_id
        self.link = link
        self.protocol: IProtocol | None = None
        #: L{nps.stats.TrafficCounter}s to charge; C{bytes_in} = bytes we send.
        self.counters: list[Any] = []
        self._send_window = INITIAL_WINDOW
        self._recv_window = INITIAL_WINDOW
        self._recv_left = INITIAL_WINDOW
        self._consumed = 0
        # Buffers are made on first use: an idle stream should cost little memory.
        # A list in the outbuf is a group from writeSequence, to be sent as one frame.
        self._outbuf: deque[bytes | list[bytes]] | None = None
        self._outbuf_size = 0
        #: A lower bound of the peer's receive window for this stream (the most credit we ever held).
        self._peer_window = INITIAL_WINDOW
        self._inbuf: deque[bytes] | None = None
        self._read_paused = False
        self._paused_since_credit = False  # our reader paused since we last granted credit
        self._producer: Any = None
        self._streaming = True
        self._producer_paused = False
        #: Called once with (stream, reason) when the stream ends (access logs).
        self.on_close: Callable[["MuxStream", Failure], None] | None = None
        #: Fires when the peer accepts a stream we opened (see L{Mux.start_stream}).
        self.opened: Deferred[MuxStream] | None = None
        self._local_fin = False  # FIN sent
        self._fin_pending = False  # FIN to send once outbuf drains
        self._full_close = False  # our protocol is gone; discard reads
        self._remote_fin = False
        self._eof_delivered = False
        self._finished = False
        self._linger: IDelayedCall | None = None
        self._pull_scheduled = False
        self._reset_sent = False

    def __repr__(self) -> str:
        return f"<MuxStream {self.stream_id} {self.link.get('target', '')}>"

    # -- ITransport -------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._local_fin or self._fin_pending or self._finished or not data:
            return
        size = len(data)
        if not self._outbuf and size <= self._send_window and size <= MAX_DATA_CHUNK:
            self._send_window -= size
            mux = self.mux
            mux._send_data(self, data)
            if not (mux._writes_paused or self._producer_paused) and self._streaming:
                return  # the common case: sent, nothing to pause or resume
        else:
            if self._outbuf is None:
                self._outbuf = deque()
            self._outbuf.append(bytes(data))
            self._outbuf_size += len(data)
            self._flush()
        if self.mux._writes_paused:
            self.mux._wait_for_bridge(self)
        self._update_producer()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Like C{write(b"".join(data))}, but a short sequence is sent as one frame, unjoined.

        The sequence stays whole (one frame, e.g. one encrypted record) even
        when it must wait for credit, unless waiting could stall the stream.
        """
        parts = [part if type(part) is bytes else bytes(part) for part in data]  # the bridge transport wants bytes
        size = sum(map(len, parts))
        if size > MAX_SEQUENCE_FRAME:
            self.write(b"".join(parts))
            return
        if self._local_fin or self._fin_pending or self._finished or not size:
            return
        mux = self.mux
        if not self._outbuf and size <= self._send_window:
            self._send_window -= size
            mux._send_data(self, parts, size)
            if not (mux._writes_paused or self._producer_paused) and self._streaming:
                return
        else:
            if self._outbuf is None:
                self._outbuf = deque()
            self._outbuf.append(parts)
            self._outbuf_size += size
            self._flush()
        if mux._writes_paused:
            mux._wait_for_bridge(self)
        self._update_producer()

    def loseWriteConnection(self) -> None:
        """Half-close: send FIN after pending data, keep reading."""
        if self._local_fin or self._finished:
            return
        self._fin_pending = True
        self._flush()

    def loseConnection(self) -> None:
        """Close both directions: flush, send FIN, stop reading."""
        if self._finished or self._full_close:
            return
        self._full_close = True
        self.disconnecting = True
        self._inbuf = None
        if self._local_fin:
            self._finish_local()
        else:
            self._fin_pending = True
            self._flush()

    def abortConnection(self) -> None:
        self.reset("aborted")

    def reset(self, reason: str = "") -> None:
        """Abort the stream now, telling the peer why."""
        if self._finished:
            return
        self.mux._send_frame(FrameType.DATA, Flag.RST, self.stream_id, reason.encode()[:MAX_REASON])
        self._finish(Failure(ConnectionAborted(reason)))

    # -- IPushProducer (towards our protocol; the rest is in StreamTransport) --

    def pauseProducing(self) -> None:
        self._read_paused = True
        self._paused_since_credit = True

    # -- called by the Mux --------------------------------------------------

    def _on_data(self, payload: bytes) -> None:
        size = len(payload)
        if size > self._recv_left:
            raise FrameError(f"stream {self.stream_id}: peer sent {size} bytes beyond its window")
        self._recv_left -= size
        for counter in self.counters:
            counter.bytes_out += size
        if self._full_close or self._finished:
            # We closed and will never read this: reset, as TCP does on unread data,
            # so the peer neither waits for credit nor for our FIN.
            if not self._reset_sent:
                self._reset_sent = True
                self.mux._send_frame(FrameType.DATA, Flag.RST, self.stream_id, b"stream closed")
                self._finish(Failure(ConnectionDone()))
            return
        if self._read_paused or self._inbuf or self.protocol is None:
            if self._inbuf is None:
                self._inbuf = deque()
            self._inbuf.append(payload)
        else:
            self._deliver(payload)

    def _deliver(self, payload: bytes) -> None:
        assert self.protocol is not None
        try:
            self.protocol.dataReceived(payload)
        except Exception:
            # A bug in one stream's protocol ends that stream, not the whole bridge.
            self.log.failure("stream {id}: {protocol!r} failed on incoming data; resetting the stream",
                             id=self.stream_id, protocol=self.protocol)
            self.reset("internal error")
            return
        self._consumed += len(payload)
        if self._consumed >= self._recv_window // 4 and not self._finished:
            grow = 0
            # Grow when the sender used up most of the window, or when our reader kept up with a
            # whole quarter of it without pausing: the window, not the reader, limits the stream then
            # (with the bridge's socket buffers full, the sender's stalls do not show in _recv_left).
            if self._recv_window < MAX_WINDOW and (self._recv_left < self._recv_window // 4
                                                   or not self._paused_since_credit):
                grow = self._recv_window
                self._recv_window *= 2
            self._paused_since_credit = self._read_paused
            credit = self._consumed + grow
            self._consumed = 0
            self._recv_left += credit
            self.mux._send_frame(FrameType.WINDOW_UPDATE, Flag.NONE, self.stream_id, length=credit)

    def _drain_inbuf(self) -> None:
        inbuf = self._inbuf
        while inbuf and inbuf is self._inbuf and not self._read_paused and self.protocol is not None \
                and not self._finished:
            self._deliver(inbuf.popleft())
        if self._remote_fin and not self._inbuf and not self._read_paused:
            self._deliver_eof()

    def _on_credit(self, credit: int) -> None:
        self._send_window += credit
        if self._send_window > self._peer_window:
            self._peer_window = self._send_window
        self._flush()
        self._update_producer()

    def _on_remote_fin(self) -> None:
        if self._remote_fin:
            return
        self._remote_fin = True
        if self._full_close and self._local_fin:
            self._forget()
            return
        self._drain_inbuf()

    def _deliver_eof(self) -> None:
        if self._eof_delivered or self.protocol is None or self._finished:
            return
        self._eof_delivered = True
        if IHalfCloseableProtocol.providedBy(self.protocol):
            self.protocol.readConnectionLost()
            if self._local_fin and not self._finished:
                self._finish(Failure(ConnectionDone()))
        else:
            self.loseConnection()

    def _flush(self) -> None:
        outbuf = self._outbuf
        while outbuf and outbuf is self._outbuf and self._send_window > 0:
            head = outbuf[0]
            if type(head) is list:
                size = sum(map(len, head))
                if size <= self._send_window:
                    outbuf.popleft()
                    self._outbuf_size -= size
                    self._send_window -= size
                    self.mux._send_data(self, head, size)
                    continue
                if 4 * self._send_window <= 3 * self._peer_window:
                    # At least a quarter of the peer's window is in flight, so its
                    # credit is coming: wait for it rather than split the group.
                    break
                head = outbuf[0] = b"".join(head)
            assert isinstance(head, bytes)
            size = min(len(head), self._send_window, MAX_DATA_CHUNK)
            if size == len(head):
                outbuf.popleft()
                chunk = head
            else:
                chunk = head[:size]
                outbuf[0] = head[size:]
            self._outbuf_size -= size
            self._send_window -= size
            self.mux._send_data(self, chunk)
        if self._fin_pending and not self._outbuf and not self._local_fin:
            self._fin_pending = False
            self._local_fin = True
            self.mux._send_frame(FrameType.DATA, Flag.FIN, self.stream_id)
            if self._full_close:
                self._finish_local()
            elif self._remote_fin and self._eof_delivered:
                self._finish(Failure(ConnectionDone()))

    def _update_producer(self) -> None:
        producer = self._producer
        if producer is None:
            return
        want_pause = self._outbuf_size >= OUTBUF_HIGH or self in self.mux._waiting_streams
        if not self._streaming:
            if not want_pause and not self._finished and not self._pull_scheduled:
                # Pull producers get one resume per reactor turn, never from inside write().
                self._pull_scheduled = True
                self.mux._clock.callLater(0, self._pull)
            return
        if want_pause and not self._producer_paused:
            self._producer_paused = True
            producer.pauseProducing()
        elif not want_pause and self._producer_paused:
            self._producer_paused = False
            producer.resumeProducing()

    def _pull(self) -> None:
        self._pull_scheduled = False
        if self._producer is not None and not self._streaming and not self._finished:
            if self._outbuf_size < OUTBUF_HIGH and self not in self.mux._waiting_streams:
                self._producer.resumeProducing()

    def _finish_local(self) -> None:
        """Our side is fully closed; wait a little for the peer's FIN."""
        if self._remote_fin:
            self._finish(Failure(ConnectionDone()))
            return
        self._notify_lost(Failure(ConnectionDone()))
        self._linger = self.mux._clock.callLater(LINGER, self._forget)

    def _forget(self) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        self._finished = True
        self.mux._remove(self)

    def _finish(self, reason: Failure) -> None:
        self._notify_lost(reason)
        self._forget()

    def _notify_lost(self, reason: Failure) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        self.disconnecting = True
        self._finished = True
        self._outbuf = None
        self._inbuf = None
        self.mux._waiting_streams.discard(self)
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        protocol = self.protocol
        if protocol is not None:
            protocol.connectionLost(reason)
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close(self, reason)


@implementer(IPushProducer)
class Mux(CorkedWriter, BridgeProducer[MuxStream]):
    """The stream multiplexer of one bridge connection (either end)."""

    log = Logger()

    def __init__(
        self,
        transport: Any,
        clock: IReactorTime,
        *,
        is_client: bool,
        on_stream: Callable[[MuxStream], None] | None = None,
        on_control: Callable[[dict[str, Any]], None] | None = None,
        on_close: Callable[[str], None] | None = None,
        ping_interval: float = 5.0,
        idle_timeout: float = 300.0,
        name: str = "bridge",
    ) -> None:
        self.transport = transport
        self._clock = clock
        self._is_client = is_client
        self._on_stream = on_stream
        self._on_control = on_control
        self._on_close = on_close
        self._name = name
        self._parser = FrameParser()
        self._streams: dict[int, MuxStream] = {}
        self._pending_opens: dict[int, tuple[Deferred[MuxStream], IDelayedCall]] = {}
        self._next_id = 1 if is_client else 2
        self._writes_paused = False
        self._waiting_streams: set[MuxStream] = set()
        self._closed = False
        self.close_reason = ""
        self._ping_interval = ping_interval
        self._idle_timeout = idle_timeout
        self._last_received = clock.seconds()
        self._last_ping_at: float | None = None
        self._ping_seq = 0
        self._ping_sent: dict[int, float] = {}
        self.rtt: float | None = None
        self._ping_call: IDelayedCall | None = None
        self._init_corking(transport, clock)
        transport.registerProducer(self, True)
        if ping_interval > 0:
            self._ping_call = clock.callLater(ping_interval, self._keepalive)

    # -- public API ----------------------------------------------------------

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def streams(self) -> list[MuxStream]:
        """The open streams (e.g. to close a deleted tunnel's connections)."""
        return list(self._streams.values())

    def open_stream(self, link: dict[str, Any], timeout: float = OPEN_TIMEOUT) -> Deferred[MuxStream]:
        """Open a stream carrying C{link}; fires once the peer accepts it."""
        try:
            stream = self.start_stream(link, timeout)
        except StreamRefused as e:
            return _failed(e)
        assert stream.opened is not None
        return stream.opened

    def start_stream(self, link: dict[str, Any], timeout: float = OPEN_TIMEOUT) -> MuxStream:
        """Send the SYN for a new stream and return it at once.

        A protocol may be attached (L{MuxStream.attach}) and write before
        the peer answers, which saves a round trip: the peer holds up to a
        window of data until it accepts, and a refusal ends the stream like
        a reset.  C{stream.opened} fires when the peer accepts.

        @raise StreamRefused: the bridge is closed or has too many streams.
        """
        if self._closed:
            raise StreamRefused(f"bridge closed: {self.close_reason}")
        if len(self._streams) >= MAX_STREAMS:
            raise StreamRefused("too many streams on this bridge")
        stream_id = self._allocate_id()
        stream = MuxStream(self, stream_id, link)
        self._streams[stream_id] = stream
        d: Deferred[MuxStream] = Deferred(lambda _: self._cancel_open(stream, "cancelled"))
        timer = self._clock.callLater(timeout, self._cancel_open, stream, "peer did not answer in time")
        self._pending_opens[stream_id] = (d, timer)
        stream.opened = d
        self._send_frame(FrameType.DATA, Flag.SYN, stream_id, json.dumps(link).encode("utf-8"))
        return stream

    def _allocate_id(self) -> int:
        """The next free stream id of our parity, wrapping around past 2**32."""
        while True:
            stream_id = self._next_id
            self._next_id += 2
            if self._next_id > 0xFFFFFFFF:
                self._next_id = 1 if self._is_client else 2
            if stream_id not in self._streams:
                return stream_id

    def send_control(self, message: dict[str, Any]) -> None:
        if not self._closed:
            self._send_frame(FrameType.CONTROL, Flag.NONE, 0, json.dumps(message).encode("utf-8"))

    def go_away(self, code: GoAwayCode, reason: str = "") -> None:
        """Tell the peer we are ending the session, then close it."""
        if self._closed:
            return
        if reason:
            self.send_control({"type": "goaway", "code": int(code), "reason": reason})
        self._send_frame(FrameType.GO_AWAY, Flag.NONE, 0, length=int(code))
        self.close_reason = reason or code.name.lower()
        self._close_transport()

    def accept_stream(self, stream: MuxStream, protocol: IProtocol) -> None:
        """Accept a stream the peer opened and attach C{protocol} to it."""
        if stream._finished:
            protocol.makeConnection(stream)
            protocol.connectionLost(Failure(ConnectionLost("stream closed before it was accepted")))
            return
        self._send_frame(FrameType.DATA, Flag.ACK, stream.stream_id)
        stream.attach(protocol)

    def refuse_stream(self, stream: MuxStream, reason: str) -> None:
        stream.reset(reason)

    # -- input --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._last_received = self._clock.seconds()
        try:
            for frame in self._parser.feed(data):
                self._handle(frame)
                if self._closed:
                    return
        except FrameError as e:
            self.protocol_error(str(e))

    def protocol_error(self, message: str) -> None:
        peer = self._peer_text()
        self.log.error("{name}: protocol error from {peer}: {message}; closing session",
                       name=self._name, peer=peer, message=message)
        self.close_reason = f"protocol error: {message}"
        self._send_frame(FrameType.GO_AWAY, Flag.NONE, 0, length=int(GoAwayCode.PROTOCOL_ERROR))
        self._close_transport(abort=True)
        self.connection_lost(self.close_reason)

    def _handle(self, frame: Frame) -> None:
        ftype = frame.type
        if ftype == _DATA:
            self._handle_data(frame)
        elif ftype == _WINDOW_UPDATE:
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                stream._on_credit(frame.length)
        elif ftype == _PING:
            if frame.flags & _ACK:
                sent = self._ping_sent.pop(frame.length, None)
                if sent is not None:
                    self.rtt = self._clock.seconds() - sent
            else:
                self._send_frame(FrameType.PING, Flag.ACK, 0, length=frame.length)
        elif ftype == _GO_AWAY:
            code = _code_name(frame.length)
            if not self.close_reason:
                self.close_reason = f"peer closed the session ({code})"
            self._close_transport()
        elif ftype == _CONTROL:
            try:
                message = json.loads(frame.payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                raise FrameError(f"CONTROL frame is not JSON: {e}") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise FrameError("CONTROL message must be an object with a 'type'")
            if message["type"] == "goaway":
                self.close_reason = str(message.get("reason", ""))[:MAX_REASON]
            if self._on_control is not None:
                self._on_control(message)

    def _handle_data(self, frame: Frame) -> None:
        flags = frame.flags
        stream_id = frame.stream_id
        stream = self._streams.get(stream_id)
        if not flags and stream is not None:
            stream._on_data(frame.payload)  # plain data: the hot path
            return
        if flags & _SYN:
            self._handle_syn(frame)
            return
        if stream is None:
            if not flags & (_RST | _FIN):
                self._send_frame(FrameType.DATA, Flag.RST, stream_id, b"unknown stream")
            return
        if flags & _RST:
            reason = frame.payload[:MAX_REASON].decode("utf-8", "replace") or "reset by peer"
            self._fail_open(stream, reason)
            stream._finish(Failure(ConnectionLost(reason)))
            return
        if flags & _ACK:
            pending = self._pending_opens.pop(stream_id, None)
            if pending is not None:
                d, timer = pending
                if timer.active():
                    timer.cancel()
                d.callback(stream)
        if frame.payload:
            stream._on_data(frame.payload)
            if stream._finished:
                return
        if flags & _FIN:
            stream._on_remote_fin()

    def _handle_syn(self, frame: Frame) -> None:
        stream_id = frame.stream_id
        if (stream_id % 2 == 1) == self._is_client:
            raise FrameError(f"peer opened stream {stream_id} with our parity")
        if stream_id in self._streams:
            raise FrameError(f"peer reopened live stream {stream_id}")
        try:
            link = json.loads(frame.payload.decode("utf-8")) if frame.payload else {}
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise FrameError(f"stream {stream_id} link header is not JSON: {e}") from None
        if not isinstance(link, dict):
            raise FrameError(f"stream {stream_id} link header is not an object")
        stream = MuxStream(self, stream_id, link)
        self._streams[stream_id] = stream
        if self._on_stream is None:
            stream.reset("this side does not accept streams")
        elif len(self._streams) > MAX_STREAMS:
            stream.reset("too many streams on this bridge")
        else:
            self._on_stream(stream)

    # -- output -------------------------------------------------------------

    def _send_frame(
        self, ftype: FrameType, flags: Flag | int, stream_id: int, payload: bytes = b"", length: int | None = None
    ) -> None:
        if self._closed:
            return
        self._write_sequence([encode(ftype, flags, stream_id, payload, length)])

    def _send_data(self, stream: MuxStream, data: bytes | Sequence[bytes], size: int = -1) -> None:
        """One DATA frame; C{data} is its payload, or with C{size} the list of buffers making it up."""
        if self._closed:
            return
        if size < 0:
            size = len(data)
            buffers = [encode_header(FrameType.DATA, 0, stream.stream_id, size), data]
        else:
            buffers = [encode_header(FrameType.DATA, 0, stream.stream_id, size), *data]
        for counter in stream.counters:
            counter.bytes_in += size
        self._write_sequence(buffers)  # type: ignore[arg-type]

    def _close_transport(self, abort: bool = False) -> None:
        self.uncork()
        if abort and hasattr(self.transport, "abortConnection"):
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _wait_for_bridge(self, stream: MuxStream) -> None:
        self._waiting_streams.add(stream)


    # -- keepalive --------------------------------------------------------

    def _keepalive(self) -> None:
        self._ping_call = None
        if self._closed:
            return
        now = self._clock.seconds()
        silent = now - self._last_received
        # Silent means: nothing at all since our last ping (not even its echo) for
        # longer than the timeout.  The first tick has no ping to wait for yet.
        unanswered = self._last_ping_at is not None and self._last_received < self._last_ping_at
        if unanswered and silent > self._idle_timeout:
            self.log.warn("{name}: peer {peer} silent for {silent:.0f}s (timeout {timeout:.0f}s); closing",
                          name=self._name, peer=self._peer_text(), silent=silent, timeout=self._idle_timeout)
            self.close_reason = f"peer silent for {silent:.0f}s"
            self._close_transport(abort=True)
            self.connection_lost(self.close_reason)
            return
        self._ping_seq = (self._ping_seq + 1) & 0xFFFFFFFF
        self._ping_sent = {k: v for k, v in self._ping_sent.items() if now - v < self._idle_timeout}
        self._ping_sent[self._ping_seq] = now
        self._last_ping_at = now
        self._send_frame(FrameType.PING, Flag.SYN, 0, length=self._ping_seq)
        self._ping_call = self._clock.callLater(self._ping_interval, self._keepalive)

    def _peer_text(self) -> str:
        try:
            peer = self.transport.getPeer()
            return f"{peer.host}:{peer.port}"
        except Exception:
            return "peer"


def _code_name(code: int) -> str:
    try:
        return GoAwayCode(code).name.lower()
    except ValueError:
        return f"code {code}"


def _failed(error: Exception) -> Deferred[MuxStream]:
    d: Deferred[MuxStream] = Deferred()
    d.errback(error)
    return d
