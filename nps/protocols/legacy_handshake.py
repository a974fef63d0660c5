# -*- test-case-name: test.test_legacy_codecs -*-
"""The NPS 0.26 bridge handshake and work-type messages, with no I/O.

An NPS 0.26 npc opens a TCP connection and sends C{"TST"}, its core
version and its full version (each an C{int32 LE} length plus bytes); the
server answers C{md5(core version)} as 32 hex characters; the client sends
C{md5(vkey)} as 32 hex characters; the server answers C{"sucs"} or
C{"vkey"}; the client then names what the connection is for with a 4-byte
work type (C{main}, C{chan}, C{conf}, ...).  L{LegacyServerHandshake}
parses the client's side of that; L{LegacyMessageReader} parses the
messages that follow for C{conf}, C{rgst}, C{sert} and C{p2pm}.

Every length on the wire is bounded here: the versions to L{MAX_VERSION},
the JSON messages of config-file mode to L{MAX_MESSAGE}.
"""
from __future__ import annotations

import hashlib
import struct

import attrs

MAGIC = b"TST"
CORE_VERSION = "0.26.0"
#: The full version we claim when we are the client (C{npc -proto=0.26}).
CLIENT_VERSION = "0.26.10"
ACCEPTED = b"sucs"
REJECTED = b"vkey"
#: Work types (C{lib/common/const.go}).
WORK_MAIN = b"main"
WORK_CHAN = b"chan"
WORK_CONFIG = b"conf"
WORK_REGISTER = b"rgst"
WORK_SECRET = b"sert"
WORK_FILE = b"file"
WORK_P2P = b"p2pm"
WORK_TYPES = frozenset({WORK_MAIN, WORK_CHAN, WORK_CONFIG, WORK_REGISTER, WORK_SECRET, WORK_FILE, WORK_P2P})
#: Messages inside a C{conf} connection.
CONF_CLIENT = b"conf"
CONF_HOST = b"host"
CONF_TASK = b"task"
CONF_STATUS = b"stus"
CONF_FLAGS = frozenset({CONF_CLIENT, CONF_HOST, CONF_TASK, CONF_STATUS})
#: Sent on the signal (C{main}) connection to the old client when a new one replaces it.
SIGNAL_CLOSE = b"clse"
#: Separator of NPS's C{"a*#*b"} lists.
LIST_SEP = "*#*"

MAX_VERSION = 64
#: Largest JSON record in config-file mode (a client, host or tunnel).
MAX_MESSAGE = 64 * 1024
#: Longest registration NPS's C{npc register -time} may ask for, in hours (one year).
MAX_REGISTER_HOURS = 24 * 366


class LegacyHandshakeError(ValueError):
    """The peer broke the NPS 0.26 handshake; C{str()} says how."""


def md5_hex(text: str | bytes) -> bytes:
    """C{md5} of C{text} as 32 lowercase ASCII hex digits (NPS's key proof)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.md5(data).hexdigest().encode("ascii")


def len_content(data: bytes) -> bytes:
    """NPS's length-prefixed blob: C{int32 LE} length, then C{data}."""
    return struct.pack("<i", len(data)) + data


def client_hello(core: str = CORE_VERSION, full: str = CLIENT_VERSION) -> bytes:
    """What an NPS 0.26 client sends first."""
    return MAGIC + len_content(core.encode()) + len_content(full.encode())


def server_version_proof(core: str = CORE_VERSION) -> bytes:
    """The server's answer to the hello: C{md5(core version)}."""
    return md5_hex(core)


@attrs.frozen
class Hello:
    """The client's versions (step 2 and 3)."""

    core: str
    full: str


@attrs.frozen
class KeyProof:
    """The client's C{md5(vkey)}, 32 lowercase hex characters (step 5)."""

    digest: bytes


@attrs.frozen
class WorkType:
    """What the connection is for (step 7); C{rest} are the bytes that followed it."""

    flag: bytes
    rest: bytes


class _Reader:
    """A byte buffer read from the front with an offset (no quadratic copies)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos > 4096 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    @property
    def available(self) -> int:
        return len(self._buf) - self._pos

    def take(self, size: int) -> bytes | None:
        if self.available < size:
            return None
        chunk = bytes(self._buf[self._pos:self._pos + size])
        self._pos += size
        return chunk

    def peek_int32(self) -> int | None:
        if self.available < 4:
            return None
        value: int = struct.unpack_from("<i", self._buf, self._pos)[0]
        return value

    def rest(self) -> bytes:
        chunk = bytes(self._buf[self._pos:])
        self._buf = bytearray()
        self._pos = 0
        return chunk


def _take_len_content(reader: _Reader, limit: int, what: str) -> bytes | None:
    size = reader.peek_int32()
    if size is None:
        return None
    if not 0 < size <= limit:
        raise LegacyHandshakeError(f"{what} length {size} is outside 1..{limit}")
    if reader.available < 4 + size:
        return None
    reader.take(4)
    return reader.take(size)


class LegacyServerHandshake:
    """The server's view of the NPS 0.26 handshake.

    L{feed} returns the events completed by the new bytes, in order: one
    L{Hello}, one L{KeyProof}, one L{WorkType} (after which this parser is
    done and hands over the remaining bytes).  The caller answers: after
    L{Hello}, L{server_version_proof}; after L{KeyProof}, L{ACCEPTED} or
    L{REJECTED}.
    """

    def __init__(self) -> None:
        self._reader = _Reader()
        self._step = 0
        self.done = False

    def feed(self, data: bytes) -> list[Hello | KeyProof | WorkType]:
        """Parse C{data}; raise L{LegacyHandshakeError} on a malformed handshake."""
        if self.done:
            raise LegacyHandshakeError("handshake already finished")
        reader = self._reader
        reader.feed(data)
        events: list[Hello | KeyProof | WorkType] = []
        while True:
            if self._step == 0:
                magic = reader.take(3)
                if magic is None:
                    break
                if magic != MAGIC:
                    raise LegacyHandshakeError(f"does not start with {MAGIC!r}")
                self._step = 1
            elif self._step == 1:
                # Both versions at once: the client sends them together.
                if reader.peek_int32() is None:
                    break
                start = reader._pos
                core = _take_len_content(reader, MAX_VERSION, "core version")
                full = _take_len_content(reader, MAX_VERSION, "version") if core is not None else None
                if core is None or full is None:
                    reader._pos = start
                    break
                events.append(Hello(_text(core, "core version"), _text(full, "version")))
                self._step = 2
            elif self._step == 2:
                digest = reader.take(32)
                if digest is None:
                    break
                if not _is_hex(digest):
                    raise LegacyHandshakeError("vkey proof is not 32 hex digits")
                events.append(KeyProof(digest.lower()))
                self._step = 3
            else:
                flag = reader.take(4)
                if flag is None:
                    break
                if flag not in WORK_TYPES:
                    raise LegacyHandshakeError(f"unknown work type {flag!r}")
                self.done = True
                events.append(WorkType(flag, reader.rest()))
                break
        return events


def _text(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise LegacyHandshakeError(f"{what} is not ASCII") from None
    if not text.isprintable():
        raise LegacyHandshakeError(f"{what} has control characters")
    return text


def _is_hex(raw: bytes) -> bool:
    return len(raw) == 32 and all(c in b"0123456789abcdefABCDEF" for c in raw)


# -- after the work type ---------------------------------------------------------


@attrs.frozen
class ConfMessage:
    """One message of a C{conf} connection: C{flag} plus its payload."""

    flag: bytes
    payload: bytes


class LegacyMessageReader:
    """Parses what follows a work type, one expected item at a time.

    Call L{expect} with what comes next (C{"int32"}, C{"digest"} or
    C{"conf"}), then L{feed} bytes; L{next} returns the item once complete.
    """

    def __init__(self, data: bytes = b"") -> None:
        self._reader = _Reader()
        self._reader.feed(data)

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)
        if self._reader.available > MAX_MESSAGE + 8:
            raise LegacyHandshakeError(f"more than {MAX_MESSAGE} bytes sent without waiting for an answer")

    def int32(self) -> int | None:
        """A little-endian signed 32-bit integer (C{rgst}'s hours)."""
        raw = self._reader.take(4)
        return None if raw is None else int(struct.unpack("<i", raw)[0])

    def digest(self) -> bytes | None:
        """A 32-hex-digit md5 (C{sert}, C{p2pm}, C{stus})."""
        raw = self._reader.take(32)
        if raw is None:
            return None
        if not _is_hex(raw):
            raise LegacyHandshakeError("expected 32 hex digits (an md5)")
        return raw.lower()

    def conf(self) -> ConfMessage | None:
        """A config-file-mode message: 4-byte flag, then a blob or an md5."""
        reader = self._reader
        if reader.available < 4:
            return None
        flag = bytes(reader._buf[reader._pos:reader._pos + 4])
        if flag not in CONF_FLAGS:
            raise LegacyHandshakeError(f"unknown config message {flag!r}")
        start = reader._pos
        reader.take(4)
        if flag == CONF_STATUS:
            payload = self.digest()
        else:
            payload = _take_len_content(reader, MAX_MESSAGE, f"{flag.decode()} message")
        if payload is None:
            reader._pos = start
            return None
        return ConfMessage(flag, payload)

    @property
    def buffered(self) -> int:
        return self._reader.available


def bool_byte(value: bool) -> bytes:
    """NPS's one-byte boolean answer (Go's C{binary.Write} of a bool)."""
    return b"\x01" if value else b"\x00"


def status_list(remarks: list[str]) -> bytes:
    """The answer to C{stus}: the running remarks, C{"a*#*b*#*"}, length-prefixed."""
    return len_content("".join(r + LIST_SEP for r in remarks).encode("utf-8"))
