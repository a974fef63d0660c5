# -*- test-case-name: test.test_tlshello -*-
"""
Sans-io TLS ClientHello reader: the server name (SNI) and ALPN list a client
asks for, read from the first handshake records without any TLS library,
so the bytes can be replayed unchanged to the client's service (SNI
pass-through) or to our own TLS stack (termination).

Handles a ClientHello split over several TCP reads and over several TLS
records; refuses anything else (not TLS, not a ClientHello, bigger than
L{MAX_HELLO}, malformed lengths) with L{TlsHelloError}.
"""
from __future__ import annotations

import re

import attrs

__all__ = ["ClientHello", "ClientHelloParser", "TlsHelloError", "MAX_HELLO"]

#: Most bytes read while waiting for a complete ClientHello.
MAX_HELLO = 32 * 1024
#: Largest TLS record fragment (2^14 plaintext bytes).
MAX_RECORD = 16384

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,252})")


class TlsHelloError(Exception):
    """The bytes are not a ClientHello we accept; the message says why."""


@attrs.frozen
class ClientHello:
    """What the ClientHello asked for."""

    #: The server name, lower-cased, or None when the client sent none.
    server_name: str | None
    #: ALPN protocol names in the client's order.
    alpn: tuple[str, ...] = ()
    #: The legacy version field (e.g. C{(3, 3)}).
    version: tuple[int, int] = (3, 3)


class _Reader:
    """Bounds-checked reads over one ClientHello body."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.pos = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.pos + size
        if end > len(self._data):
            raise TlsHelloError(f"ClientHello truncated in {what}")
        chunk = self._data[self.pos:end]
        self.pos = end
        return chunk

    def number(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, length_size: int, what: str) -> bytes:
        return self.take(self.number(length_size, what), what)

    @property
    def left(self) -> int:
        return len(self._data) - self.pos


class ClientHelloParser:
    """
    Feed it the first bytes of a connection; C{feed} returns a L{ClientHello}
    once one is complete and None while more bytes are needed.
    """

    def __init__(self, max_size: int = MAX_HELLO) -> None:
        self.max_size = max_size
        self._raw = bytearray()
        self._offset = 0
        self._handshake = bytearray()
        self.result: ClientHello | None = None

    def feed(self, data: bytes) -> ClientHello | None:
        """
        @raise TlsHelloError: the bytes are not an acceptable ClientHello.
        """
        if self.result is not None:
            return self.result
        self._raw += data
        if len(self._raw) > self.max_size + 5:
            raise TlsHelloError(f"no complete ClientHello within {self.max_size} bytes")
        raw = self._raw
        while len(raw) - self._offset >= 5:
            start = self._offset
            kind, major, minor = raw[start], raw[start + 1], raw[start + 2]
            length = int.from_bytes(raw[start + 3:start + 5], "big")
            if kind != _HANDSHAKE:
                raise TlsHelloError(f"not a TLS handshake (first record type {kind}, "
                                    f"bytes {bytes(raw[:8])!r})")
            if major != 3 or minor > 4:
                raise TlsHelloError(f"not a TLS record version ({major}.{minor})")
            if length == 0 or length > MAX_RECORD:
                raise TlsHelloError(f"bad TLS record length {length}")
            if len(raw) - start < 5 + length:
                break
            self._handshake += raw[start + 5:start + 5 + length]
            self._offset = start + 5 + length
            hello = self._try_hello()
            if hello is not None:
                self.result = hello
                return hello
        return None

    def _try_hello(self) -> ClientHello | None:
        handshake = self._handshake
        if len(handshake) < 4:
            return None
        if handshake[0] != _CLIENT_HELLO:
            raise TlsHelloError(f"first handshake message is type {handshake[0]}, not a ClientHello")
        length = int.from_bytes(handshake[1:4], "big")
        if length > self.max_size:
            raise TlsHelloError(f"ClientHello of {length} bytes is larger than {self.max_size}")
        if len(handshake) < 4 + length:
            return None
        return parse_client_hello(bytes(handshake[4:4 + length]))


def parse_client_hello(body: bytes) -> ClientHello:
    """
    Parse a ClientHello message body (after the 4-byte handshake header).

    @raise TlsHelloError: for malformed lengths or a bad server name.
    """
    r = _Reader(body)
    version = r.take(2, "version")
    r.take(32, "random")
    if len(r.vector(1, "session id")) > 32:
        raise TlsHelloError("session id longer than 32 bytes")
    suites = r.vector(2, "cipher suites")
    if not suites or len(suites) % 2:
        raise TlsHelloError("bad cipher suite list")
    if not r.vector(1, "compression methods"):
        raise TlsHelloError("empty compression method list")
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if r.left:
        extensions = _Reader(r.vector(2, "extensions"))
        if r.left:
            raise TlsHelloError("bytes after the extensions")
        seen: set[int] = set()
        while extensions.left:
            kind = extensions.number(2, "extension type")
            data = extensions.vector(2, "extension")
            if kind in seen:
                raise TlsHelloError(f"extension {kind} appears twice")
            seen.add(kind)
            if kind == _EXT_SERVER_NAME:
                server_name = _server_name(data)
            elif kind == _EXT_ALPN:
                alpn = _alpn(data)
    return ClientHello(server_name, alpn, (version[0], version[1]))


def _server_name(data: bytes) -> str | None:
    r = _Reader(data)
    names = _Reader(r.vector(2, "server name list"))
    if r.left:
        raise TlsHelloError("bytes after the server name list")
    found: str | None = None
    while names.left:
        kind = names.number(1, "server name type")
        value = names.vector(2, "server name")
        if kind != 0:
            continue
        if found is not None:
            raise TlsHelloError("more than one host_name in the server name extension")
        try:
            text = value.decode("ascii").lower().rstrip(".")
        except UnicodeDecodeError:
            raise TlsHelloError("server name is not ASCII") from None
        if _NAME.fullmatch(text) is None:
            raise TlsHelloError(f"bad server name {text[:64]!r}")
        found = text
    return found


def _alpn(data: bytes) -> tuple[str, ...]:
    r = _Reader(data)
    items = _Reader(r.vector(2, "ALPN list"))
    protocols = []
    while items.left:
        name = items.vector(1, "ALPN protocol")
        if not name:
            raise TlsHelloError("empty ALPN protocol name")
        protocols.append(name.decode("latin-1"))
    return tuple(protocols)
