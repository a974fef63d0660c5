# -*- test-case-name: test.test_streamcrypt,test.test_e2e_crypt -*-
"""Encrypt and/or compress one mux stream, on both ends (C{crypt}, C{compress}).

The stream's opener (the server) decides: it marks the stream's link header
with C{"crypt": true} (plus a random C{crypt_salt}) and/or
C{"compress": true}; both ends then put a L{CodecProtocol} between the
L{nps.mux.MuxStream} and the protocol that would have run on it.  To that
protocol the wrapper is the transport, so relays, UDP sessions and file
servers run unchanged, and producers and consumers pass straight through:
a paused reader pauses the stream itself, so backpressure (and the mux's
credit windows) work as without the wrapper.  Streams without crypt or
compress get no wrapper at all.

Writes are compressed, then encrypted.  A record that fails to decrypt, or
a malformed compressed chunk, resets that stream only, with one log line.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProducer,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nps.protocols.streamcompress import CompressError, Compressor, Decompressor
from nps.protocols.streamcrypt import CryptError, Sealer, Unsealer, new_salt, stream_keys


class CodecError(Exception):
    """A stream cannot be encoded or decoded as its link header says."""


class StreamCodec:
    """Both directions of one stream's encoding: compress, then encrypt."""

    def __init__(self, send_key: bytes | None = None, recv_key: bytes | None = None,
                 compress: bool = False) -> None:
        self._sealer = Sealer(send_key) if send_key is not None else None
        self._unsealer = Unsealer(recv_key) if recv_key is not None else None
        self.compressor = Compressor() if compress else None
        self._decompressor = Decompressor() if compress else None

    @property
    def crypt(self) -> bool:
        return self._sealer is not None

    def encode(self, data: bytes) -> bytes:
        """C{data} encoded, as one byte string."""
        return b"".join(part for frame in self.encode_frames(data) for part in frame)

    def encode_frames(self, data: bytes) -> Sequence[Sequence[bytes]]:
        """C{data} encoded, as groups of buffers: each group is one record, best sent as one mux frame.

        Nothing is joined: a record's header and ciphertext stay apart, so the
        ciphertext is the only copy made of the payload.
        """
        if self.compressor is not None:
            data = self.compressor.compress(data)
        if self._sealer is not None:
            return self._sealer.seal_records(data)
        return [(data,)] if data else []

    def close(self) -> bytes:
        """What ends our direction (the final record when encrypting)."""
        return self._sealer.close() if self._sealer is not None else b""

    def decode(self, data: bytes) -> list[bytes]:
        """@raise CodecError: the peer's bytes do not decrypt or decompress."""
        try:
            pieces = self._unsealer.feed(data) if self._unsealer is not None else [data]
            if self._decompressor is not None:
                out: list[bytes] = []
                for piece in pieces:
                    out.extend(self._decompressor.feed(piece))
                return out
            return pieces
        except (CryptError, CompressError) as e:
            raise CodecError(str(e)) from None

    def eof(self) -> None:
        """@raise CodecError: the peer's direction ended early (truncated)."""
        try:
            if self._unsealer is not None:
                self._unsealer.eof()
            if self._decompressor is not None:
                self._decompressor.eof()
        except (CryptError, CompressError) as e:
            raise CodecError(str(e)) from None


def mark_link(link: dict[str, Any], *, crypt: bool, compress: bool) -> dict[str, Any]:
    """Ask for crypt/compress in a link header the opener is about to send (in place; returned)."""
    if crypt:
        link["crypt"] = True
        link["crypt_salt"] = new_salt()
    if compress:
        link["compress"] = True
    return link


def codec_for(link: dict[str, Any], secret: bytes | None, *, opener: bool) -> StreamCodec | None:
    """The codec a stream with C{link} needs on this end, or None for a plain stream.

    @param secret: the bridge session's stream secret (None: no key exchange was made).
    @param opener: True on the side that opened the stream.
    @raise CodecError: crypt is asked for but cannot be done.
    """
    crypt = link.get("crypt") is True
    compress = link.get("compress") is True
    if not (crypt or compress):
        return None
    send_key = recv_key = None
    if crypt:
        if secret is None:
            raise CodecError("the stream asks for crypt but this bridge session has no key exchange")
        try:
            send_key, recv_key = stream_keys(secret, str(link.get("crypt_salt", "")), opener=opener)
        except CryptError as e:
            raise CodecError(str(e)) from None
    return StreamCodec(send_key, recv_key, compress)


@implementer(IHalfCloseableProtocol, ITransport, IPushProducer, IConsumer)
class CodecProtocol(Protocol):
    """The protocol on a mux stream that encodes for, and is the transport of, C{wrapped}."""

    log = Logger()
    transport: Any

    def __init__(self, wrapped: IProtocol, codec: StreamCodec, name: str = "stream") -> None:
        self.wrapped = wrapped
        self.codec = codec
        self.name = name
        self._write_closed = False
        self._failed = False

    # -- as the stream's protocol ---------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self.connected = True
        self.transport = transport
        self.wrapped.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            pieces = self.codec.decode(data)
        except CodecError as e:
            self._fail(str(e))
            return
        if len(pieces) > 1:
            pieces = [b"".join(pieces)]  # one write downstream rather than several
        deliver = self.wrapped.dataReceived
        for piece in pieces:
            deliver(piece)

    def readConnectionLost(self) -> None:
        if self._failed:
            return
        try:
            self.codec.eof()
        except CodecError as e:
            self._fail(str(e))
            return
        if IHalfCloseableProtocol.providedBy(self.wrapped):
            self.wrapped.readConnectionLost()
        else:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.wrapped):
            self.wrapped.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self.wrapped.connectionLost(reason)

    def _fail(self, message: str) -> None:
        self._failed = True
        self.log.warn("{name}: {message}; resetting the stream", name=self.name, message=message)
        self.transport.reset(f"stream codec: {message}")

    # -- as the wrapped protocol's transport ----------------------------------

    @property
    def disconnecting(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def disconnected(self) -> bool:
        return bool(self.transport.disconnected)

    def write(self, data: bytes) -> None:
        if self._write_closed or not data:
            return
        write_sequence = self.transport.writeSequence
        for frame in self.codec.encode_frames(data if type(data) is bytes else bytes(data)):
            write_sequence(frame)  # the mux sends a short sequence as one frame, without joining it

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def _close_write(self) -> None:
        if not self._write_closed:
            self._write_closed = True
            tail = self.codec.close()
            if tail and not self.transport.disconnecting:
                self.transport.write(tail)

    def loseWriteConnection(self) -> None:
        self._close_write()
        self.transport.loseWriteConnection()

    def loseConnection(self) -> None:
        self._close_write()
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        self.transport.reset("aborted")

    def reset(self, reason: str = "") -> None:
        self.transport.reset(reason)

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Streams have no Nagle."""

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    @property
    def link(self) -> dict[str, Any]:
        return dict(self.transport.link)


def wrap_protocol(protocol: IProtocol, link: dict[str, Any], secret: bytes | None, *, opener: bool,
                  name: str = "stream") -> IProtocol:
    """C{protocol} itself for a plain stream, else a L{CodecProtocol} around it.

    @raise CodecError: see L{codec_for}.
    """
    codec = codec_for(link, secret, opener=opener)
    if codec is None:
        return protocol
    return CodecProtocol(protocol, codec, name)


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def session_link(session: Any, running: Any, link: dict[str, Any]) -> dict[str, Any]:
    """The link header for a new stream of C{session}, marked for crypt/compress when asked.

    The session's settings (the client record's C{crypt}/C{compress}, or the
    npc's own npc.conf asking for them) apply to every stream; a tunnel's
    C{crypt}/C{compress} options add to them.  Returns C{link} itself when
    neither applies, else a marked copy.

    @param running: the stream's L{nps.server.RunningTunnel}, or None.
    """
    options = running.tunnel.options if running is not None else {}
    crypt = bool(getattr(session, "crypt", False)) or _truthy(options.get("crypt", ""))
    compress = bool(getattr(session, "compress", False)) or _truthy(options.get("compress", ""))
    if not (crypt or compress):
        return link
    return mark_link(dict(link), crypt=crypt, compress=compress)
