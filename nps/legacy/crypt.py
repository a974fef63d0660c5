# -*- test-case-name: test.test_legacy_codecs -*-
"""Stream codecs for NPS 0.26's C{crypt=true} and C{compress=true}.

C{crypt} is TLS inside the stream: the server end presents a self-signed
certificate made at start-up (kept in memory only), the client end checks
nothing, as NPS does; it hides the payload from an observer of the bridge
but authenticates no one.  C{compress} is snappy's framing format.  Both
are codecs with no I/O: bytes in, bytes out.
"""
from __future__ import annotations

import datetime
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from nps.protocols.legacy_snappy import SnappyDecoder, SnappyEncoder

__all__ = ["Codec", "CodecError", "SnappyCodec", "TlsCodec", "client_context", "server_context", "warm_up"]

_READ = 65536


class CodecError(ValueError):
    """The peer's bytes cannot be decoded (bad TLS, bad snappy)."""


class Codec(Protocol):
    """Transforms a stream's bytes both ways."""

    def start(self) -> bytes:
        """Bytes to send before any data (a TLS ClientHello)."""

    def encode(self, data: bytes) -> bytes:
        """Plain bytes to send -> wire bytes."""

    def decode(self, data: bytes) -> tuple[bytes, bytes]:
        """Wire bytes received -> (plain bytes, wire bytes to send back)."""


class SnappyCodec:
    """C{compress=true}: snappy framed stream both ways."""

    def __init__(self) -> None:
        self._encoder = SnappyEncoder()
        self._decoder = SnappyDecoder()

    def start(self) -> bytes:
        return b""

    def encode(self, data: bytes) -> bytes:
        return self._encoder.encode(data)

    def decode(self, data: bytes) -> tuple[bytes, bytes]:
        try:
            return self._decoder.decode(data), b""
        except ValueError as e:
            raise CodecError(str(e)) from None


_server_context: SSL.Context | None = None
_warming = False


def warm_up(reactor: Any) -> None:
    """Make the server certificate in a thread now, so the first crypt stream does not wait on the reactor."""
    global _warming
    if _server_context is not None or _warming:
        return
    _warming = True
    from twisted.internet.threads import deferToThreadPool

    deferToThreadPool(reactor, reactor.getThreadPool(), server_context).addErrback(lambda failure: None)


def server_context() -> SSL.Context:
    """A TLS server context with a fresh RSA-2048 self-signed certificate (made once per process)."""
    global _server_context
    if _server_context is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nps legacy crypt")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)
        _server_context = ctx
    return _server_context


def client_context() -> SSL.Context:
    """A TLS client context that accepts any certificate (NPS's npc does the same)."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *args: True)
    return ctx


class TlsCodec:
    """C{crypt=true}: TLS over memory buffers; plain data waits for the handshake."""

    def __init__(self, context: SSL.Context, server: bool) -> None:
        self._conn = SSL.Connection(context, None)
        if server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self._ready = False
        self._pending: list[bytes] = []

    def _outgoing(self) -> bytes:
        out: list[bytes] = []
        while True:
            try:
                chunk = self._conn.bio_read(_READ)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out.append(chunk)
        return b"".join(out)

    def _handshake(self) -> None:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return
        except SSL.Error as e:
            raise CodecError(f"TLS handshake failed: {e}") from None
        self._ready = True

    def start(self) -> bytes:
        self._handshake()
        return self._outgoing()

    def encode(self, data: bytes) -> bytes:
        if not self._ready:
            self._pending.append(data)
            return b""
        view = memoryview(data)
        while view:
            try:
                sent = self._conn.send(view[:16384])
            except SSL.Error as e:
                raise CodecError(f"TLS error: {e}") from None
            view = view[sent:]
        return self._outgoing()

    def decode(self, data: bytes) -> tuple[bytes, bytes]:
        try:
            self._conn.bio_write(data)
        except SSL.Error as e:
            raise CodecError(f"TLS error: {e}") from None
        out = b""
        if not self._ready:
            self._handshake()
            out = self._outgoing()
            if self._ready and self._pending:
                pending, self._pending = self._pending, []
                out += b"".join(self.encode(p) for p in pending)
        plain: list[bytes] = []
        if self._ready:
            while True:
                try:
                    chunk = self._conn.recv(_READ)
                except SSL.WantReadError:
                    break
                except SSL.ZeroReturnError:
                    break
                except SSL.Error as e:
                    raise CodecError(f"TLS error: {e}") from None
                if not chunk:
                    break
                plain.append(chunk)
            out += self._outgoing()
        return b"".join(plain), out
