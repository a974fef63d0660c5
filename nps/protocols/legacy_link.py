# -*- test-case-name: test.test_legacy_codecs -*-
"""The per-stream header of NPS 0.26 (its C{Link}), with no I/O.

After a stream is open, the server writes one length-prefixed JSON object
(C{int32 LE} length, then the JSON) naming what the client should connect
to::

    {"ConnType": "tcp", "Host": "10.0.0.5:22", "Crypt": false, "Compress": false,
     "LocalProxy": false, "RemoteAddr": "1.2.3.4:5555", "Option": {"Timeout": 5000000000}}

C{ConnType} is C{tcp}, C{udp}, C{http} or C{udp5} (a SOCKS5 UDP relay).
L{to_legacy} and L{from_legacy} translate between that and our own link
dicts (C{{"mode": ..., "target": ..., "remote": ...}}).
"""
from __future__ import annotations

import json
import struct
from typing import Any

#: Largest link header accepted.
MAX_LINK = 16 * 1024
#: NPS's dial timeout for the target, in Go nanoseconds (5 s).
DIAL_TIMEOUT_NS = 5_000_000_000
#: Our stream modes and the NPS connection type each travels as.
CONN_TYPES = {"tcp": "tcp", "socks5": "tcp", "httpProxy": "tcp", "host": "tcp", "secret": "tcp",
              "udp": "udp", "socks5_udp": "udp5"}
#: Modes whose stream carries datagrams (one per nps-mux message).
DATAGRAM_TYPES = frozenset({"udp"})


class LinkError(ValueError):
    """A link header that is not what NPS sends; C{str()} says why."""


def to_legacy(link: dict[str, Any], crypt: bool = False, compress: bool = False) -> dict[str, Any]:
    """The NPS C{Link} for one of our stream links.

    @raise LinkError: our mode has no NPS equivalent.
    """
    mode = str(link.get("mode", "tcp"))
    conn_type = CONN_TYPES.get(mode)
    if conn_type is None:
        raise LinkError(f"mode {mode!r} cannot be carried to an NPS 0.26 client")
    host = "" if conn_type == "udp5" else str(link.get("target", ""))
    return {"ConnType": conn_type, "Host": host, "Crypt": bool(crypt),
            "Compress": bool(compress), "LocalProxy": False, "RemoteAddr": str(link.get("remote", "")),
            "Option": {"Timeout": DIAL_TIMEOUT_NS}}


def encode_link(link: dict[str, Any]) -> bytes:
    """An NPS C{Link} as it goes on the wire (length + compact JSON, as Go writes it)."""
    body = json.dumps(link, separators=(",", ":")).encode("utf-8")
    return struct.pack("<i", len(body)) + body


def from_legacy(raw: dict[str, Any]) -> dict[str, Any]:
    """Our link dict for an NPS C{Link} (what C{npc -proto=0.26} serves).

    @raise LinkError: on a missing or mistyped field.
    """
    conn_type = raw.get("ConnType")
    host = raw.get("Host")
    if conn_type not in ("tcp", "udp", "http", "udp5"):
        raise LinkError(f"unknown ConnType {conn_type!r}")
    if not isinstance(host, str) or (conn_type != "udp5" and not host):
        raise LinkError("link has no Host")
    for key in ("Crypt", "Compress"):
        if not isinstance(raw.get(key, False), bool):
            raise LinkError(f"{key} must be true or false")
    mode = {"tcp": "tcp", "http": "tcp", "udp": "udp", "udp5": "socks5_udp"}[conn_type]
    return {"mode": mode, "target": host, "remote": str(raw.get("RemoteAddr", ""))[:256],
            "crypt": bool(raw.get("Crypt", False)), "compress": bool(raw.get("Compress", False))}


class LinkReader:
    """Collects one length-prefixed link header from a stream's first bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> tuple[dict[str, Any], bytes] | None:
        """C{(link, rest)} once the header is complete, else C{None}.

        @raise LinkError: bad length or not a JSON object.
        """
        self._buf += data
        if len(self._buf) < 4:
            return None
        (size,) = struct.unpack_from("<i", self._buf)
        if not 0 < size <= MAX_LINK:
            raise LinkError(f"link header length {size} is outside 1..{MAX_LINK}")
        if len(self._buf) < 4 + size:
            return None
        try:
            link = json.loads(bytes(self._buf[4:4 + size]).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise LinkError(f"link header is not JSON: {e}") from None
        if not isinstance(link, dict):
            raise LinkError("link header is not a JSON object")
        rest = bytes(self._buf[4 + size:])
        self._buf = bytearray()
        return link, rest


#: Largest SOCKS5 UDP datagram an NPS client may send back (header + a full UDP payload).
MAX_UDP5_DATAGRAM = 65535 + 262


class LengthPrefixedParser:
    """Splits NPS's C{udp5} return stream (C{int32 LE} length + SOCKS5 UDP datagram, repeated) into datagrams."""

    def __init__(self, limit: int = MAX_UDP5_DATAGRAM) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        """The datagrams completed by C{data}; raise L{LinkError} on a bad length."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = struct.unpack_from("<i", buf, pos)
            if not 0 < size <= self._limit:
                raise LinkError(f"udp5 datagram length {size} is outside 1..{self._limit}")
            if len(buf) - pos - 4 < size:
                break
            out.append(bytes(buf[pos + 4:pos + 4 + size]))
            pos += 4 + size
        del buf[:pos]
        return out
