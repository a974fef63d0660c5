# -*- test-case-name: test.test_socks5 -*-
"""Sans-io SOCKS5 (RFC 1928) server side, with RFC 1929 user/password auth.

L{ServerHandshake} takes the bytes a SOCKS client sends with C{feed()} and
returns events: L{Send} (bytes to write back) and, once, L{Request} (the
client's CONNECT or UDP ASSOCIATE).  Bad input raises L{Socks5Error}, whose
C{out} holds the bytes to send before closing (a refusal reply), if any.
Every message has a size bounded by the RFC, so at most one message
(< 600 bytes) is ever buffered.

Also here: reply encoding (L{encode_reply}), the UDP request header
(L{encode_udp}/L{decode_udp}), the framing of datagrams inside a stream
(L{frame_datagram}/L{DatagramFramer}) and the mapping of a failed connect's
reason text to a reply code (L{reply_for_error}).
"""
from __future__ import annotations

import enum
import ipaddress
import re
import struct
from typing import Callable, Union

import attrs

VERSION = 5
AUTH_VERSION = 1
MAX_DATAGRAM_FRAME = 0xFFFF
_PORT = struct.Struct("!H")
_HOSTNAME = re.compile(rb"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")


class Method(enum.IntEnum):
    """Authentication methods (RFC 1928 section 3)."""

    NO_AUTH = 0x00
    GSSAPI = 0x01
    USER_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(enum.IntEnum):
    """Reply codes (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class Socks5Error(Exception):
    """The client sent something we refuse; C{str()} is a message for the log.

    @ivar out: bytes to send before closing (a method, auth or request
        refusal), possibly empty.
    """

    def __init__(self, message: str, out: bytes = b"") -> None:
        super().__init__(message)
        self.out = out


@attrs.frozen
class Send:
    """Bytes to write to the client."""

    data: bytes


@attrs.frozen
class Request:
    """The client's request: C{command} to C{host:port}.

    C{host} is an IP address in text form or a domain name (not resolved).
    C{rest} holds any bytes the client sent after the request.
    """

    command: Command
    address_type: AddressType
    host: str
    port: int
    rest: bytes = b""


Event = Union[Send, Request]


class _State(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    DONE = "done"


class ServerHandshake:
    """The server side of the SOCKS5 handshake, up to and including the request.

    @param check: if given, credentials are required (method 0x02 only) and
        C{check(user, password)} decides; if C{None}, no authentication
        (method 0x00; a client that offers only 0x02 is let in with any
        credentials).
    """

    def __init__(self, check: Callable[[str, str], bool] | None = None) -> None:
        self._check = check
        self._buffer = bytearray()
        self._state = _State.GREETING
        self._any_credentials = False
        self.user: str | None = None

    @property
    def done(self) -> bool:
        """True once the request was parsed."""
        return self._state is _State.DONE

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held."""
        return len(self._buffer)

    @property
    def state(self) -> str:
        """The current stage, for log lines."""
        return self._state.value

    def feed(self, data: bytes) -> list[Event]:
        """Consume C{data}; return what to send and, at the end, the request.

        @raise Socks5Error: on bad input; the caller sends C{out} and closes.
        """
        if self._state is _State.DONE:
            raise Socks5Error("data fed after the request")
        self._buffer += data
        events: list[Event] = []
        while self._state is not _State.DONE:
            try:
                if self._state is _State.GREETING:
                    event = self._parse_greeting()
                elif self._state is _State.AUTH:
                    event = self._parse_auth()
                else:
                    event = self._parse_request()
            except Socks5Error as e:
                # Replies owed for the messages before the bad one go out first.
                e.out = b"".join(ev.data for ev in events if isinstance(ev, Send)) + e.out
                self._state = _State.DONE
                raise
            if event is None:
                break
            events.append(event)
        return events

    # -- stages -----------------------------------------------------------------

    def _parse_greeting(self) -> Event | None:
        buf = self._buffer
        if not buf:
            return None
        if buf[0] != VERSION:
            if buf[0] == 4:
                raise Socks5Error("SOCKS4 request: only SOCKS5 is supported")
            raise Socks5Error(f"not a SOCKS5 greeting (first byte 0x{buf[0]:02x})")
        if len(buf) < 2:
            return None
        count = buf[1]
        if count == 0:
            raise Socks5Error("greeting offers no authentication method", bytes((VERSION, Method.NO_ACCEPTABLE)))
        if len(buf) < 2 + count:
            return None
        methods = set(buf[2:2 + count])
        del buf[:2 + count]
        if self._check is not None:
            if Method.USER_PASSWORD not in methods:
                raise Socks5Error("client does not offer user/password authentication, which is required",
                                  bytes((VERSION, Method.NO_ACCEPTABLE)))
            method = Method.USER_PASSWORD
        elif Method.NO_AUTH in methods:
            method = Method.NO_AUTH
        elif Method.USER_PASSWORD in methods:
            method = Method.USER_PASSWORD
            self._any_credentials = True
        else:
            raise Socks5Error(f"no acceptable authentication method among {sorted(methods)}",
                              bytes((VERSION, Method.NO_ACCEPTABLE)))
        self._state = _State.AUTH if method == Method.USER_PASSWORD else _State.REQUEST
        return Send(bytes((VERSION, method)))

    def _parse_auth(self) -> Event | None:
        buf = self._buffer
        if not buf:
            return None
        if buf[0] != AUTH_VERSION:
            raise Socks5Error(f"bad user/password sub-negotiation version 0x{buf[0]:02x}",
                              bytes((AUTH_VERSION, 0x01)))
        if len(buf) < 2:
            return None
        user_end = 2 + buf[1]
        if len(buf) < user_end + 1:
            return None
        password_end = user_end + 1 + buf[user_end]
        if len(buf) < password_end:
            return None
        raw_user = bytes(buf[2:user_end])
        raw_password = bytes(buf[user_end + 1:password_end])
        del buf[:password_end]
        try:
            user = raw_user.decode("utf-8")
            password = raw_password.decode("utf-8")
        except UnicodeDecodeError:
            raise Socks5Error("credentials are not UTF-8", bytes((AUTH_VERSION, 0x01))) from None
        if self._check is not None and not self._check(user, password):
            raise Socks5Error(f"wrong user name or password for user {user!r}", bytes((AUTH_VERSION, 0x01)))
        self.user = user
        self._state = _State.REQUEST
        return Send(bytes((AUTH_VERSION, 0x00)))

    def _parse_request(self) -> Event | None:
        buf = self._buffer
        if not buf:
            return None
        if buf[0] != VERSION:
            raise Socks5Error(f"bad request version 0x{buf[0]:02x}", encode_reply(Reply.GENERAL_FAILURE))
        if len(buf) < 4:
            return None
        command, atyp = buf[1], buf[3]
        if atyp == AddressType.IPV4:
            end = 4 + 4
        elif atyp == AddressType.IPV6:
            end = 4 + 16
        elif atyp == AddressType.DOMAIN:
            if len(buf) < 5:
                return None
            end = 5 + buf[4]
        else:
            raise Socks5Error(f"address type 0x{atyp:02x} is not supported",
                              encode_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED))
        if len(buf) < end + 2:
            return None
        host = _decode_host(AddressType(atyp), bytes(buf[4:end]))
        (port,) = _PORT.unpack_from(buf, end)
        rest = bytes(buf[end + 2:])
        del buf[:]
        if command not in (Command.CONNECT, Command.UDP_ASSOCIATE):
            name = Command(command).name if command == Command.BIND else f"0x{command:02x}"
            raise Socks5Error(f"command {name} is not supported", encode_reply(Reply.COMMAND_NOT_SUPPORTED))
        self._state = _State.DONE
        return Request(Command(command), AddressType(atyp), host, port, rest)


def _decode_host(atyp: AddressType, raw: bytes) -> str:
    """The text form of an address field (for a domain, C{raw} starts with its length byte)."""
    if atyp == AddressType.IPV4:
        return str(ipaddress.IPv4Address(raw))
    if atyp == AddressType.IPV6:
        return str(ipaddress.IPv6Address(raw))
    name = raw[1:]  # after the length byte
    if not name or _HOSTNAME.fullmatch(name) is None:
        shown = name[:64].decode("ascii", "backslashreplace")
        raise Socks5Error(f"bad domain name {shown!r}", encode_reply(Reply.HOST_UNREACHABLE))
    return name.decode("ascii")


def encode_address(host: str, port: int) -> bytes:
    """ATYP + address + port for C{host} (an IP address or a domain name)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            name = host.encode("idna")
        except UnicodeError:
            raise ValueError(f"not a valid domain name: {host!r}") from None
        if not 0 < len(name) < 256:
            raise ValueError(f"domain name too long or empty: {host!r}") from None
        return bytes((AddressType.DOMAIN, len(name))) + name + _PORT.pack(port)
    atyp = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
    return bytes((atyp,)) + ip.packed + _PORT.pack(port)


def encode_reply(code: Reply | int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """A request reply: C{VER REP RSV} + bound address."""
    return bytes((VERSION, int(code), 0)) + encode_address(host, port)


# -- UDP ------------------------------------------------------------------------


@attrs.frozen
class Datagram:
    """A SOCKS UDP request: C{data} for (or from) C{host:port}."""

    host: str
    port: int
    data: bytes
    frag: int = 0


def decode_udp(packet: bytes) -> Datagram:
    """Parse C{RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA}.

    @raise Socks5Error: if the header is truncated or malformed.
    """
    if len(packet) < 4:
        raise Socks5Error(f"UDP request of {len(packet)} bytes is too short")
    frag, atyp = packet[2], packet[3]
    if atyp == AddressType.IPV4:
        end = 4 + 4
    elif atyp == AddressType.IPV6:
        end = 4 + 16
    elif atyp == AddressType.DOMAIN:
        if len(packet) < 5:
            raise Socks5Error("UDP request truncated in the domain length")
        end = 5 + packet[4]
    else:
        raise Socks5Error(f"UDP request with address type 0x{atyp:02x}")
    if len(packet) < end + 2:
        raise Socks5Error("UDP request truncated in its address")
    host = _decode_host(AddressType(atyp), packet[4:end])
    (port,) = _PORT.unpack_from(packet, end)
    return Datagram(host, port, packet[end + 2:], frag)


def encode_udp(host: str, port: int, data: bytes, frag: int = 0) -> bytes:
    """The SOCKS UDP header for C{host:port} followed by C{data}."""
    return bytes((0, 0, frag)) + encode_address(host, port) + data


def frame_datagram(packet: bytes) -> bytes:
    """One datagram as it travels in a stream: u16 length + packet.

    @raise ValueError: if C{packet} is longer than 65535 bytes.
    """
    if len(packet) > MAX_DATAGRAM_FRAME:
        raise ValueError(f"datagram of {len(packet)} bytes does not fit a frame")
    return _PORT.pack(len(packet)) + packet


class DatagramFramer:
    """Splits a stream of L{frame_datagram} frames back into datagrams."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Consume C{data}; return the complete datagrams (partial ones are kept)."""
        buf = self._buffer
        buf += data
        packets: list[bytes] = []
        offset = 0
        size = len(buf)
        while size - offset >= 2:
            (length,) = _PORT.unpack_from(buf, offset)
            if size - offset - 2 < length:
                break
            packets.append(bytes(buf[offset + 2:offset + 2 + length]))
            offset += 2 + length
        if offset:
            del buf[:offset]
        return packets

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self._buffer)


# -- failures -----------------------------------------------------------------------

_REASONS: list[tuple[tuple[str, ...], Reply]] = [
    (("refused",), Reply.CONNECTION_REFUSED),
    (("network is unreachable", "network unreachable", "enetunreach"), Reply.NETWORK_UNREACHABLE),
    (("no route", "host is unreachable", "host unreachable", "ehostunreach", "dns", "name or service",
      "no address", "resolve", "lookup", "unknown host", "nodename"), Reply.HOST_UNREACHABLE),
    (("timed out", "timeout", "did not answer in time"), Reply.HOST_UNREACHABLE),
    (("not allowed", "forbidden", "denied"), Reply.NOT_ALLOWED),
]


def reply_for_error(message: str) -> Reply:
    """The reply code that best describes a failed connect, from its reason text.

    The text is what the client side reported (e.g. C{"Connection was refused
    by other side: 111: Connection refused."}, C{"DNS lookup failed: ..."},
    C{"User timeout caused connection failure."}).
    """
    text = message.lower()
    for needles, reply in _REASONS:
        if any(needle in text for needle in needles):
            return reply
    return Reply.GENERAL_FAILURE
