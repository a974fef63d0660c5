# -*- test-case-name: test.test_legacy_codecs -*-
"""The snappy framing format as a stream codec (NPS 0.26's C{compress=true}).

NPS wraps a stream in Go's snappy C{Writer}/C{Reader}: a stream identifier
chunk, then chunks of C{type:u8 | length:u24 LE | body}, the body of a data
chunk being a masked CRC-32C and the (compressed or plain) bytes of at
most 64 KiB.  cramjam does the compression and the checksums; this module
only cuts the stream into whole chunks, so a stream can be decoded as its
bytes arrive.
"""
from __future__ import annotations

import cramjam

STREAM_ID = b"\xff\x06\x00\x00sNaPpY"
#: Largest chunk body the format allows (64 KiB of data, compressed worst case, plus the CRC).
MAX_CHUNK = 65536 + 65536 // 6 + 32 + 4
#: Largest plain data in one chunk.
MAX_DATA = 65536


class SnappyError(ValueError):
    """The peer's snappy stream is malformed; C{str()} says how."""


class SnappyEncoder:
    """Compresses each write into complete chunks (the identifier goes first, once)."""

    def __init__(self) -> None:
        self._started = False

    def encode(self, data: bytes) -> bytes:
        if not data:
            return b""
        framed = bytes(cramjam.snappy.compress(data))
        if self._started:
            return framed[len(STREAM_ID):]
        self._started = True
        return framed


class SnappyDecoder:
    """Turns the bytes of a framed snappy stream into the plain bytes, chunk by chunk."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._seen_id = False

    def decode(self, data: bytes) -> bytes:
        """Plain bytes of the chunks completed by C{data}; raise L{SnappyError} on a bad stream."""
        self._buf += data
        buf = self._buf
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 4:
            kind = buf[pos]
            size = buf[pos + 1] | buf[pos + 2] << 8 | buf[pos + 3] << 16
            if size > MAX_CHUNK:
                raise SnappyError(f"snappy chunk of {size} bytes is too large")
            if len(buf) - pos < 4 + size:
                break
            chunk = bytes(buf[pos:pos + 4 + size])
            pos += 4 + size
            if kind == 0xFF:
                if chunk != STREAM_ID:
                    raise SnappyError("bad snappy stream identifier")
                self._seen_id = True
            elif kind in (0x00, 0x01):
                if not self._seen_id:
                    raise SnappyError("snappy data before the stream identifier")
                try:
                    out.append(bytes(cramjam.snappy.decompress(STREAM_ID + chunk)))
                except Exception as e:  # cramjam raises its own DecompressionError
                    raise SnappyError(f"bad snappy chunk: {e}") from None
            elif 0x02 <= kind <= 0x7F:
                raise SnappyError(f"reserved snappy chunk type {kind:#x}")
            # 0x80..0xfe: skippable padding
        del buf[:pos]
        return b"".join(out)
