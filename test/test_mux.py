# -*- test-case-name: test.test_mux -*-
"""Tests for L{nps.mux}: two L{Mux} objects joined by in-memory transports and a L{Clock}.

No sockets: each Mux writes into a C{StringTransport}; L{Pair.pump} moves the
bytes across (optionally only part of them) until both sides are quiet.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IHalfCloseableProtocol, IPullProducer, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nps import mux as mux_module
from nps.stats import TrafficCounter
from nps.mux import (
    INITIAL_WINDOW,
    LINGER,
    MAX_WINDOW,
    OPEN_TIMEOUT,
    OUTBUF_HIGH,
    Mux,
    MuxStream,
    StreamAddress,
    StreamRefused,
)
from nps.protocols.frames import (
    MAX_DATA_CHUNK,
    Flag,
    Frame,
    FrameParser,
    FrameType,
    GoAwayCode,
    encode,
)

#: MUX_EXAMPLES=2000 in the environment for a longer hunt.
PROPERTY = settings(max_examples=int(os.environ.get("MUX_EXAMPLES", 100)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- helpers ----------------------------------------------------------------------


class Proto(Protocol):
    """Records what a stream delivers."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.reason: Failure | None = None
        self.events: list[str] = []
        self.on_data: Callable[[Proto, bytes], None] | None = None

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.on_data is not None:
            self.on_data(self, data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        assert self.reason is None, "connectionLost called twice"
        self.reason = reason
        self.events.append("lost")


@implementer(IHalfCloseableProtocol)
class HalfProto(Proto):
    """A protocol that wants half-close (readConnectionLost) instead of a full close."""

    def __init__(self) -> None:
        super().__init__()
        self.on_read_lost: Callable[[HalfProto], None] | None = None

    def readConnectionLost(self) -> None:
        self.events.append("read_lost")
        if self.on_read_lost is not None:
            self.on_read_lost(self)

    def writeConnectionLost(self) -> None:
        self.events.append("write_lost")


@implementer(IPullProducer)
class PullProducer:
    """A non-streaming producer counting resumeProducing calls."""

    def __init__(self) -> None:
        self.resumed = 0
        self.stopped = False

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        self.stopped = True


_results: dict[int, tuple[Deferred[Any], list[Any]]] = {}


def result_of(d: Deferred[Any]) -> Any:
    """The result of C{d} so far (errors as a handled L{Failure}), or L{NOT_FIRED}; may be asked repeatedly."""
    entry = _results.get(id(d))
    if entry is None or entry[0] is not d:
        box: list[Any] = []
        entry = _results[id(d)] = (d, box)
        d.addBoth(lambda result: box.append(result))
    return entry[1][0] if entry[1] else NOT_FIRED


NOT_FIRED = object()


def frames_of(data: bytes) -> list[Frame]:
    return FrameParser().feed(data)


class Side:
    """One end of the pair: a Mux on a StringTransport plus what its callbacks saw."""

    def __init__(self, clock: Clock, is_client: bool, accept: bool = True, **kwargs: Any) -> None:
        self.transport = StringTransport()
        self.incoming: list[MuxStream] = []
        self.controls: list[dict[str, Any]] = []
        self.closes: list[str] = []
        self.sent: list[Frame] = []  # every frame this side put on the wire
        self._parser = FrameParser()
        self.lost_transport = False
        self.mux = Mux(
            self.transport,
            clock,
            is_client=is_client,
            on_stream=self.incoming.append if accept else None,
            on_control=self.controls.append,
            on_close=self.closes.append,
            name="server" if is_client else "client 1",
            **kwargs,
        )

    def take(self, limit: int | None = None) -> bytes:
        data = self.transport.value()
        if limit is not None:
            data = data[:limit]
        rest = self.transport.value()[len(data):]
        self.transport.clear()
        self.transport.io.write(rest)
        self.sent.extend(self._parser.feed(data))
        return data

    def data_frames(self, stream_id: int) -> bytes:
        return b"".join(f.payload for f in self.sent if f.type == FrameType.DATA and f.stream_id == stream_id
                        and not f.flags & (Flag.SYN | Flag.RST))


class Pair:
    """A client Mux and a server Mux talking through memory."""

    def __init__(self, *, ping_interval: float = 0, idle_timeout: float = 300.0, server_accepts: bool = True,
                 client_accepts: bool = True) -> None:
        self.clock = Clock()
        self.c = Side(self.clock, True, accept=client_accepts, ping_interval=ping_interval, idle_timeout=idle_timeout)
        self.s = Side(self.clock, False, accept=server_accepts, ping_interval=ping_interval,
                      idle_timeout=idle_timeout)

    @property
    def client(self) -> Mux:
        return self.c.mux

    @property
    def server(self) -> Mux:
        return self.s.mux

    def pump(self, rounds: int = 100_000) -> None:
        """Move bytes both ways until nothing is left; then carry transport closes across."""
        for _ in range(rounds):
            moved = False
            for src, dst in ((self.c, self.s), (self.s, self.c)):
                if src.transport.disconnected:  # aborted: nothing more leaves
                    src.transport.clear()
                data = src.take()
                if data and not dst.transport.disconnecting:
                    dst.mux.data_received(data)
                    moved = True
            if not moved:
                break
        else:  # pragma: no cover
            raise AssertionError("pump did not settle")
        self._carry_closes()

    def pump_some(self, from_client: bool, limit: int) -> None:
        """Deliver at most C{limit} pending bytes in one direction (possibly splitting a frame)."""
        src, dst = (self.c, self.s) if from_client else (self.s, self.c)
        data = src.take(limit)
        if data:
            dst.mux.data_received(data)

    def _carry_closes(self) -> None:
        for side, other in ((self.c, self.s), (self.s, self.c)):
            if side.transport.disconnecting and not side.lost_transport:
                side.lost_transport = other.lost_transport = True
                how = "Connection was aborted locally" if side.transport.disconnected else "Connection done"
                other.mux.connection_lost("Connection to the other side was lost")
                side.mux.connection_lost(how)

    def open(
        self,
        link: dict[str, Any] | None = None,
        *,
        from_client: bool = True,
        opener_proto: Proto | None = None,
        acceptor_proto: Proto | None = None,
    ) -> tuple[MuxStream, Proto, MuxStream, Proto]:
        """Open and accept one stream; returns (opener stream, its protocol, acceptor stream, its protocol)."""
        opener, acceptor = (self.c, self.s) if from_client else (self.s, self.c)
        d = opener.mux.open_stream(link if link is not None else {"target": "127.0.0.1:22", "remote": "1.2.3.4:5"})
        self.pump()
        far = acceptor.incoming.pop()
        far_proto = acceptor_proto or Proto()
        acceptor.mux.accept_stream(far, far_proto)
        self.pump()
        near = result_of(d)
        assert isinstance(near, MuxStream), near
        near_proto = opener_proto or Proto()
        near.attach(near_proto)  # what nps.server.StreamEndpoint does with an opened stream
        self.pump()
        return near, near_proto, far, far_proto


def pattern(n: int, start: int = 0) -> bytes:
    """Deterministic, position-dependent bytes so misordering shows."""
    reps = (start % 251 + n) // 251 + 2
    return (bytes(range(251)) * reps)[start % 251 : start % 251 + n]


@pytest.fixture
def log_events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def loud(events: Iterable[LogEvent], levels: tuple[Any, ...] = (LogLevel.error, LogLevel.critical)) -> list[str]:
    """Formatted nps.mux events at the given levels."""
    return [formatEvent(e) for e in events
            if e.get("log_level") in levels and str(e.get("log_namespace", "")).startswith("nps.mux")]


# -- opening streams ---------------------------------------------------------------


def test_open_stream_fires_after_peer_accepts() -> None:
    """C{open_stream} sends a SYN with the link; it fires only once the peer calls C{accept_stream}."""
    p = Pair()
    link = {"mode": "tcp", "target": "10.0.0.5:22", "remote": "203.0.113.9:40000"}
    d = p.client.open_stream(link)
    p.pump()
    assert result_of(d) is NOT_FIRED
    [syn] = p.c.sent
    assert (syn.type, syn.flags, syn.stream_id) == (FrameType.DATA, Flag.SYN, 1)
    assert json.loads(syn.payload) == link
    [stream] = p.s.incoming
    assert stream.link == link
    assert stream.getPeer() == StreamAddress(1, "203.0.113.9:40000")
    proto = Proto()
    p.server.accept_stream(stream, proto)
    assert proto.events == ["made"] and proto.transport is stream
    p.pump()
    opened = result_of(d)
    assert isinstance(opened, MuxStream) and opened.stream_id == 1
    assert p.client.stream_count == p.server.stream_count == 1


def test_stream_ids_follow_parity() -> None:
    """The client opens odd stream ids, the server even ones, each counting up by two."""
    p = Pair()
    ids_c = [p.open()[0].stream_id for _ in range(3)]
    ids_s = [p.open(from_client=False)[0].stream_id for _ in range(3)]
    assert ids_c == [1, 3, 5]
    assert ids_s == [2, 4, 6]


def test_refused_stream_fails_with_the_reason() -> None:
    """C{refuse_stream} makes the opener's Deferred fail with L{StreamRefused} carrying the reason."""
    p = Pair()
    d = p.client.open_stream({"mode": "udp"})
    p.pump()
    p.server.refuse_stream(p.s.incoming.pop(), "mode 'udp' is not supported by this npc")
    p.pump()
    failure = result_of(d)
    assert isinstance(failure, Failure) and failure.check(StreamRefused)
    assert str(failure.value) == "mode 'udp' is not supported by this npc"
    assert p.client.stream_count == p.server.stream_count == 0


def test_side_without_on_stream_refuses() -> None:
    """A Mux with no C{on_stream} refuses every stream the peer opens."""
    p = Pair(server_accepts=False)
    d = p.client.open_stream({})
    p.pump()
    failure = result_of(d)
    assert failure.check(StreamRefused) and "does not accept streams" in str(failure.value)


def test_open_times_out() -> None:
    """Without an answer within C{timeout}, the open fails, an RST goes out and the stream is forgotten."""
    p = Pair()
    d = p.client.open_stream({"target": "x"}, timeout=5)
    p.c.take()
    p.clock.advance(4.9)
    assert result_of(d) is NOT_FIRED
    p.clock.advance(0.1)
    failure = result_of(d)
    assert failure.check(StreamRefused) and str(failure.value) == "peer did not answer in time"
    [rst] = frames_of(p.c.transport.value())
    assert (rst.flags, rst.stream_id) == (Flag.RST, 1)
    assert p.client.stream_count == 0


def test_default_open_timeout() -> None:
    """The default open timeout is OPEN_TIMEOUT seconds."""
    p = Pair()
    d = p.client.open_stream({})
    p.clock.advance(OPEN_TIMEOUT - 0.5)
    assert result_of(d) is NOT_FIRED
    p.clock.advance(1)
    assert result_of(d).check(StreamRefused)


def test_late_accept_after_timeout() -> None:
    """If the peer accepts after the opener gave up, its protocol is told the stream is gone and no ACK is sent."""
    p = Pair()
    d = p.client.open_stream({}, timeout=1)
    p.pump()
    [stream] = p.s.incoming
    p.clock.advance(1)
    assert result_of(d).check(StreamRefused)
    p.pump()  # the RST reaches the server
    proto = Proto()
    p.server.accept_stream(stream, proto)
    assert proto.events == ["made", "lost"]
    assert proto.reason is not None and proto.reason.check(ConnectionLost)
    assert p.s.transport.value() == b""
    assert p.server.stream_count == 0


def test_cancel_open() -> None:
    """Cancelling the open Deferred fails it with L{StreamRefused}("cancelled") and resets the stream."""
    p = Pair()
    d = p.client.open_stream({})
    p.c.take()
    d.cancel()
    failure = result_of(d)
    assert failure.check(StreamRefused) and str(failure.value) == "cancelled"
    assert frames_of(p.c.transport.value())[0].flags == Flag.RST
    assert p.client.stream_count == 0


def test_open_on_closed_bridge() -> None:
    """After the bridge is lost, C{open_stream} fails at once, naming why the bridge closed."""
    p = Pair()
    p.client.connection_lost("server went away")
    failure = result_of(p.client.open_stream({}))
    assert failure.check(StreamRefused) and str(failure.value) == "bridge closed: server went away"


def test_too_many_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_STREAMS the opener refuses locally, and a receiver resets the peer's extra streams."""
    monkeypatch.setattr(mux_module, "MAX_STREAMS", 2)
    p = Pair()
    p.open()
    p.open()
    failure = result_of(p.client.open_stream({}))
    assert failure.check(StreamRefused) and "too many streams" in str(failure.value)
    assert p.c.transport.value() == b""
    # A peer that ignores the limit gets its third stream reset.
    p.server.data_received(encode(FrameType.DATA, Flag.SYN, 99, b"{}"))
    [rst] = frames_of(p.s.transport.value())
    assert (rst.flags, rst.stream_id, rst.payload) == (Flag.RST, 99, b"too many streams on this bridge")
    assert p.s.incoming == [] and p.server.stream_count == 2


def test_stream_provides_transport_interfaces() -> None:
    """A stream provides ITransport, IPushProducer and IConsumer and reports stream addresses."""
    p = Pair()
    near, _, far, _ = p.open({"remote": "198.51.100.1:1234"})
    for stream in (near, far):
        verifyObject(ITransport, stream)
        verifyObject(IPushProducer, stream)
        verifyObject(IConsumer, stream)
    assert far.getPeer() == StreamAddress(1, "198.51.100.1:1234")
    assert far.getHost() == StreamAddress(1, "")
    near.setTcpNoDelay(True)  # accepted, no effect


def test_data_before_the_opener_attaches_is_kept() -> None:
    """Bytes and EOF the acceptor sends before the opener attaches a protocol wait for it, in order."""
    p = Pair()
    d = p.client.open_stream({})
    p.pump()
    far = p.s.incoming.pop()
    far_proto = HalfProto()
    p.server.accept_stream(far, far_proto)
    far.write(b"SSH-2.0-banner\r\n")
    far.loseWriteConnection()
    p.pump()
    near = result_of(d)
    proto = HalfProto()
    near.attach(proto)
    assert bytes(proto.received) == b"SSH-2.0-banner\r\n"
    assert proto.events == ["made", "read_lost"]


# -- data --------------------------------------------------------------------------


def test_data_both_ways() -> None:
    """Bytes written on either end arrive at the other end's protocol, unchanged and in order."""
    p = Pair()
    near, near_proto, far, far_proto = p.open()
    near.write(b"hello ")
    near.writeSequence([b"wor", b"ld"])
    far.write(b"HI")
    p.pump()
    assert bytes(far_proto.received) == b"hello world"
    assert bytes(near_proto.received) == b"HI"


def test_large_transfers_both_ways() -> None:
    """Several MiB each way (far beyond one window) arrive intact; DATA frames are at most MAX_DATA_CHUNK."""
    p = Pair()
    near, near_proto, far, far_proto = p.open()
    up, down = pattern(3 * 1024 * 1024 + 17), pattern(2 * 1024 * 1024 + 5, 7)
    near.write(up)
    far.write(down)
    p.pump()
    assert bytes(far_proto.received) == up
    assert bytes(near_proto.received) == down
    assert max(len(f.payload) for f in p.c.sent if f.type == FrameType.DATA) <= MAX_DATA_CHUNK


def test_empty_write_sends_nothing() -> None:
    """Writing b"" puts nothing on the wire."""
    p = Pair()
    near, _, _, _ = p.open()
    near.write(b"")
    assert p.c.transport.value() == b""


def test_many_streams_interleaved() -> None:
    """Twenty streams written round-robin in small pieces, both ways, each deliver only their own bytes, in order."""
    p = Pair()
    pairs = [p.open(from_client=i % 2 == 0) for i in range(20)]
    to_far: dict[int, bytearray] = defaultdict(bytearray)
    to_near: dict[int, bytearray] = defaultdict(bytearray)
    for rnd in range(30):
        for i, (near, _, far, _) in enumerate(pairs):
            chunk = f"[{i}:{rnd}]".encode() * (rnd + 1)
            if rnd % 3:
                near.write(chunk)
                to_far[i] += chunk
            else:
                far.write(chunk)
                to_near[i] += chunk
        if rnd % 4 == 0:
            p.pump()
    p.pump()
    for i, (_, near_proto, _, far_proto) in enumerate(pairs):
        assert far_proto.received == to_far[i]
        assert near_proto.received == to_near[i]


def test_counters_count_both_directions() -> None:
    """Stream counters (TrafficCounter) get bytes_in for bytes sent and bytes_out for bytes received."""
    p = Pair()
    near, _, far, _ = p.open()
    counter = TrafficCounter()
    near.counters.append(counter)
    near.write(b"x" * 1000)
    far.write(b"y" * 300)
    p.pump()
    assert (counter.bytes_in, counter.bytes_out) == (1000, 300)


# -- per-stream flow control -------------------------------------------------------------


def _write_until_paused(stream: MuxStream, producer: StringTransport, pump: Callable[[], None],
                        chunk: int = 16 * 1024, limit: int = 20 * 1024 * 1024) -> bytes:
    """Act as a well-behaved producer: write chunks while not paused; returns what was written."""
    written = bytearray()
    while producer.producerState == "producing" and len(written) < limit:
        data = pattern(chunk, len(written))
        written += data
        stream.write(data)
        pump()
    return bytes(written)


def test_paused_reader_stops_only_its_own_sender() -> None:
    """A paused stream reader exhausts the sender's window; the sender buffers at most window + OUTBUF_HIGH,
    pauses its producer, other streams keep flowing, and resuming delivers everything in order."""
    p = Pair()
    near, near_proto, far, far_proto = p.open()
    near2, near2_proto, far2, far2_proto = p.open()
    producer = StringTransport()  # e.g. the TCP connection feeding this stream
    near.registerProducer(producer, True)
    sink = StringTransport()  # e.g. the TCP connection this stream feeds
    far_proto.on_data = lambda proto, data: sink.write(data)
    sink.registerProducer(far, True)
    assert sink.producer is far
    far.pauseProducing()  # what the sink does when it is full

    chunk = 16 * 1024
    written = _write_until_paused(near, producer, p.pump, chunk)
    assert producer.producerState == "paused"
    assert INITIAL_WINDOW <= len(written) <= INITIAL_WINDOW + OUTBUF_HIGH + chunk
    assert far_proto.received == b""  # held back: the reader is paused
    # Only one window's worth crossed the bridge.
    assert len(p.c.data_frames(near.stream_id)) == INITIAL_WINDOW

    # Another stream is unaffected, both ways.
    near2.write(b"x" * (INITIAL_WINDOW * 2))
    far2.write(b"pong")
    p.pump()
    assert len(far2_proto.received) == INITIAL_WINDOW * 2
    assert bytes(near2_proto.received) == b"pong"

    far.resumeProducing()  # what the sink does once it drained
    p.pump()
    assert producer.producerState == "producing"
    assert bytes(far_proto.received) == written
    assert sink.value() == written
    # And it goes on flowing after the resume.
    more = _write_until_paused(near, producer, p.pump, chunk, limit=INITIAL_WINDOW * 3)
    assert bytes(far_proto.received) == written + more


def test_reader_pausing_from_inside_data_received() -> None:
    """A protocol that pauses its transport inside dataReceived gets nothing more until it resumes."""
    p = Pair()
    near, _, far, far_proto = p.open()
    far_proto.on_data = lambda proto, data: far.pauseProducing()
    near.write(b"a" * 100)
    p.pump()
    near.write(b"b" * 100)
    near.write(b"c" * 100)
    p.pump()
    assert bytes(far_proto.received) == b"a" * 100
    far_proto.on_data = None
    far.resumeProducing()
    assert bytes(far_proto.received) == b"a" * 100 + b"b" * 100 + b"c" * 100


def test_no_credit_while_paused() -> None:
    """The receiver grants no WINDOW_UPDATE for a stream whose reader is paused, however much arrives."""
    p = Pair()
    near, _, far, _ = p.open()
    far.pauseProducing()
    p.s.sent.clear()
    near.write(b"z" * (INITIAL_WINDOW + 1000))
    p.pump()
    assert not [f for f in p.s.sent if f.type == FrameType.WINDOW_UPDATE]


def test_window_never_exceeds_max_window() -> None:
    """Each time a paused reader catches up its window doubles, but never beyond MAX_WINDOW: the bytes sent
    and not yet consumed by the protocol never exceed MAX_WINDOW."""
    p = Pair()
    near, _, far, far_proto = p.open()
    written = 0
    peaks = []
    for _ in range(8):
        far.pauseProducing()
        near.write(pattern(MAX_WINDOW + 512 * 1024, written))
        written += MAX_WINDOW + 512 * 1024
        for _ in range(40):  # ragged delivery, credit flowing back
            p.pump_some(True, 300 * 1024)
            p.pump_some(False, 1 << 20)
        in_flight = len(p.c.data_frames(near.stream_id)) - len(far_proto.received)
        peaks.append(in_flight)
        assert in_flight <= MAX_WINDOW
        far.resumeProducing()
        p.pump()
    assert len(far_proto.received) == written
    assert bytes(far_proto.received[-1000:]) == pattern(written)[-1000:]
    assert peaks[0] == INITIAL_WINDOW
    assert peaks[1] > INITIAL_WINDOW, peaks  # it grew...
    assert max(peaks) > MAX_WINDOW * 3 // 4, peaks  # ...close to the cap


def test_producer_resumes_when_window_reopens() -> None:
    """A producer paused for lack of window is resumed as soon as credit brings the buffer below OUTBUF_HIGH."""
    p = Pair()
    near, _, far, far_proto = p.open()
    producer = StringTransport()
    near.registerProducer(producer, True)
    near.write(b"q" * (INITIAL_WINDOW + OUTBUF_HIGH))
    assert producer.producerState == "paused"
    p.pump()
    assert producer.producerState == "producing"
    assert len(far_proto.received) == INITIAL_WINDOW + OUTBUF_HIGH


def test_pull_producer_is_resumed_once_per_turn() -> None:
    """A non-streaming producer is asked for more via the clock, never from inside write()."""
    p = Pair()
    near, _, _, _ = p.open()
    producer = PullProducer()
    near.registerProducer(producer, False)
    assert producer.resumed == 0
    p.clock.advance(0)
    assert producer.resumed == 1
    near.write(b"x")
    near.write(b"y")
    assert producer.resumed == 1
    p.clock.advance(0)
    assert producer.resumed == 2


def test_register_two_producers_raises() -> None:
    """Registering a second producer on a stream without unregistering raises RuntimeError."""
    p = Pair()
    near, _, _, _ = p.open()
    near.registerProducer(StringTransport(), True)
    with pytest.raises(RuntimeError):
        near.registerProducer(StringTransport(), True)
    near.unregisterProducer()
    near.registerProducer(StringTransport(), True)


def test_producer_stopped_when_stream_ends() -> None:
    """The producer registered on a stream is stopped when the stream ends, and one registered later at once."""
    p = Pair()
    near, _, far, _ = p.open()
    producer = StringTransport()
    near.registerProducer(producer, True)
    far.abortConnection()
    p.pump()
    assert producer.producerState == "stopped"
    late = StringTransport()
    near.registerProducer(late, True)
    assert late.producerState == "stopped"


# -- bridge-level backpressure ------------------------------------------------------------


def test_mux_is_the_bridge_transports_streaming_producer() -> None:
    """The Mux registers itself as a streaming producer of its bridge transport."""
    p = Pair()
    assert p.c.transport.producer is p.client and p.c.transport.streaming


def test_bridge_pause_pauses_writing_streams() -> None:
    """While the bridge is paused, each stream that writes pauses its producer; idle streams are untouched;
    resuming the bridge resumes them."""
    p = Pair()
    (a, _, _, a_proto_far), (b, _, _, _) = [p.open()[:4] for _ in range(2)]
    pa, pb = StringTransport(), StringTransport()
    a.registerProducer(pa, True)
    b.registerProducer(pb, True)
    p.client.pauseProducing()
    a.write(b"one more")
    assert pa.producerState == "paused"
    assert pb.producerState == "producing"
    p.client.resumeProducing()
    assert pa.producerState == "producing"
    p.pump()
    assert bytes(a_proto_far.received) == b"one more"


def test_bridge_repaused_while_resuming() -> None:
    """If the bridge pauses again while producers are being resumed, the rest stay paused until the next resume."""
    p = Pair()
    streams = [p.open()[0] for _ in range(3)]
    producers = []
    for stream in streams:
        producer = StringTransport()
        stream.registerProducer(producer, True)
        producers.append(producer)
    p.client.pauseProducing()
    for stream in streams:
        stream.write(b"x")
    assert [pr.producerState for pr in producers] == ["paused"] * 3

    fired: list[StringTransport] = []

    def repause_once(original: Callable[[], None], producer: StringTransport) -> Callable[[], None]:
        def resume() -> None:
            original()
            if not fired:
                fired.append(producer)
                p.client.pauseProducing()  # e.g. the write inside resumeProducing filled the bridge

        return resume

    for producer in producers:
        producer.resumeProducing = repause_once(producer.resumeProducing, producer)  # type: ignore[method-assign]
    p.client.resumeProducing()
    assert sorted(pr.producerState for pr in producers) == ["paused", "paused", "producing"]
    p.client.resumeProducing()
    assert [pr.producerState for pr in producers] == ["producing"] * 3


def test_stop_producing_ends_the_session() -> None:
    """C{Mux.stopProducing} (the bridge transport going away) ends every stream."""
    p = Pair()
    _, near_proto, _, _ = p.open()
    p.client.stopProducing()
    assert near_proto.reason is not None and near_proto.reason.check(ConnectionLost)
    assert p.c.closes == ["bridge transport closed"]


# -- half-close and close -----------------------------------------------------------------


def test_half_close_lets_the_peer_answer() -> None:
    """loseWriteConnection sends FIN; a half-closeable peer gets readConnectionLost, can still write back, and
    when it closes too both ends see a clean connectionLost."""
    p = Pair()
    near, near_proto, far, far_proto = p.open(opener_proto=HalfProto(), acceptor_proto=HalfProto())
    near.write(b"request")
    near.loseWriteConnection()
    p.pump()
    assert any(f.flags & Flag.FIN for f in p.c.sent)
    assert far_proto.events == ["made", "read_lost"]
    assert bytes(far_proto.received) == b"request"
    far.write(b"response")
    far.loseConnection()
    p.pump()
    assert bytes(near_proto.received) == b"response"
    assert near_proto.events == ["made", "read_lost", "lost"]
    assert far_proto.events == ["made", "read_lost", "lost"]
    assert near_proto.reason.check(ConnectionDone) and far_proto.reason.check(ConnectionDone)  # type: ignore[union-attr]
    assert p.client.stream_count == p.server.stream_count == 0


def test_half_close_answered_by_half_close() -> None:
    """Both ends half-closing in turn finishes the stream on both sides."""
    p = Pair()
    near, near_proto, far, far_proto = p.open(opener_proto=HalfProto(), acceptor_proto=HalfProto())
    near.loseWriteConnection()
    p.pump()
    far.write(b"late")
    far.loseWriteConnection()
    p.pump()
    assert bytes(near_proto.received) == b"late"
    assert near_proto.reason.check(ConnectionDone) and far_proto.reason.check(ConnectionDone)  # type: ignore[union-attr]
    assert p.client.stream_count == p.server.stream_count == 0


def test_fin_to_a_plain_protocol_closes_fully() -> None:
    """A protocol without IHalfCloseableProtocol gets a full close on the peer's FIN."""
    p = Pair()
    near, near_proto, far, far_proto = p.open(opener_proto=HalfProto(), acceptor_proto=Proto())
    near.write(b"bye")
    near.loseWriteConnection()
    p.pump()
    assert bytes(far_proto.received) == b"bye"
    assert far_proto.events == ["made", "lost"] and far_proto.reason.check(ConnectionDone)  # type: ignore[union-attr]
    assert near_proto.events == ["made", "read_lost", "lost"]
    assert p.client.stream_count == p.server.stream_count == 0


def test_writes_after_half_close_are_ignored() -> None:
    """Once loseWriteConnection was called, further writes send nothing."""
    p = Pair()
    near, _, far, far_proto = p.open(acceptor_proto=HalfProto())
    near.loseWriteConnection()
    near.write(b"too late")
    p.pump()
    assert far_proto.received == b""


def test_lose_connection_flushes_before_fin() -> None:
    """loseConnection with more than a window pending sends all of it, then FIN; connectionLost comes after."""
    p = Pair()
    near, near_proto, far, far_proto = p.open(acceptor_proto=HalfProto())
    data = pattern(INITIAL_WINDOW * 3 + 11)
    near.write(data)
    near.loseConnection()
    assert near_proto.reason is None  # still flushing
    assert not any(f.flags & Flag.FIN for f in frames_of(p.c.transport.value()))
    p.pump()
    assert bytes(far_proto.received) == data
    assert far_proto.events == ["made", "read_lost"]
    assert near_proto.reason is not None and near_proto.reason.check(ConnectionDone)
    fin_index = next(i for i, f in enumerate(p.c.sent) if f.flags & Flag.FIN)
    assert all(not (f.type == FrameType.DATA and f.payload) or i < fin_index
               for i, f in enumerate(p.c.sent) if f.stream_id == near.stream_id)


def test_full_close_waits_for_peer_fin_then_forgets() -> None:
    """After a full close the stream lingers until the peer's FIN (or LINGER seconds), then is forgotten."""
    p = Pair()
    near, near_proto, far, far_proto = p.open(acceptor_proto=HalfProto())
    near.loseConnection()
    p.pump()
    assert near_proto.reason is not None
    assert p.client.stream_count == 1  # waiting for the peer's FIN
    far.loseConnection()
    p.pump()
    assert p.client.stream_count == p.server.stream_count == 0

    near, near_proto, far, far_proto = p.open(acceptor_proto=HalfProto())
    near.loseConnection()
    p.pump()
    p.clock.advance(LINGER)
    assert p.client.stream_count == 0


def test_peer_writing_to_a_fully_closed_stream_is_reset() -> None:
    """Data arriving for a stream we fully closed is answered with RST, so the peer's writer learns it is gone."""
    p = Pair()
    far_proto = HalfProto()
    near, near_proto, far, _ = p.open(acceptor_proto=far_proto)
    far_proto.on_read_lost = lambda proto: far.write(b"x" * (INITIAL_WINDOW + OUTBUF_HIGH))
    near.loseConnection()
    p.pump()
    assert near_proto.reason is not None
    assert far_proto.reason is not None, "the peer's writer was never told (it waits for credit forever)"
    assert "stream closed" in far_proto.reason.getErrorMessage()


def test_close_with_peer_data_in_flight_does_not_strand_the_peer() -> None:
    """Closing a stream while the peer still has more than a window to send must still end the peer's stream
    (by RST or by draining), not leave it waiting for credit forever."""
    p = Pair()
    near, near_proto, far, far_proto = p.open(opener_proto=HalfProto(), acceptor_proto=HalfProto())
    far.write(b"b" * (INITIAL_WINDOW + 1))  # one byte waits for credit
    near.loseConnection()
    p.pump()
    far.loseConnection()  # e.g. the relay's TCP side closed after the EOF
    p.pump()
    p.clock.advance(LINGER)
    p.pump()
    assert near_proto.reason is not None
    assert far_proto.reason is not None, "the peer's protocol never learns the stream ended"
    assert p.server.stream_count == 0, "the peer's stream leaks"


def test_simultaneous_close_with_data_both_ways() -> None:
    """Both ends calling loseConnection with more than a window pending still end the stream on both sides."""
    p = Pair()
    near, near_proto, far, far_proto = p.open()
    near.write(b"a" * (INITIAL_WINDOW + 1))
    far.write(b"b" * (INITIAL_WINDOW + 1))
    near.loseConnection()
    far.loseConnection()
    p.pump()
    p.clock.advance(LINGER)
    p.pump()
    assert near_proto.reason is not None and far_proto.reason is not None, "connectionLost never comes"
    assert p.client.stream_count == p.server.stream_count == 0


def test_eof_waits_for_a_paused_reader() -> None:
    """A FIN arriving while the reader is paused is delivered after the buffered data, on resume."""
    p = Pair()
    near, _, far, far_proto = p.open(acceptor_proto=HalfProto())
    far.pauseProducing()
    near.write(b"abc")
    near.loseWriteConnection()
    p.pump()
    assert far_proto.events == ["made"]
    far.resumeProducing()
    assert bytes(far_proto.received) == b"abc"
    assert far_proto.events == ["made", "read_lost"]


def test_abort_resets_the_peer() -> None:
    """abortConnection drops pending data, tells the peer (connectionLost with ConnectionLost) and ends locally
    with ConnectionAborted."""
    p = Pair()
    near, near_proto, far, far_proto = p.open()
    far.pauseProducing()
    near.write(b"x" * (INITIAL_WINDOW * 2))
    p.pump()
    near.abortConnection()
    p.pump()
    assert near_proto.reason.check(ConnectionAborted)  # type: ignore[union-attr]
    assert far_proto.reason.check(ConnectionLost)  # type: ignore[union-attr]
    assert "aborted" in far_proto.reason.getErrorMessage()  # type: ignore[union-attr]
    assert p.client.stream_count == p.server.stream_count == 0


def test_reset_reason_reaches_the_peer() -> None:
    """reset(reason) delivers the reason to the peer's connectionLost."""
    p = Pair()
    near, _, far, far_proto = p.open()
    near.reset("target refused the connection")
    p.pump()
    assert far_proto.reason is not None
    assert "target refused the connection" in far_proto.reason.getErrorMessage()
    assert far_proto.reason.check(ConnectionLost)


def test_unknown_stream_frames() -> None:
    """DATA for an unknown stream is answered with RST; a FIN or RST for one is ignored."""
    p = Pair()
    p.client.data_received(encode(FrameType.DATA, 0, 41, b"stray"))
    [rst] = frames_of(p.c.transport.value())
    assert (rst.flags, rst.stream_id, rst.payload) == (Flag.RST, 41, b"unknown stream")
    p.c.transport.clear()
    p.client.data_received(encode(FrameType.DATA, Flag.FIN, 41) + encode(FrameType.DATA, Flag.RST, 41)
                           + encode(FrameType.WINDOW_UPDATE, 0, 41, length=10))
    assert p.c.transport.value() == b""
    assert not p.c.closes


# -- protocol errors ------------------------------------------------------------------


def _session_with_streams(p: Pair) -> tuple[list[Proto], Deferred[MuxStream]]:
    protos = []
    for _ in range(2):
        _, near_proto, _, _ = p.open()
        protos.append(near_proto)
    _, _, _, far_proto = p.open(from_client=False)
    protos.append(far_proto)
    pending = p.client.open_stream({})
    p.c.take()
    return protos, pending


def _assert_session_killed(p: Pair, protos: list[Proto], pending: Deferred[MuxStream],
                           events: EventLoggingObserver, message: str) -> None:
    errors = loud(events)
    assert len(errors) == 1, errors
    assert "protocol error" in errors[0] and message in errors[0], errors[0]
    for proto in protos:
        assert proto.reason is not None and proto.reason.check(ConnectionLost)
        assert "protocol error" in proto.reason.getErrorMessage()
    assert result_of(pending).check(StreamRefused)
    assert p.c.transport.disconnected  # aborted
    go_away = frames_of(p.c.transport.value())[-1]
    assert (go_away.type, go_away.length) == (FrameType.GO_AWAY, GoAwayCode.PROTOCOL_ERROR)
    assert p.client.stream_count == 0
    assert len(p.c.closes) == 1 and message in p.c.closes[0]
    # Later bytes are ignored quietly.
    p.client.data_received(b"\x00" * 100)
    assert len(loud(events)) == 1


MALFORMED = [
    pytest.param(b"\x07" * 12, "unsupported frame version 7", id="garbage"),
    pytest.param(encode(FrameType.DATA, 0, 0, b"x"), "DATA frame on stream 0", id="data-on-0"),
    pytest.param(bytes([1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "unknown frame type 9", id="unknown-type"),
    pytest.param(encode(FrameType.CONTROL, 0, 0, b"{not json"), "CONTROL frame is not JSON", id="control-json"),
    pytest.param(encode(FrameType.CONTROL, 0, 0, b'{"no": "type"}'), "must be an object with a 'type'",
                 id="control-no-type"),
    pytest.param(encode(FrameType.CONTROL, 0, 0, b"[1]"), "must be an object with a 'type'", id="control-list"),
    pytest.param(encode(FrameType.DATA, Flag.SYN, 100, b"\xff"), "link header is not JSON", id="syn-not-utf8"),
    pytest.param(encode(FrameType.DATA, Flag.SYN, 100, b"[]"), "link header is not an object", id="syn-list"),
    pytest.param(encode(FrameType.DATA, Flag.SYN, 7, b"{}"), "peer opened stream 7 with our parity",
                 id="syn-parity"),
    pytest.param(encode(FrameType.DATA, Flag.SYN, 2, b"{}"), "peer reopened live stream 2", id="syn-reopen"),
]


@pytest.mark.parametrize("bad, message", MALFORMED)
def test_malformed_frames_end_the_session(bad: bytes, message: str, log_events: EventLoggingObserver) -> None:
    """A malformed frame ends the session: one clear error log line, GO_AWAY(PROTOCOL_ERROR), the bridge
    aborted, every stream and pending open failed, and nothing raised out of data_received."""
    p = Pair()
    protos, pending = _session_with_streams(p)
    p.client.data_received(encode(FrameType.DATA, 0, 1, b"fine") + bad + encode(FrameType.PING, 0, 0, length=1))
    _assert_session_killed(p, protos, pending, log_events, message)


def test_window_violation_ends_the_session(log_events: EventLoggingObserver) -> None:
    """A peer sending more than the window it was granted is a protocol error."""
    p = Pair()
    protos, pending = _session_with_streams(p)
    stream = p.client._streams[1]
    stream.pauseProducing()
    p.client.data_received(encode(FrameType.DATA, 0, 1, b"x" * 200_000))
    assert not p.c.closes
    p.client.data_received(encode(FrameType.DATA, 0, 1, b"x" * 100_000))
    _assert_session_killed(p, protos, pending, log_events, "beyond its window")


def test_protocol_error_log_names_the_peer(log_events: EventLoggingObserver) -> None:
    """The protocol-error log line names the Mux and the peer address."""
    p = Pair()
    p.client.data_received(b"\xff" * 12)
    [line] = loud(log_events)
    assert line.startswith("server: protocol error from 192.168.1.1:54321:")


@pytest.mark.parametrize("frame", [
    pytest.param(encode(FrameType.CONTROL, 0, 0, b"[" * 50_000), id="control"),
    pytest.param(encode(FrameType.DATA, Flag.SYN, 100, b"[" * 50_000), id="syn-link"),
])
def test_deeply_nested_json_is_a_protocol_error(frame: bytes, log_events: EventLoggingObserver) -> None:
    """Deeply nested JSON (well within the frame limits) is a protocol error, not an exception escaping."""
    p = Pair()
    p.client.data_received(frame)
    assert p.c.closes and "protocol error" in p.c.closes[0]


# -- keepalive -------------------------------------------------------------------


def test_pings_every_interval() -> None:
    """A PING (SYN) with an increasing sequence number goes out every ping_interval."""
    clock = Clock()
    side = Side(clock, True, ping_interval=5.0)
    for _ in range(3):
        clock.advance(5.0)
    pings = frames_of(side.transport.value())
    assert [(f.type, f.flags, f.length) for f in pings] == [(FrameType.PING, Flag.SYN, n) for n in (1, 2, 3)]


def test_ping_ack_sets_rtt() -> None:
    """A PING ACK echoing our sequence number sets C{rtt}; an unknown sequence is ignored."""
    clock = Clock()
    side = Side(clock, True, ping_interval=5.0)
    clock.advance(5.0)
    clock.advance(0.25)
    side.mux.data_received(encode(FrameType.PING, Flag.ACK, 0, length=99))
    assert side.mux.rtt is None
    side.mux.data_received(encode(FrameType.PING, Flag.ACK, 0, length=1))
    assert side.mux.rtt == pytest.approx(0.25)


def test_peer_ping_is_echoed() -> None:
    """A PING from the peer is answered with a PING ACK carrying the same value."""
    clock = Clock()
    side = Side(clock, False)
    side.mux.data_received(encode(FrameType.PING, Flag.SYN, 0, length=0xDEADBEEF))
    assert frames_of(side.transport.value()) == [Frame(FrameType.PING, Flag.ACK, 0, 0xDEADBEEF)]


def test_idle_timeout_closes_the_session(log_events: EventLoggingObserver) -> None:
    """With no bytes from the peer for longer than idle_timeout, the session is aborted at the next tick."""
    clock = Clock()
    side = Side(clock, True, ping_interval=5.0, idle_timeout=12.0)
    d = side.mux.open_stream({})
    clock.advance(5)
    clock.advance(5)
    assert not side.closes
    clock.advance(5)  # silent for 15 s > 12 s
    assert side.closes == ["peer silent for 15s"]
    assert side.transport.disconnected
    assert result_of(d).check(StreamRefused)
    warnings = loud(log_events, (LogLevel.warn,))
    assert len(warnings) == 1 and "silent for 15s" in warnings[0]
    assert clock.getDelayedCalls() == []


def test_received_bytes_keep_the_session_alive() -> None:
    """A pair that keeps exchanging pings never times out, and both learn an rtt."""
    p = Pair(ping_interval=5.0, idle_timeout=12.0)
    for _ in range(20):
        p.clock.advance(5.0)
        p.pump()
    assert not p.c.closes and not p.s.closes
    assert p.client.rtt == 0 and p.server.rtt == 0


def test_no_pings_when_disabled() -> None:
    """ping_interval=0 schedules nothing."""
    clock = Clock()
    Side(clock, True, ping_interval=0)
    assert clock.getDelayedCalls() == []


# -- GO_AWAY ----------------------------------------------------------------------


def test_go_away_with_reason() -> None:
    """go_away sends the reason (CONTROL) and GO_AWAY, closes the bridge, and the peer reports that reason."""
    p = Pair()
    _, _, _, far_proto = p.open()
    p.server.go_away(GoAwayCode.SHUTDOWN, "nps is shutting down")
    assert p.s.transport.disconnecting
    p.pump()
    assert p.c.controls == [{"type": "goaway", "code": int(GoAwayCode.SHUTDOWN), "reason": "nps is shutting down"}]
    assert p.c.closes == ["nps is shutting down"]
    assert p.s.closes == ["nps is shutting down"]
    assert far_proto.reason is not None


@pytest.mark.parametrize("code, text", [(GoAwayCode.REPLACED, "peer closed the session (replaced)"),
                                        (77, "peer closed the session (code 77)")])
def test_go_away_frame_alone(code: int, text: str) -> None:
    """A bare GO_AWAY frame closes the bridge and the close reason names its code."""
    p = Pair()
    p.client.data_received(encode(FrameType.GO_AWAY, 0, 0, length=int(code)))
    assert p.c.transport.disconnecting
    assert p.client.close_reason == text
    p.pump()
    assert p.c.closes == [text]


def test_go_away_without_reason() -> None:
    """go_away without a reason sends no CONTROL and uses the code name as reason."""
    p = Pair()
    p.client.go_away(GoAwayCode.NORMAL)
    assert [f.type for f in frames_of(p.c.transport.value())] == [FrameType.GO_AWAY]
    assert p.client.close_reason == "normal"


def test_control_messages_reach_the_peer() -> None:
    """send_control delivers the JSON object to the peer's on_control."""
    p = Pair()
    p.client.send_control({"type": "register", "tunnels": [1, 2]})
    p.pump()
    assert p.s.controls == [{"type": "register", "tunnels": [1, 2]}]


# -- connection lost -------------------------------------------------------------------


def test_connection_lost_ends_everything() -> None:
    """connection_lost fails pending opens, ends every stream with ConnectionLost, calls on_close once,
    cancels all timers, and later writes are no-ops."""
    p = Pair(ping_interval=5.0)
    near, near_proto, far, far_proto = p.open()
    lingering, _, _, _ = p.open()
    lingering.loseConnection()
    p.pump()
    pending = p.client.open_stream({})
    p.c.take()
    p.client.connection_lost("Connection was closed cleanly.")
    failure = result_of(pending)
    assert failure.check(StreamRefused) and str(failure.value) == "bridge lost: Connection was closed cleanly."
    assert near_proto.reason.check(ConnectionLost)  # type: ignore[union-attr]
    assert p.client.stream_count == 0
    assert p.c.closes == ["Connection was closed cleanly."]
    p.client.connection_lost("again")
    assert p.c.closes == ["Connection was closed cleanly."]
    near.write(b"nothing")
    p.client.send_control({"type": "x"})
    assert p.c.transport.value() == b""
    p.server.connection_lost("gone")
    assert p.clock.getDelayedCalls() == []


# -- stream ids -----------------------------------------------------------------------


def test_stream_id_wrap_skips_live_streams() -> None:
    """After the id space wraps, a new stream never reuses the id of a stream that is still open."""
    p = Pair()
    near, near_proto, _, _ = p.open()
    assert near.stream_id == 1
    p.client._next_id = 0xFFFFFFFF  # as after ~2**31 opens on a long-lived bridge
    last = p.client.open_stream({})
    p.pump()
    p.server.accept_stream(p.s.incoming.pop(), Proto())
    p.pump()
    assert result_of(last).stream_id == 0xFFFFFFFF
    p.client.open_stream({})
    p.pump()
    assert not p.s.closes, p.s.closes  # the server saw a SYN for live stream 1: "peer reopened live stream 1"
    assert near_proto.reason is None


# -- the stream state machine, randomly ------------------------------------------------

OPS = st.one_of(
    st.tuples(st.just("write"), st.booleans(), st.integers(0, 2), st.integers(1, 300_000)),
    st.tuples(st.sampled_from(["pause", "resume", "half_close", "close", "bridge_pause", "bridge_resume"]),
              st.booleans(), st.integers(0, 2), st.just(0)),
    st.tuples(st.just("pump"), st.booleans(), st.just(0), st.integers(1, 300_000)),
)


def run_schedule(ops: list[tuple[str, bool, int, int]], allow_close: bool) -> None:
    p = Pair()
    pairs = [p.open(opener_proto=HalfProto(), acceptor_proto=HalfProto(), from_client=i != 1) for i in range(3)]
    # ends[(i, side)] -> (stream, proto); side True = the opener
    ends = {(i, True): (pair[0], pair[1]) for i, pair in enumerate(pairs)}
    ends.update({(i, False): (pair[2], pair[3]) for i, pair in enumerate(pairs)})
    written: dict[tuple[int, bool], bytearray] = defaultdict(bytearray)
    write_closed: set[tuple[int, bool]] = set()
    read_closed: set[tuple[int, bool]] = set()
    for op, side, i, n in ops:
        stream, proto = ends[(i, side)]
        if op == "write":
            if (i, side) not in write_closed and proto.reason is None:
                data = pattern(n, len(written[(i, side)]))
                written[(i, side)] += data
            else:
                data = pattern(n)
            stream.write(data)
        elif op == "pause":
            stream.pauseProducing()
        elif op == "resume":
            stream.resumeProducing()
        elif op == "half_close":
            stream.loseWriteConnection()
            write_closed.add((i, side))
        elif op == "close" and allow_close:
            stream.loseConnection()
            write_closed.add((i, side))
            read_closed.add((i, side))
        elif op == "bridge_pause":
            (p.client if side else p.server).pauseProducing()
        elif op == "bridge_resume":
            (p.client if side else p.server).resumeProducing()
        elif op == "pump":
            p.pump_some(side, n)
    # Settle: everyone reads, the bridge flows, everyone finishes writing.
    p.client.resumeProducing()
    p.server.resumeProducing()
    for stream, _ in ends.values():
        stream.resumeProducing()
    p.pump()
    for stream, _ in ends.values():
        stream.loseWriteConnection()
    p.pump()
    p.clock.advance(LINGER)
    p.pump()

    assert not p.c.closes and not p.s.closes, "no protocol error on an honest schedule"
    for (i, side), (stream, proto) in ends.items():
        sender = ends[(i, not side)][1]
        sent = bytes(written[(i, not side)])
        got = bytes(proto.received)
        assert sent.startswith(got), f"stream {i}: received bytes are not a prefix of what was written"
        reset = any(pr.reason is not None and not pr.reason.check(ConnectionDone) for pr in (proto, sender))
        if (i, side) not in read_closed and not reset:
            assert got == sent, f"stream {i} side {side}: {len(got)} of {len(sent)} bytes arrived"
        if not allow_close:
            assert proto.reason is not None, f"stream {i} side {side} never got connectionLost"
    if not allow_close:
        assert p.client.stream_count == 0 and p.server.stream_count == 0


@PROPERTY
@given(ops=st.lists(OPS, min_size=8, max_size=50))
def test_random_schedule_delivers_exactly_the_written_bytes(ops: list[tuple[str, bool, int, int]]) -> None:
    """Any schedule of writes, pauses, resumes, half-closes, bridge pauses and partial pumps on three streams,
    both sides, delivers exactly the written bytes in order per stream, and every stream ends cleanly."""
    run_schedule(ops, allow_close=False)


@PROPERTY
@given(ops=st.lists(OPS, min_size=8, max_size=50))
def test_random_schedule_with_full_closes(ops: list[tuple[str, bool, int, int]]) -> None:
    """With full closes mixed in, each side receives a prefix of what the other wrote (all of it unless it
    closed its read side or the stream was reset), and no schedule causes a protocol error.

    (That every stream also ends is covered by the tests of closing with data in flight.)"""
    run_schedule(ops, allow_close=True)


def test_a_failing_protocol_resets_only_its_own_stream() -> None:
    """An exception in one stream's dataReceived is logged and resets that stream; the bridge and the
    other streams carry on."""
    p = Pair()
    near, near_proto, far, far_proto = p.open()
    other_near, _, _, other_far_proto = p.open()

    def explode(proto: Proto, data: bytes) -> None:
        raise ValueError("bug in a mode")

    far_proto.on_data = explode
    near.write(b"boom")
    p.pump()
    assert far_proto.reason is not None and near_proto.reason is not None
    assert "internal error" in str(near_proto.reason.value)
    other_near.write(b"still here")
    p.pump()
    assert bytes(other_far_proto.received) == b"still here"
