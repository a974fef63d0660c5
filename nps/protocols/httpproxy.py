# -*- test-case-name: test.test_httpproxy -*-
"""Sans-io pieces of the C{httpProxy} mode, around h11.

h11 parses the request heads and frames the bodies; this module adds what a
forward proxy needs on top: telling C{CONNECT host:port} from absolute-form
requests (C{GET http://host:port/path HTTP/1.1}), rewriting the latter to
origin-form, removing hop-by-hop headers (and those a C{Connection} header
names), reading C{Proxy-Authorization: Basic} credentials, and the canned
responses (C{200 Connection established}, 400, 407, 431, 502, 504).

Nothing here does I/O; L{nps.plugins.httpproxy} adapts it to transports.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Iterable, Sequence

import attrs
import h11

from nps.config import format_host_port

__all__ = [
    "MAX_HEAD",
    "HOP_BY_HOP",
    "CONNECT_ESTABLISHED",
    "ProxyError",
    "ProxyRequest",
    "parse_basic",
    "proxy_credentials",
    "parse_authority",
    "split_absolute",
    "clean_headers",
    "is_websocket_upgrade",
    "head_size",
    "classify",
    "error_response",
    "auth_required",
    "new_user_connection",
    "new_upstream_connection",
    "status_for_refusal",
]

#: Largest request (or response) head we accept; beyond it the user gets a 431.
MAX_HEAD = 64 * 1024

#: Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus the
#: proxy's own.  Content-Length and Transfer-Encoding stay: they are the
#: framing, which h11 checks on the way in and rewrites on the way out.
HOP_BY_HOP = frozenset({
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
})

#: Sent once the target of a CONNECT is connected; raw bytes follow.
CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"

_REASONS = {
    400: b"Bad Request",
    403: b"Forbidden",
    405: b"Method Not Allowed",
    407: b"Proxy Authentication Required",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    504: b"Gateway Timeout",
}

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")


class ProxyError(Exception):
    """A request the proxy refuses, with the status to answer.

    @ivar status: the HTTP status code of the refusal.
    @ivar message: a short human-readable reason (also the response body).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


@attrs.frozen
class ProxyRequest:
    """What a user asked the proxy for.

    @ivar kind: C{"connect"} (a tunnel) or C{"forward"} (one HTTP request).
    @ivar host: the target host (IPv6 without brackets).
    @ivar port: the target port.
    @ivar request: for C{"forward"}: the request to send upstream, in
        origin-form with hop-by-hop headers removed and C{Host} set from the URL.
    @ivar credentials: C{(user, password)} from C{Proxy-Authorization: Basic}, if any.
    @ivar websocket: the request asks for a WebSocket upgrade (kept end to end).
    """

    kind: str
    host: str
    port: int
    request: h11.Request | None = None
    credentials: tuple[str, str] | None = None
    websocket: bool = False

    @property
    def target(self) -> str:
        """C{host:port} as the link header carries it."""
        return format_host_port(self.host, self.port)


def parse_basic(value: bytes) -> tuple[str, str] | None:
    """Parse a C{Basic} credentials header value (RFC 7617).

    @param value: e.g. C{b"Basic dTpw"}.
    @return: C{(user, password)}, or None if the value is not well-formed Basic.
    """
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    token = token.strip()
    if not token or len(token) > 4096:
        return None
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


def proxy_credentials(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """The Basic credentials of the first C{Proxy-Authorization} header, if any usable."""
    for name, value in headers:
        if name.lower() == b"proxy-authorization":
            return parse_basic(value)
    return None


def _valid_host(host: str) -> str:
    """Check a host name or IP literal (IPv6 without brackets); return it lowercased."""
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ProxyError(400, f"bad IPv6 address {host!r}") from None
    if not host or _HOSTNAME.fullmatch(host) is None:
        raise ProxyError(400, f"bad host {host!r}")
    return host.lower()


def parse_authority(authority: bytes, default_port: int | None = None) -> tuple[str, int]:
    """Parse C{host:port} (C{[v6]:port}); the port may be left out if C{default_port} is given.

    @raise ProxyError: 400 if it is not such an authority.
    """
    try:
        text = authority.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError(400, "non-ASCII host") from None
    if "@" in text:
        raise ProxyError(400, "credentials in the URL are not supported")
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ProxyError(400, f"missing ']' in {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if not host or ":" not in host:
            raise ProxyError(400, f"bad IPv6 address {host!r}")
        if rest and not rest.startswith(":"):
            raise ProxyError(400, f"bad authority {text!r}")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_part = text.rpartition(":")
        if not sep:
            host, port_text = text, None
        elif ":" in host:
            raise ProxyError(400, f"IPv6 hosts need brackets: {text!r}")
        else:
            port_text = port_part
    if port_text is None or port_text == "":
        if default_port is None:
            raise ProxyError(400, f"missing port in {text!r}")
        port = default_port
    else:
        if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
            raise ProxyError(400, f"bad port in {text!r}")
        port = int(port_text)
    return _valid_host(host), port


def split_absolute(target: bytes) -> tuple[bytes, bytes]:
    """Split an absolute-form C{http://} target into its authority and origin-form target.

    @return: C{(authority, origin)}, e.g. C{(b"host:8080", b"/path?q")}; an empty path becomes C{/}.
    @raise ProxyError: 400 for origin-form, other schemes or a missing host.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep:
        if target.startswith(b"/") or target == b"*":
            raise ProxyError(400, "this is a proxy: send absolute-form requests (http://host/path) or CONNECT")
        raise ProxyError(400, "bad request target")
    scheme = scheme.lower()
    if scheme == b"https":
        raise ProxyError(400, "use CONNECT for https:// targets")
    if scheme != b"http":
        raise ProxyError(400, f"unsupported URL scheme {scheme.decode('ascii', 'replace')!r}")
    cut = len(rest)
    for mark in (b"/", b"?", b"#"):
        at = rest.find(mark)
        if 0 <= at < cut:
            cut = at
    authority, origin = rest[:cut], rest[cut:]
    hash_at = origin.find(b"#")
    if hash_at >= 0:
        origin = origin[:hash_at]
    if not authority:
        raise ProxyError(400, "missing host in the URL")
    if not origin.startswith(b"/"):
        origin = b"/" + origin
    return authority, origin


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() in (b"connection", b"proxy-connection"):
            for token in value.split(b","):
                token = token.strip().lower()
                if token and _TOKEN.fullmatch(token):
                    tokens.add(token)
    return tokens


def clean_headers(headers: Iterable[tuple[bytes, bytes]], *, keep_upgrade: bool = False) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers, including those named by C{Connection}.

    @param keep_upgrade: keep C{Upgrade} and send C{Connection: upgrade}
        (a WebSocket handshake passes end to end).
    @return: the remaining C{(name, value)} pairs, names lowercased, order kept.
    """
    headers = list(headers)
    named = _connection_tokens(headers)
    drop = HOP_BY_HOP | named
    out = []
    upgrade: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"upgrade" and keep_upgrade:
            upgrade.append((lower, value))
        elif lower not in drop:
            out.append((lower, value))
    if keep_upgrade and upgrade:
        out.append((b"connection", b"upgrade"))
        out.extend(upgrade)
    return out


def is_websocket_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """True if the headers ask for C{Upgrade: websocket} (and C{Connection} names upgrade)."""
    headers = list(headers)
    if b"upgrade" not in _connection_tokens(headers):
        return False
    for name, value in headers:
        if name.lower() == b"upgrade":
            protocols = [p.strip().split(b"/")[0].lower() for p in value.split(b",")]
            if b"websocket" in protocols:
                return True
    return False


def head_size(request: h11.Request) -> int:
    """About how many bytes the head of C{request} took on the wire.

    h11 limits only heads that arrive in pieces; a whole head in one read is
    parsed whatever its size, so we measure it afterwards too.
    """
    size = len(request.method) + len(request.target) + 12  # " ", " HTTP/1.1\r\n", final CRLF
    for name, value in request.headers.raw_items():
        size += len(name) + len(value) + 4
    return size


def classify(request: h11.Request) -> ProxyRequest:
    """Turn a request received from a user into what to do with it.

    @raise ProxyError: 431 for heads over L{MAX_HEAD}; 400 for origin-form
        requests, unsupported schemes, bad hosts or ports.
    """
    if head_size(request) > MAX_HEAD:
        raise ProxyError(431, "request head larger than 64 KiB")
    headers = list(request.headers)
    credentials = proxy_credentials(headers)
    if request.method == b"CONNECT":
        host, port = parse_authority(request.target)
        return ProxyRequest("connect", host, port, None, credentials)
    authority, origin = split_absolute(request.target)
    host, port = parse_authority(authority, default_port=80)
    websocket = is_websocket_upgrade(headers)
    kept = [(n, v) for n, v in clean_headers(headers, keep_upgrade=websocket) if n != b"host"]
    # RFC 9112 §3.2.2: a proxy replaces Host with the authority of an absolute-form target.
    upstream = h11.Request(method=request.method, target=origin,
                           headers=[(b"host", authority), *kept])
    return ProxyRequest("forward", host, port, upstream, credentials, websocket)


def error_response(status: int, message: str,
                   headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A complete C{Connection: close} response with C{message} as a text body."""
    body = (message.rstrip("\n") + "\n").encode("utf-8", "replace")
    reason = _REASONS.get(status, b"Error")
    lines = [b"HTTP/1.1 %d %s" % (status, reason),
             b"Content-Type: text/plain; charset=utf-8",
             b"Content-Length: %d" % len(body),
             b"Connection: close",
             b"Proxy-Connection: close"]
    lines.extend(name + b": " + value for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def auth_required(realm: str = "nps") -> bytes:
    """The C{407} asking for Basic proxy credentials."""
    challenge = b'Basic realm="%s"' % realm.replace('"', "").encode("ascii", "replace")
    return error_response(407, "proxy authentication required",
                          [(b"Proxy-Authenticate", challenge)])


def status_for_refusal(reason: str) -> int:
    """504 when the reason a target could not be reached is a timeout, else 502."""
    lowered = reason.lower()
    return 504 if ("timed out" in lowered or "timeout" in lowered or "in time" in lowered) else 502


def new_user_connection() -> h11.Connection:
    """The h11 state machine facing a user (we are the server)."""
    return h11.Connection(our_role=h11.SERVER, max_incomplete_event_size=MAX_HEAD)


def new_upstream_connection() -> h11.Connection:
    """The h11 state machine facing one upstream target (we are the client)."""
    return h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
