# -*- test-case-name: test.test_frames -*-
"""Tests for L{nps.protocols.frames}: the sans-io framing of the bridge multiplexer."""
from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nps.protocols.frames import (
    HEADER,
    HEADER_SIZE,
    MAX_CONTROL_FRAME,
    MAX_DATA_FRAME,
    MAX_STREAM_ID,
    VERSION,
    Flag,
    Frame,
    FrameError,
    FrameParser,
    FrameType,
    GoAwayCode,
    encode,
    encode_header,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALL_FLAGS = [Flag(sum(bits)) for n in range(5) for bits in itertools.combinations([1, 2, 4, 8], n)]
PAYLOAD_TYPES = (FrameType.DATA, FrameType.CONTROL)


def raw_header(version: int = VERSION, ftype: int = 0, flags: int = 0, stream_id: int = 1, length: int = 0) -> bytes:
    """A header packed without any validation, for building bad frames."""
    return struct.pack("!BBHII", version, ftype, flags, stream_id, length)


def parse_all(data: bytes) -> list[Frame]:
    return FrameParser().feed(data)


# -- strategies ---------------------------------------------------------------

flags_st = st.sampled_from(ALL_FLAGS)
nonzero_id = st.integers(min_value=1, max_value=MAX_STREAM_ID)
u32 = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def valid_frames(draw: st.DrawFn) -> Frame:
    """Any frame the parser must accept, as the L{Frame} it must produce."""
    ftype = draw(st.sampled_from(list(FrameType)))
    flags = draw(flags_st)
    if ftype is FrameType.DATA:
        payload = draw(st.binary(max_size=300))
        return Frame(ftype, flags, draw(nonzero_id), len(payload), payload)
    if ftype is FrameType.CONTROL:
        payload = draw(st.binary(max_size=300))
        return Frame(ftype, flags, 0, len(payload), payload)
    if ftype is FrameType.WINDOW_UPDATE:
        return Frame(ftype, flags, draw(nonzero_id), draw(u32))
    return Frame(ftype, flags, 0, draw(u32))


def encode_frame(frame: Frame) -> bytes:
    ftype = FrameType(frame.type)
    if ftype in PAYLOAD_TYPES:
        return encode(ftype, frame.flags, frame.stream_id, frame.payload)
    return encode(ftype, frame.flags, frame.stream_id, length=frame.length)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


# -- round trips ----------------------------------------------------------------


@pytest.mark.parametrize("flags", ALL_FLAGS, ids=lambda f: f"flags{int(f)}")
@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda t: t.name)
def test_round_trip_every_type_and_flag(ftype: FrameType, flags: Flag) -> None:
    """Every frame type with every combination of known flags encodes and parses back unchanged."""
    if ftype is FrameType.DATA:
        expected = Frame(ftype, flags, 7, 5, b"hello")
    elif ftype is FrameType.CONTROL:
        expected = Frame(ftype, flags, 0, 9, b'{"type":1')
    elif ftype is FrameType.WINDOW_UPDATE:
        expected = Frame(ftype, flags, 7, 65536)
    else:
        expected = Frame(ftype, flags, 0, 12345)
    wire = encode_frame(expected)
    assert len(wire) == HEADER_SIZE + len(expected.payload)
    frames = parse_all(wire)
    assert frames == [expected]
    assert frames[0].type == ftype and frames[0].flags == flags


def test_header_layout_is_big_endian() -> None:
    """The header is version:u8 type:u8 flags:u16 stream_id:u32 length:u32, big-endian, 12 bytes."""
    assert HEADER_SIZE == 12
    wire = encode(FrameType.DATA, Flag.SYN | Flag.FIN, 0x01020304, b"xy")
    assert wire == bytes([VERSION, 0, 0, 5, 1, 2, 3, 4, 0, 0, 0, 2]) + b"xy"
    assert HEADER.unpack(wire[:12]) == (VERSION, 0, 5, 0x01020304, 2)


def test_encode_header_plus_payload_equals_encode() -> None:
    """C{encode_header} followed by the payload is byte-for-byte what C{encode} produces."""
    payload = b"p" * 100
    assert encode_header(FrameType.DATA, Flag.NONE, 3, len(payload)) + payload == encode(
        FrameType.DATA, Flag.NONE, 3, payload
    )


def test_non_payload_frames_consume_no_payload() -> None:
    """For WINDOW_UPDATE/PING/GO_AWAY the length is a value; the bytes after the header are the next frame."""
    wire = (
        encode(FrameType.WINDOW_UPDATE, 0, 1, length=2**32 - 1)
        + encode(FrameType.PING, Flag.SYN, 0, length=99)
        + encode(FrameType.GO_AWAY, 0, 0, length=int(GoAwayCode.PROTOCOL_ERROR))
        + encode(FrameType.DATA, 0, 1, b"after")
    )
    frames = parse_all(wire)
    assert [f.type for f in frames] == [FrameType.WINDOW_UPDATE, FrameType.PING, FrameType.GO_AWAY, FrameType.DATA]
    assert [f.length for f in frames] == [2**32 - 1, 99, 1, 5]
    assert all(f.payload == b"" for f in frames[:3])
    assert frames[3].payload == b"after"


def test_empty_data_frame() -> None:
    """A DATA frame with no payload (e.g. a bare FIN) is one complete frame of length 0."""
    assert parse_all(encode(FrameType.DATA, Flag.FIN, 9)) == [Frame(FrameType.DATA, Flag.FIN, 9, 0, b"")]


def test_limits_are_inclusive() -> None:
    """DATA of exactly MAX_DATA_FRAME and CONTROL of exactly MAX_CONTROL_FRAME bytes are accepted."""
    data = encode(FrameType.DATA, 0, 1, b"d" * MAX_DATA_FRAME)
    control = encode(FrameType.CONTROL, 0, 0, b"c" * MAX_CONTROL_FRAME)
    frames = parse_all(data + control)
    assert [len(f.payload) for f in frames] == [MAX_DATA_FRAME, MAX_CONTROL_FRAME]


def test_max_stream_id() -> None:
    """The largest stream id, 2**32-1, is valid."""
    assert parse_all(encode(FrameType.DATA, 0, MAX_STREAM_ID, b"x"))[0].stream_id == MAX_STREAM_ID


# -- incremental parsing --------------------------------------------------------


def test_partial_frames_are_buffered() -> None:
    """A frame fed a byte at a time comes out exactly once, when its last byte arrives; C{buffered} tracks the rest."""
    wire = encode(FrameType.DATA, 0, 5, b"abcdef")
    parser = FrameParser()
    for i, byte in enumerate(wire[:-1]):
        assert parser.feed(bytes([byte])) == []
        assert parser.buffered == i + 1
    assert parser.feed(wire[-1:]) == [Frame(FrameType.DATA, Flag.NONE, 5, 6, b"abcdef")]
    assert parser.buffered == 0


def test_buffered_holds_only_the_incomplete_tail() -> None:
    """After complete frames plus part of another, only the partial frame's bytes stay buffered."""
    whole = encode(FrameType.DATA, 0, 1, b"x" * 50) * 3
    partial = encode(FrameType.DATA, 0, 1, b"y" * 50)[:20]
    parser = FrameParser()
    assert len(parser.feed(whole + partial)) == 3
    assert parser.buffered == 20


def test_feed_empty_bytes() -> None:
    """Feeding nothing yields nothing."""
    parser = FrameParser()
    assert parser.feed(b"") == []
    assert parser.buffered == 0


def test_feed_accepts_bytearray_and_memoryview() -> None:
    """C{feed} takes any bytes-like object and payloads come out as immutable C{bytes}."""
    wire = encode(FrameType.DATA, 0, 1, b"abc")
    parser = FrameParser()
    frames = parser.feed(bytearray(wire[:5])) + parser.feed(memoryview(wire[5:]))  # type: ignore[arg-type]
    assert frames == [Frame(FrameType.DATA, Flag.NONE, 1, 3, b"abc")]
    assert type(frames[0].payload) is bytes


@SETTINGS
@given(frames=st.lists(valid_frames(), max_size=20), cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_any_valid_sequence_in_any_chunks_parses_back(frames: list[Frame], cuts: list[int]) -> None:
    """Any sequence of valid frames, split into arbitrary chunks, parses back to the same frames in order."""
    wire = b"".join(encode_frame(f) for f in frames)
    parser = FrameParser()
    parsed: list[Frame] = []
    for piece in split(wire, cuts):
        parsed.extend(parser.feed(piece))
    assert parsed == frames
    assert parser.buffered == 0


@SETTINGS
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_random_bytes_raise_only_frame_error(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes either parse or raise L{FrameError}; nothing else ever escapes."""
    parser = FrameParser()
    try:
        for piece in split(data, cuts):
            parser.feed(piece)
    except FrameError:
        pass


@SETTINGS
@given(
    frames=st.lists(valid_frames(), min_size=1, max_size=6),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), min_size=1, max_size=4),
)
def test_corrupted_valid_frames_raise_only_frame_error(frames: list[Frame], flips: list[tuple[int, int]]) -> None:
    """Valid frames with a few bytes corrupted parse to frames or raise L{FrameError}, nothing else."""
    wire = bytearray(b"".join(encode_frame(f) for f in frames))
    for pos, xor in flips:
        wire[pos % len(wire)] ^= xor
    try:
        parsed = FrameParser().feed(bytes(wire))
    except FrameError:
        return
    for frame in parsed:
        assert frame.type in set(FrameType)
        if frame.type in PAYLOAD_TYPES:
            assert len(frame.payload) == frame.length


# -- errors ------------------------------------------------------------------------

BAD_HEADERS = [
    pytest.param(raw_header(version=0), "unsupported frame version 0 (expected 1)", id="version0"),
    pytest.param(raw_header(version=2), "unsupported frame version 2 (expected 1)", id="version2"),
    pytest.param(raw_header(ftype=5), "unknown frame type 5", id="type5"),
    pytest.param(raw_header(ftype=255), "unknown frame type 255", id="type255"),
    pytest.param(raw_header(flags=0x10), "unknown flags 0x0010 on DATA frame", id="flag0x10"),
    pytest.param(raw_header(ftype=2, stream_id=0, flags=0x8000), "unknown flags 0x8000 on PING frame", id="flag0x8000"),
    pytest.param(raw_header(length=MAX_DATA_FRAME + 1), f"DATA frame of {MAX_DATA_FRAME + 1} bytes exceeds limit",
                 id="data-too-big"),
    pytest.param(raw_header(length=2**32 - 1), "exceeds limit", id="data-4GiB"),
    pytest.param(raw_header(ftype=4, stream_id=0, length=MAX_CONTROL_FRAME + 1),
                 f"CONTROL frame of {MAX_CONTROL_FRAME + 1} bytes exceeds limit", id="control-too-big"),
    pytest.param(raw_header(ftype=4, stream_id=3), "CONTROL frame on stream 3 (must be 0)", id="control-stream3"),
    pytest.param(raw_header(ftype=0, stream_id=0), "DATA frame on stream 0", id="data-stream0"),
    pytest.param(raw_header(ftype=1, stream_id=0), "WINDOW_UPDATE on stream 0", id="window-stream0"),
    pytest.param(raw_header(ftype=2, stream_id=3), "PING frame on stream 3 (must be 0)", id="ping-stream3"),
    pytest.param(raw_header(ftype=3, stream_id=3), "GO_AWAY frame on stream 3 (must be 0)", id="goaway-stream3"),
]


@pytest.mark.parametrize("header, message", BAD_HEADERS)
def test_bad_header_gives_clear_frame_error(header: bytes, message: str) -> None:
    """An invalid header raises L{FrameError} naming the problem, as soon as the 12 header bytes are in."""
    with pytest.raises(FrameError) as info:
        FrameParser().feed(header)
    assert message in str(info.value)


def test_oversized_frame_rejected_before_its_payload_arrives() -> None:
    """A too-large DATA length is refused from the header alone; the parser never buffers the payload."""
    parser = FrameParser()
    with pytest.raises(FrameError):
        parser.feed(raw_header(length=MAX_DATA_FRAME + 1) + b"x" * 100)
    assert parser.buffered == 0


def test_parser_stays_poisoned_after_error() -> None:
    """After a L{FrameError} every later feed, even of valid frames or nothing, raises the same error again."""
    parser = FrameParser()
    with pytest.raises(FrameError) as first:
        parser.feed(raw_header(version=9))
    for data in (encode(FrameType.DATA, 0, 1, b"ok"), b"", encode(FrameType.PING, 0, 0, length=1)):
        with pytest.raises(FrameError) as again:
            parser.feed(data)
        assert str(again.value) == str(first.value)
    assert parser.buffered == 0


def test_error_after_valid_frames_in_one_feed() -> None:
    """A bad frame after good ones in the same chunk still raises (the session ends regardless)."""
    parser = FrameParser()
    with pytest.raises(FrameError, match="unknown frame type 7"):
        parser.feed(encode(FrameType.DATA, 0, 1, b"good") + raw_header(ftype=7))


@SETTINGS
@given(frames=st.lists(valid_frames(), max_size=5), bad=st.sampled_from([p.values[0] for p in BAD_HEADERS]),
       tail=st.binary(max_size=50))
def test_poisoned_whatever_follows(frames: list[Frame], bad: bytes, tail: bytes) -> None:
    """Valid frames, then a bad header, then anything: the bad header poisons the parser for good."""
    parser = FrameParser()
    for frame in frames:
        parser.feed(encode_frame(frame))
    with pytest.raises(FrameError):
        parser.feed(bad + tail)
    with pytest.raises(FrameError):
        parser.feed(encode(FrameType.DATA, 0, 1, b"x"))


# -- cost -----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_many_tiny_frames_in_one_buffer() -> None:
    """100k empty DATA frames in one 1.2 MB buffer parse completely (linear: no per-frame copy of the rest).

    A parser that re-slices the buffer per frame would copy ~60 GB here and hit the timeout.
    """
    n = 100_000
    one = encode(FrameType.DATA, Flag.NONE, 1)
    parser = FrameParser()
    frames = parser.feed(one * n)
    assert len(frames) == n
    assert parser.buffered == 0


@pytest.mark.timeout(30)
def test_many_tiny_frames_with_ragged_chunks() -> None:
    """100k small frames fed in 7-byte chunks (every frame split) all come out, in order."""
    n = 100_000
    wire = b"".join(encode(FrameType.WINDOW_UPDATE, 0, 1 + (i % 5), length=i) for i in range(n))
    parser = FrameParser()
    count = 0
    last = -1
    for i in range(0, len(wire), 7):
        for frame in parser.feed(wire[i : i + 7]):
            assert frame.length == last + 1
            last = frame.length
            count += 1
    assert count == n


@pytest.mark.timeout(30)
def test_big_frame_fed_byte_by_byte() -> None:
    """A 128 KiB DATA frame fed one byte at a time completes (waiting for the payload costs O(1) per feed)."""
    payload = bytes(range(256)) * 512
    wire = encode(FrameType.DATA, 0, 1, payload)
    parser = FrameParser()
    out: list[Frame] = []
    for i in range(len(wire)):
        out.extend(parser.feed(wire[i : i + 1]))
    assert out == [Frame(FrameType.DATA, Flag.NONE, 1, len(payload), payload)]
