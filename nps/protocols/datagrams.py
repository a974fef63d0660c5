# -*- test-case-name: test.test_datagrams -*-
"""Sans-io framing of UDP datagrams inside a byte stream (the C{udp} mode).

A mux stream is a byte stream, so datagram boundaries travel explicitly::

    length:u16 (big-endian)  payload (length bytes)

A 0-byte datagram is a valid frame (just the two length bytes).  The
largest frame payload is 65535 bytes, more than any UDP datagram can carry
(65507 over IPv4, 65527 over IPv6).

L{DatagramParser} takes bytes as they arrive, split anywhere, and returns
whole datagrams with their boundaries kept.  It keeps at most one partial
frame and never copies the rest of its buffer per frame (no quadratic
parsing).
"""
from __future__ import annotations

import struct

__all__ = [
    "LENGTH",
    "MAX_DATAGRAM",
    "DatagramFrameError",
    "DatagramParser",
    "encode_datagram",
]

LENGTH = struct.Struct("!H")
_LENGTH_SIZE = LENGTH.size
#: Largest payload a frame can describe (the u16 length field).
MAX_DATAGRAM = 0xFFFF


class DatagramFrameError(ValueError):
    """A datagram frame that cannot be encoded or accepted."""


def encode_datagram(datagram: bytes, max_size: int = MAX_DATAGRAM) -> bytes:
    """Frame one datagram: its u16 length, then its bytes.

    @raise DatagramFrameError: C{datagram} is longer than C{max_size}.
    """
    size = len(datagram)
    if size > max_size:
        raise DatagramFrameError(f"datagram of {size} bytes is larger than the maximum of {max_size}")
    return LENGTH.pack(size) + datagram


class DatagramParser:
    """Incremental parser of length-prefixed datagrams.

    @ivar max_size: largest accepted payload (at most L{MAX_DATAGRAM}); a
        larger length prefix raises L{DatagramFrameError} and the parser
        refuses further input.
    """

    def __init__(self, max_size: int = MAX_DATAGRAM) -> None:
        if not 0 <= max_size <= MAX_DATAGRAM:
            raise ValueError(f"max_size must be within 0..{MAX_DATAGRAM}, not {max_size}")
        self.max_size = max_size
        self._buffer = bytearray()
        self._failed: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame that is not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next bytes of the stream; return the datagrams they complete.

        @raise DatagramFrameError: a length prefix above C{max_size} (this and
            every later call raise).
        """
        if self._failed is not None:
            raise DatagramFrameError(self._failed)
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data  # fast path: nothing pending, parse the new bytes in place
        out: list[bytes] = []
        end = len(view)
        pos = 0
        while end - pos >= _LENGTH_SIZE:
            (size,) = LENGTH.unpack_from(view, pos)
            if size > self.max_size:
                self._failed = (f"datagram frame announces {size} bytes, more than the maximum of "
                                f"{self.max_size}")
                self._buffer = bytearray()
                raise DatagramFrameError(self._failed)
            stop = pos + _LENGTH_SIZE + size
            if stop > end:
                break
            out.append(bytes(view[pos + _LENGTH_SIZE:stop]))
            pos = stop
        if view is buffer:
            del buffer[:pos]  # once per feed: what is left is one partial frame
        elif pos < end:
            self._buffer = bytearray(view[pos:])
        return out

    def finish(self) -> None:
        """The stream ended: check that no partial frame is left.

        @raise DatagramFrameError: the stream ended inside a frame.
        """
        if self._buffer:
            held = len(self._buffer)
            self._buffer = bytearray()
            raise DatagramFrameError(f"stream ended inside a datagram frame ({held} bytes of it received)")
