# -*- test-case-name: test.test_frames -*-
"""Sans-io framing of the bridge multiplexer.

Every frame starts with a 12-byte header, all integers big-endian::

    version:u8  type:u8  flags:u16  stream_id:u32  length:u32

C{DATA} and C{CONTROL} frames carry C{length} payload bytes.  For
C{WINDOW_UPDATE} the length is the credit granted, for C{PING} an opaque
value echoed back, for C{GO_AWAY} a reason code; those carry no payload.
"""
from __future__ import annotations

import enum
import struct
from typing import NamedTuple

VERSION = 1
HEADER = struct.Struct("!BBHII")
HEADER_SIZE = HEADER.size

#: Largest payload a sender puts in one DATA frame.
MAX_DATA_CHUNK = 256 * 1024
#: Largest DATA payload a receiver accepts (a bigger one is a protocol error).
MAX_DATA_FRAME = 1024 * 1024
#: Largest CONTROL payload (JSON control messages such as tunnel lists).
MAX_CONTROL_FRAME = 1024 * 1024
MAX_STREAM_ID = 2**32 - 1


class FrameType(enum.IntEnum):
    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3
    CONTROL = 4


class Flag(enum.IntFlag):
    NONE = 0
    SYN = 1
    ACK = 2
    FIN = 4
    RST = 8


class GoAwayCode(enum.IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    REPLACED = 3
    SHUTDOWN = 4
    REJECTED = 5


_KNOWN_FLAGS = int(Flag.SYN | Flag.ACK | Flag.FIN | Flag.RST)
_DATA = int(FrameType.DATA)
_CONTROL = int(FrameType.CONTROL)


class FrameError(Exception):
    """The peer sent bytes that are not a valid frame; the session must end."""


class Frame(NamedTuple):
    """One parsed frame.  C{type} and C{flags} are plain ints on the hot path
    (compare with C{==} / C{&}; they equal the L{FrameType}/L{Flag} members)."""

    type: int
    flags: int
    stream_id: int
    length: int
    payload: bytes = b""


def encode(
    type: FrameType, flags: Flag | int, stream_id: int, payload: bytes = b"", length: int | None = None
) -> bytes:
    """Serialise one frame.  C{length} defaults to C{len(payload)}."""
    if length is None:
        length = len(payload)
    return HEADER.pack(VERSION, type, flags, stream_id, length) + payload


def encode_header(type: FrameType, flags: Flag | int, stream_id: int, length: int) -> bytes:
    """Just the header, for callers that send the payload separately (no copy)."""
    return HEADER.pack(VERSION, type, flags, stream_id, length)


class FrameParser:
    """Incremental parser: C{feed(bytes)} returns the complete frames seen so far.

    Works on the caller's C{bytes} with an offset and copies each payload
    once: a payload inside one chunk is one slice, a payload spread over
    several chunks is collected as a list and joined once.  Only a header
    cut in two is buffered byte-wise.  Parsing stays linear in the input.
    After a L{FrameError} the parser is poisoned and every further C{feed}
    raises again.
    """

    def __init__(self) -> None:
        self._head = bytearray()  # a partial header
        self._pending: tuple[int, int, int, int] | None = None  # header awaiting its payload
        self._parts: list[bytes | memoryview] = []
        self._need = 0
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        held = len(self._head) + sum(len(part) for part in self._parts)
        return held + (HEADER_SIZE if self._pending is not None else 0)

    def feed(self, data: bytes) -> list[Frame]:
        if self._error is not None:
            raise self._error
        try:
            return self._feed(bytes(data))
        except FrameError as e:
            self._error = e
            self._head.clear()
            self._parts = []
            self._pending = None
            raise

    def _feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        pos = 0
        end = len(data)
        unpack = HEADER.unpack_from
        head = self._head
        while pos < end:
            pending = self._pending
            if pending is not None:
                take = min(self._need, end - pos)
                # Pieces are views (no copy) until the payload is complete and joined once.
                self._parts.append(data if take == end and pos == 0 else memoryview(data)[pos : pos + take])
                pos += take
                self._need -= take
                if self._need:
                    break
                parts, self._parts = self._parts, []
                self._pending = None
                first = parts[0]
                frames.append(Frame(*pending, first if len(parts) == 1 and type(first) is bytes else b"".join(parts)))
                continue
            if head or end - pos < HEADER_SIZE:
                take = min(HEADER_SIZE - len(head), end - pos)
                head += data[pos : pos + take]
                pos += take
                if len(head) < HEADER_SIZE:
                    break
                version, ftype, flags, stream_id, length = unpack(head)
                head.clear()
            else:
                version, ftype, flags, stream_id, length = unpack(data, pos)
                pos += HEADER_SIZE
            if not (ftype == _DATA and version == VERSION and not flags & ~_KNOWN_FLAGS
                    and stream_id and length <= MAX_DATA_FRAME):
                _check_header(version, ftype, flags, stream_id, length)  # the uncommon cases
            if length and (ftype == _DATA or ftype == _CONTROL):
                if end - pos >= length:
                    frames.append(Frame(ftype, flags, stream_id, length, data[pos : pos + length]))
                    pos += length
                else:
                    self._pending = (ftype, flags, stream_id, length)
                    self._need = length
            else:
                frames.append(Frame(ftype, flags, stream_id, length, b""))
        return frames


def _check_header(version: int, ftype: int, flags: int, stream_id: int, length: int) -> None:
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version} (expected {VERSION})")
    try:
        kind = FrameType(ftype)
    except ValueError:
        raise FrameError(f"unknown frame type {ftype}") from None
    if flags & ~_KNOWN_FLAGS:
        raise FrameError(f"unknown flags 0x{flags:04x} on {kind.name} frame")
    if kind is FrameType.DATA:
        if length > MAX_DATA_FRAME:
            raise FrameError(f"DATA frame of {length} bytes exceeds limit {MAX_DATA_FRAME}")
        if stream_id == 0:
            raise FrameError("DATA frame on stream 0")
    elif kind is FrameType.CONTROL:
        if length > MAX_CONTROL_FRAME:
            raise FrameError(f"CONTROL frame of {length} bytes exceeds limit {MAX_CONTROL_FRAME}")
        if stream_id != 0:
            raise FrameError(f"CONTROL frame on stream {stream_id} (must be 0)")
    elif kind is FrameType.WINDOW_UPDATE:
        if stream_id == 0:
            raise FrameError("WINDOW_UPDATE on stream 0")
    elif stream_id != 0:
        raise FrameError(f"{kind.name} frame on stream {stream_id} (must be 0)")
