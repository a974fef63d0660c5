"""Sans-io codecs of the NPS 0.26 wire: handshake, nps-mux frames, link header, snappy, TLS."""
from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nps.legacy.crypt import SnappyCodec, TlsCodec, client_context, server_context
from nps.protocols import legacy_handshake as lh
from nps.protocols import legacy_mux as lm
from nps.protocols.legacy_link import LinkError, LinkReader, encode_link, from_legacy, to_legacy
from nps.protocols.legacy_snappy import SnappyDecoder, SnappyEncoder, SnappyError

#: What the real npc 0.26.10 sends first (captured from the binary).
REAL_HELLO = b"TST\x06\x00\x00\x000.26.0\x07\x00\x00\x000.26.10"


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points + [len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


def test_md5_proofs() -> None:
    """The version and key proofs are md5 hex, as the real npc expects."""
    assert lh.server_version_proof() == lh.md5_hex("0.26.0")
    assert lh.md5_hex("abc") == b"900150983cd24fb0d6963f7d28e17f72"
    assert lh.client_hello() == REAL_HELLO


@given(st.lists(st.integers(0, 200), max_size=8), st.sampled_from(sorted(lh.WORK_TYPES)), st.binary(max_size=20))
def test_handshake_any_split(cuts: list[int], work: bytes, rest: bytes) -> None:
    """However the bytes arrive, the server parser yields hello, key proof, work type and the rest."""
    wire = REAL_HELLO + lh.md5_hex("vkey") + work + rest
    parser = lh.LegacyServerHandshake()
    events = []
    for piece in _split(wire, cuts):
        if parser.done:
            assert isinstance(events[-1], lh.WorkType)
            events[-1] = lh.WorkType(events[-1].flag, events[-1].rest + piece)
            continue
        events.extend(parser.feed(piece))
    assert events[0] == lh.Hello("0.26.0", "0.26.10")
    assert events[1] == lh.KeyProof(lh.md5_hex("vkey"))
    assert events[2] == lh.WorkType(work, rest)


@pytest.mark.parametrize("wire, message", [
    (b"GET / HTTP/1.1\r\n", "does not start with"),
    (b"TST\xff\xff\xff\x7f", "outside 1..64"),
    (b"TST\x00\x00\x00\x00", "outside 1..64"),
    (b"TST\x41\x00\x00\x00" + b"x" * 65, "outside 1..64"),
    (b"TST\x01\x00\x00\x00\x01\x01\x00\x00\x00a", "control characters"),
    (REAL_HELLO + b"z" * 32, "32 hex digits"),
    (REAL_HELLO + lh.md5_hex("k") + b"evil", "unknown work type"),
])
def test_handshake_rejects(wire: bytes, message: str) -> None:
    """Bad magic, oversized or empty lengths, bad proofs and unknown work types are named errors."""
    with pytest.raises(lh.LegacyHandshakeError, match=message):
        lh.LegacyServerHandshake().feed(wire)


def test_message_reader_conf_and_limits() -> None:
    """Config-mode messages parse incrementally; a blob above the limit is refused."""
    body = json.dumps({"Mode": "tcp"}).encode()
    wire = b"task" + lh.len_content(body) + b"stus" + lh.md5_hex("k")
    reader = lh.LegacyMessageReader()
    out = []
    for byte in wire:
        reader.feed(bytes([byte]))
        message = reader.conf()
        if message is not None:
            out.append(message)
    assert out == [lh.ConfMessage(b"task", body), lh.ConfMessage(b"stus", lh.md5_hex("k"))]
    reader = lh.LegacyMessageReader(b"task" + struct.pack("<i", lh.MAX_MESSAGE + 1))
    with pytest.raises(lh.LegacyHandshakeError, match="outside"):
        reader.conf()
    with pytest.raises(lh.LegacyHandshakeError, match="unknown config message"):
        lh.LegacyMessageReader(b"nope").conf()
    assert lh.status_list(["a", "b"]) == b"\x08\x00\x00\x00a*#*b*#*"


@given(st.integers(0, lm.MAX_WINDOW), st.integers(0, lm.MAX_WINDOW), st.booleans())
def test_window_word_roundtrip(max_size: int, done: int, wait: bool) -> None:
    """The msgSendOk word packs wait, max size and bytes read losslessly."""
    assert lm.unpack_window(lm.pack_window(max_size, done, wait)) == (max_size, done, wait)


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(-2**31, 2**31 - 1), st.binary(min_size=1, max_size=9000)), max_size=5),
       st.lists(st.integers(0, 40000), max_size=6))
def test_mux_frames_roundtrip(messages: list[tuple[int, bytes]], cuts: list[int]) -> None:
    """Messages split into part frames parse back, whatever the read boundaries."""
    wire = b"".join(b"".join(lm.encode_message(sid, data)) for sid, data in messages)
    wire += lm.encode(lm.MSG_SEND_OK, 7, window=lm.pack_window(1000, 5)) + lm.encode(lm.NEW_CONN, 3)
    parser = lm.MuxFrameParser()
    frames = [f for piece in _split(wire, cuts) for f in parser.feed(piece)]
    rebuilt: list[tuple[int, bytes]] = []
    current = b""
    for frame in frames[:-2]:
        assert len(frame.payload) <= lm.MAX_SEGMENT
        current += frame.payload
        if frame.flag == lm.NEW_MSG:
            rebuilt.append((frame.stream_id, current))
            current = b""
    assert rebuilt == messages
    assert frames[-2] == lm.MuxFrame(lm.MSG_SEND_OK, 7, window=lm.pack_window(1000, 5))
    assert frames[-1] == lm.MuxFrame(lm.NEW_CONN, 3)
    assert parser.buffered == 0


def test_mux_frame_errors() -> None:
    """Unknown flags and oversized segments are protocol errors; empty payloads cannot be encoded."""
    with pytest.raises(lm.MuxFrameError, match="unknown"):
        list(lm.MuxFrameParser().feed(b"\x09\x00\x00\x00\x00"))
    with pytest.raises(lm.MuxFrameError, match="at most 4085"):
        list(lm.MuxFrameParser().feed(b"\x03\x01\x00\x00\x00" + struct.pack("<H", 4086)))
    with pytest.raises(ValueError):
        lm.encode(lm.NEW_MSG, 1, b"")


def test_real_ping_frame() -> None:
    """A ping as the real npc sends it (captured) parses, with id -1."""
    wire = b"\x00\xff\xff\xff\xff\x1e\x002026-11-25T17:01:22.518972532Z"
    (frame,) = list(lm.MuxFrameParser().feed(wire))
    assert frame == lm.MuxFrame(lm.PING, -1, b"2026-11-25T17:01:22.518972532Z")


def test_link_translation() -> None:
    """Our links become NPS Link JSON; NPS links become ours; bad ones are refused by name."""
    legacy = to_legacy({"mode": "udp", "target": "127.0.0.1:53", "remote": "1.2.3.4:5"}, crypt=True)
    assert legacy == {"ConnType": "udp", "Host": "127.0.0.1:53", "Crypt": True, "Compress": False,
                      "LocalProxy": False, "RemoteAddr": "1.2.3.4:5", "Option": {"Timeout": 5_000_000_000}}
    assert to_legacy({"mode": "socks5", "target": "h:1"})["ConnType"] == "tcp"
    with pytest.raises(LinkError):
        to_legacy({"mode": "file"})
    reader = LinkReader()
    wire = encode_link(legacy) + b"payload"
    assert reader.feed(wire[:5]) is None
    link, rest = reader.feed(wire[5:])  # type: ignore[misc]
    assert rest == b"payload" and from_legacy(link)["mode"] == "udp"
    with pytest.raises(LinkError, match="ConnType"):
        from_legacy({"ConnType": "ftp", "Host": "x:1"})
    with pytest.raises(LinkError, match="outside"):
        LinkReader().feed(struct.pack("<i", 10**7))
    with pytest.raises(LinkError, match="object"):
        LinkReader().feed(struct.pack("<i", 2) + b"[]")


@settings(max_examples=30)
@given(st.lists(st.binary(max_size=70000), max_size=4), st.lists(st.integers(0, 200000), max_size=6))
def test_snappy_stream_roundtrip(writes: list[bytes], cuts: list[int]) -> None:
    """Snappy-framed writes decode to the same bytes, however the stream is cut."""
    encoder, decoder = SnappyEncoder(), SnappyDecoder()
    wire = b"".join(encoder.encode(w) for w in writes)
    assert b"".join(decoder.decode(piece) for piece in _split(wire, cuts)) == b"".join(writes)


def test_snappy_errors() -> None:
    """A corrupt checksum, a reserved chunk or a missing identifier are named errors."""
    wire = bytearray(SnappyEncoder().encode(b"hello" * 100))
    wire[-1] ^= 0xFF
    with pytest.raises(SnappyError):
        SnappyDecoder().decode(bytes(wire))
    with pytest.raises(SnappyError, match="reserved"):
        SnappyDecoder().decode(b"\xff\x06\x00\x00sNaPpY\x02\x01\x00\x00x")
    with pytest.raises(SnappyError, match="identifier"):
        SnappyDecoder().decode(b"\x01\x05\x00\x00abcdx")


def test_tls_codec_pair() -> None:
    """Two TLS codecs (server with the in-memory certificate, client verifying nothing) talk."""
    server, client = TlsCodec(server_context(), server=True), TlsCodec(client_context(), server=False)
    early = client.encode(b"sent before the handshake")
    assert early == b""
    to_server = client.start()
    got_server, got_client = b"", b""
    for _ in range(10):
        plain, to_client = server.decode(to_server) if to_server else (b"", b"")
        got_server += plain
        plain, to_server = client.decode(to_client) if to_client else (b"", b"")
        got_client += plain
        if got_server:
            break
    assert got_server == b"sent before the handshake"
    plain, _ = client.decode(server.encode(b"reply"))
    assert plain == b"reply"


def test_snappy_codec() -> None:
    """The compress codec is the snappy stream both ways."""
    a, b = SnappyCodec(), SnappyCodec()
    assert b.decode(a.encode(b"x" * 1000)) == (b"x" * 1000, b"")


@settings(max_examples=50)
@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=6), st.lists(st.integers(0, 20000), max_size=6))
def test_udp5_reply_stream(datagrams: list[bytes], cuts: list[int]) -> None:
    """NPS's udp5 replies (int32 length + datagram, back to back) split back into the datagrams."""
    from nps.protocols.legacy_link import LengthPrefixedParser

    wire = b"".join(struct.pack("<i", len(d)) + d for d in datagrams)
    parser = LengthPrefixedParser()
    assert [d for piece in _split(wire, cuts) for d in parser.feed(piece)] == datagrams
    with pytest.raises(LinkError, match="outside"):
        LengthPrefixedParser().feed(struct.pack("<i", -1))


@settings(max_examples=200)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5))
def test_parsers_fail_only_with_their_errors(garbage: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes make the parsers return items or raise their own named error, nothing else."""
    handshake = lh.LegacyServerHandshake()
    frames = lm.MuxFrameParser()
    messages = lh.LegacyMessageReader()
    snappy = SnappyDecoder()
    for piece in _split(b"TST" + garbage, cuts):
        try:
            if not handshake.done:
                handshake.feed(piece)
        except lh.LegacyHandshakeError:
            break
    for piece in _split(garbage, cuts):
        try:
            list(frames.feed(piece))
        except lm.MuxFrameError:
            break
    for piece in _split(garbage, cuts):
        try:
            messages.feed(piece)
            messages.conf()
        except lh.LegacyHandshakeError:
            break
    for piece in _split(garbage, cuts):
        try:
            snappy.decode(piece)
        except SnappyError:
            break
    try:
        LinkReader().feed(garbage)
    except LinkError:
        pass
