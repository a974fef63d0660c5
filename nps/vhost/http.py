# -*- test-case-name: test.test_vhost_http -*-
"""
The HTTP side of the domain proxy: one connection from a browser, each
request routed by its own C{Host} (and path) to a stream to the client that
owns that host.

Requests on a connection are handled one after another: the head is parsed
and rewritten (C{host_change}, C{header_*}, C{X-Forwarded-For}), the body is
passed through as it arrives, and the response is passed back byte for byte
while its framing is followed, so the next request can go to another host.
A C{101 Switching Protocols} answer to an C{Upgrade} request (WebSocket)
turns the connection into a plain two-way relay.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import html
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nps.config import format_host_port
from nps.protocols.httphead import (
    BodyReader,
    HeadReader,
    HttpError,
    RequestHead,
    MAX_HEAD_SIZE,
    parse_request,
    parse_request_fast,
    parse_response_fast,
    parse_response_head,
    response_body,
)
from nps.fastwrite import writer_for
from nps.relay import tune_socket
from nps.vhost.registry import Route, normalize_name

if TYPE_CHECKING:
    from nps.vhost.service import VhostService

__all__ = ["VhostHttpFactory", "VhostHttpProtocol", "HEADER_TIMEOUT", "KEEPALIVE_TIMEOUT"]

#: Seconds a new connection has to send a complete request head.
HEADER_TIMEOUT = 20.0
#: Seconds an idle keep-alive connection may wait for (and send) its next head.
KEEPALIVE_TIMEOUT = 60.0
#: Largest response head accepted from a backend.
MAX_RESPONSE_HEAD = 64 * 1024

_REASONS = {
    301: b"Moved Permanently", 308: b"Permanent Redirect", 400: b"Bad Request", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}


def error_page(status: int, title: str, detail: str) -> bytes:
    """A complete C{Connection: close} HTML response."""
    body = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{s} {t}</title></head>\n"
        "<body><h1>{s} {t}</h1>\n<p>{d}</p>\n<hr><p>nps</p></body></html>\n"
    ).format(s=status, t=html.escape(title), d=html.escape(detail)).encode("utf-8")
    reason = _REASONS.get(status, b"Error")
    return (b"HTTP/1.1 %d %s\r\nServer: nps\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (status, reason, len(body))) + body


_UNAUTHORIZED = (b"HTTP/1.1 401 Unauthorized\r\nServer: nps\r\nWWW-Authenticate: Basic realm=\"nps\", "
                 b"charset=\"UTF-8\"\r\nContent-Type: text/plain\r\nContent-Length: 23\r\nConnection: close\r\n\r\n"
                 b"Authentication needed.\n")


def _authorized(header: bytes | None, credentials: tuple[str, str]) -> bool:
    """Whether an C{Authorization: Basic} header carries C{credentials} (compared in constant time)."""
    if header is None:
        return False
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    expected = f"{credentials[0]}:{credentials[1]}".encode("utf-8")
    return hmac.compare_digest(given, expected)


@implementer(IPushProducer)
class _ReadGate:
    """Pauses reading from the browser while any reason to hold it stands."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._reasons: set[str] = set()

    def hold(self, reason: str) -> None:
        if not self._reasons:
            self._transport.pauseProducing()
        self._reasons.add(reason)

    def release(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            self._transport.resumeProducing()

    def pauseProducing(self) -> None:
        self.hold("backend full")

    def resumeProducing(self) -> None:
        self.release("backend full")

    def stopProducing(self) -> None:
        self._transport.loseConnection()


class _ResponseTracker:
    """Follows the responses to one request: 1xx heads, the final head, its body."""

    __slots__ = ("method", "_head_reader", "body", "started", "upgraded", "keep_alive", "status")

    def __init__(self, method: bytes) -> None:
        self.method = method
        self._head_reader: HeadReader | None = None  # made for a head split over reads
        self.body: BodyReader | None = None
        self.started = False
        self.upgraded = False
        self.keep_alive = True
        self.status = 0

    @property
    def _reader(self) -> HeadReader:
        reader = self._head_reader
        if reader is None:
            reader = self._head_reader = HeadReader(MAX_RESPONSE_HEAD, too_big=502)
        return reader

    def feed(self, data: bytes) -> tuple[bytes, bytes, bool]:
        """
        @return: the bytes to pass to the browser now (a head only once it
            is complete and valid), the bytes after this response, and
            whether it is complete.
        @raise HttpError: 502 for a malformed response.
        """
        body = self.body
        size = len(data)
        if body is not None:
            taken = body.feed(data)
            if taken == size:
                return data, b"", body.done
            return data[:taken], data[taken:], body.done
        out: list[bytes] = []
        mark = 0  # data[mark:pos] is passed on as it is
        pos = 0
        while pos < size:
            body = self.body
            if body is None:
                fast = None
                if self._head_reader is None or not self._head_reader.pending:
                    end = data.find(b"\r\n\r\n", pos, pos + MAX_RESPONSE_HEAD)
                    if end >= 0:
                        fast = parse_response_fast(data, pos, end + 4, self.method)
                        if fast is not None:
                            pos = end + 4
                if fast is None:
                    if mark < pos:
                        out.append(data[mark:pos])
                    head = _whole_head(data, pos) if self._head_reader is None or not self._reader.pending else None
                    if head is not None:
                        pos += len(head)
                    else:
                        head = self._reader.feed(data[pos:] if pos else data)
                        if head is None:
                            return b"".join(out), b"", False
                        pos = size - len(self._reader.take_rest())
                    response = parse_response_head(head)
                    out.append(head)
                    mark = pos
                    status = response.status
                    keep_alive = response.keep_alive
                    body = response_body(response, self.method) if status >= 200 else None
                else:
                    status, keep_alive, body = fast
                self.started = True
                self.status = status
                if status == 101:
                    self.upgraded = True
                    return _emit(out, data, mark, pos), data[pos:], True
                if body is None:  # 1xx
                    continue
                self.keep_alive = keep_alive
                self.body = body
                if body.done:
                    return _emit(out, data, mark, pos), data[pos:], True
            else:
                pos += body.feed(data, pos)
                return _emit(out, data, mark, pos), data[pos:] if pos < size else b"", body.done
        return _emit(out, data, mark, pos), b"", False


def _emit(out: list[bytes], data: bytes, mark: int, pos: int) -> bytes:
    """C{out} followed by C{data[mark:pos]}, copying only what must be."""
    if not out:
        return data if mark == 0 and pos == len(data) else data[mark:pos]
    if mark < pos:
        out.append(data[mark:pos])
    return b"".join(out)


def _whole_head(data: bytes, pos: int) -> bytes | None:
    """The head at C{data[pos:]} when it is all there with CRLF line ends (the usual case), else None."""
    end = data.find(b"\r\n\r\n", pos, pos + MAX_RESPONSE_HEAD)
    if end < 0 or data[pos:pos + 1] in (b"\r", b"\n") or data.find(b"\n\n", pos, end) >= 0 \
            or data.find(b"\n\r\n", pos, end) >= 0:
        return None
    return data[pos:end + 4]


class _Backend(Protocol):
    """The protocol on a stream to the client: hands bytes to the browser side."""

    transport: Any
    registered = False

    def __init__(self, owner: "VhostHttpProtocol", route: Route, target: str) -> None:
        self.owner = owner
        self.route = route
        self.target = target

    def connectionMade(self) -> None:
        self.owner._backend_made(self)

    def dataReceived(self, data: bytes) -> None:
        self.owner._backend_data(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.owner._backend_lost(self, reason)


class _BackendFactory(Factory):
    noisy = False

    def __init__(self, backend: _Backend) -> None:
        self._backend = backend

    def buildProtocol(self, addr: Any) -> _Backend:
        return self._backend


@implementer(IHalfCloseableProtocol)
class VhostHttpProtocol(Protocol):
    """One browser connection on the HTTP (or TLS-terminated HTTPS) vhost port."""

    log = Logger()
    factory: "VhostHttpFactory"
    transport: Any

    def __init__(self) -> None:
        self._reader = HeadReader()
        self._pending = bytearray()
        self._state = "head"  # head, body, wait, tunnel, closed
        self._request: RequestHead | None = None
        self._request_body: BodyReader | None = None
        self._response: _ResponseTracker | None = None
        self._backend: _Backend | None = None
        self._timer: IDelayedCall | None = None
        self._deadline: float | None = None
        #: (Host, route table generation, route) of a site routed whatever the path.
        self._route_cache: tuple[bytes, int, Route] | None = None
        self._write: Any = None
        self._user_eof = False
        self._remote = ""
        self._gate: _ReadGate | None = None
        self.requests = 0

    # -- browser side ------------------------------------------------------------

    def connectionMade(self) -> None:
        tune_socket(self.transport)
        self._write = writer_for(self.transport)
        peer = self.transport.getPeer()
        self._remote = format_host_port(getattr(peer, "host", "?"), getattr(peer, "port", 0))
        self._gate = _ReadGate(self.transport)
        self._start_timer(self.factory.header_timeout)

    def dataReceived(self, data: bytes) -> None:
        state = self._state
        if state == "tunnel":
            if self._backend is not None:
                self._backend.transport.write(data)
            return
        if state == "closed":
            return
        if self._pending:
            self._pending += data
            self._process()
        elif state == "head" and not self._reader.pending:
            # The usual case: a whole head (and maybe more) in one read.
            end = data.find(b"\r\n\r\n", 0, MAX_HEAD_SIZE)
            parsed = None
            if end >= 0:
                size = end + 4
                try:
                    parsed = parse_request_fast(data if size == len(data) else data[:size])
                except HttpError as e:
                    self._refuse(e.status, e.reason)
                    return
            if parsed is None:
                self._pending += data
                self._process()
                return
            self._deadline = None
            self._start_request(*parsed)
            if self._state == "body":
                if size < len(data):
                    self.dataReceived(data[size:])
                else:
                    self._process()
        elif state == "body" and self._backend is not None:
            # Body bytes pass straight through (no copy into the buffer).
            reader = self._request_body
            assert reader is not None
            taken = reader.feed(data)
            if taken:
                self._backend.transport.write(data if taken == len(data) else data[:taken])
            if taken < len(data):
                self._pending += data[taken:]
            if reader.done:
                self._process()
        else:
            self._pending += data
            self._process()

    def readConnectionLost(self) -> None:
        if self._state == "tunnel" and self._backend is not None:
            self._backend.transport.loseWriteConnection()
            return
        self._user_eof = True
        if self._state == "head" and not self._response and self._reader.pending + len(self._pending):
            self.log.info("vhost {scheme} {remote}: closed before a complete request head ({n} bytes)",
                          scheme=self.factory.scheme, remote=self._remote,
                          n=self._reader.pending + len(self._pending))
        if self._state == "body" or (self._state == "head" and not self._response):
            self._close()

    def writeConnectionLost(self) -> None:
        """The browser stopped reading: nothing to do until everything closes."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._state = "closed"
        self._cancel_timer()
        self._drop_backend()

    # -- request side ----------------------------------------------------------------

    def _process(self) -> None:
        while True:
            state = self._state
            if state == "head":
                if not self._pending:
                    return
                try:
                    head = self._reader.feed(bytes(self._pending))
                except HttpError as e:
                    self._refuse(e.status, e.reason)
                    return
                self._pending.clear()
                if head is None:
                    return
                self._pending += self._reader.take_rest()
                self._deadline = None
                try:
                    request, body = parse_request(head)
                except HttpError as e:
                    self._refuse(e.status, e.reason)
                    return
                self._start_request(request, body)
            elif state == "body":
                request_body_reader = self._request_body
                assert request_body_reader is not None and self._backend is not None
                if self._pending and not request_body_reader.done:
                    taken = request_body_reader.feed(self._pending)
                    if taken:
                        self._backend.transport.write(bytes(self._pending[:taken]))
                        del self._pending[:taken]
                if not request_body_reader.done:
                    return
                self._state = "wait"
                if self._response is None:  # the response finished first
                    self._close()
                    return
            else:
                if state == "wait" and self._pending and self._gate is not None:
                    self._gate.hold("pipelined")
                return

    def _start_request(self, request: RequestHead, body: BodyReader) -> None:
        factory = self.factory
        self.requests += 1
        if request.method == b"CONNECT":
            self._refuse(405, "CONNECT is not accepted on a domain proxy port")
            return
        authority = request.get(b"host") or b""
        if not request.target.startswith(b"/"):
            authority = request.target.partition(b"://")[2].split(b"/", 1)[0] or authority
        name = authority.decode("latin-1")
        registry = factory.service.registry
        cached = self._route_cache
        if cached is not None and cached[0] == authority and cached[1] == registry.generation:
            route: Route | None = cached[2]
        else:
            path = request.path.decode("latin-1")
            route = registry.lookup(name, path, factory.scheme)
            if route is not None and registry.lookup_any_path(name, factory.scheme) is route:
                self._route_cache = (authority, registry.generation, route)
        if route is None:
            self.log.info("vhost {scheme} {remote}: no route for host {host!r} path {path!r}",
                          scheme=factory.scheme, remote=self._remote, host=name, path=request.path.decode("latin-1"))
            self._refuse(404, f"There is no site for {normalize_name(name) or 'this request'} "
                              f"({factory.scheme}) on this server.")
            return
        host = route.host
        if factory.scheme == "http" and host.redirect_https:
            self._redirect(request, name)
            return
        credentials = factory.service.basic_auth(host.client_id)
        if credentials is not None and not _authorized(request.get(b"authorization"), credentials):
            self.log.info("vhost {remote}: {host}: missing or wrong basic auth", remote=self._remote, host=host.host)
            self.transport.write(_UNAUTHORIZED)
            self._close()
            return
        backend = self._backend
        target: str | None
        if backend is not None and backend.route is route and registry.usable(route, backend.target):
            target = backend.target  # the same site again: its stream goes on (as NPS does)
        else:
            target = registry.next_target(route)
            if target is None:
                self._refuse(502, f"Every target of {host.host} is down (health checks).")
                return
            if backend is not None:
                self._drop_backend()
                backend = None
        if backend is None:
            backend = _Backend(self, route, target)
            self._backend = backend
            failure = factory.service.open_stream(route, target, self._remote, _BackendFactory(backend))
            if failure is not None:
                self._backend = None
                status = 503 if failure.startswith("limit") else 502
                self._refuse(status, f"{host.host}: {failure}")
                return
            if self._state == "closed" or self._backend is not backend:
                return  # the stream failed at once and already answered
        self._request = request
        self._request_body = body
        self._response = _ResponseTracker(request.method)
        self._state = "body"
        backend.transport.write(self._rewrite(request, route, strip_auth=credentials is not None))

    def _rewrite(self, request: RequestHead, route: Route, strip_auth: bool = False) -> bytes:
        """The request head for the backend: host_change, header_*, origin headers; the
        server's own basic-auth credentials are not passed on."""
        host = route.host
        if not (strip_auth or host.host_change or host.headers or self.factory.add_origin_header):
            return request.raw or request.serialize()
        headers = list(request.headers)
        if strip_auth:
            headers = [(k, v) for k, v in headers if k.lower() != b"authorization"]
        changes: list[tuple[bytes, bytes]] = []
        if host.host_change:
            changes.append((b"Host", host.host_change.encode("latin-1")))
        for name, value in host.headers.items():
            changes.append((name.encode("latin-1"), value.encode("latin-1")))
        if self.factory.add_origin_header:
            ip = self._remote.rpartition(":")[0].strip("[]").encode("latin-1")
            forwarded = [v for k, v in headers if k.lower() == b"x-forwarded-for"]
            changes.append((b"X-Forwarded-For", b", ".join(forwarded + [ip])))
            changes.append((b"X-Real-IP", ip))
            changes.append((b"X-Forwarded-Proto", self.factory.scheme.encode("ascii")))
        if not changes:
            if strip_auth:
                return request.serialize(tuple(headers))
            return request.raw or request.serialize()
        replaced = {name.lower() for name, _ in changes}
        headers = [(k, v) for k, v in headers if k.lower() not in replaced] + changes
        return request.serialize(tuple(headers))

    def _redirect(self, request: RequestHead, name: str) -> None:
        port = self.factory.service.https_port
        host = normalize_name(name)
        if ":" in host:
            host = f"[{host}]"
        location = f"https://{host}{'' if port in (0, 443) else f':{port}'}"
        location += request.target.decode("latin-1") if request.target.startswith(b"/") else request.path.decode()
        status = 301 if request.method in (b"GET", b"HEAD") else 308
        body = b"Moved to " + location.encode("latin-1") + b"\n"
        self.transport.write(b"HTTP/1.1 %d %s\r\nServer: nps\r\nLocation: %s\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (status, _REASONS[status], location.encode("latin-1"), len(body), body))
        self._close()

    # -- backend side ------------------------------------------------------------------

    def _backend_made(self, backend: _Backend) -> None:
        if backend is not self._backend or self._gate is None:
            backend.transport.loseConnection()
            return
        backend.transport.registerProducer(self._gate, True)
        self.transport.registerProducer(backend.transport, True)
        backend.registered = True

    def _backend_data(self, backend: _Backend, data: bytes) -> None:
        if backend is not self._backend:
            return
        if self._state == "tunnel":
            self._write(data)
            return
        tracker = self._response
        if tracker is None:
            self.log.info("vhost {remote}: {target} sent bytes with no request pending; closing its stream",
                          remote=self._remote, target=backend.target)
            self._drop_backend()
            return
        started = tracker.started
        try:
            out, extra, done = tracker.feed(data)
        except HttpError as e:
            self.log.info("vhost {remote}: bad response from {host} ({target}): {reason}", remote=self._remote,
                          host=backend.route.host.host, target=backend.target, reason=e.reason)
            if started:
                self._close()
            else:
                self._refuse(502, f"The site's server sent a malformed response ({e.reason}).")
            return
        if out:
            self._write(out)
        if done:
            self._response_done(backend, extra)

    def _response_done(self, backend: _Backend, extra: bytes) -> None:
        tracker = self._response
        request = self._request
        assert tracker is not None and request is not None
        self._response = None
        if tracker.upgraded:
            if not request.upgrade or self._state != "wait":
                self._close()
                return
            self._state = "tunnel"
            if extra:
                self._write(extra)
            if self._pending:
                backend.transport.write(bytes(self._pending))
                self._pending.clear()
            if self._gate is not None:
                self._gate.release("pipelined")
            return
        if extra:
            self._drop_backend()
        elif not tracker.keep_alive:
            self._drop_backend()
        if self._state != "wait" or not request.keep_alive or self._user_eof:
            self._close()
            return
        self._state = "head"
        self._request = self._request_body = None
        self._start_timer(self.factory.keepalive_timeout)
        if self._pending:  # a pipelined request waited for this response
            if self._gate is not None:
                self._gate.release("pipelined")
            self._process()

    def _backend_lost(self, backend: _Backend, reason: Failure) -> None:
        if backend is not self._backend:
            return
        self._detach(backend)
        self._backend = None
        if self._state == "closed":
            return
        if self._state == "tunnel":
            self._close()
            return
        tracker = self._response
        if tracker is None:
            return  # an idle keep-alive stream ended; the next request opens another
        if tracker.body is not None and tracker.body.kind == "close":
            self._response = None
            self._close()
        elif not tracker.started:
            why = reason.getErrorMessage()
            self.log.info("vhost {remote}: {host} -> {target} failed: {why}", remote=self._remote,
                          host=backend.route.host.host, target=backend.target, why=why)
            self._refuse(502, f"{backend.route.host.host}: the client could not reach {backend.target} ({why}).")
        else:
            self._close()

    # -- helpers -----------------------------------------------------------------------

    def _detach(self, backend: _Backend) -> None:
        transport = backend.transport
        if transport is None or not backend.registered:
            return
        backend.registered = False
        self.transport.unregisterProducer()
        transport.unregisterProducer()
        if self._gate is not None:
            self._gate.release("backend full")

    def _drop_backend(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None and backend.transport is not None:
            self._detach(backend)
            backend.transport.loseConnection()

    def _refuse(self, status: int, reason: str) -> None:
        if self._state == "closed":
            return
        if self._response is not None and self._response.started:
            self._close()
            return
        if status not in (404,):
            self.log.info("vhost {scheme} {remote}: {status} {reason}", scheme=self.factory.scheme,
                          remote=self._remote, status=status, reason=reason)
        title = _REASONS.get(status, b"Error").decode("ascii")
        self.transport.write(error_page(status, title, reason))
        self._close()

    def _close(self) -> None:
        self._state = "closed"
        self._cancel_timer()
        self._drop_backend()
        self.transport.loseConnection()

    def _start_timer(self, seconds: float) -> None:
        """Time out C{seconds} from now; an armed timer that fires sooner is kept and re-armed then
        (so keep-alive requests do not each schedule and cancel a call)."""
        clock = self.factory.clock
        deadline = clock.seconds() + seconds
        self._deadline = deadline
        timer = self._timer
        if timer is not None:
            if timer.getTime() <= deadline:
                return
            timer.cancel()
        self._timer = clock.callLater(seconds, self._timed_out)

    def _cancel_timer(self) -> None:
        self._deadline = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        clock = self.factory.clock
        now = clock.seconds()
        if now < deadline:
            self._timer = clock.callLater(deadline - now, self._timed_out)
            return
        self._deadline = None
        if self._state != "head":
            return
        if self._pending or self._reader.pending:
            self._refuse(408, "The request head did not arrive in time.")
        else:
            self._close()


class VhostHttpFactory(Factory):
    """Builds L{VhostHttpProtocol}s for the C{http_proxy_port} listener (or TLS-terminated HTTPS)."""

    noisy = False
    protocol = VhostHttpProtocol  # type: ignore[assignment]

    def __init__(self, service: "VhostService", scheme: str = "http") -> None:
        self.service = service
        self.scheme = scheme
        self.clock = service.reactor
        self.header_timeout = HEADER_TIMEOUT
        self.keepalive_timeout = KEEPALIVE_TIMEOUT

    @property
    def add_origin_header(self) -> bool:
        return self.service.add_origin_header
