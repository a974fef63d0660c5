# -*- test-case-name: test.test_handshake -*-
"""Sans-io bridge handshake: versioned hello, then mutual vkey proof.

Wire (all integers big-endian)::

    C->S  MAGIC(8) version:u16 client_nonce(32)
    S->C  MAGIC(8) version:u16 server_nonce(32)
    C->S  len:u16 JSON {"kid", "proof", "version", "role", ...}
    S->C  len:u16 JSON {"ok": true, "proof", ...} | {"ok": false, "error"}

C{kid} is a one-way hash of the vkey used only to find the client record.
C{proof} is HMAC-SHA256(vkey, label | client_nonce | server_nonce), so the
key never crosses the wire and a recorded proof is useless against a fresh
server nonce.  The server answers with its own proof, so the client knows it
talks to a server that holds the same key.  Proofs are compared in constant
time.

Key exchange (for encrypted streams, C{crypt}): a client may add C{"kx"},
the hex of an ephemeral X25519 public key, to its message; it then proves
with the v2 label over the nonces I{and} that key.  The server answers with
its own ephemeral key in C{"kx"} and a v2 proof over the nonces, both keys
and a hash of the rest of its reply, so neither key nor the reply's flags
can be swapped by someone without the vkey.  Both sides derive the session
secret with HKDF-SHA256 from the X25519 result and an HMAC of the vkey:
an eavesdropper, even one who learns the vkey later, cannot derive it.
A client without C{"kx"} (older npc) is served as before, with no secret.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from typing import Any, Callable

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"\x89NPSPY\r\n"
NONCE_SIZE = 32
HELLO = struct.Struct("!8sH32s")
LENGTH = struct.Struct("!H")
MAX_MESSAGE = 16 * 1024
_CLIENT_LABEL = b"nps-bridge-client-proof-v1"
_SERVER_LABEL = b"nps-bridge-server-proof-v1"
_CLIENT_LABEL_KX = b"nps-bridge-client-proof-v2"
_SERVER_LABEL_KX = b"nps-bridge-server-proof-v2"
_SECRET_LABEL = b"nps-bridge-session-secret-v1"
KX_SIZE = 32


class HandshakeError(Exception):
    """The handshake failed; C{str()} is a message fit for the log.

    C{out} holds bytes the caller must still send before its rejection
    (the server's hello, so a client of another version can read ours).
    """

    out: bytes = b""


class UnknownKey(HandshakeError):
    """No client has the key id the peer sent (yet: the caller may refresh and L{ServerHandshake.retry})."""


@attrs.frozen
class Authenticated:
    """Handshake done.  C{message} is the peer's JSON message; C{rest} the bytes after it.

    C{secret} is the session's stream secret when a key exchange was made.
    """

    message: dict[str, Any]
    rest: bytes
    secret: bytes | None = None


def key_id(vkey: str) -> str:
    """The lookup id of a vkey: a truncated one-way hash, never the key."""
    return hashlib.sha256(b"nps-kid\x00" + vkey.encode("utf-8")).hexdigest()[:32]


def _proof(label: bytes, vkey: str, client_nonce: bytes, server_nonce: bytes) -> str:
    return hmac.new(vkey.encode("utf-8"), label + client_nonce + server_nonce, hashlib.sha256).hexdigest()


def _reply_digest(reply: dict[str, Any]) -> bytes:
    """A hash of a server reply without its proof (what the v2 server proof covers)."""
    body = {k: v for k, v in reply.items() if k != "proof"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).digest()


def _parse_kx(value: Any, who: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * KX_SIZE:
        raise HandshakeError(f"{who} key exchange value is not {KX_SIZE} bytes of hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise HandshakeError(f"{who} key exchange value is not hex") from None


def _session_secret(private: X25519PrivateKey, peer_public: bytes, vkey: str, client_nonce: bytes,
                    server_nonce: bytes, client_kx: bytes, server_kx: bytes) -> bytes:
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as e:  # a low-order point: all-zero result
        raise HandshakeError(f"bad key exchange value: {e}") from None
    bound = hmac.new(vkey.encode("utf-8"), _SECRET_LABEL + client_nonce + server_nonce, hashlib.sha256).digest()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=client_nonce + server_nonce,
                info=_SECRET_LABEL + client_kx + server_kx).derive(shared + bound)


def _public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def _pack_message(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_MESSAGE:
        raise HandshakeError(f"handshake message too large ({len(body)} bytes)")
    return LENGTH.pack(len(body)) + body


class _Reader:
    """Accumulates bytes and hands out fixed-size or length-prefixed pieces."""

    def __init__(self) -> None:
        self.buf = b""

    def take(self, n: int) -> bytes | None:
        if len(self.buf) < n:
            return None
        piece, self.buf = self.buf[:n], self.buf[n:]
        return piece

    def take_message(self, what: str) -> dict[str, Any] | None:
        if len(self.buf) < LENGTH.size:
            return None
        (size,) = LENGTH.unpack_from(self.buf)
        if size > MAX_MESSAGE:
            raise HandshakeError(f"{what} of {size} bytes exceeds limit {MAX_MESSAGE}")
        raw = self.take(LENGTH.size + size)
        if raw is None:
            return None
        try:
            message = json.loads(raw[LENGTH.size :].decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise HandshakeError(f"{what} is not valid JSON: {e}") from None
        if not isinstance(message, dict):
            raise HandshakeError(f"{what} is not a JSON object")
        return message


def _parse_hello(raw: bytes, version: int, who: str) -> bytes:
    magic, peer_version, nonce = HELLO.unpack(raw)
    if magic != MAGIC:
        raise HandshakeError(f"{who} is not an nps bridge peer (bad magic {magic!r})")
    if peer_version != version:
        raise HandshakeError(f"{who} speaks bridge protocol version {peer_version}, we speak {version}")
    return nonce


class ClientHandshake:
    """The npc side.  Send L{hello}, then C{feed} what the server sends."""

    def __init__(self, vkey: str, version: int, info: dict[str, Any], nonce: bytes | None = None,
                 *, key_exchange: bool = False) -> None:
        """@param key_exchange: also agree on a session secret (needed for encrypted streams)."""
        self._kx = X25519PrivateKey.generate() if key_exchange else None
        self._vkey = vkey
        self._version = version
        self._info = info
        self._nonce = nonce or os.urandom(NONCE_SIZE)
        self._server_nonce: bytes | None = None
        self._reader = _Reader()

    def hello(self) -> bytes:
        return HELLO.pack(MAGIC, self._version, self._nonce)

    def feed(self, data: bytes) -> tuple[bytes, Authenticated | None]:
        """Returns (bytes to send, result once authenticated); raises L{HandshakeError}."""
        self._reader.buf += data
        out = b""
        if self._server_nonce is None:
            raw = self._reader.take(HELLO.size)
            if raw is None:
                return out, None
            self._server_nonce = _parse_hello(raw, self._version, "server")
            message = dict(self._info)
            message["kid"] = key_id(self._vkey)
            if self._kx is None:
                message["proof"] = _proof(_CLIENT_LABEL, self._vkey, self._nonce, self._server_nonce)
            else:
                own = _public_bytes(self._kx)
                message["kx"] = own.hex()
                message["proof"] = _proof(_CLIENT_LABEL_KX, self._vkey, self._nonce, self._server_nonce + own)
            out = _pack_message(message)
        reply = self._reader.take_message("server reply")
        if reply is None:
            return out, None
        if reply.get("ok") is not True:
            raise HandshakeError(f"server refused us: {reply.get('error', 'no reason given')}")
        if self._kx is None:
            expected = _proof(_SERVER_LABEL, self._vkey, self._nonce, self._server_nonce)
            server_kx = b""
        else:
            if "kx" not in reply:
                raise HandshakeError("server did not answer the key exchange (is it an older nps?)")
            server_kx = _parse_kx(reply["kx"], "server")
            own = _public_bytes(self._kx)
            expected = _proof(_SERVER_LABEL_KX, self._vkey, self._nonce,
                              self._server_nonce + own + server_kx + _reply_digest(reply))
        if not hmac.compare_digest(str(reply.get("proof", "")).encode("utf-8"), expected.encode("ascii")):
            raise HandshakeError("server failed to prove it knows the vkey (wrong server?)")
        secret = None
        if self._kx is not None:
            secret = _session_secret(self._kx, server_kx, self._vkey, self._nonce, self._server_nonce,
                                     _public_bytes(self._kx), server_kx)
        return out, Authenticated(reply, self._reader.buf, secret)


#: Looks a key id up: returns the vkey, or None when unknown.
KeyLookup = Callable[[str], "str | None"]


class ServerHandshake:
    """The nps side.  C{feed} client bytes; on L{Authenticated} call L{accept} or L{reject}."""

    def __init__(self, version: int, lookup: KeyLookup, nonce: bytes | None = None) -> None:
        self._version = version
        self._lookup = lookup
        self._nonce = nonce or os.urandom(NONCE_SIZE)
        self._client_nonce: bytes | None = None
        self._vkey: str | None = None
        self._message: dict[str, Any] | None = None
        self._reader = _Reader()
        self._client_kx: bytes | None = None
        self._kx: X25519PrivateKey | None = None

    def feed(self, data: bytes) -> tuple[bytes, Authenticated | None]:
        """Returns (bytes to send, result once the client proved its key).

        Raises L{HandshakeError} for anything else; the caller then sends
        L{reject}'s bytes if the hello exchange got that far, and closes.
        """
        self._reader.buf += data
        out = b""
        if self._client_nonce is None:
            if len(self._reader.buf) >= len(MAGIC) and not self._reader.buf.startswith(MAGIC):
                raise HandshakeError(f"not an nps bridge client (first bytes {self._reader.buf[:8]!r})")
            raw = self._reader.take(HELLO.size)
            if raw is None:
                return out, None
            magic, peer_version, nonce = HELLO.unpack(raw)
            out = HELLO.pack(MAGIC, self._version, self._nonce)
            if peer_version != self._version:
                self._client_nonce = nonce
                error = HandshakeError(
                    f"client speaks bridge protocol version {peer_version}, we speak {self._version}"
                )
                error.out = out
                raise error
            self._client_nonce = nonce
        message = self._reader.take_message("client auth message")
        if message is None:
            return out, None
        kid = message.get("kid")
        proof = message.get("proof")
        if not isinstance(kid, str) or not isinstance(proof, str):
            raise HandshakeError("client auth message lacks kid/proof")
        if "kx" in message:
            self._client_kx = _parse_kx(message["kx"], "client")
        self._message = message
        return out, self.retry()

    def retry(self) -> Authenticated:
        """Check the client's proof against the key store as it is now.

        @raise UnknownKey: no such key id; L{HandshakeError}: the proof is wrong.
        """
        message = self._message
        assert message is not None and self._client_nonce is not None
        vkey = self._lookup(str(message["kid"]))
        # Compute a proof even for an unknown key so timing does not tell.
        if self._client_kx is None:
            expected = _proof(_CLIENT_LABEL, vkey or "\x00unknown", self._client_nonce, self._nonce)
        else:
            expected = _proof(_CLIENT_LABEL_KX, vkey or "\x00unknown", self._client_nonce,
                              self._nonce + self._client_kx)
        if not hmac.compare_digest(str(message["proof"]).encode("utf-8"), expected.encode("ascii")) or vkey is None:
            raise UnknownKey("wrong vkey") if vkey is None else HandshakeError("wrong vkey")
        self._vkey = vkey
        secret = None
        if self._client_kx is not None:
            self._kx = X25519PrivateKey.generate()
            secret = _session_secret(self._kx, self._client_kx, vkey, self._client_nonce, self._nonce,
                                     self._client_kx, _public_bytes(self._kx))
        return Authenticated(message, self._reader.buf, secret)

    @property
    def hello_sent(self) -> bool:
        """True once our hello went out (so a reject message can follow)."""
        return self._client_nonce is not None

    def accept(self, extra: dict[str, Any]) -> bytes:
        assert self._vkey is not None and self._client_nonce is not None
        reply = dict(extra)
        reply["ok"] = True
        if self._kx is None or self._client_kx is None:
            reply["proof"] = _proof(_SERVER_LABEL, self._vkey, self._client_nonce, self._nonce)
        else:
            own = _public_bytes(self._kx)
            reply["kx"] = own.hex()
            reply["proof"] = _proof(_SERVER_LABEL_KX, self._vkey, self._client_nonce,
                                    self._nonce + self._client_kx + own + _reply_digest(reply))
        return _pack_message(reply)

    def reject(self, reason: str) -> bytes:
        return _pack_message({"ok": False, "error": reason})
