# -*- test-case-name: test.test_legacy_mux -*-
"""nps-mux (NPS 0.26's multiplexer) over a Twisted transport.

L{LegacyMux} speaks L{nps.protocols.legacy_mux} on one bridge connection;
each L{LegacyStream} is an C{ITransport}, C{IPushProducer} and
C{IConsumer} with the same surface as L{nps.mux.MuxStream}, so the modes
and relays that run over our own mux run over this one unchanged.

What a stream adds on the way:

  - a I{preamble} sent as soon as the peer accepts the stream (the NPS
    link header), before any data;
  - an optional codec (TLS for C{crypt}, snappy for C{compress});
  - for datagram streams (C{udp} mode), the translation between our
    framing (u16 length + datagram, L{nps.protocols.datagrams}) and
    nps-mux's (one message per datagram).

Flow control is nps-mux's credit window: we send at most the peer's
announced window beyond what it has acknowledged reading, and we
acknowledge bytes only once our protocol has taken them (while the stream
is not paused), so a slow consumer holds back only its own sender.
"""
from __future__ import annotations

import datetime
from collections import deque
from typing import Any, Callable, Iterable

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
from nps.legacy.crypt import Codec, CodecError
from nps.protocols import legacy_mux as lm
from nps.protocols.datagrams import DatagramFrameError, DatagramParser, encode_datagram
from nps.protocols.legacy_link import LengthPrefixedParser, LinkError
from nps.streambase import BridgeProducer, LinkStreamTransport, StreamRefused

__all__ = ["LegacyMux", "LegacyStream", "RECEIVE_WINDOW"]

#: The window we announce for each stream (bytes the peer may send ahead of our reads).
RECEIVE_WINDOW = 1024 * 1024
#: Bytes a stream buffers beyond its send window before pausing its producer.
OUTBUF_HIGH = 64 * 1024
MAX_STREAMS = 65536
OPEN_TIMEOUT = 30.0
#: Largest message reassembled for a datagram stream.
MAX_DATAGRAM = 65535 + lm.MAX_SEGMENT


class _Message:
    """An outgoing write kept whole (one nps-mux message), sent as far as the window allows."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0


@implementer(ITransport, IPushProducer, IConsumer)
class LegacyStream(LinkStreamTransport):
    """One nps-mux stream; a transport for the protocol attached to it."""

    log = Logger()

    def __init__(self, mux: "LegacyMux", stream_id: int, link: dict[str, Any], *, preamble: bytes = b"",
                 codec: Codec | None = None, datagrams: bool = False, prefixed_replies: bool = False,
                 accepted: bool = False) -> None:
        self.mux = mux
        self.stream_id = stream_id
        self.link = link
        self.protocol: IProtocol | None = None
        self.counters: list[Any] = []
        self.on_close: Callable[["LegacyStream", Failure], None] | None = None
        self.opened: Deferred[LegacyStream] | None = None
        self._open = accepted
        self._preamble = preamble
        self._codec = codec
        self._datagrams = DatagramParser() if datagrams else None
        #: NPS's udp5 answers come as int32-length-prefixed datagrams in a byte stream.
        self._prefixed = LengthPrefixedParser() if prefixed_replies else None
        self._reassembly: bytearray | None = bytearray() if datagrams and not prefixed_replies else None
        self._send_max = lm.INITIAL_WINDOW
        self._in_flight = 0
        self._outbuf: deque[_Message] = deque()
        self._outbuf_size = 0
        self._inbuf: deque[bytes] = deque()
        #: Wire bytes behind each entry of C{_inbuf}, acknowledged once it is taken.
        self._credits: deque[int] = deque()
        #: Segments kept undecoded while the stream's codec is not known yet (see L{hold}).
        self._held: list[tuple[int, bytes, int]] | None = None
        self._read_paused = False
        self._unacked = 0
        self._received_unacked = 0
        self._producer: Any = None
        self._streaming = True
        self._producer_paused = False
        self._close_pending = False
        self._close_sent = False
        self._remote_closed = False
        self._eof_delivered = False
        self._finished = False

    def __repr__(self) -> str:
        return f"<LegacyStream {self.stream_id} {self.link.get('target', '')}>"

    # -- ITransport ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._finished or self._close_pending or self._close_sent or not data:
            return
        if self._datagrams is not None:
            try:
                datagrams = self._datagrams.feed(bytes(data))
            except DatagramFrameError as e:
                self.reset(f"bad datagram framing from our side: {e}")
                return
            for datagram in datagrams:
                self._queue(self._encode(datagram))
        else:
            self._queue(self._encode(bytes(data)))
        self._flush()
        self._update_producer()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """nps-mux has only one close: it ends our writing; we keep reading until the peer closes."""
        if self._finished or self._close_sent:
            return
        self._close_pending = True
        self._flush()

    def loseConnection(self) -> None:
        if self._finished:
            return
        self.disconnecting = True
        self._inbuf.clear()
        self._credits.clear()
        self._close_pending = True
        self._flush()
        if self._close_sent:
            self._finish(Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        self.reset("aborted")

    def reset(self, reason: str = "") -> None:
        """End the stream now (nps-mux has no reset: the peer just sees it close)."""
        if self._finished:
            return
        self._send_close()
        self._finish(Failure(ConnectionAborted(reason)))

    # getPeer/getHost, setTcpNoDelay, IPushProducer, IConsumer and attach: see LinkStreamTransport.

    # -- outgoing ----------------------------------------------------------------

    def _encode(self, data: bytes) -> bytes:
        if self._codec is None:
            return data
        try:
            return self._codec.encode(data)
        except CodecError as e:
            self.reset(str(e))
            return b""

    def _queue(self, data: bytes) -> None:
        if data and not self._finished:
            self._outbuf.append(_Message(data))
            self._outbuf_size += len(data)

    def _on_open(self) -> None:
        self._open = True
        # Announce our window at once: the peer starts with nps-mux's small default.
        self.mux._send(lm.encode(lm.MSG_SEND_OK, self.stream_id, window=lm.pack_window(RECEIVE_WINDOW, 0)))
        first = self._preamble
        self._preamble = b""
        if self._codec is not None:
            try:
                hello = self._codec.start()
            except CodecError as e:
                self.reset(str(e))
                return
            first += hello
        if first:
            self._outbuf.appendleft(_Message(first))
            self._outbuf_size += len(first)
        self._flush()
        self._update_producer()

    def _flush(self) -> None:
        if not self._open or self._finished:
            return
        mux = self.mux
        outbuf = self._outbuf
        while outbuf:
            room = self._send_max - self._in_flight
            if room <= 0:
                break
            head = outbuf[0]
            left = len(head.data) - head.offset
            size = min(left, room, lm.MAX_SEGMENT)
            chunk = head.data[head.offset:head.offset + size] if size != len(head.data) else head.data
            head.offset += size
            flag = lm.NEW_MSG if head.offset == len(head.data) else lm.NEW_MSG_PART
            if flag == lm.NEW_MSG:
                outbuf.popleft()
            self._outbuf_size -= size
            self._in_flight += size
            for counter in self.counters:
                counter.bytes_in += size
            mux._send_parts(lm.data_header(flag, self.stream_id, size), chunk)
        if self._close_pending and not outbuf and not self._close_sent:
            self._send_close()
            if self.disconnecting:
                self._finish(Failure(ConnectionDone()))
            elif self._remote_closed and self._eof_delivered:
                self._finish(Failure(ConnectionDone()))

    def _send_close(self) -> None:
        if not self._close_sent:
            self._close_sent = True
            self.mux._send(lm.encode(lm.CONN_CLOSE, self.stream_id))

    def _on_window(self, word: int) -> None:
        max_size, done, _wait = lm.unpack_window(word)
        self._in_flight = max(0, self._in_flight - done)
        if max_size:
            self._send_max = max_size
        self._flush()
        self._update_producer()

    def _update_producer(self) -> None:
        producer = self._producer
        if producer is None:
            return
        want_pause = self._outbuf_size >= OUTBUF_HIGH or self.mux._writes_paused
        if want_pause:
            self.mux._waiting_streams.add(self)
        if not self._streaming:
            if not want_pause and not self._finished:
                self.mux._clock.callLater(0, self._pull)
            return
        if want_pause and not self._producer_paused:
            self._producer_paused = True
            producer.pauseProducing()
        elif not want_pause and self._producer_paused:
            self._producer_paused = False
            producer.resumeProducing()

    def _pull(self) -> None:
        if self._producer is not None and not self._streaming and not self._finished:
            if self._outbuf_size < OUTBUF_HIGH and not self.mux._writes_paused:
                self._producer.resumeProducing()

    # -- incoming ----------------------------------------------------------------

    def _on_data(self, flag: int, payload: bytes) -> None:
        size = len(payload)
        self._received_unacked += size
        if self._received_unacked > RECEIVE_WINDOW + lm.INITIAL_WINDOW:
            self.log.warn("{name}: stream {id}: peer sent beyond its window; closing the stream",
                          name=self.mux.name, id=self.stream_id)
            self.reset("peer ignored the window")
            return
        for counter in self.counters:
            counter.bytes_out += size
        if self._finished or self.disconnecting:
            self._ack(size)
            return
        self._process(flag, payload, size)

    def _process(self, flag: int, payload: bytes, credit: int) -> None:
        """Reassemble, decode and queue one received segment; C{credit} is given back once it is taken."""
        if self._held is not None:
            self._held.append((flag, payload, credit))
            return
        if self._reassembly is not None:
            self._reassembly += payload
            if len(self._reassembly) > MAX_DATAGRAM:
                self.reset("datagram too large")
                return
            if flag == lm.NEW_MSG_PART:
                return
            payload = bytes(self._reassembly)
            self._reassembly = bytearray()
        if self._codec is not None:
            try:
                plain, reply = self._codec.decode(payload)
            except CodecError as e:
                self.log.warn("{name}: stream {id}: {error}; closing the stream", name=self.mux.name,
                              id=self.stream_id, error=str(e))
                self.reset(str(e))
                return
            if reply:
                self._queue(reply)
                self._flush()
        else:
            plain = payload
        if self._prefixed is not None:
            try:
                plain = b"".join(encode_datagram(d[:65535]) for d in self._prefixed.feed(plain))
            except LinkError as e:
                self.reset(str(e))
                return
        elif self._datagrams is not None and plain:
            plain = encode_datagram(plain[:65535])
        # Credit is counted in wire bytes but given back when the plain bytes are taken.
        self._inbuf.append(plain)
        self._credits.append(credit)
        self._drain_inbuf()

    def hold(self) -> None:
        """Keep what arrives from now on undecoded, until L{reattach} says how to decode it."""
        self._held = []

    def reattach(self, protocol: IProtocol, *, codec: Codec | None, datagrams: bool, rest: bytes) -> None:
        """Hand the stream to C{protocol} after a first protocol read its header (the client direction).

        @param codec: what the rest of the stream is wrapped in (NPS's crypt/compress).
        @param datagrams: the stream carries one datagram per message.
        @param rest: bytes that came after the header, still to be decoded.
        """
        if self._finished:
            protocol.makeConnection(self)
            protocol.connectionLost(Failure(ConnectionLost("stream closed before it was served")))
            return
        self._codec = codec
        self._datagrams = DatagramParser() if datagrams else None
        self._reassembly = bytearray() if datagrams else None
        self.protocol = None
        if codec is not None:
            try:
                hello = codec.start()
            except CodecError as e:
                self.reset(str(e))
                return
            self._queue(hello)
            self._flush()
        held, self._held = self._held or [], None
        if rest:
            self._process(lm.NEW_MSG, rest, 0)
        for flag, payload, credit in held:
            if self._finished:
                break
            self._process(flag, payload, credit)
        self._read_paused = False
        self.attach(protocol)

    def _drain_inbuf(self) -> None:
        inbuf = self._inbuf
        credits = self._credits
        while inbuf and not self._read_paused and self.protocol is not None and not self._finished:
            data = inbuf.popleft()
            credit = credits.popleft() if credits else 0
            if data:
                try:
                    self.protocol.dataReceived(data)
                except Exception:
                    self.log.failure("stream {id}: {protocol!r} failed on incoming data; closing the stream",
                                     id=self.stream_id, protocol=self.protocol)
                    self.reset("internal error")
                    return
            self._ack(credit)
        if self._remote_closed and not inbuf and not self._read_paused:
            self._deliver_eof()

    def _ack(self, size: int) -> None:
        self._unacked += size
        if self._unacked >= RECEIVE_WINDOW // 4 and not self._close_sent and not self._remote_closed:
            done, self._unacked = self._unacked, 0
            self._received_unacked -= done
            self.mux._send(lm.encode(lm.MSG_SEND_OK, self.stream_id, window=lm.pack_window(RECEIVE_WINDOW, done)))

    def _on_remote_close(self) -> None:
        if self._remote_closed:
            return
        self._remote_closed = True
        if self._close_sent and self.disconnecting:
            self._finish(Failure(ConnectionDone()))
            return
        self._drain_inbuf()

    def _deliver_eof(self) -> None:
        if self._eof_delivered or self.protocol is None or self._finished:
            return
        self._eof_delivered = True
        if IHalfCloseableProtocol.providedBy(self.protocol) and not self._close_sent:
            self.protocol.readConnectionLost()
        elif self._close_sent:
            self._finish(Failure(ConnectionDone()))
        else:
            self.loseConnection()

    def _finish(self, reason: Failure) -> None:
        if self._finished:
            return
        self._finished = True
        self.disconnected = True
        self.disconnecting = True
        self._outbuf.clear()
        self._inbuf.clear()
        self.mux._remove(self)
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        if self.protocol is not None:
            self.protocol.connectionLost(reason)
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close(self, reason)


@implementer(IPushProducer)
class LegacyMux(CorkedWriter, BridgeProducer[LegacyStream]):
    """The nps-mux of one NPS 0.26 bridge connection (C{chan} or C{file})."""

    log = Logger()

    def __init__(self, transport: Any, clock: IReactorTime, *, name: str = "legacy mux",
                 on_stream: Callable[[LegacyStream], None] | None = None,
                 on_close: Callable[[str], None] | None = None,
                 ping_interval: float = 5.0, idle_timeout: float = 300.0) -> None:
        self.transport = transport
        self._clock = clock
        self.name = name
        self._on_stream = on_stream
        self._on_close = on_close
        self._parser = lm.MuxFrameParser()
        self._streams: dict[int, LegacyStream] = {}
        self._pending_opens: dict[int, tuple[Deferred[LegacyStream], IDelayedCall]] = {}
        self._next_id = 0
        self._closed = False
        self.close_reason = ""
        self._writes_paused = False
        self._waiting_streams: set[LegacyStream] = set()
        self._ping_interval = ping_interval
        self._idle_timeout = idle_timeout
        self._last_received = clock.seconds()
        self._ping_call: IDelayedCall | None = None
        self._init_corking(transport, clock)
        transport.registerProducer(self, True)
        if ping_interval > 0:
            self._ping_call = clock.callLater(ping_interval, self._keepalive)

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def closed(self) -> bool:
        return self._closed

    def start_stream(self, link: dict[str, Any], *, preamble: bytes = b"", codec: Codec | None = None,
                     datagrams: bool = False, prefixed_replies: bool = False,
                     timeout: float = OPEN_TIMEOUT) -> LegacyStream:
        """Send C{newConn} and return the stream at once; C{stream.opened} fires on C{newConnOk}.

        @raise StreamRefused: the bridge is closed or has too many streams.
        """
        if self._closed:
            raise StreamRefused(f"bridge closed: {self.close_reason}")
        if len(self._streams) >= MAX_STREAMS:
            raise StreamRefused("too many streams on this bridge")
        stream_id = self._allocate_id()
        stream = LegacyStream(self, stream_id, link, preamble=preamble, codec=codec, datagrams=datagrams,
                              prefixed_replies=prefixed_replies)
        self._streams[stream_id] = stream
        d: Deferred[LegacyStream] = Deferred(lambda _: self._cancel_open(stream, "cancelled"))
        timer = self._clock.callLater(timeout, self._cancel_open, stream, "peer did not answer in time")
        self._pending_opens[stream_id] = (d, timer)
        stream.opened = d
        self._send(lm.encode(lm.NEW_CONN, stream_id))
        return stream

    def _allocate_id(self) -> int:
        while True:
            self._next_id = self._next_id + 1 if self._next_id < 0x7FFFFFF0 else 1
            if self._next_id not in self._streams:
                return self._next_id

    def accept_stream(self, stream: LegacyStream, protocol: IProtocol) -> None:
        """Accept a stream the peer opened (the client direction) and attach C{protocol}."""
        stream.attach(protocol)

    def refuse_stream(self, stream: LegacyStream, reason: str) -> None:
        stream.reset(reason)

    def go_away(self, reason: str = "") -> None:
        """Close the bridge connection (nps-mux has no goodbye message)."""
        if self._closed:
            return
        self.close_reason = reason or "closed"
        self.uncork()
        self.transport.loseConnection()

    # -- input -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._last_received = self._clock.seconds()
        try:
            for frame in self._parser.feed(data):
                self._handle(frame)
                if self._closed:
                    return
        except lm.MuxFrameError as e:
            self.log.error("{name}: protocol error from the peer: {error}; closing", name=self.name, error=str(e))
            self.close_reason = f"protocol error: {e}"
            self.transport.abortConnection()
            self.connection_lost(self.close_reason)

    def _handle(self, frame: lm.MuxFrame) -> None:
        flag = frame.flag
        if flag == lm.PING:
            self._send_parts(lm.data_header(lm.PING_RETURN, lm.PING_ID, len(frame.payload)), frame.payload)
            return
        if flag == lm.PING_RETURN:
            return
        stream = self._streams.get(frame.stream_id)
        if flag in (lm.NEW_MSG, lm.NEW_MSG_PART):
            if stream is not None:
                stream._on_data(flag, frame.payload)
        elif flag == lm.MSG_SEND_OK:
            if stream is not None:
                stream._on_window(frame.window)
        elif flag == lm.NEW_CONN_OK:
            pending = self._pending_opens.pop(frame.stream_id, None)
            if pending is not None and stream is not None:
                d, timer = pending
                if timer.active():
                    timer.cancel()
                stream._on_open()
                d.callback(stream)
        elif flag == lm.NEW_CONN_FAIL:
            if stream is not None:
                self._fail_open(stream, "peer refused the stream")
                stream._finish(Failure(ConnectionLost("peer refused the stream")))
        elif flag == lm.CONN_CLOSE:
            if stream is not None:
                if frame.stream_id in self._pending_opens:
                    self._fail_open(stream, "peer closed the stream")
                    stream._finish(Failure(ConnectionLost("peer closed the stream")))
                else:
                    stream._on_remote_close()
        elif flag == lm.NEW_CONN:
            self._new_stream(frame.stream_id)

    def _new_stream(self, stream_id: int) -> None:
        if stream_id in self._streams or self._on_stream is None or len(self._streams) >= MAX_STREAMS:
            self._send(lm.encode(lm.CONN_CLOSE, stream_id))
            return
        stream = LegacyStream(self, stream_id, {}, accepted=True)
        self._streams[stream_id] = stream
        self._send(lm.encode(lm.NEW_CONN_OK, stream_id))
        self._send(lm.encode(lm.MSG_SEND_OK, stream_id, window=lm.pack_window(RECEIVE_WINDOW, 0)))
        self._on_stream(stream)

    # -- output ------------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        if not self._closed:
            self._write_sequence([frame])

    def _send_parts(self, header: bytes, payload: bytes) -> None:
        if not self._closed:
            self._write_sequence([header, payload])


    # -- keepalive ------------------------------------------------------------------

    def _keepalive(self) -> None:
        self._ping_call = None
        if self._closed:
            return
        silent = self._clock.seconds() - self._last_received
        if silent > self._idle_timeout:
            self.log.warn("{name}: peer silent for {silent:.0f}s; closing", name=self.name, silent=silent)
            self.close_reason = f"peer silent for {silent:.0f}s"
            self.transport.abortConnection()
            self.connection_lost(self.close_reason)
            return
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
        self._send_parts(lm.data_header(lm.PING, lm.PING_ID, len(stamp)), stamp)
        self._ping_call = self._clock.callLater(self._ping_interval, self._keepalive)
