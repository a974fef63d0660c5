# -*- test-case-name: test.test_streamcrypt -*-
"""Sans-io AEAD record layer for one tunnel stream (C{crypt=true}).

Each direction of a stream has its own 256-bit AES-GCM key.  The bytes a
side writes are cut into records of at most L{MAX_PLAINTEXT} bytes (256 KiB)::

    header:u32  ciphertext (plaintext + 16-byte tag)

The header's top bit marks the I{final} record (empty plaintext, sent when
the writer closes), the other 31 bits are the ciphertext's length.  The
nonce is a 64-bit record counter (never sent, never repeated under one key)
and the header is the additional data, so records cannot be reordered,
replayed, cut, merged, or have their end forged: a stream that ends without
its final record reports truncation.

Keys: the bridge handshake gives both ends a session secret (an ephemeral
X25519 exchange authenticated by the vkey proofs, see
L{nps.protocols.handshake}).  Each stream's opener picks a random salt
(sent in the stream's link header); L{stream_keys} derives the two
directions' keys from the secret and that salt with HKDF-SHA256.
"""
from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Largest plaintext in one record (one relay read).
MAX_PLAINTEXT = 256 * 1024
TAG_SIZE = 16
HEADER = struct.Struct("!I")
_HEADER_SIZE = HEADER.size
FINAL = 0x8000_0000
_LENGTH_MASK = 0x7FFF_FFFF
KEY_SIZE = 32
SALT_SIZE = 16
_MAX_COUNTER = 2**64 - 1
_KDF_INFO = b"nps-stream-keys-v1"


class CryptError(Exception):
    """A record failed to decrypt or the stream's framing is broken; C{str()} says how."""


def new_salt() -> str:
    """A fresh random per-stream salt, as the hex text the link header carries."""
    return os.urandom(SALT_SIZE).hex()


def stream_keys(secret: bytes, salt: str, *, opener: bool) -> tuple[bytes, bytes]:
    """The (send, receive) keys of one stream.

    @param secret: the bridge session's secret (from the handshake).
    @param salt: the stream's salt from its link header (hex).
    @param opener: True on the side that opened the stream.
    @raise CryptError: if C{salt} is not L{SALT_SIZE} bytes of hex.
    """
    try:
        raw_salt = bytes.fromhex(salt)
    except (ValueError, TypeError):
        raise CryptError("stream salt is not hex") from None
    if len(raw_salt) != SALT_SIZE:
        raise CryptError(f"stream salt must be {SALT_SIZE} bytes, got {len(raw_salt)}")
    okm = HKDF(algorithm=hashes.SHA256(), length=2 * KEY_SIZE, salt=raw_salt, info=_KDF_INFO).derive(secret)
    forward, backward = okm[:KEY_SIZE], okm[KEY_SIZE:]
    return (forward, backward) if opener else (backward, forward)


_NONCE = struct.Struct("!IQ")  # 4 zero bytes + the u64 record counter


class Sealer:
    """Encrypts what one side writes into records."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._counter = 0
        self.closed = False

    def _record(self, plaintext: bytes | memoryview, flags: int) -> tuple[bytes, bytes]:
        header = HEADER.pack(flags | (len(plaintext) + TAG_SIZE))
        counter = self._counter
        if counter > _MAX_COUNTER:
            raise CryptError("record counter exhausted")
        self._counter = counter + 1
        return header, self._aead.encrypt(_NONCE.pack(0, counter), plaintext, header)

    def seal_records(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The records carrying C{data} as (header, ciphertext) pairs, never joined (no copy).

        A write of up to L{MAX_PLAINTEXT} bytes is one record; a bigger one
        is cut into records of L{MAX_PLAINTEXT} bytes.
        """
        if self.closed:
            raise CryptError("write after the final record")
        size = len(data)
        if size <= MAX_PLAINTEXT:
            return [self._record(data, 0)] if size else []
        view = memoryview(data)
        return [self._record(view[i:i + MAX_PLAINTEXT], 0) for i in range(0, size, MAX_PLAINTEXT)]

    def seal(self, data: bytes) -> bytes:
        """The records carrying C{data}, as one byte string (empty for empty data)."""
        return b"".join(part for record in self.seal_records(data) for part in record)

    def close(self) -> bytes:
        """The final record (once; empty afterwards)."""
        if self.closed:
            return b""
        self.closed = True
        return b"".join(self._record(b"", FINAL))


class Unsealer:
    """Decrypts the records of the other side.  Feed bytes, get plaintexts.

    Records usually arrive whole (the writer sends each record as one mux
    frame) and are decrypted straight from the bytes given, without a copy.
    A record cut across feeds is gathered as a list of pieces and joined
    once, when it is complete.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._counter = 0
        self._parts: list[bytes | memoryview] = []  # an incomplete record (or header)
        self._have = 0  # bytes in _parts
        self._need = 0  # bytes _parts must reach before parsing again
        self.finished = False

    def feed(self, data: bytes) -> list[bytes]:
        """Plaintexts of the complete records so far.

        @raise CryptError: a record fails authentication, is too large, or
            follows the final record.
        """
        out: list[bytes] = []
        if type(data) is not bytes:
            data = bytes(data)  # pieces may be kept: they must not change under us
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return out
            data = b"".join(self._parts)
            self._parts = []
            self._have = 0
        size = len(data)
        if not size:
            return out
        view = memoryview(data)
        offset = 0
        unpack = HEADER.unpack_from
        decrypt = self._aead.decrypt
        while size - offset >= _HEADER_SIZE:
            (word,) = unpack(data, offset)
            length = word & _LENGTH_MASK
            if length < TAG_SIZE or length > MAX_PLAINTEXT + TAG_SIZE:
                raise CryptError(f"record length {length} out of range")
            end = offset + _HEADER_SIZE + length
            if end > size:
                self._parts = [view[offset:]]
                self._have = size - offset
                self._need = _HEADER_SIZE + length
                return out
            if self.finished:
                raise CryptError("data after the final record")
            counter = self._counter
            if counter > _MAX_COUNTER:
                raise CryptError("record counter exhausted")
            try:
                plaintext = decrypt(_NONCE.pack(0, counter), view[offset + _HEADER_SIZE:end],
                                    view[offset:offset + _HEADER_SIZE])
            except InvalidTag:
                raise CryptError(f"record {counter} failed authentication (wrong key or tampered)") from None
            self._counter = counter + 1
            offset = end
            if word & FINAL:
                if plaintext:
                    raise CryptError("final record carries data")
                self.finished = True
            elif plaintext:
                out.append(plaintext)
        if offset < size:
            self._parts = [view[offset:]]
            self._have = size - offset
            self._need = _HEADER_SIZE
        return out

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete record."""
        return self._have

    def eof(self) -> None:
        """The stream ended.  @raise CryptError: before the final record (truncated)."""
        if not self.finished:
            raise CryptError("stream ended without its final record (truncated)"
                             + (f"; {self._have} bytes of a partial record left" if self._have else ""))
