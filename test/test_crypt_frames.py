# -*- test-case-name: test.test_crypt_frames -*-
"""Encrypted records over a real L{nps.mux.Mux} pair: one record per frame, nothing stalls.

L{nps.streamcodec.CodecProtocol} hands each record to the stream as a
(header, ciphertext) sequence; L{nps.mux.MuxStream.writeSequence} sends such
a group as one frame without joining it, and keeps it whole while credit is
on its way (never when waiting could stall the stream).
"""
from __future__ import annotations

import json
from typing import Sequence
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nps.mux import INITIAL_WINDOW, MAX_SEQUENCE_FRAME, MAX_WINDOW
from nps.protocols.frames import FrameType
from nps.protocols.streamcrypt import MAX_PLAINTEXT, TAG_SIZE, Sealer, Unsealer
from nps.streamcodec import CodecProtocol, codec_for, mark_link
from test_mux import Pair, Proto, pattern

RECORD = 4 + MAX_PLAINTEXT + TAG_SIZE


def data_frame_sizes(p: Pair, stream_id: int) -> list[int]:
    return [len(f.payload) for f in p.c.sent
            if f.type == FrameType.DATA and f.stream_id == stream_id and not f.flags and f.payload]


def test_a_full_record_fits_one_sequence_frame() -> None:
    assert RECORD <= MAX_SEQUENCE_FRAME


def test_sequence_is_one_frame_unjoined() -> None:
    """A short sequence that fits the window leaves as one DATA frame carrying all its parts."""
    p = Pair()
    near, _, far, far_proto = p.open()
    near.writeSequence([b"head", b"-body-", b"tail"])
    p.pump()
    assert bytes(far_proto.received) == b"head-body-tail"
    assert data_frame_sizes(p, near.stream_id) == [14]


def test_groups_stay_whole_while_credit_is_coming() -> None:
    """Record-sized groups beyond the window wait for credit instead of being cut.

    Only the very first group may be cut: it is bigger than the initial
    window and nothing is in flight yet, so waiting would stall.
    """
    p = Pair()
    near, _, far, far_proto = p.open()
    groups = [[b"H%03d" % i, pattern(RECORD - 4, i)] for i in range(24)]
    for group in groups:
        near.writeSequence(group)
        p.pump_some(True, 100_000)  # the receiver lags behind: the window runs out
    p.pump()
    assert bytes(far_proto.received) == b"".join(b"".join(g) for g in groups)
    sizes = data_frame_sizes(p, near.stream_id)
    cut = [s for s in sizes if s != RECORD]
    assert sum(cut) == RECORD and len(cut) == 2, sizes[:4]  # the first group, at INITIAL_WINDOW
    assert cut[0] == INITIAL_WINDOW


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.integers(1, MAX_SEQUENCE_FRAME + 10), min_size=1, max_size=12),
       st.lists(st.integers(1, 400_000), min_size=1, max_size=12))
def test_sequences_never_stall(sizes: list[int], bites: list[int]) -> None:
    """Whatever the group sizes and however slowly the bytes move, everything arrives."""
    p = Pair()
    near, _, far, far_proto = p.open()
    sent = bytearray()
    for i, size in enumerate(sizes):
        body = pattern(size, i)
        near.writeSequence([body[:3], body[3:]])
        sent += body
        p.pump_some(True, bites[i % len(bites)])
        p.pump_some(False, 1 << 20)
    p.pump()
    assert bytes(far_proto.received) == bytes(sent)


def test_codec_over_a_mux_sends_each_record_as_one_frame() -> None:
    """Full records written by a CodecProtocol each arrive as one frame and decrypt whole."""
    secret = os.urandom(32)
    link = json.loads(json.dumps(mark_link({"mode": "tcp"}, crypt=True, compress=False)))
    a_codec, b_codec = codec_for(link, secret, opener=True), codec_for(link, secret, opener=False)
    assert a_codec is not None and b_codec is not None
    a_app, b_app = Proto(), Proto()
    p = Pair()
    near, _, far, _ = p.open(opener_proto=Proto(), acceptor_proto=Proto())
    a, b = CodecProtocol(a_app, a_codec), CodecProtocol(b_app, b_codec)
    a.makeConnection(near)
    near.protocol = a
    b.makeConnection(far)
    far.protocol = b
    blocks = [pattern(MAX_PLAINTEXT, i) for i in range(12)] + [b"tail"]
    for block in blocks:
        a.write(block)
        p.pump()
    a.loseWriteConnection()
    p.pump()
    assert bytes(b_app.received) == b"".join(blocks)
    sizes = data_frame_sizes(p, near.stream_id)
    assert sizes.count(RECORD) >= len(blocks) - 2, sizes
    assert sizes[-2:] == [4 + 4 + TAG_SIZE, 4 + TAG_SIZE]  # "tail", then the final record


def test_unsealer_joins_a_cut_record_once() -> None:
    """A record cut into many feeds is held as pieces and decrypts when complete."""
    sealer, unsealer = Sealer(b"k" * 32), Unsealer(b"k" * 32)
    wire = sealer.seal(pattern(100_000)) + sealer.seal(b"next")
    got: list[bytes] = []
    for i in range(0, len(wire), 7_001):
        got += unsealer.feed(wire[i:i + 7_001])
        assert unsealer.buffered <= 100_000 + 4 + TAG_SIZE
    assert got == [pattern(100_000), b"next"]
    assert unsealer.buffered == 0


def test_sequence_of_other_buffers_reaches_the_bridge_as_bytes() -> None:
    """bytearray and memoryview parts are accepted, and the bridge transport is only given bytes."""
    p = Pair()
    near, _, far, far_proto = p.open()
    written: list[object] = []
    original = p.c.transport.writeSequence

    def spy(seq: Sequence[bytes]) -> None:
        written.extend(seq)
        original(list(seq))

    p.c.transport.writeSequence = spy  # type: ignore[method-assign]
    near.mux._send_now = spy  # what the mux writes with
    near.writeSequence([bytearray(b"ab"), memoryview(b"cd"), b"ef"])  # type: ignore[list-item]
    p.pump()
    assert bytes(far_proto.received) == b"abcdef"
    assert written and all(type(buf) is bytes for buf in written)


def window_updates(p: Pair, stream_id: int) -> list[int]:
    return [f.length for f in p.s.sent if f.type == FrameType.WINDOW_UPDATE and f.stream_id == stream_id]


def test_window_grows_for_a_reader_that_keeps_up() -> None:
    """A reader that never pauses gets its window doubled at each credit, up to MAX_WINDOW.

    Over a real bridge the sender's stalls hide in the socket buffers, so
    the receiver cannot see them: a reader that keeps up is the signal.
    """
    p = Pair()
    near, _, far, far_proto = p.open()
    p.s.sent.clear()
    total = 3 * MAX_WINDOW
    for i in range(0, total, 32 * 1024):  # small writes, each taken at once: the window never runs dry
        near.write(pattern(32 * 1024, i))
        p.pump()
    assert len(far_proto.received) == total
    assert far._recv_window == MAX_WINDOW
    updates = window_updates(p, near.stream_id)
    assert len(updates) < total // (INITIAL_WINDOW // 4) // 3, updates  # far fewer than one per quarter window


def test_window_stays_small_for_a_reader_that_pauses() -> None:
    """A reader that pauses between reads keeps the window it has: only catching up from a full window grows it."""
    p = Pair()
    near, _, far, far_proto = p.open()
    for i in range(12):
        far.pauseProducing()
        near.write(pattern(INITIAL_WINDOW // 4, i))
        p.pump()
        far.resumeProducing()
        p.pump()
    assert len(far_proto.received) == 12 * (INITIAL_WINDOW // 4)
    assert far._recv_window == INITIAL_WINDOW
