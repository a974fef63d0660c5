# -*- test-case-name: test.test_vhost_httphead -*-
"""
Sans-io HTTP/1.x pieces for the domain (vhost) proxy: find and parse a
request or response head, and follow a message body's framing
(C{Content-Length}, chunked, until close) without decoding it, so bodies
pass through byte for byte.

Heads are parsed strictly: anything a smuggler could use (both
C{Content-Length} and C{Transfer-Encoding}, differing lengths, folded or
malformed header lines, whitespace before the colon, bare CR) is refused
with L{HttpError} carrying the status to answer.
"""
from __future__ import annotations

import re
from typing import Iterable

import attrs

__all__ = [
    "HttpError",
    "RequestHead",
    "ResponseHead",
    "HeadReader",
    "parse_request",
    "parse_request_fast",
    "parse_request_head",
    "parse_response_fast",
    "parse_response_head",
    "BodyReader",
    "request_body",
    "response_body",
    "MAX_HEAD_SIZE",
]

#: Largest request head (request line plus headers) accepted, in bytes.
MAX_HEAD_SIZE = 32 * 1024
#: Most header lines in one head.
MAX_HEADERS = 128
#: Longest chunk-size line or trailer line.
MAX_CHUNK_LINE = 4096

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: [^\r\n]*)?")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")

# Fast paths: one C-level match of a whole CRLF head in its usual shape.  A head
# they do not match goes to the general parser, which accepts everything they
# accept (with the same result) and explains what is wrong with the rest.
# Possessive repeats (nothing to backtrack into: each class stops at the
# byte that follows it) keep the matcher from saving states.
_TCHARS = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_VCHARS = rb"[^\x00-\x08\x0a-\x1f\x7f]"
_FAST_REQUEST = re.compile(
    rb"(" + _TCHARS + rb"++) ([\x21-\x7e]++) HTTP/1\.([01])\r\n((?:" + _TCHARS + rb"++:" + _VCHARS
    + rb"*+\r\n){0,%d}+)\r\n" % MAX_HEADERS)
_FAST_RESPONSE = re.compile(
    rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: " + _VCHARS + rb"*+)?\r\n((?:" + _TCHARS + rb"++:" + _VCHARS
    + rb"*+\r\n){0,%d}+)\r\n" % MAX_HEADERS)
_FAST_FIELD = re.compile(rb"(" + _TCHARS + rb"+):[ \t]*(" + _VCHARS + rb"*?)[ \t]*\r\n")
#: Framing header lines in a lower-cased response head (values still to be stripped at the right).
_FRAMING_FIELD = re.compile(rb"\n(c(?:ontent-length|onnection)|transfer-encoding):[ \t]*+([^\r]*+)")


class HttpError(Exception):
    """
    A malformed or unacceptable message.

    @ivar status: the HTTP status to answer with (400, 431, 501, 505, 502 for
        a bad response from a backend).
    @ivar reason: what was wrong, for the error page and the log.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


Headers = tuple[tuple[bytes, bytes], ...]
#: Header values by lower-case name, built once per head.
Index = dict[bytes, list[bytes]]


def _index(headers: Headers) -> Index:
    index: Index = {}
    for key, value in headers:
        index.setdefault(key.lower(), []).append(value)
    return index


def _tokens(values: Iterable[bytes]) -> list[bytes]:
    """Comma-separated header values as lower-case tokens."""
    out = []
    for value in values:
        for item in value.split(b","):
            item = item.strip().lower()
            if item:
                out.append(item)
    return out


class RequestHead:
    """
    A parsed request line and headers (names keep their case); compared by
    method, target, version and headers.  A plain slotted class: one is
    built per request.

    @ivar index: header values by lower-case name.
    @ivar raw: the head exactly as received when it had the usual CRLF shape
        (it may be passed on as is when nothing changes), else empty.
    """

    __slots__ = ("method", "target", "version", "headers", "index", "raw")

    def __init__(self, method: bytes, target: bytes, version: tuple[int, int], headers: Headers,
                 index: Index | None = None, raw: bytes = b"") -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.index: Index = _index(headers) if index is None else index
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestHead):
            return NotImplemented
        return (self.method, self.target, self.version, self.headers) == \
            (other.method, other.target, other.version, other.headers)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"RequestHead(method={self.method!r}, target={self.target!r}, version={self.version!r}, "
                f"headers={self.headers!r})")

    def get(self, name: bytes) -> bytes | None:
        """The first value of header C{name} (lower case), or None."""
        values = self.index.get(name)
        return values[0] if values else None

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of header C{name} (lower case)."""
        return self.index.get(name, [])

    @property
    def path(self) -> bytes:
        """The target's path (origin form), without the query."""
        target = self.target
        if not target.startswith(b"/"):
            match = re.match(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*", target)
            target = target[match.end():] if match else target
            if not target.startswith(b"/"):
                target = b"/" + target
        return target.split(b"?", 1)[0].split(b"#", 1)[0]

    @property
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept after the response."""
        values = self.index.get(b"connection")
        if values is None:
            return self.version == (1, 1)
        connection = _tokens(values)
        if self.version >= (1, 1):
            return b"close" not in connection
        return b"keep-alive" in connection

    @property
    def upgrade(self) -> bool:
        """An C{Upgrade} request (WebSocket and the like)."""
        return b"upgrade" in _tokens(self.get_all(b"connection")) and bool(self.get(b"upgrade"))

    def serialize(self, headers: Headers | None = None) -> bytes:
        """The head as bytes, with C{headers} instead of the parsed ones if given."""
        lines = [b"%s %s HTTP/%d.%d" % (self.method, self.target, self.version[0], self.version[1])]
        lines.extend(name + b": " + value for name, value in (self.headers if headers is None else headers))
        return b"\r\n".join(lines) + b"\r\n\r\n"


@attrs.frozen
class ResponseHead:
    """A parsed status line and headers."""

    status: int
    version: tuple[int, int]
    headers: Headers
    index: Index = attrs.field(eq=False, repr=False, default=attrs.Factory(lambda self: _index(self.headers),
                                                                           takes_self=True))

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of header C{name} (lower case)."""
        return self.index.get(name, [])

    @property
    def keep_alive(self) -> bool:
        connection = _tokens(self.get_all(b"connection"))
        if self.version >= (1, 1):
            return b"close" not in connection
        return b"keep-alive" in connection


class HeadReader:
    """
    Collects bytes until a head's blank line.

    C{feed} returns the head's bytes (blank line included) once complete and
    keeps the rest for the body; it raises L{HttpError} 431 (or C{too_big}) when
    C{max_size} bytes arrive without one.  Leading empty lines are skipped
    (RFC 9112 section 2.2).
    """

    def __init__(self, max_size: int = MAX_HEAD_SIZE, too_big: int = 431) -> None:
        self.max_size = max_size
        self._too_big = too_big
        self._buffer = bytearray()
        self._scanned = 0

    def feed(self, data: bytes) -> bytes | None:
        buffer = self._buffer
        if not buffer and data[:1] not in (b"\r", b"\n"):
            # Fast path: a whole head in one read (the usual case).
            end = data.find(b"\r\n\r\n")
            if 0 <= end <= self.max_size and data.find(b"\n\n", 0, end) < 0 and \
                    data.find(b"\n\r\n", 0, end) < 0:
                buffer += data[end + 4:]
                return data[:end + 4]
        buffer += data
        if self._scanned == 0:
            start = 0
            while start < len(buffer) and buffer[start] in (0x0D, 0x0A):
                start += 1
            if start:
                del buffer[:start]
        begin = max(self._scanned - 3, 0)
        end = -1
        lf = buffer.find(b"\n", begin)
        while lf >= 0 and lf < self.max_size + 4:
            if buffer[lf + 1: lf + 2] == b"\n":
                end = lf + 2
                break
            if buffer[lf + 1: lf + 3] == b"\r\n":
                end = lf + 3
                break
            lf = buffer.find(b"\n", lf + 1)
        if end < 0:
            self._scanned = len(buffer)
            if len(buffer) > self.max_size:
                raise HttpError(self._too_big, f"head larger than {self.max_size} bytes")
            return None
        if end > self.max_size + 4:
            raise HttpError(self._too_big, f"head larger than {self.max_size} bytes")
        head = bytes(buffer[:end])
        del buffer[:end]
        self._scanned = 0
        return head

    def take_rest(self) -> bytes:
        """Bytes after the last complete head (the body's start), emptying the buffer."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return rest

    @property
    def pending(self) -> int:
        return len(self._buffer)


def _lines(head: bytes) -> list[bytes]:
    lines = head.split(b"\n")
    out = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        out.append(line)
    while out and out[-1] == b"":
        out.pop()
    return out


def _parse_headers(lines: list[bytes], status: int) -> Headers:
    if len(lines) > MAX_HEADERS:
        raise HttpError(431 if status == 400 else status, f"more than {MAX_HEADERS} header lines")
    headers = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise HttpError(status, "folded header line (obs-fold) is not accepted")
        name, colon, value = line.partition(b":")
        if not colon:
            raise HttpError(status, f"header line without ':': {line[:40]!r}")
        if _TOKEN.fullmatch(name) is None:
            raise HttpError(status, f"bad header name {name[:40]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value) is not None:
            raise HttpError(status, f"control character in header {name.decode('ascii')!r}")
        headers.append((name, value))
    return tuple(headers)


def parse_request_head(head: bytes) -> RequestHead:
    """
    Parse a request head (as returned by L{HeadReader.feed}).

    @raise HttpError: 400 for a malformed head, 505 for a version other
        than HTTP/1.0 and 1.1.
    """
    return parse_request(head)[0]


def parse_request(head: bytes) -> tuple[RequestHead, BodyReader]:
    """
    Parse a request head and find its body's framing (L{request_body}).

    @raise HttpError: as L{parse_request_head} and L{request_body}.
    """
    parsed = parse_request_fast(head)
    if parsed is not None:
        return parsed
    request = _parse_request_head(head)
    return request, request_body(request)


def parse_request_fast(head: bytes) -> tuple[RequestHead, BodyReader] | None:
    """
    L{parse_request} of a head in the usual shape (CRLF lines, one C{Host},
    plain names and values, at most L{MAX_HEADERS} lines), given the bytes
    up to the first C{CRLF CRLF}.  None for any other head, which
    L{HeadReader} and L{parse_request} then judge (also when an LF-only
    blank line ended the head earlier: a match rules that out).

    @raise HttpError: for bad framing headers, as L{request_body}.
    """
    match = _FAST_REQUEST.fullmatch(head)
    if match is None:
        return None
    method, target, minor, block = match.groups()
    headers = tuple(_FAST_FIELD.findall(block))
    index: Index = {}
    for key, value in headers:
        key = key.lower()
        values = index.get(key)
        if values is None:
            index[key] = [value]
        else:
            values.append(value)
    hosts = index.get(b"host")
    if hosts is None or len(hosts) != 1:
        return None
    request = RequestHead(method, target, (1, 1) if minor == b"1" else (1, 0), headers, index, head)
    if b"content-length" not in index and b"transfer-encoding" not in index:
        return request, BodyReader("none")
    return request, request_body(request)


def _parse_request_head(head: bytes) -> RequestHead:
    lines = _lines(head)
    if not lines:
        raise HttpError(400, "empty request")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, f"malformed request line {lines[0][:60]!r}")
    method, target, version_text = parts
    version = _VERSION.fullmatch(version_text)
    if _TOKEN.fullmatch(method) is None or version is None:
        raise HttpError(400, f"malformed request line {lines[0][:60]!r}")
    if _TARGET.fullmatch(target) is None:
        raise HttpError(400, "malformed request target")
    major, minor = int(version.group(1)), int(version.group(2))
    if (major, minor) not in ((1, 0), (1, 1)):
        raise HttpError(505, f"HTTP/{major}.{minor} is not supported here (HTTP/1.0 and 1.1 are)")
    request = RequestHead(method, target, (major, minor), _parse_headers(lines[1:], 400))
    hosts = request.get_all(b"host")
    if len(hosts) > 1:
        raise HttpError(400, "more than one Host header")
    if (major, minor) == (1, 1) and not hosts:
        raise HttpError(400, "HTTP/1.1 request without a Host header")
    request_body(request)  # checks the framing headers
    return request


#: Response headers the proxy needs to follow the framing; the others pass through unread.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def parse_response_head(head: bytes) -> ResponseHead:
    """
    Parse a response head from a backend, keeping only the headers that
    decide its framing (the head itself is passed on byte for byte).

    @raise HttpError: 502 for a malformed status line or header line.
    """
    lines = _lines(head)
    match = _STATUS.fullmatch(lines[0]) if lines else None
    if match is None:
        raise HttpError(502, "malformed status line from the backend")
    if len(lines) > MAX_HEADERS + 1:
        raise HttpError(502, f"more than {MAX_HEADERS} header lines from the backend")
    version = (int(match.group(1)), int(match.group(2)))
    headers = []
    for line in lines[1:]:
        colon = line.find(b":")
        if colon <= 0 or line[:1] in (b" ", b"\t"):
            raise HttpError(502, f"malformed header line from the backend: {line[:40]!r}")
        name = line[:colon].lower()
        if name in _FRAMING:
            value = line[colon + 1:].strip(b" \t")
            if _BAD_VALUE.search(value) is not None:
                raise HttpError(502, "control character in a framing header from the backend")
            headers.append((name, value))
    return ResponseHead(int(match.group(3)), version, tuple(headers))


def parse_response_fast(data: bytes, start: int, end: int, method: bytes) -> tuple[int, bool, BodyReader | None] | None:
    """
    What the proxy needs of the response head C{data[start:end]} when it has
    the usual shape (CRLF lines, plain header names and values, each framing
    header at most once), without copying it: the status, whether the
    backend keeps the connection, and the body's framing after a C{method}
    request (None for a 1xx head).  None when the head has another shape
    and the general parser (L{parse_response_head}, L{response_body}) must
    decide; for the heads it takes this gives the same answers.

    @raise HttpError: 502 for a bad C{Content-Length}.
    """
    match = _FAST_RESPONSE.fullmatch(data, start, end)
    if match is None:
        return None
    (status_text, version), first = match.group(2, 1), match.start(3)
    status = int(status_text)
    if status < 200:
        return status, True, None
    lowered = data[first - 1:end].lower()  # from the status line's LF: every name follows one
    length = coding = connection = None
    for name, value in _FRAMING_FIELD.findall(lowered):
        value = value.rstrip(b" \t")
        if name == b"content-length":
            if length is not None:
                return None
            length = value
        elif name == b"connection":
            if connection is not None:
                return None
            connection = value
        else:
            if coding is not None:
                return None
            coding = value
    if connection is None:
        keep_alive = version == b"1"
    elif connection == b"keep-alive":
        keep_alive = True
    elif version == b"1":
        keep_alive = b"close" not in _tokens((connection,))
    else:
        keep_alive = b"keep-alive" in _tokens((connection,))
    if method == b"HEAD" or status == 204 or status == 304:
        return status, keep_alive, BodyReader("none")
    if coding is not None:
        tokens = _tokens((coding,))
        return status, keep_alive, BodyReader("chunked" if tokens and tokens[-1] == b"chunked" else "close",
                                              error_status=502)
    if length is not None:
        if length.isdigit() and len(length) <= 18:
            return status, keep_alive, BodyReader("length", int(length), error_status=502)
        return status, keep_alive, BodyReader("length", _content_length([length], 502), error_status=502)
    return status, keep_alive, BodyReader("close")


class BodyReader:
    """
    Follows one body's framing: C{feed(data)} returns how many leading bytes
    of C{data} belong to the body; C{done} says the body is complete.

    Kinds: C{"length"} (C{remaining} bytes), C{"chunked"}, C{"close"}
    (until the connection ends; never done by itself), C{"none"}.
    """

    def __init__(self, kind: str, length: int = 0, error_status: int = 400) -> None:
        self.kind = kind
        self.remaining = length
        self.done = kind == "none" or (kind == "length" and length == 0)
        self._status = error_status
        if kind == "chunked":
            # chunked state: "size", "data", "crlf", "trailer"
            self._state = "size"
            self._line = bytearray()

    def feed(self, data: bytes | bytearray, start: int = 0) -> int:
        """
        @param start: where in C{data} to begin (the count returned is of
            bytes from there), so that no slice is needed.
        """
        if self.done:
            return 0
        if self.kind == "length":
            take = min(self.remaining, len(data) - start)
            self.remaining -= take
            self.done = self.remaining == 0
            return take
        if self.kind == "close":
            return len(data) - start
        return self._feed_chunked(data, start) - start

    def _feed_chunked(self, data: bytes | bytearray, start: int) -> int:
        pos = start
        size = len(data)
        while pos < size and not self.done:
            state = self._state
            if state == "data":
                take = min(self.remaining, size - pos)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._state = "crlf"
                continue
            lf = data.find(b"\n", pos)
            end = size if lf < 0 else lf + 1
            self._line += data[pos:end]
            pos = end
            if len(self._line) > MAX_CHUNK_LINE:
                raise HttpError(self._status, "chunk-size or trailer line too long")
            if lf < 0:
                break
            line = bytes(self._line).rstrip(b"\r\n")
            self._line.clear()
            if state == "size":
                size_text = line.split(b";", 1)[0].strip(b" \t")
                if _HEX.fullmatch(size_text) is None:
                    raise HttpError(self._status, f"bad chunk size {size_text[:20]!r}")
                self.remaining = int(size_text, 16)
                self._state = "data" if self.remaining else "trailer"
            elif state == "crlf":
                if line:
                    raise HttpError(self._status, "chunk data not followed by CRLF")
                self._state = "size"
            elif line == b"":  # trailer section ends
                self.done = True
            elif b":" not in line:
                raise HttpError(self._status, "malformed trailer line")
        return pos


def request_body(request: RequestHead) -> BodyReader:
    """
    The framing of C{request}'s body.

    @raise HttpError: 400 for conflicting or bad framing headers, 501 for a
        transfer coding other than chunked.
    """
    encodings = request.get_all(b"transfer-encoding")
    lengths = request.get_all(b"content-length")
    if encodings:
        if lengths:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if request.version < (1, 1):
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if _tokens(encodings) != [b"chunked"]:
            raise HttpError(501, "only Transfer-Encoding: chunked is supported")
        return BodyReader("chunked")
    if lengths:
        return BodyReader("length", _content_length(lengths, 400))
    return BodyReader("none")


def response_body(response: ResponseHead, method: bytes) -> BodyReader:
    """
    The framing of a response body to a C{method} request (RFC 9112 section 6.3).

    @raise HttpError: 502 for bad framing headers.
    """
    status = response.status
    if method == b"HEAD" or status < 200 or status in (204, 304):
        return BodyReader("none")
    encodings = response.get_all(b"transfer-encoding")
    if encodings:
        tokens = _tokens(encodings)
        if tokens and tokens[-1] == b"chunked":
            return BodyReader("chunked", error_status=502)
        return BodyReader("close")
    lengths = response.get_all(b"content-length")
    if lengths:
        return BodyReader("length", _content_length(lengths, 502), error_status=502)
    return BodyReader("close")


def _content_length(values: list[bytes], status: int) -> int:
    items = {item.strip() for value in values for item in value.split(b",")}
    if len(items) != 1:
        raise HttpError(status, "conflicting Content-Length values")
    (text,) = items
    if not text.isdigit() or len(text) > 18:
        raise HttpError(status, f"bad Content-Length {text[:20]!r}")
    return int(text)
