"""Tests for L{nps.protocols.streamcrypt}, the handshake's key exchange and L{nps.streamcodec}, with no I/O."""
from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from nps.protocols import handshake
from nps.protocols.handshake import HELLO, LENGTH, MAGIC, ClientHandshake, HandshakeError, ServerHandshake, key_id
from nps.protocols.streamcrypt import (
    FINAL,
    HEADER,
    MAX_PLAINTEXT,
    TAG_SIZE,
    CryptError,
    Sealer,
    Unsealer,
    new_salt,
    stream_keys,
)
from nps.streamcodec import CodecError, CodecProtocol, codec_for, mark_link

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = bytes(range(32))
VKEY = "vkey-for-the-crypt-tests-0123"


def pair() -> tuple[Sealer, Unsealer]:
    return Sealer(KEY), Unsealer(KEY)


@SETTINGS
@given(st.lists(st.binary(max_size=3 * MAX_PLAINTEXT // 2), max_size=5), st.integers(1, 70000))
def test_round_trip_in_any_pieces(writes: list[bytes], cut: int) -> None:
    """Whatever is written comes out in order, however the records are split on the way."""
    sealer, unsealer = pair()
    wire = b"".join(sealer.seal(w) for w in writes) + sealer.close()
    got = []
    for i in range(0, len(wire), cut):
        got.extend(unsealer.feed(wire[i:i + cut]))
    unsealer.eof()
    assert b"".join(got) == b"".join(writes)
    assert all(0 < len(p) <= MAX_PLAINTEXT for p in got)


def test_plaintext_is_not_on_the_wire() -> None:
    sealer, _ = pair()
    marker = b"SECRET-MARKER-" + os.urandom(8).hex().encode()
    wire = sealer.seal(marker * 10)
    assert marker not in wire
    assert len(wire) == len(marker) * 10 + HEADER.size + TAG_SIZE


def test_same_plaintext_twice_encrypts_differently() -> None:
    """Counter nonces: two records of the same bytes differ."""
    sealer, _ = pair()
    assert sealer.seal(b"x" * 100) != sealer.seal(b"x" * 100)


@pytest.mark.parametrize("position", [0, 3, 4, 10, -1])
def test_any_flipped_bit_fails_authentication(position: int) -> None:
    sealer, unsealer = pair()
    wire = bytearray(sealer.seal(b"hello world" * 20) + sealer.close())
    wire[position] ^= 0x01
    with pytest.raises(CryptError):
        unsealer.feed(bytes(wire))
        unsealer.eof()


def test_wrong_key_fails() -> None:
    wire = Sealer(KEY).seal(b"data")
    with pytest.raises(CryptError, match="failed authentication"):
        Unsealer(bytes(32)).feed(wire)


def test_reordered_or_replayed_records_fail() -> None:
    sealer, unsealer = pair()
    first, second = sealer.seal(b"one"), sealer.seal(b"two")
    with pytest.raises(CryptError):
        unsealer.feed(second + first)
    sealer, unsealer = pair()
    first = sealer.seal(b"one")
    assert unsealer.feed(first) == [b"one"]
    with pytest.raises(CryptError):
        unsealer.feed(first)


def test_truncation_is_detected() -> None:
    """A stream that ends without its final record (an injected FIN) is reported."""
    sealer, unsealer = pair()
    unsealer.feed(sealer.seal(b"part of the data"))
    with pytest.raises(CryptError, match="truncated"):
        unsealer.eof()


def test_forged_final_flag_fails() -> None:
    sealer, unsealer = pair()
    wire = bytearray(sealer.seal(b"abc"))
    wire[0] |= FINAL >> 24
    with pytest.raises(CryptError):
        unsealer.feed(bytes(wire))


def test_data_after_final_record_fails() -> None:
    sealer, unsealer = pair()
    wire = sealer.close()
    with pytest.raises(CryptError, match="after the final"):
        unsealer.feed(wire + Sealer(KEY).seal(b"more"))
    with pytest.raises(CryptError):
        sealer.seal(b"late")


@pytest.mark.parametrize("length", [0, TAG_SIZE - 1, MAX_PLAINTEXT + TAG_SIZE + 1, 0x7FFFFFFF])
def test_record_lengths_out_of_range_fail_at_once(length: int) -> None:
    """An absurd length is refused from its header alone (nothing is buffered for it)."""
    with pytest.raises(CryptError, match="out of range"):
        Unsealer(KEY).feed(HEADER.pack(length))


def test_stream_keys_by_direction_and_salt() -> None:
    secret = os.urandom(32)
    salt = new_salt()
    opener = stream_keys(secret, salt, opener=True)
    acceptor = stream_keys(secret, salt, opener=False)
    assert opener == (acceptor[1], acceptor[0])
    assert opener[0] != opener[1]
    assert stream_keys(secret, new_salt(), opener=True) != opener
    assert stream_keys(os.urandom(32), salt, opener=True) != opener
    with pytest.raises(CryptError):
        stream_keys(secret, "zz", opener=True)
    with pytest.raises(CryptError):
        stream_keys(secret, "00" * 4, opener=True)


# -- key exchange in the handshake -------------------------------------------


def run_handshake(client_kx: bool = True, tamper: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """Drive a client and a server; C{tamper(direction, bytes)} may change bytes in flight."""
    client = ClientHandshake(VKEY, 1, {"role": "client"}, key_exchange=client_kx)
    server = ServerHandshake(1, {key_id(VKEY): VKEY}.get)
    tamper = tamper or (lambda direction, data: data)
    out, result = server.feed(tamper("c2s", client.hello()))
    assert result is None
    to_server, result = client.feed(tamper("s2c", out))
    assert result is None
    out, server_result = server.feed(tamper("c2s", to_server))
    assert server_result is not None
    _, client_result = client.feed(tamper("s2c", out + server.accept({"client_id": 3, "crypt": True})))
    assert client_result is not None
    return client_result, server_result, json.loads(to_server[LENGTH.size:])


def test_key_exchange_gives_both_sides_the_same_secret() -> None:
    client_result, server_result, sent = run_handshake()
    assert client_result.secret is not None and len(client_result.secret) == 32
    assert client_result.secret == server_result.secret
    assert "kx" in sent and "kx" in client_result.message
    assert client_result.secret.hex() not in json.dumps(sent)


def test_every_session_has_a_new_secret() -> None:
    assert run_handshake()[0].secret != run_handshake()[0].secret


def test_client_without_key_exchange_still_works() -> None:
    """An npc that does not send "kx" (older) logs in as before, with no stream secret."""
    client_result, server_result, sent = run_handshake(client_kx=False)
    assert client_result.secret is None and server_result.secret is None
    assert "kx" not in sent and "kx" not in client_result.message


def _swap_json(data: bytes, key: str, value: Any) -> bytes:
    body = json.loads(data[LENGTH.size:])
    body[key] = value
    raw = json.dumps(body).encode()
    return LENGTH.pack(len(raw)) + raw


def test_swapped_client_key_is_refused() -> None:
    """Someone without the vkey who swaps the client's public key breaks its proof."""
    def tamper(direction: str, data: bytes) -> bytes:
        if direction == "c2s" and data[:2] != MAGIC[:2] and b'"kx"' in data:
            return _swap_json(data, "kx", os.urandom(32).hex())
        return data
    with pytest.raises(HandshakeError, match="wrong vkey"):
        run_handshake(tamper=tamper)


def test_stripped_client_key_is_refused() -> None:
    """Downgrade: dropping "kx" from the client's message breaks its (v2) proof."""
    def tamper(direction: str, data: bytes) -> bytes:
        if direction == "c2s" and b'"kx"' in data:
            body = json.loads(data[LENGTH.size:])
            del body["kx"]
            raw = json.dumps(body).encode()
            return LENGTH.pack(len(raw)) + raw
        return data
    with pytest.raises(HandshakeError, match="wrong vkey"):
        run_handshake(tamper=tamper)


@pytest.mark.parametrize("field,value", [("kx", None), ("crypt", False)])
def test_tampered_server_reply_is_refused(field: str, value: Any) -> None:
    """The server's key and its flags (crypt) are covered by its proof."""
    def tamper(direction: str, data: bytes) -> bytes:
        if direction == "s2c" and b'"proof"' in data:
            start = data.index(b"{") - LENGTH.size
            head, reply = data[:start], data[start:]
            if value is None:
                return head + _swap_json(reply, field, os.urandom(32).hex())
            return head + _swap_json(reply, field, value)
        return data
    with pytest.raises(HandshakeError, match="failed to prove"):
        run_handshake(tamper=tamper)


def test_client_requires_the_server_key() -> None:
    client = ClientHandshake(VKEY, 1, {}, key_exchange=True)
    client.feed(HELLO.pack(MAGIC, 1, b"S" * 32))
    reply = json.dumps({"ok": True, "proof": "00"}).encode()
    with pytest.raises(HandshakeError, match="did not answer the key exchange"):
        client.feed(LENGTH.pack(len(reply)) + reply)


@pytest.mark.parametrize("kx", ["zz" * 32, "00" * 31, 5])
def test_malformed_client_key_is_refused(kx: Any) -> None:
    server = ServerHandshake(1, {key_id(VKEY): VKEY}.get)
    server.feed(HELLO.pack(MAGIC, 1, b"C" * 32))
    body = json.dumps({"kid": key_id(VKEY), "proof": "00", "kx": kx}).encode()
    with pytest.raises(HandshakeError, match="key exchange"):
        server.feed(LENGTH.pack(len(body)) + body)


def test_handshake_module_keeps_v1_labels() -> None:
    assert handshake._CLIENT_LABEL != handshake._CLIENT_LABEL_KX


# -- the stream codec wrapper ---------------------------------------------------


class FakeStream:
    """Just enough of a MuxStream to carry a CodecProtocol."""

    disconnecting = False
    disconnected = False

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.resets: list[str] = []
        self.events: list[str] = []
        self.link: dict[str, Any] = {}

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writeSequence(self, data: Any) -> None:
        self.written.append(b"".join(data))  # one frame on a real MuxStream

    def reset(self, reason: str) -> None:
        self.resets.append(reason)

    def loseWriteConnection(self) -> None:
        self.events.append("fin")

    def loseConnection(self) -> None:
        self.events.append("close")

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True


def codec_pair(crypt: bool, compress: bool) -> tuple[CodecProtocol, FakeStream, CodecProtocol, FakeStream,
                                                     Collect, Collect]:
    secret = os.urandom(32)
    link = mark_link({"mode": "tcp"}, crypt=crypt, compress=compress)
    link = json.loads(json.dumps(link))  # as it travels in the SYN
    a_codec, b_codec = codec_for(link, secret, opener=True), codec_for(link, secret, opener=False)
    assert a_codec is not None and b_codec is not None
    a_app, b_app = Collect(), Collect()
    a, b = CodecProtocol(a_app, a_codec), CodecProtocol(b_app, b_codec)
    a_stream, b_stream = FakeStream(), FakeStream()
    a.makeConnection(a_stream)
    b.makeConnection(b_stream)
    return a, a_stream, b, b_stream, a_app, b_app


@pytest.mark.parametrize("crypt,compress", [(True, False), (False, True), (True, True)])
def test_codec_protocols_talk(crypt: bool, compress: bool) -> None:
    a, a_stream, b, b_stream, a_app, b_app = codec_pair(crypt, compress)
    payload = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n" * 200
    a.write(payload)
    a.loseWriteConnection()
    assert a_stream.events == ["fin"]
    for chunk in a_stream.written:
        b.dataReceived(chunk)
    b.readConnectionLost()  # Collect is not half-closeable: the wrapper closes
    assert b_app.data == payload
    assert b_stream.events == ["close"] and not b_stream.resets
    wire = b"".join(a_stream.written)
    assert (payload[:40] in wire) is (not crypt and not compress)
    if compress:
        assert len(wire) < len(payload) // 5


def test_codec_bad_record_resets_only_the_stream() -> None:
    a, a_stream, b, b_stream, a_app, b_app = codec_pair(True, False)
    a.write(b"x" * 1000)
    wire = bytearray(a_stream.written[0])
    wire[-1] ^= 1
    b.dataReceived(bytes(wire))
    assert b_app.data == b""
    assert b_stream.resets and "failed authentication" in b_stream.resets[0]
    b.dataReceived(b"more")  # ignored after the reset
    assert len(b_stream.resets) == 1


def test_codec_truncated_stream_resets() -> None:
    a, a_stream, b, b_stream, a_app, b_app = codec_pair(True, False)
    a.write(b"x" * 1000)
    b.dataReceived(a_stream.written[0])
    b.readConnectionLost()  # FIN without the final record
    assert b_stream.resets and "truncated" in b_stream.resets[0]


def test_codec_passes_backpressure_through() -> None:
    a, a_stream, *_ = codec_pair(True, True)
    a.pauseProducing()
    a.resumeProducing()
    assert a_stream.events == ["pause", "resume"]


def test_no_codec_for_plain_streams_and_no_crypt_without_secret() -> None:
    assert codec_for({"mode": "tcp"}, os.urandom(32), opener=True) is None
    with pytest.raises(CodecError, match="no key exchange"):
        codec_for(mark_link({}, crypt=True, compress=False), None, opener=False)
    with pytest.raises(CodecError, match="salt"):
        codec_for({"crypt": True, "crypt_salt": "xyz"}, os.urandom(32), opener=False)
