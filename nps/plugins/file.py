# -*- test-case-name: test.test_filepath,test.test_e2e_file -*-
"""The C{file} mode: a read-only HTTP view of a directory on the client.

Server side, the tunnel's public TCP port is relayed byte for byte into a
stream (as in C{tcp} mode) whose link names the directory (C{local_path})
and the prefix to strip (C{strip_pre}); there is no target.  Client side,
the stream is served by a C{twisted.web} L{Site} whose single resource,
L{ReadOnlyDirectory}, maps each request path with
L{nps.protocols.filepath.map_request_path}, resolves symbolic links and
refuses anything whose real path is outside the real path of the root.
Files are sent by L{twisted.web.static.File} (Range requests, HEAD, a
producer reading one chunk at a time, paced by the stream's flow control).
Only C{GET} and C{HEAD} are allowed; nothing is ever written.
"""
from __future__ import annotations

import os
from weakref import WeakKeyDictionary
from typing import Any, Callable, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import static
from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from nps.interfaces import IProxyMode
from nps.model import Tunnel
from nps.protocols.filepath import PathRefused, canonical_path, map_request_path, prefix_segments
from nps.plugins.tcp import PublicRelayProtocol, listen_public_tcp

Opener = Callable[[dict[str, Any]], IStreamClientEndpoint]

#: Idle time (seconds) after which the HTTP connection on a stream is closed.
HTTP_IDLE_TIMEOUT = 120
#: Seconds a user has to send the first complete request head (a slow drip is cut off).
HEAD_TIMEOUT = 30.0
#: Served for a directory asked with a trailing slash, when present.
INDEX_NAMES = ("index.html", "index.htm")
ALLOWED_METHODS = (b"GET", b"HEAD")
_REASONS = {400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed"}


class FileModeError(Exception):
    """A file stream cannot be served; C{str()} goes back to the server as the reset reason."""


# -- server side ---------------------------------------------------------------


class PublicFileProtocol(PublicRelayProtocol):
    """A user connection on a file tunnel's public port; relayed into a stream npc serves."""

    factory: "PublicFileFactory"

    def link_for(self, remote: str) -> dict[str, Any]:
        tunnel = self.factory.tunnel
        return {"mode": FileMode.name, "local_path": tunnel.local_path, "strip_pre": tunnel.strip_pre,
                "remote": remote}


class PublicFileFactory(Factory):
    noisy = False
    protocol = PublicFileProtocol  # type: ignore[assignment]

    def __init__(self, tunnel: Tunnel, opener: Opener) -> None:
        if not tunnel.local_path:
            raise ValueError(f"file tunnel {tunnel.id} has no local_path")
        prefix_segments(tunnel.strip_pre)  # raises ValueError on a bad prefix
        self.tunnel = tunnel
        self.opener = opener


# -- client side ---------------------------------------------------------------


def inside(root: str, real: str) -> bool:
    """True if the resolved path C{real} is C{root} or below it (both real paths)."""
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class ReadOnlyDirectory(Resource):
    """Serves every request of a site from the directory C{root}, read-only.

    @ivar root: the real path (symbolic links resolved) of the served directory.
    @ivar prefix: the C{strip_pre} segments.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, root: str, prefix: tuple[str, ...] = (), remote: str = "") -> None:
        super().__init__()
        self.root = root
        self.prefix = prefix
        self.remote = remote
        self._reasons: WeakKeyDictionary[Request, str] = WeakKeyDictionary()

    def render(self, request: Request) -> Any:
        self._log_when_done(request)
        if request.method not in ALLOWED_METHODS:
            request.setHeader(b"allow", b"GET, HEAD")
            return self._refuse(request, 405, "method not allowed (read-only)")
        try:
            mapped = map_request_path(request.uri, self.prefix)
        except PathRefused as e:
            return self._refuse(request, e.status, e.reason)
        real = os.path.realpath(os.path.join(self.root, *mapped.segments))
        if not inside(self.root, real):
            self.log.warn("file {remote}: {uri!r} resolves outside {root}; refused",
                          remote=self.remote, uri=request.uri, root=self.root)
            return self._refuse(request, 404, "not found")
        if os.path.isdir(real):
            if not mapped.directory:
                location = canonical_path(mapped.segments, self.prefix, directory=True)
                request.redirect(location)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"moved to " + location + b"\n"
            for name in INDEX_NAMES:
                index = os.path.realpath(os.path.join(real, name))
                if inside(self.root, index) and os.path.isfile(index):
                    return self._send_file(request, index)
            return static.DirectoryLister(real, dirs=self._listing(real),
                                          defaultType="application/octet-stream").render(request)
        if mapped.directory or not os.path.isfile(real):
            # Missing, a file asked as a directory, or not a regular file (a FIFO
            # or device would block or never end): not served.
            return self._refuse(request, 404, "not found")
        return self._send_file(request, real)

    def _send_file(self, request: Request, real: str) -> Any:
        """Let twisted.web.static send it: Range, HEAD, content type, a pull producer."""
        return static.File(real, defaultType="application/octet-stream").render(request)

    def _listing(self, real: str) -> list[str]:
        """Entries of C{real} to list: those that stay inside the root and have printable names."""
        try:
            names = sorted(os.listdir(real))
        except OSError:
            return []
        shown = []
        for name in names:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                continue
            if inside(self.root, os.path.realpath(os.path.join(real, name))):
                shown.append(name)
        return shown

    def _refuse(self, request: Request, status: int, reason: str) -> bytes:
        self._reasons[request] = reason
        request.setResponseCode(status, _REASONS.get(status))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"{status} {reason}\n".encode("utf-8")

    def _log_when_done(self, request: Request) -> None:
        """One log line per request, once it is answered (or its connection is lost)."""
        method = request.method.decode("latin-1")

        def done(result: Any) -> None:
            reason = self._reasons.pop(request, "")
            lost = " (connection lost)" if isinstance(result, Failure) else ""
            self.log.info("file {remote}: {method} {uri!r} -> {status} {reason}({sent} bytes){lost}",
                          remote=self.remote, method=method, uri=request.uri, status=request.code,
                          reason=f"{reason} " if reason else "", sent=request.sentLength, lost=lost)

        request.notifyFinish().addBoth(done)


class StreamChannel(ProtocolWrapper):
    """Puts the HTTP channel on a mux stream.

    It is the channel's transport: it has the C{disconnecting} flag that
    C{LineReceiver} reads (a L{nps.mux.MuxStream} has none), and it keeps an
    exception in the channel to this stream (reset, logged) instead of
    letting it reach the bridge connection shared by every stream.
    """

    log = Logger()
    _head_timer: Any = None
    _tail = b""

    def makeConnection(self, transport: Any) -> None:
        reactor = getattr(self.factory.wrappedFactory, "reactor", None)
        if reactor is not None:
            self._head_timer = reactor.callLater(HEAD_TIMEOUT, self._head_timed_out)
        super().makeConnection(transport)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self.log.info("file {remote}: no complete request head within {t:g}s; closing",
                      remote=self.factory.remote, t=HEAD_TIMEOUT)
        self.disconnecting = 1
        cast(Any, self.transport).abortConnection()

    def _watch_head(self, data: bytes) -> None:
        """Stop the head timer at the first blank line (the end of the first request head)."""
        window = self._tail + data
        if b"\r\n\r\n" in window or b"\n\n" in window:
            self._cancel_head_timer()
        else:
            self._tail = window[-3:]

    def _cancel_head_timer(self) -> None:
        timer, self._head_timer = self._head_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_head_timer()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._head_timer is not None:
            self._watch_head(data)
        try:
            self.wrappedProtocol.dataReceived(data)
        except Exception:
            self.log.failure("file {remote}: HTTP channel failed; resetting this stream",
                             remote=self.factory.remote)
            self._cancel_head_timer()
            self.disconnecting = 1
            cast(Any, self.transport).abortConnection()


class StreamChannelFactory(WrappingFactory):
    """Builds a L{StreamChannel} around the protocol of a file L{Site}."""

    noisy = False
    protocol = StreamChannel

    def __init__(self, site: Site, remote: str = "") -> None:
        super().__init__(site)
        self.remote = remote


def file_site(reactor: Any, root: str, strip_pre: str = "", remote: str = "") -> Site:
    """A L{Site} serving C{root} read-only (C{root} must be an existing directory).

    @raise ValueError: C{strip_pre} is malformed.
    """
    resource = ReadOnlyDirectory(os.path.realpath(root), prefix_segments(strip_pre), remote)
    site = Site(resource, reactor=reactor, timeout=HTTP_IDLE_TIMEOUT)
    site.noisy = False
    site.displayTracebacks = False
    return site


@implementer(IPlugin, IProxyMode)
class FileMode:
    name = "file"
    log = Logger()

    def listen(self, reactor: Any, tunnel: Tunnel, opener: Opener) -> Deferred[IListeningPort]:
        try:
            factory = PublicFileFactory(tunnel, opener)
        except ValueError as e:
            return fail(e)
        return listen_public_tcp(reactor, tunnel, factory)

    def serve(self, reactor: Any, link: dict[str, Any]) -> Deferred[IProtocol]:
        local_path = str(link.get("local_path") or "")
        remote = str(link.get("remote", ""))
        if not local_path:
            reason = "file mode: the tunnel has no local_path"
        elif not os.path.exists(local_path):
            reason = f"local_path {local_path} does not exist"
        elif not os.path.isdir(local_path):
            reason = f"local_path {local_path} is not a directory"
        else:
            try:
                site = file_site(reactor, local_path, str(link.get("strip_pre") or ""), remote)
            except ValueError as e:
                reason = str(e)
            else:
                protocol = StreamChannelFactory(site, remote).buildProtocol(None)
                return succeed(protocol)
        self.log.error("file tunnel {tunnel}: cannot serve {remote}: {reason}",
                       tunnel=link.get("tunnel"), remote=remote, reason=reason)
        return fail(FileModeError(reason))


file = FileMode()
