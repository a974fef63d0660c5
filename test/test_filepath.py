# -*- test-case-name: test.test_filepath -*-
"""
Tests for the C{file} mode: L{nps.protocols.filepath} (sans-io request path
mapping, with hypothesis) and L{nps.plugins.file} (the read-only HTTP view
driven through C{StringTransport}, the public side with a C{MemoryReactor}).
"""
from __future__ import annotations

import atexit
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any, Generator

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from nps.interfaces import IProxyMode
from nps.model import Tunnel
from nps.modes import load_modes
from nps.plugins.file import FileModeError, StreamChannelFactory, file, file_site, inside
from nps.protocols.filepath import (
    MappedPath,
    PathRefused,
    canonical_path,
    map_request_path,
    prefix_segments,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------ the parser ---

#: Pieces that path attacks are made of, mixed with plain names.
_PIECES = [
    "/", "/", "..", ".", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%00", "\\", "%", "%2", "%%",
    "a", "b", "etc", "passwd", "web", " ", "%20", "?", "#", "%3f", "~", ":", "%c3%a9", "%ff", "\x00", "\t",
]
attack_paths = st.lists(st.sampled_from(_PIECES), max_size=24).map(lambda parts: "/" + "".join(parts))
any_targets = st.one_of(
    attack_paths.map(lambda p: p.encode("latin-1")),
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: ("/" + t).encode("utf-8", "surrogatepass")),
)
names = st.text(min_size=1, max_size=20).filter(
    lambda n: n not in (".", "..") and not any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in n)
    and not any(0xD800 <= ord(c) <= 0xDFFF for c in n))


def test_plain_paths() -> None:
    """
    Plain paths map to their segments; query, fragment, C{.} and empty
    segments are dropped; a trailing slash marks a directory.
    """
    assert map_request_path(b"/") == MappedPath((), True)
    assert map_request_path(b"/a/b.txt") == MappedPath(("a", "b.txt"), False)
    assert map_request_path(b"/a//./b/?x=1#f") == MappedPath(("a", "b"), True)
    assert map_request_path(b"/a%20b/%c3%a9") == MappedPath(("a b", "\u00e9"), False)
    assert map_request_path(b"http://example.com:80/x/y?q") == MappedPath(("x", "y"), False)


@pytest.mark.parametrize("target, status", [
    (b"/../etc/passwd", 403),
    (b"/a/../../etc/passwd", 403),
    (b"/%2e%2e/%2e%2e/etc/passwd", 403),
    (b"/%2E%2e/x", 403),
    (b"/.%2e/x", 403),
    (b"/%2e/x", 403),
    (b"/..%2f..%2fetc/passwd", 400),
    (b"/a%2fb", 400),
    (b"/a%5cb", 400),
    (b"/a\\..\\b", 400),
    (b"/a%00.txt", 400),
    (b"/a\x00", 400),
    (b"/a\tb", 400),
    (b"/a%zz", 400),
    (b"/a%2", 400),
    (b"relative/path", 400),
    (b"*", 400),
    (b"/" + b"a" * 9000, 400),
])
def test_refused(target: bytes, status: int) -> None:
    """
    Traversal (raw or encoded), encoded separators, backslashes, NUL and
    control characters, bad escapes, non-absolute and over-long targets are refused.
    """
    with pytest.raises(PathRefused) as info:
        map_request_path(target)
    assert info.value.status == status


def test_strip_pre() -> None:
    """
    C{strip_pre=/web/} removes that leading segment; a path outside it is a 404;
    the prefix is matched on whole (decoded) segments.
    """
    assert map_request_path(b"/web/x", "/web/") == MappedPath(("x",), False)
    assert map_request_path(b"/web/", "/web/") == MappedPath((), True)
    assert map_request_path(b"/web", "/web/") == MappedPath((), False)
    assert map_request_path(b"//web/./a/", "web") == MappedPath(("a",), True)
    assert map_request_path(b"/w%65b/x", "/web/") == MappedPath(("x",), False)
    assert map_request_path(b"/a/b/c", "/a/b") == MappedPath(("c",), False)
    for target in (b"/x", b"/webx/y", b"/", b"/a/c"):
        with pytest.raises(PathRefused) as info:
            map_request_path(target, "/web/" if target != b"/a/c" else "/a/b")
        assert info.value.status == 404
    with pytest.raises(PathRefused):
        map_request_path(b"/web/../x", "/web/")


def test_bad_strip_pre() -> None:
    """
    A strip_pre holding C{..} or an encoded slash is a configuration error.
    """
    assert prefix_segments("/a/b/") == ("a", "b")
    assert prefix_segments("") == ()
    for bad in ("/../", "/a%2fb", "/%2e%2e"):
        with pytest.raises(ValueError):
            prefix_segments(bad)


def test_canonical_path() -> None:
    """
    Redirect targets are built from segments: always one leading slash,
    every reserved character encoded.
    """
    assert canonical_path(("evil.com",), (), True) == b"/evil.com/"
    assert canonical_path((), ("web",), True) == b"/web/"
    assert canonical_path(("a b", "?#%"), (), False) == b"/a%20b/%3F%23%25"
    assert canonical_path((), (), True) == b"/"


@SETTINGS
@given(any_targets, st.sampled_from(["", "/web/", "/a/b"]))
def test_never_outside_root(target: bytes, strip_pre: str) -> None:
    """
    Whatever the target, the mapping is refused or gives plain file names
    that, joined under a root, stay under it.
    """
    try:
        mapped = map_request_path(target, strip_pre)
    except PathRefused as e:
        assert e.status in (400, 403, 404)
        return
    for name in mapped.segments:
        assert name not in ("", ".", "..")
        assert not any(c in name for c in "/\\\x00")
    joined = posixpath.normpath(posixpath.join("/srv/root", *mapped.segments))
    assert joined == "/srv/root" or joined.startswith("/srv/root/")


@SETTINGS
@given(st.lists(names, max_size=6), st.lists(names, max_size=2), st.booleans())
def test_canonical_round_trip(segments: list[str], prefix: list[str], directory: bool) -> None:
    """
    A canonical path maps back to the same segments (after its prefix).
    """
    path = canonical_path(tuple(segments), tuple(prefix), directory)
    assert not path.startswith(b"//")
    mapped = map_request_path(path, tuple(prefix))
    assert mapped.segments == tuple(segments)


_tmp_root = Path(tempfile.mkdtemp(prefix="nps-filepath-"))
atexit.register(shutil.rmtree, _tmp_root, True)
(_tmp_root / "root" / "d").mkdir(parents=True)
(_tmp_root / "outside.txt").write_text("outside")


@SETTINGS
@given(attack_paths)
def test_never_outside_root_on_disk(path: str) -> None:
    """
    On a real directory tree, C{realpath} of a mapped request is never
    outside the realpath of the root.
    """
    root = os.path.realpath(_tmp_root / "root")
    try:
        mapped = map_request_path(path.encode("latin-1"))
    except PathRefused:
        return
    assert inside(root, os.path.realpath(os.path.join(root, *mapped.segments)))


# ------------------------------------------------- the HTTP view (in memory) ---


class Response:
    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class ReadOnlyViewTests(TestCase):
    """
    The client side: the HTTP channel L{nps.plugins.file.FileMode.serve}
    builds, on a C{StringTransport}, with a real reactor turning the file
    producer.
    """

    def setUp(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="nps-file-"))
        self.addCleanup(shutil.rmtree, base, True)
        self.root = base / "www"
        (self.root / "sub").mkdir(parents=True)
        (self.root / "hello.txt").write_bytes(b"hello\n")
        (self.root / "sub" / "inner.txt").write_bytes(b"inner\n")
        self.big = os.urandom(2 * 1024 * 1024 + 17)
        (self.root / "big.bin").write_bytes(self.big)
        (base / "secret.txt").write_bytes(b"SECRET")
        (self.root / "leak.txt").symlink_to(base / "secret.txt")
        (self.root / "leakdir").symlink_to(base)
        os.mkfifo(self.root / "fifo")
        self.channels: list[tuple[Any, StringTransport]] = []

    def tearDown(self) -> None:
        # As a mux stream does when it ends: stop its producer, then connectionLost.
        for channel, transport in self.channels:
            if transport.producer is not None:
                transport.producer.stopProducing()
            channel.connectionLost(Failure(ConnectionDone()))

    def connect(self, strip_pre: str = "") -> tuple[Any, StringTransport]:
        site = file_site(reactor, str(self.root), strip_pre, "test")
        channel = StreamChannelFactory(site, "test").buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        self.channels.append((channel, transport))
        return channel, transport

    @inlineCallbacks
    def request(self, target: bytes, method: str = "GET", headers: tuple[tuple[str, str], ...] = (),
                strip_pre: str = "", body: bytes = b"",
                pause_after: int | None = None) -> Generator[Deferred[Any], Any, Response]:
        channel, transport = self.connect(strip_pre)
        client = h11.Connection(h11.CLIENT)
        head = [("host", "t"), *headers]
        if body:
            head.append(("content-length", str(len(body))))
        data = client.send(h11.Request(method=method, target=target, headers=head))
        if body:
            data += client.send(h11.Data(data=body))
        channel.dataReceived(data + client.send(h11.EndOfMessage()))
        status, response_headers, chunks = 0, {}, []
        taken = 0
        for _ in range(5000):  # bounded: at most this many reactor turns
            value = transport.value()
            if len(value) > taken:  # (receive_data(b"") would mean: closed)
                client.receive_data(value[taken:])
                taken = len(value)
            event = client.next_event()
            while event not in (h11.NEED_DATA, h11.PAUSED) and not isinstance(event, h11.EndOfMessage):
                if isinstance(event, h11.Response):
                    status = event.status_code
                    response_headers = dict(event.headers)
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                event = client.next_event()
            if isinstance(event, h11.EndOfMessage):
                return Response(status, response_headers, b"".join(chunks))
            if pause_after is not None and taken >= pause_after:
                pause_after = None
                yield self.check_paused(channel, transport)
            yield deferLater(reactor, 0, lambda: None)
        self.fail(f"no complete response to {target!r}")

    @inlineCallbacks
    def check_paused(self, channel: Any, transport: StringTransport) -> Generator[Deferred[Any], Any, None]:
        """Backpressure: the channel is the transport's streaming producer; pausing it stops the file."""
        self.assertIsNotNone(transport.producer)
        self.assertTrue(transport.streaming)
        transport.producer.pauseProducing()
        size = len(transport.value())
        for _ in range(20):
            yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(len(transport.value()), size)
        transport.producer.resumeProducing()

    def test_verify_plugin(self) -> None:
        """
        The C{file} plugin provides IProxyMode and is found by load_modes().
        """
        self.assertTrue(verifyObject(IProxyMode, file))
        self.assertIs(load_modes()["file"], file)

    @inlineCallbacks
    def test_get_file(self) -> Generator[Deferred[Any], Any, None]:
        """
        GET returns the file's bytes, with its length and accept-ranges.
        """
        r = yield self.request(b"/hello.txt")
        self.assertEqual((r.status, r.body), (200, b"hello\n"))
        self.assertEqual(r.headers[b"content-length"], b"6")
        self.assertEqual(r.headers[b"accept-ranges"], b"bytes")
        r = yield self.request(b"/sub/inner.txt")
        self.assertEqual((r.status, r.body), (200, b"inner\n"))

    @inlineCallbacks
    def test_big_file_with_backpressure(self) -> Generator[Deferred[Any], Any, None]:
        """
        A 2 MiB file is sent by a producer: pausing the channel (as a full
        stream does) stops the output, resuming finishes it intact.
        """
        r = yield self.request(b"/big.bin", pause_after=100_000)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, self.big)

    @inlineCallbacks
    def test_head_and_range(self) -> Generator[Deferred[Any], Any, None]:
        """
        HEAD has the length and no body; C{Range: bytes=0-99} gives 206 and 100 bytes.
        """
        r = yield self.request(b"/big.bin", method="HEAD")
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertEqual(r.headers[b"content-length"], str(len(self.big)).encode())
        r = yield self.request(b"/big.bin", headers=(("range", "bytes=0-99"),))
        self.assertEqual((r.status, r.body), (206, self.big[:100]))
        r = yield self.request(b"/big.bin", headers=(("range", "bytes=5000-5009"),))
        self.assertEqual((r.status, r.body), (206, self.big[5000:5010]))

    @inlineCallbacks
    def test_writes_refused(self) -> Generator[Deferred[Any], Any, None]:
        """
        POST, PUT, DELETE and others get 405 with C{Allow: GET, HEAD}; nothing is written.
        """
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            r = yield self.request(b"/new.txt", method=method, body=b"data")
            self.assertEqual(r.status, 405, method)
            self.assertEqual(r.headers[b"allow"], b"GET, HEAD")
        self.assertFalse((self.root / "new.txt").exists())

    @inlineCallbacks
    def test_listing(self) -> Generator[Deferred[Any], Any, None]:
        """
        A directory is listed with links to its entries, except links that
        lead outside the root; without its slash it redirects to the
        canonical path (never to another host).
        """
        r = yield self.request(b"/")
        self.assertEqual(r.status, 200)
        self.assertIn(b'href="hello.txt"', r.body)
        self.assertIn(b'href="sub/"', r.body)
        self.assertNotIn(b"leak", r.body)
        r = yield self.request(b"/sub")
        self.assertEqual(r.status, 302)
        self.assertEqual(r.headers[b"location"], b"/sub/")
        r = yield self.request(b"//sub")
        self.assertEqual(r.headers[b"location"], b"/sub/")
        r = yield self.request(b"/web", strip_pre="/web/")
        self.assertEqual(r.headers[b"location"], b"/web/")

    @inlineCallbacks
    def test_index_html(self) -> Generator[Deferred[Any], Any, None]:
        """
        A directory with an index.html serves it instead of a listing.
        """
        (self.root / "sub" / "index.html").write_bytes(b"<p>index</p>")
        r = yield self.request(b"/sub/")
        self.assertEqual((r.status, r.body), (200, b"<p>index</p>"))

    @inlineCallbacks
    def test_escapes_refused(self) -> Generator[Deferred[Any], Any, None]:
        """
        Traversal, encoded dots and slashes, and symlinks pointing outside
        get a 4xx and never the outside file.
        """
        for target in (b"/../secret.txt", b"/%2e%2e/secret.txt", b"/..%2fsecret.txt", b"/leak.txt",
                       b"/leakdir/secret.txt", b"/leakdir/", b"/sub/../../secret.txt", b"/hello.txt/"):
            r = yield self.request(target)
            self.assertTrue(400 <= r.status < 500, (target, r.status))
            self.assertNotIn(b"SECRET", r.body)

    @inlineCallbacks
    def test_not_found_and_special_files(self) -> Generator[Deferred[Any], Any, None]:
        """
        A missing file and a FIFO (which would block a reader) are 404.
        """
        for target in (b"/missing", b"/fifo", b"/sub/missing/x"):
            r = yield self.request(target)
            self.assertEqual(r.status, 404, target)

    @inlineCallbacks
    def test_strip_pre(self) -> Generator[Deferred[Any], Any, None]:
        """
        With strip_pre=/web/, /web/x serves x and /x is not found.
        """
        r = yield self.request(b"/web/hello.txt", strip_pre="/web/")
        self.assertEqual((r.status, r.body), (200, b"hello\n"))
        r = yield self.request(b"/hello.txt", strip_pre="/web/")
        self.assertEqual(r.status, 404)

    def test_garbage_gets_400(self) -> None:
        """
        Bytes that are not HTTP get a 400 and a close, no exception.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"\x16\x03\x01\x00garbage\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400"))
        self.assertTrue(transport.disconnecting)

    def test_channel_error_resets_only_its_stream(self) -> None:
        """
        An exception in the HTTP channel is logged and aborts that stream
        instead of reaching the bridge.
        """
        class Broken(Protocol):
            def dataReceived(self, data: bytes) -> None:
                raise RuntimeError("boom")

        factory = StreamChannelFactory(file_site(reactor, str(self.root)), "test")
        wrapper = factory.protocol(factory, Broken())
        transport = StringTransport()
        wrapper.makeConnection(transport)
        wrapper.dataReceived(b"x")
        self.assertTrue(transport.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_serve_missing_local_path(self) -> None:
        """
        serve() fails with "local_path X does not exist" (the stream's reset
        reason), or "is not a directory", or a bad strip_pre.
        """
        missing = str(self.root / "nope")
        d = file.serve(reactor, {"mode": "file", "local_path": missing, "remote": "r"})
        self.assertEqual(self.failureResultOf(d, FileModeError).getErrorMessage(),
                         f"local_path {missing} does not exist")
        d = file.serve(reactor, {"mode": "file", "local_path": str(self.root / "hello.txt")})
        self.assertIn("is not a directory", self.failureResultOf(d, FileModeError).getErrorMessage())
        d = file.serve(reactor, {"mode": "file", "local_path": str(self.root), "strip_pre": "/../"})
        self.assertIn("strip_pre", self.failureResultOf(d, FileModeError).getErrorMessage())
        d = file.serve(reactor, {"mode": "file"})
        self.assertIn("no local_path", self.failureResultOf(d, FileModeError).getErrorMessage())

    def test_serve_builds_a_channel(self) -> None:
        """
        serve() on an existing directory fires with a protocol at once.
        """
        protocol = self.successResultOf(file.serve(reactor, {"mode": "file", "local_path": str(self.root)}))
        self.assertIsNotNone(protocol)


# ------------------------------------------------------- the public side ---


class _Endpoint:
    def __init__(self, d: Deferred[Any]) -> None:
        self.d = d

    def connect(self, factory: Any) -> Deferred[Any]:
        return self.d


def test_listen_sends_link_without_target() -> None:
    """
    Server side: listen() opens a TCP port; each user connection asks the
    opener for a stream with the file link (mode, local_path, strip_pre,
    remote, tunnel; no target); a failed open closes the user connection.
    """
    mem = MemoryReactor()
    tunnel = Tunnel(id=7, client_id=1, mode="file", server_port=8081, server_ip="127.0.0.1",
                    local_path="/srv/www", strip_pre="/web/")
    links: list[dict[str, Any]] = []
    failed: Deferred[Any] = Deferred()

    def opener(link: dict[str, Any]) -> Any:
        links.append(link)
        return _Endpoint(failed)

    file.listen(mem, tunnel, opener)
    port, factory, _, interface = mem.tcpServers[0]
    assert (port, interface) == (8081, "127.0.0.1")
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert links == [{"mode": "file", "local_path": "/srv/www", "strip_pre": "/web/",
                      "remote": "192.168.1.1:54321", "tunnel": 7}]
    assert transport.producerState == "paused"
    failed.errback(RuntimeError("client 1 is offline"))
    assert transport.disconnecting


def test_listen_needs_local_path() -> None:
    """
    A file tunnel without local_path (or with a bad strip_pre) fails to open.
    """
    for tunnel in (Tunnel(id=1, client_id=1, mode="file", server_port=1),
                   Tunnel(id=1, client_id=1, mode="file", server_port=1, local_path="/x", strip_pre="/..")):
        d = file.listen(MemoryReactor(), tunnel, lambda link: None)
        failures: list[Failure] = []
        d.addErrback(failures.append)
        assert failures and failures[0].check(ValueError)
