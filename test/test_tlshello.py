# -*- test-case-name: test.test_tlshello -*-
"""The sans-io ClientHello reader (nps.protocols.tlshello), with real hellos from OpenSSL and hypothesis."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from OpenSSL import SSL

from nps.protocols.tlshello import ClientHello, ClientHelloParser, TlsHelloError


def openssl_hello(name: bytes | None = b"a.example.com", alpn: list[bytes] | None = None) -> bytes:
    """The first flight of a real OpenSSL client."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if alpn:
        context.set_alpn_protos(alpn)
    connection = SSL.Connection(context, None)
    if name is not None:
        connection.set_tlsext_host_name(name)
    connection.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        connection.do_handshake()
    return connection.bio_read(65536)


def split_records(hello: bytes, size: int) -> bytes:
    """The same handshake re-cut into TLS records of at most C{size} bytes."""
    body = hello[5:]
    out = b""
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += hello[:3] + len(piece).to_bytes(2, "big") + piece
    return out


def parse(data: bytes, step: int | None = None) -> ClientHello | None:
    parser = ClientHelloParser()
    if step is None:
        return parser.feed(data)
    result = None
    for i in range(0, len(data), step):
        result = parser.feed(data[i:i + step]) or result
    return result


def test_real_hello() -> None:
    """SNI (lower-cased) and ALPN are read from OpenSSL's ClientHello."""
    hello = parse(openssl_hello(b"A.Example.COM", [b"h2", b"http/1.1"]))
    assert hello is not None
    assert hello.server_name == "a.example.com"
    assert hello.alpn == ("h2", "http/1.1")
    assert parse(openssl_hello(None)) == ClientHello(None, (), (3, 3))


def test_split_reads_and_records() -> None:
    """A hello split over many reads and over many TLS records is still read, once complete."""
    raw = openssl_hello(alpn=[b"h2"])
    for step in (1, 2, 7, 100):
        assert parse(raw, step).server_name == "a.example.com"  # type: ignore[union-attr]
    for size in (1, 3, 50, 200):
        assert parse(split_records(raw, size), 5).server_name == "a.example.com"  # type: ignore[union-attr]
    parser = ClientHelloParser()
    assert parser.feed(raw[:-1]) is None


def test_refusals() -> None:
    """Not TLS, not a ClientHello, oversized or malformed: TlsHelloError naming the problem."""
    raw = openssl_hello()
    cases: list[tuple[bytes, str]] = [
        (b"GET / HTTP/1.1\r\n\r\n", "not a TLS handshake"),
        (b"\x16\x07\x01\x00\x05hello", "not a TLS record version"),
        (b"\x16\x03\x01\x00\x00", "bad TLS record length"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
        (b"\x16\x03\x01\x00\x0e\x01\x00\x00\x0a\x03\x03" + b"\x00" * 8, "truncated in random"),
        (b"\x16\x03\x01\x40\x01", "bad TLS record length"),
    ]
    for data, message in cases:
        with pytest.raises(TlsHelloError, match=message):
            parse(data)
    with pytest.raises(TlsHelloError, match="larger than 100"):
        ClientHelloParser(max_size=100).feed(split_records(raw, 50)[:60])
    with pytest.raises(TlsHelloError, match="within"):
        parser = ClientHelloParser(max_size=100)
        parser.feed(b"\x16\x03\x01\x3f\xff")
        for _ in range(100):
            parser.feed(b"\x00" * 10)


def test_bad_server_names() -> None:
    """A server name that is not a DNS name is refused."""
    for name in (b"bad name", b"a/b", b"\xff.com"):
        raw = openssl_hello(name)
        with pytest.raises(TlsHelloError, match="server name"):
            parse(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_random_bytes(data: bytes) -> None:
    """Random bytes never raise anything but TlsHelloError."""
    try:
        parse(data, 13)
    except TlsHelloError:
        pass


REAL = openssl_hello(alpn=[b"h2", b"http/1.1"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=len(REAL) - 1), st.integers(0, 255)),
                min_size=1, max_size=6), st.integers(min_value=1, max_value=400))
def test_fuzz_mutated_hellos(mutations: list[tuple[int, int]], step: int) -> None:
    """A real hello with bytes changed parses to some hello, needs more, or raises TlsHelloError."""
    data = bytearray(REAL)
    for index, value in mutations:
        data[index] = value
    try:
        result = parse(bytes(data), step)
    except TlsHelloError:
        return
    assert result is None or isinstance(result, ClientHello)
