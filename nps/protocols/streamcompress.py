# -*- test-case-name: test.test_streamcompress -*-
"""Sans-io zstd chunk framing for one tunnel stream (C{compress=true}).

What a side writes is cut into chunks of at most L{MAX_CHUNK} bytes, each
compressed on its own (zstd level 1: every write burst is flushed, nothing
waits for more data) and framed as::

    kind:u8  length:u24  payload

C{kind} 0 is a raw chunk (sent when compressing would not save bytes, e.g.
for data that is already compressed or encrypted), 1 a zstd frame whose
header must state its content size.  The receiver refuses a frame that
claims more than L{MAX_CHUNK} bytes before decompressing anything, so a
decompression bomb costs it at most one chunk of memory.
"""
from __future__ import annotations

import struct

import zstandard

#: Largest uncompressed chunk.
MAX_CHUNK = 64 * 1024
HEADER = struct.Struct("!I")
RAW = 0
ZSTD = 1
LEVEL = 1
#: Chunks smaller than this are sent raw (compressing them rarely pays).
MIN_COMPRESS = 64
#: Largest payload a peer may send: a chunk that did not shrink goes raw.
_MAX_PAYLOAD = MAX_CHUNK


class CompressError(Exception):
    """The peer's compressed stream is malformed; C{str()} says how."""


def _frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind << 24 | len(payload)) + payload


class Compressor:
    """Compresses what one side writes."""

    def __init__(self, level: int = LEVEL) -> None:
        self._zstd = zstandard.ZstdCompressor(level=level, write_content_size=True)
        #: Bytes given and bytes produced (for logs and the benchmark).
        self.bytes_in = 0
        self.bytes_out = 0

    def _chunk(self, chunk: bytes) -> bytes:
        if len(chunk) >= MIN_COMPRESS:
            packed = self._zstd.compress(chunk)
            if len(packed) < len(chunk):
                return _frame(ZSTD, packed)
        return _frame(RAW, chunk)

    def compress(self, data: bytes) -> bytes:
        """The framed chunks carrying C{data}."""
        if not data:
            return b""
        if len(data) <= MAX_CHUNK:
            out = self._chunk(data)
        else:
            view = memoryview(data)
            out = b"".join(self._chunk(bytes(view[i:i + MAX_CHUNK])) for i in range(0, len(data), MAX_CHUNK))
        self.bytes_in += len(data)
        self.bytes_out += len(out)
        return out


class Decompressor:
    """Undoes L{Compressor}.  Feed bytes, get the original chunks."""

    def __init__(self) -> None:
        self._zstd = zstandard.ZstdDecompressor()
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The chunks complete so far.  @raise CompressError: on a malformed or oversized chunk."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        offset = 0
        size = len(buf)
        while size - offset >= HEADER.size:
            (word,) = HEADER.unpack_from(buf, offset)
            kind, length = word >> 24, word & 0xFFFFFF
            if kind not in (RAW, ZSTD):
                raise CompressError(f"unknown chunk kind {kind}")
            if length > _MAX_PAYLOAD or length == 0:
                raise CompressError(f"chunk length {length} out of range")
            end = offset + HEADER.size + length
            if end > size:
                break
            payload = bytes(buf[offset + HEADER.size:end])
            offset = end
            chunk = payload if kind == RAW else self._inflate(payload)
            if chunk:
                out.append(chunk)
        if offset:
            del buf[:offset]
        return out

    def _inflate(self, payload: bytes) -> bytes:
        try:
            claimed = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as e:
            raise CompressError(f"bad zstd frame: {e}") from None
        if claimed < 0 or claimed > MAX_CHUNK:
            raise CompressError(f"zstd frame claims {claimed} bytes (limit {MAX_CHUNK}, size must be stated)")
        try:
            chunk = self._zstd.decompress(payload, max_output_size=MAX_CHUNK)
        except zstandard.ZstdError as e:
            raise CompressError(f"bad zstd frame: {e}") from None
        if len(chunk) != claimed:
            raise CompressError("zstd frame size does not match its header")
        return chunk

    def eof(self) -> None:
        """The stream ended.  @raise CompressError: inside a chunk."""
        if self._buf:
            raise CompressError(f"stream ended inside a chunk ({len(self._buf)} bytes left)")
