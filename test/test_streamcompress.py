"""Tests for L{nps.protocols.streamcompress}: zstd chunk framing with a decompression-bomb limit."""
from __future__ import annotations

import os

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nps.protocols.streamcompress import HEADER, MAX_CHUNK, RAW, ZSTD, CompressError, Compressor, Decompressor

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = b"".join(b"%d: the quick brown fox jumps over the lazy dog\n" % i for i in range(5000))


@SETTINGS
@given(st.lists(st.one_of(st.binary(max_size=5000), st.sampled_from([TEXT[:100000], TEXT[:300]])), max_size=5),
       st.integers(1, 70000))
def test_round_trip_in_any_pieces(writes: list[bytes], cut: int) -> None:
    compressor, decompressor = Compressor(), Decompressor()
    wire = b"".join(compressor.compress(w) for w in writes)
    got = []
    for i in range(0, len(wire), cut):
        got.extend(decompressor.feed(wire[i:i + cut]))
    decompressor.eof()
    assert b"".join(got) == b"".join(writes)
    assert all(0 < len(chunk) <= MAX_CHUNK for chunk in got)


def test_text_shrinks() -> None:
    compressor = Compressor()
    wire = compressor.compress(TEXT)
    assert len(wire) < len(TEXT) // 4
    assert compressor.bytes_in == len(TEXT) and compressor.bytes_out == len(wire)


def test_random_data_goes_raw_with_little_overhead() -> None:
    data = os.urandom(200000)
    wire = Compressor().compress(data)
    assert len(wire) <= len(data) + HEADER.size * 4
    assert wire[0] == RAW


def bomb(claimed_size: int) -> bytes:
    payload = zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * claimed_size)
    return HEADER.pack(ZSTD << 24 | len(payload)) + payload


def test_decompression_bomb_is_refused_before_inflating() -> None:
    """A frame claiming more than one chunk is refused from its header."""
    with pytest.raises(CompressError, match="claims"):
        Decompressor().feed(bomb(MAX_CHUNK + 1))
    assert Decompressor().feed(bomb(MAX_CHUNK)) == [b"\0" * MAX_CHUNK]


def test_frame_without_content_size_is_refused() -> None:
    payload = zstandard.ZstdCompressor(write_content_size=False).compress(b"abc" * 100)
    with pytest.raises(CompressError, match="size must be stated"):
        Decompressor().feed(HEADER.pack(ZSTD << 24 | len(payload)) + payload)


@pytest.mark.parametrize("wire,message", [
    (HEADER.pack(7 << 24 | 5) + b"12345", "unknown chunk kind"),
    (HEADER.pack(RAW << 24 | (MAX_CHUNK + 1)), "out of range"),
    (HEADER.pack(RAW << 24), "out of range"),
    (HEADER.pack(ZSTD << 24 | 5) + b"12345", "bad zstd frame"),
])
def test_malformed_chunks(wire: bytes, message: str) -> None:
    with pytest.raises(CompressError, match=message):
        Decompressor().feed(wire)


def test_eof_inside_a_chunk() -> None:
    decompressor = Decompressor()
    decompressor.feed(Compressor().compress(TEXT)[:10])
    with pytest.raises(CompressError, match="inside a chunk"):
        decompressor.eof()
