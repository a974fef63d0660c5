# -*- test-case-name: test.test_legacy_codecs -*-
"""The frames of nps-mux, the multiplexer of NPS 0.26, with no I/O.

A frame is C{flag:u8 | id:int32 LE} followed by

  - C{len:u16 LE | payload} for ping, ping-return and the two data flags
    (payload at most L{MAX_SEGMENT} bytes, never empty);
  - C{window:u64 LE} for L{MSG_SEND_OK} (see L{pack_window});
  - nothing for the stream open / open-ok / open-fail / close flags.

A write of the sender becomes one or more data frames: every one but the
last is L{NEW_MSG_PART}, the last L{NEW_MSG}, so the receiver can keep a
write (a datagram) whole.
"""
from __future__ import annotations

import struct
from typing import Iterator

import attrs

PING = 0
NEW_CONN_OK = 1
NEW_CONN_FAIL = 2
NEW_MSG = 3
NEW_MSG_PART = 4
MSG_SEND_OK = 5
NEW_CONN = 6
CONN_CLOSE = 7
PING_RETURN = 8
FLAG_NAMES = {PING: "ping", NEW_CONN_OK: "newConnOk", NEW_CONN_FAIL: "newConnFail", NEW_MSG: "newMsg",
              NEW_MSG_PART: "newMsgPart", MSG_SEND_OK: "msgSendOk", NEW_CONN: "newConn",
              CONN_CLOSE: "connClose", PING_RETURN: "pingReturn"}
_WITH_PAYLOAD = frozenset({PING, PING_RETURN, NEW_MSG, NEW_MSG_PART})
#: The id of ping frames.
PING_ID = -1
#: Largest payload of one frame (4096 - 2 - 4 - 4 - 1).
MAX_SEGMENT = 4085
#: Window both ends assume before the first L{MSG_SEND_OK}.
INITIAL_WINDOW = MAX_SEGMENT * 30
_MASK31 = (1 << 31) - 1
#: Largest window the 31-bit field can carry.
MAX_WINDOW = _MASK31

_HEADER = struct.Struct("<Bi")
_LEN = struct.Struct("<H")
_WINDOW = struct.Struct("<Q")


class MuxFrameError(ValueError):
    """The peer sent a frame nps-mux does not allow; C{str()} says which."""


@attrs.frozen
class MuxFrame:
    """One nps-mux frame: C{payload} for data and pings, C{window} for L{MSG_SEND_OK}."""

    flag: int
    stream_id: int
    payload: bytes = b""
    window: int = 0


def pack_window(max_size: int, done: int, wait: bool = False) -> int:
    """The 64-bit window word: bit 63 C{wait}, bits 32..62 C{max_size}, bits 0..30 C{done}."""
    return (int(wait) << 63) | ((max_size & _MASK31) << 32) | (done & _MASK31)


def unpack_window(word: int) -> tuple[int, int, bool]:
    """Inverse of L{pack_window}: C{(max_size, done, wait)}."""
    return (word >> 32) & _MASK31, word & _MASK31, bool((word >> 63) & 1)


def encode(flag: int, stream_id: int, payload: bytes = b"", window: int = 0) -> bytes:
    """One frame; C{payload} must fit one segment (see L{encode_message} for more)."""
    header = _HEADER.pack(flag, stream_id)
    if flag in _WITH_PAYLOAD:
        if not 0 < len(payload) <= MAX_SEGMENT:
            raise ValueError(f"nps-mux payload must be 1..{MAX_SEGMENT} bytes, not {len(payload)}")
        return header + _LEN.pack(len(payload)) + payload
    if flag == MSG_SEND_OK:
        return header + _WINDOW.pack(window)
    return header


def data_header(flag: int, stream_id: int, size: int) -> bytes:
    """The 7 header bytes of a data frame carrying C{size} bytes."""
    return _HEADER.pack(flag, stream_id) + _LEN.pack(size)


def encode_message(stream_id: int, data: bytes) -> list[bytes]:
    """Buffers for one write: segments of L{MAX_SEGMENT}, all but the last marked part."""
    out: list[bytes] = []
    view = memoryview(data)
    size = len(data)
    offset = 0
    while offset < size:
        end = min(offset + MAX_SEGMENT, size)
        flag = NEW_MSG if end == size else NEW_MSG_PART
        out.append(data_header(flag, stream_id, end - offset))
        out.append(bytes(view[offset:end]))
        offset = end
    return out


class MuxFrameParser:
    """Turns the bytes of an nps-mux connection into L{MuxFrame}s.

    Parsing keeps an offset into one buffer, so a large read costs one
    copy per frame, not one per remaining byte.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> Iterator[MuxFrame]:
        """Yield the frames completed by C{data}; raise L{MuxFrameError} on a bad one."""
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data
        buf = self._buf
        end = len(buf)
        while True:
            pos = self._pos
            if end - pos < 5:
                return
            flag, stream_id = _HEADER.unpack_from(buf, pos)
            if flag in _WITH_PAYLOAD:
                if end - pos < 7:
                    return
                (size,) = _LEN.unpack_from(buf, pos + 5)
                if size > MAX_SEGMENT:
                    raise MuxFrameError(f"{FLAG_NAMES[flag]} frame of {size} bytes (at most {MAX_SEGMENT})")
                if end - pos < 7 + size:
                    return
                self._pos = pos + 7 + size
                yield MuxFrame(flag, stream_id, bytes(buf[pos + 7:pos + 7 + size]))
            elif flag == MSG_SEND_OK:
                if end - pos < 13:
                    return
                (window,) = _WINDOW.unpack_from(buf, pos + 5)
                self._pos = pos + 13
                yield MuxFrame(flag, stream_id, window=window)
            elif flag in FLAG_NAMES:
                self._pos = pos + 5
                yield MuxFrame(flag, stream_id)
            else:
                raise MuxFrameError(f"unknown nps-mux flag {flag}")
