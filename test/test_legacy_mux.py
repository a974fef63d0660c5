"""The nps-mux adapter (nps.legacy.mux) on an in-memory transport: opening, windows, pings, datagrams."""
from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from nps.legacy.mux import RECEIVE_WINDOW, LegacyMux
from nps.protocols import legacy_mux as lm
from nps.protocols.datagrams import encode_datagram


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost = reason


@implementer(IPushProducer)
class Producer:
    paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def setup() -> tuple[LegacyMux, StringTransport, Clock]:
    transport = StringTransport()
    clock = Clock()
    mux = LegacyMux(transport, clock, ping_interval=5.0, idle_timeout=30.0)
    return mux, transport, clock


def frames(transport: StringTransport) -> list[lm.MuxFrame]:
    out = list(lm.MuxFrameParser().feed(transport.value()))
    transport.clear()
    return out


def test_open_sends_preamble_then_data_only_after_ok() -> None:
    """Nothing but newConn goes out before newConnOk; then our window, the preamble and the data, in order."""
    mux, transport, _ = setup()
    stream = mux.start_stream({"mode": "tcp"}, preamble=b"HEADER")
    opened: list[Any] = []
    assert stream.opened is not None
    stream.opened.addCallback(opened.append)
    protocol = Collect()
    stream.attach(protocol)
    stream.write(b"early data")
    assert frames(transport) == [lm.MuxFrame(lm.NEW_CONN, stream.stream_id)]
    mux.data_received(lm.encode(lm.NEW_CONN_OK, stream.stream_id))
    assert opened == [stream]
    sent = frames(transport)
    assert sent[0] == lm.MuxFrame(lm.MSG_SEND_OK, stream.stream_id, window=lm.pack_window(RECEIVE_WINDOW, 0))
    assert [f.payload for f in sent[1:]] == [b"HEADER", b"early data"]
    assert all(f.flag == lm.NEW_MSG for f in sent[1:])


def test_send_window_and_backpressure() -> None:
    """We send no more than the peer's window; the stream's producer pauses, and resumes on msgSendOk."""
    mux, transport, _ = setup()
    stream = mux.start_stream({"mode": "tcp"})
    stream.attach(Collect())
    producer = Producer()
    stream.registerProducer(producer, True)
    mux.data_received(lm.encode(lm.NEW_CONN_OK, stream.stream_id))
    transport.clear()
    stream.write(b"x" * 300_000)
    sent = sum(len(f.payload) for f in frames(transport))
    assert sent == lm.INITIAL_WINDOW
    assert producer.paused
    mux.data_received(lm.encode(lm.MSG_SEND_OK, stream.stream_id, window=lm.pack_window(1 << 20, sent)))
    assert sum(len(f.payload) for f in frames(transport)) == 300_000 - sent
    assert not producer.paused


def test_credit_given_back_only_when_consumed() -> None:
    """A paused stream acknowledges nothing; once resumed it reports the bytes read."""
    mux, transport, _ = setup()
    stream = mux.start_stream({"mode": "tcp"})
    protocol = Collect()
    stream.attach(protocol)
    mux.data_received(lm.encode(lm.NEW_CONN_OK, stream.stream_id))
    transport.clear()
    stream.pauseProducing()
    chunk = b"y" * lm.MAX_SEGMENT
    count = RECEIVE_WINDOW // 4 // lm.MAX_SEGMENT + 2
    for _ in range(count):
        mux.data_received(lm.encode(lm.NEW_MSG, stream.stream_id, chunk))
    assert frames(transport) == [] and protocol.data == b""
    stream.resumeProducing()
    assert len(protocol.data) == count * lm.MAX_SEGMENT
    acks = [f for f in frames(transport) if f.flag == lm.MSG_SEND_OK]
    assert len(acks) == 1
    max_size, done, wait = lm.unpack_window(acks[0].window)
    assert (max_size, wait) == (RECEIVE_WINDOW, False) and done >= RECEIVE_WINDOW // 4


def test_peer_beyond_window_closes_stream_only() -> None:
    """A peer that ignores our window loses that stream, not the bridge."""
    mux, transport, _ = setup()
    stream = mux.start_stream({"mode": "tcp"})
    protocol = Collect()
    stream.attach(protocol)
    mux.data_received(lm.encode(lm.NEW_CONN_OK, stream.stream_id))
    stream.pauseProducing()
    chunk = b"z" * lm.MAX_SEGMENT
    for _ in range((RECEIVE_WINDOW + lm.INITIAL_WINDOW) // lm.MAX_SEGMENT + 2):
        mux.data_received(lm.encode(lm.NEW_MSG, stream.stream_id, chunk))
    assert protocol.lost is not None
    assert not transport.disconnecting


def test_ping_is_echoed_and_sent() -> None:
    """A peer's ping comes back as pingReturn with its payload; we ping every interval."""
    mux, transport, clock = setup()
    mux.data_received(lm.encode(lm.PING, lm.PING_ID, b"2026-01-01T00:00:00Z"))
    assert frames(transport) == [lm.MuxFrame(lm.PING_RETURN, lm.PING_ID, b"2026-01-01T00:00:00Z")]
    clock.advance(5)
    (ping,) = frames(transport)
    assert ping.flag == lm.PING and ping.stream_id == lm.PING_ID and ping.payload.endswith(b"Z")


def test_silent_peer_is_dropped() -> None:
    """With nothing heard for longer than the idle timeout the bridge is closed and its streams end."""
    mux, transport, clock = setup()
    stream = mux.start_stream({"mode": "tcp"})
    assert stream.opened is not None
    stream.opened.addErrback(lambda failure: None)
    protocol = Collect()
    stream.attach(protocol)
    for _ in range(8):
        clock.advance(5)
    assert mux.closed and protocol.lost is not None


def test_datagram_stream_keeps_boundaries() -> None:
    """Our u16-framed datagrams go out one nps-mux message each; parts coming in are joined into one."""
    mux, transport, _ = setup()
    stream = mux.start_stream({"mode": "udp"}, datagrams=True)
    protocol = Collect()
    stream.attach(protocol)
    mux.data_received(lm.encode(lm.NEW_CONN_OK, stream.stream_id))
    transport.clear()
    big = bytes(range(256)) * 40
    stream.write(encode_datagram(b"one") + encode_datagram(big)[:100])
    stream.write(encode_datagram(big)[100:])
    sent = frames(transport)
    assert [(f.flag, f.payload) for f in sent[:1]] == [(lm.NEW_MSG, b"one")]
    assert b"".join(f.payload for f in sent[1:]) == big and sent[-1].flag == lm.NEW_MSG
    assert all(f.flag == lm.NEW_MSG_PART for f in sent[1:-1])
    mux.data_received(b"".join(lm.encode_message(stream.stream_id, big)))
    assert protocol.data == encode_datagram(big)


def test_remote_close_ends_stream() -> None:
    """connClose from the peer ends a plain protocol's stream after its data; we close back."""
    mux, transport, _ = setup()
    stream = mux.start_stream({"mode": "tcp"})
    protocol = Collect()
    stream.attach(protocol)
    mux.data_received(lm.encode(lm.NEW_CONN_OK, stream.stream_id))
    transport.clear()
    mux.data_received(lm.encode(lm.NEW_MSG, stream.stream_id, b"last") + lm.encode(lm.CONN_CLOSE, stream.stream_id))
    assert protocol.data == b"last" and protocol.lost is not None
    assert lm.MuxFrame(lm.CONN_CLOSE, stream.stream_id) in frames(transport)
    assert mux.stream_count == 0


def test_bad_frame_closes_bridge() -> None:
    """An unknown flag is a protocol error: the bridge is aborted and every stream ends."""
    mux, transport, _ = setup()
    stream = mux.start_stream({"mode": "tcp"})
    assert stream.opened is not None
    stream.opened.addErrback(lambda failure: None)
    protocol = Collect()
    stream.attach(protocol)
    mux.data_received(b"\x63\x00\x00\x00\x00")
    assert mux.closed and protocol.lost is not None
    assert "protocol error" in mux.close_reason


def test_peer_opened_stream_is_accepted() -> None:
    """The client direction: the peer's newConn is answered with newConnOk and our window."""
    transport, clock = StringTransport(), Clock()
    opened: list[Any] = []
    mux = LegacyMux(transport, clock, on_stream=opened.append, ping_interval=0)
    mux.data_received(lm.encode(lm.NEW_CONN, 5))
    assert [s.stream_id for s in opened] == [5]
    assert frames(transport)[:1] == [lm.MuxFrame(lm.NEW_CONN_OK, 5)]


def test_reattach_decodes_what_arrived_while_held() -> None:
    """Client direction: bytes that arrive between the link header and the codec being known are decoded
    by that codec once it is, in order (a snappy stream stays intact)."""
    from nps.legacy.crypt import SnappyCodec

    transport, clock = StringTransport(), Clock()
    streams: list[Any] = []
    mux = LegacyMux(transport, clock, on_stream=streams.append, ping_interval=0)
    mux.data_received(lm.encode(lm.NEW_CONN, 3))
    (stream,) = streams
    header = Collect()
    stream.attach(header)
    wire = SnappyCodec().encode(b"first-" * 1000) + SnappyCodec().encode(b"second")[10:]
    mux.data_received(lm.encode(lm.NEW_MSG, 3, b"HEADER"))
    stream.pauseProducing()
    stream.hold()
    mux.data_received(b"".join(lm.encode_message(3, wire)))
    protocol = Collect()
    stream.reattach(protocol, codec=SnappyCodec(), datagrams=False, rest=b"")
    assert header.data == b"HEADER"
    assert protocol.data == b"first-" * 1000 + b"second"


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FRAMES = st.one_of(
    st.builds(lambda f, i, p: lm.encode(f, i, p), st.sampled_from([lm.NEW_MSG, lm.NEW_MSG_PART, lm.PING,
                                                                    lm.PING_RETURN]),
              st.integers(-2, 4), st.binary(min_size=1, max_size=200)),
    st.builds(lambda f, i: lm.encode(f, i), st.sampled_from([lm.NEW_CONN, lm.NEW_CONN_OK, lm.NEW_CONN_FAIL,
                                                             lm.CONN_CLOSE]), st.integers(-2, 4)),
    st.builds(lambda i, w: lm.encode(lm.MSG_SEND_OK, i, window=w), st.integers(-2, 4), st.integers(0, 2**64 - 1)),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_FRAMES, max_size=30), st.booleans(), st.sampled_from(["tcp", "udp"]))
def test_any_frame_sequence_is_handled(frames: list[bytes], opened: bool, mode: str) -> None:
    """Whatever valid frames a peer sends, in any order, the mux neither raises nor leaves a stream half-closed."""
    from nps.legacy.crypt import SnappyCodec

    mux, transport, _ = setup()
    streams = []
    for codec in (None, SnappyCodec()):
        stream = mux.start_stream({"mode": mode}, preamble=b"H", codec=codec, datagrams=mode == "udp")
        assert stream.opened is not None
        stream.opened.addErrback(lambda failure: None)
        stream.attach(Collect())
        streams.append(stream)
        if opened:
            mux.data_received(lm.encode(lm.NEW_CONN_OK, stream.stream_id))
    for frame in frames:
        mux.data_received(frame)
    for stream in streams:
        stream.write(b"x" * 10)
        stream.loseConnection()
    mux.connection_lost("test over")
    assert mux.stream_count == 0
