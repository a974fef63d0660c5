# -*- test-case-name: test.test_httpproxy -*-
"""Tests for the httpProxy mode: the sans-io helpers, then the proxy protocol over StringTransports.

The protocol tests use a fake opener whose streams are StringTransports
with an C{opened} Deferred, like L{nps.mux.MuxStream}: nothing runs a
reactor, timeouts use a L{Clock}.
"""
from __future__ import annotations

import base64
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nps.accounts import format_accounts
from nps.interfaces import IProxyMode
from nps.model import Tunnel
from nps.modes import load_modes
from nps.mux import StreamRefused
from nps.plugins.httpproxy import HEADER_TIMEOUT, HttpProxyFactory, HttpProxyProtocol, httpproxy
from nps.protocols import httpproxy as hp
from nps.server import ClientOffline

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- sans-io helpers -------------------------------------------------------------------


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def test_parse_basic() -> None:
    """Basic credentials decode; other schemes, bad base64 and a missing colon give None."""
    assert hp.parse_basic(basic("u", "p:q")) == ("u", "p:q")
    assert hp.parse_basic(b"basic " + base64.b64encode(b"u:")) == ("u", "")
    assert hp.parse_basic(b"Bearer abc") is None
    assert hp.parse_basic(b"Basic !!!") is None
    assert hp.parse_basic(b"Basic " + base64.b64encode(b"nocolon")) is None
    assert hp.parse_basic(b"Basic " + base64.b64encode(b"\xff:\xfe")) is None
    assert hp.parse_basic(b"Basic") is None


@FUZZ
@given(st.text().filter(lambda s: ":" not in s), st.text())
def test_parse_basic_roundtrip(user: str, password: str) -> None:
    """Any user (without a colon) and password survive encoding and parsing."""
    assert hp.parse_basic(basic(user, password)) == (user, password)


@FUZZ
@given(st.binary(max_size=200))
def test_parse_basic_never_raises(value: bytes) -> None:
    """Arbitrary header values give credentials or None, never an exception."""
    result = hp.parse_basic(value)
    assert result is None or isinstance(result, tuple)


def test_parse_authority() -> None:
    """host:port, [v6]:port and a default port parse; bad ones are 400s."""
    assert hp.parse_authority(b"Example.COM:8080") == ("example.com", 8080)
    assert hp.parse_authority(b"[::1]:443") == ("::1", 443)
    assert hp.parse_authority(b"host", default_port=80) == ("host", 80)
    assert hp.parse_authority(b"[::1]", default_port=80) == ("::1", 80)
    for bad in (b"host", b"host:0", b"host:65536", b"host:x", b"::1:80", b"[::1", b"[zz]:1",
                b"u:p@host:1", b"ho st:1", b":80", b"h\xc3\xa9:1"):
        with pytest.raises(hp.ProxyError) as e:
            hp.parse_authority(bad)
        assert e.value.status == 400


def test_split_absolute() -> None:
    """Absolute-form http URLs split into authority and origin-form; others are refused."""
    assert hp.split_absolute(b"http://h:81/a/b?c=d#frag") == (b"h:81", b"/a/b?c=d")
    assert hp.split_absolute(b"HTTP://h") == (b"h", b"/")
    assert hp.split_absolute(b"http://h?q") == (b"h", b"/?q")
    for bad in (b"/path", b"*", b"https://h/", b"ftp://h/", b"http:///x", b"junk"):
        with pytest.raises(hp.ProxyError):
            hp.split_absolute(bad)


hostnames = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)
paths = st.from_regex(r"(/[A-Za-z0-9._~%-]{0,10}){0,4}(\?[A-Za-z0-9=&]{0,10})?", fullmatch=True)


@FUZZ
@given(hostnames, st.integers(1, 65535), paths)
def test_absolute_form_roundtrip(host: str, port: int, path: str) -> None:
    """C{http://host:port/path} gives back the host, the port and the path (C{/} if empty)."""
    authority, origin = hp.split_absolute(f"http://{host}:{port}{path}".encode())
    assert hp.parse_authority(authority, 80) == (host, port)
    expected = path if path.startswith("/") else "/" + path
    assert origin == expected.encode()


def test_clean_headers() -> None:
    """Hop-by-hop headers and those named by Connection go; Upgrade stays only when asked."""
    headers = [(b"Host", b"h"), (b"Connection", b"keep-alive, X-Secret"), (b"X-Secret", b"1"),
               (b"Keep-Alive", b"300"), (b"Proxy-Authorization", b"Basic x"), (b"Proxy-Connection", b"close"),
               (b"TE", b"trailers"), (b"Trailer", b"X"), (b"Upgrade", b"websocket"),
               (b"Content-Length", b"3"), (b"Accept", b"*/*")]
    assert hp.clean_headers(headers) == [(b"host", b"h"), (b"content-length", b"3"), (b"accept", b"*/*")]
    kept = hp.clean_headers(headers, keep_upgrade=True)
    assert kept[-2:] == [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    assert hp.is_websocket_upgrade([(b"connection", b"Upgrade"), (b"upgrade", b"WebSocket")])
    assert not hp.is_websocket_upgrade([(b"upgrade", b"websocket")])


def test_classify_connect_and_forward() -> None:
    """CONNECT gives a target; absolute-form gives an origin-form request with Host from the URL."""
    connect = hp.classify(h11.Request(method="CONNECT", target="example.com:443",
                                      headers=[("Host", "example.com:443"),
                                               ("Proxy-Authorization", basic("u", "p"))]))
    assert (connect.kind, connect.target, connect.credentials) == ("connect", "example.com:443", ("u", "p"))
    forward = hp.classify(h11.Request(method="POST", target="http://[::1]:8080/x?y",
                                      headers=[("Host", "wrong"), ("Connection", "close"),
                                               ("Content-Length", "2"), ("Proxy-Connection", "keep-alive")]))
    assert forward.kind == "forward" and forward.target == "[::1]:8080" and forward.credentials is None
    assert forward.request is not None
    assert forward.request.target == b"/x?y"
    assert list(forward.request.headers) == [(b"host", b"[::1]:8080"), (b"content-length", b"2")]


def test_classify_refusals() -> None:
    """Origin-form, https absolute-form, CONNECT without a port: 400; a huge head: 431."""
    for target in ("/index.html", "https://h/"):
        with pytest.raises(hp.ProxyError) as e:
            hp.classify(h11.Request(method="GET", target=target, headers=[("Host", "h")]))
        assert e.value.status == 400
    with pytest.raises(hp.ProxyError):
        hp.classify(h11.Request(method="CONNECT", target="h", headers=[("Host", "h")]))
    with pytest.raises(hp.ProxyError) as e:
        hp.classify(h11.Request(method="GET", target="http://h/",
                                headers=[("Host", "h"), ("X", "a" * hp.MAX_HEAD)]))
    assert e.value.status == 431


def test_responses() -> None:
    """Canned responses are complete, close the connection; 407 asks for Basic; timeouts map to 504."""
    response = hp.error_response(502, "cannot reach x")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") and b"Connection: close" in head
    assert body == b"cannot reach x\n" and b"Content-Length: %d" % len(body) in head
    assert b'\r\nProxy-Authenticate: Basic realm="nps"\r\n' in hp.auth_required()
    assert hp.auth_required().startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert hp.status_for_refusal("Connection was refused by other side: 111: Connection refused.") == 502
    assert hp.status_for_refusal("User timeout caused connection failure.") == 504
    assert hp.status_for_refusal("peer did not answer in time") == 504
    assert hp.CONNECT_ESTABLISHED == b"HTTP/1.1 200 Connection established\r\n\r\n"


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_fuzz_user_heads(chunks: list[bytes]) -> None:
    """Any bytes, in any pieces, give requests, a ProxyError or an h11 protocol error: nothing else."""
    conn = hp.new_user_connection()
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            while True:
                event = conn.next_event()
                if event in (h11.NEED_DATA, h11.PAUSED):
                    break
                if isinstance(event, h11.Request):
                    try:
                        hp.classify(event)
                    except hp.ProxyError as e:
                        assert e.status in (400, 431)
                if isinstance(event, h11.ConnectionClosed):
                    return
            if event is h11.PAUSED:
                return
    except h11.RemoteProtocolError:
        pass


@FUZZ
@given(st.sampled_from([b"GET", b"CONNECT", b"POST"]), st.binary(min_size=1, max_size=80),
       st.lists(st.tuples(st.from_regex(rb"[A-Za-z-]{1,12}", fullmatch=True), st.binary(max_size=40)),
                max_size=5))
def test_fuzz_request_targets(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """Whatever target and headers h11 accepts, classify answers with a ProxyRequest or a ProxyError."""
    data = method + b" " + target + b" HTTP/1.1\r\nHost: h\r\n"
    data += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    conn = hp.new_user_connection()
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return
    if not isinstance(event, h11.Request):
        return
    try:
        result = hp.classify(event)
    except hp.ProxyError:
        return
    assert 0 < result.port < 65536
    if result.kind == "forward":
        assert result.request is not None and result.request.target.startswith(b"/")


# -- the protocol over StringTransports ------------------------------------------------------


class FakeStream(StringTransport):
    """A StringTransport standing in for a MuxStream: C{opened}, half-close, reset."""

    def __init__(self, link: dict[str, Any]) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 0))
        self.link = link
        self.opened: Deferred[Any] = Deferred()
        self.write_closed = False
        self.protocol: Any = None

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def accept(self) -> None:
        self.opened.callback(self)

    def refuse(self, reason: str, consumed: bool = True) -> None:
        """Like the mux: the server's endpoint logs (consumes) the failure, then the stream ends."""
        if consumed:
            self.opened.callback(None)
        else:
            self.opened.errback(StreamRefused(reason))
        self.protocol.connectionLost(Failure(ConnectionLost(reason)))


class FakeOpener:
    """An opener whose endpoints attach their protocol to a new L{FakeStream}."""

    def __init__(self, offline: bool = False) -> None:
        self.streams: list[FakeStream] = []
        self.offline = offline

    def __call__(self, link: dict[str, Any]) -> "FakeEndpoint":
        return FakeEndpoint(self, link)


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    def __init__(self, opener: FakeOpener, link: dict[str, Any]) -> None:
        self.opener = opener
        self.link = link

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.opener.offline:
            return fail(ClientOffline("client 1 is offline"))
        stream = FakeStream(self.link)
        protocol = factory.buildProtocol(stream.getPeer())
        stream.protocol = protocol
        protocol.makeConnection(stream)
        self.opener.streams.append(stream)
        return succeed(protocol)


class UserTransport(StringTransport):
    """The user's TCP connection: a StringTransport that can also shut its write side."""

    write_closed = False
    aborted = False

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def make_proxy(accounts: dict[str, str] | None = None, offline: bool = False
               ) -> tuple[HttpProxyProtocol, UserTransport, FakeOpener, Clock]:
    options = {"accounts": format_accounts(accounts)} if accounts else {}
    tunnel = Tunnel(id=7, client_id=1, mode="httpProxy", server_port=8080, options=options)
    opener = FakeOpener(offline)
    clock = Clock()
    factory = HttpProxyFactory(tunnel, opener, clock)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert isinstance(proto, HttpProxyProtocol)
    transport = UserTransport()
    proto.makeConnection(transport)
    return proto, transport, opener, clock


def test_plugin_is_found() -> None:
    """The mode is a twisted.plugin found under its npc.conf name."""
    assert verifyObject(IProxyMode, httpproxy) and verifyObject(IPlugin, httpproxy)
    assert load_modes()["httpProxy"] is httpproxy


def test_connect_established_then_relay() -> None:
    """
    CONNECT opens a stream to host:port; nothing is answered before the npc
    connects; then 200, the bytes after the head go to the stream, and the
    two are spliced with producers registered both ways.
    """
    proto, user, opener, _ = make_proxy()
    proto.dataReceived(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nCLIENTHELLO")
    [stream] = opener.streams
    assert stream.link["target"] == "example.com:443" and stream.link["mode"] == "httpProxy"
    assert stream.link["remote"] == "127.0.0.1:40000" and stream.link["tunnel"] == 7
    assert user.value() == b"" and user.producerState == "paused"
    stream.accept()
    assert user.value() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert stream.value() == b"CLIENTHELLO"
    assert user.producer is stream and stream.producer is user
    assert user.producerState == "producing"
    stream.protocol.dataReceived(b"SERVERHELLO")
    proto.dataReceived(b"more")
    assert user.value().endswith(b"SERVERHELLO") and stream.value() == b"CLIENTHELLOmore"
    proto.readConnectionLost()
    assert stream.write_closed
    stream.protocol.connectionLost(Failure(ConnectionDone()))
    assert user.disconnecting


@pytest.mark.parametrize("consumed", [True, False])
@pytest.mark.parametrize("reason,status", [
    ("Connection was refused by other side: 111: Connection refused.", b"502"),
    ("User timeout caused connection failure.", b"504"),
])
def test_connect_refused(consumed: bool, reason: str, status: bytes) -> None:
    """A refused CONNECT target gives 502 (504 for timeouts) with the reason in the body, then close."""
    proto, user, opener, _ = make_proxy()
    proto.dataReceived(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n")
    opener.streams[0].refuse(reason, consumed)
    assert user.value().startswith(b"HTTP/1.1 " + status + b" ")
    assert reason.encode() in user.value() and b" 200 " not in user.value()
    assert user.disconnecting


def test_client_offline_is_502() -> None:
    """With the npc offline, CONNECT and plain requests get 502 and the connection closes."""
    for head in (b"CONNECT h:1 HTTP/1.1\r\nHost: h\r\n\r\n", b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n"):
        proto, user, opener, _ = make_proxy(offline=True)
        proto.dataReceived(head)
        assert user.value().startswith(b"HTTP/1.1 502 ") and b"offline" in user.value()
        assert user.disconnecting


@pytest.mark.parametrize("auth", [None, basic("u", "wrong"), basic("x", "p"), b"Bearer t"])
@pytest.mark.parametrize("method,target", [(b"CONNECT", b"h:443"), (b"GET", b"http://h/")])
def test_auth_required(auth: bytes | None, method: bytes, target: bytes) -> None:
    """With accounts, missing or wrong credentials get 407 with a Basic challenge; no stream is opened."""
    proto, user, opener, _ = make_proxy({"u": "p"})
    head = method + b" " + target + b" HTTP/1.1\r\nHost: h\r\n"
    if auth is not None:
        head += b"Proxy-Authorization: " + auth + b"\r\n"
    proto.dataReceived(head + b"\r\n")
    assert user.value().startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert b'Proxy-Authenticate: Basic realm="nps"' in user.value()
    assert opener.streams == [] and user.disconnecting


def test_auth_accepted() -> None:
    """The right credentials open the stream, and Proxy-Authorization does not travel upstream."""
    proto, user, opener, _ = make_proxy({"u": "p"})
    proto.dataReceived(b"GET http://h/x HTTP/1.1\r\nHost: h\r\nProxy-Authorization: " + basic("u", "p") + b"\r\n\r\n")
    [stream] = opener.streams
    assert stream.value().startswith(b"GET /x HTTP/1.1\r\n")
    assert b"proxy-authorization" not in stream.value().lower()


def response(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_forward_keep_alive_reuse_and_switch() -> None:
    """
    Absolute-form requests are rewritten to origin-form without hop-by-hop
    headers; the stream is reused for the same target and replaced for another.
    """
    proto, user, opener, _ = make_proxy()
    proto.dataReceived(b"GET http://a:81/one HTTP/1.1\r\nHost: a:81\r\nConnection: keep-alive, X-Hop\r\n"
                       b"X-Hop: 1\r\nProxy-Connection: keep-alive\r\nAccept: */*\r\n\r\n")
    [a] = opener.streams
    assert a.link["target"] == "a:81"
    sent = a.value()
    assert sent.startswith(b"GET /one HTTP/1.1\r\n") and b"host: a:81\r\n" in sent and b"accept: */*" in sent
    assert b"x-hop" not in sent.lower() and b"connection" not in sent.lower()
    a.accept()
    a.protocol.dataReceived(response(b"first", b"Keep-Alive: timeout=5\r\nConnection: keep-alive\r\n"))
    assert user.value().startswith(b"HTTP/1.1 200 OK\r\n") and user.value().endswith(b"first")
    assert b"keep-alive" not in user.value().lower()
    user.clear()
    a.clear()
    proto.dataReceived(b"GET http://a:81/two HTTP/1.1\r\nHost: a:81\r\n\r\n")
    assert len(opener.streams) == 1 and a.value().startswith(b"GET /two ")
    a.protocol.dataReceived(response(b"second"))
    assert user.value().endswith(b"second") and not user.disconnecting
    user.clear()
    proto.dataReceived(b"GET http://b/three HTTP/1.1\r\nHost: b\r\n\r\n")
    assert len(opener.streams) == 2 and a.disconnecting
    b = opener.streams[1]
    assert b.link["target"] == "b:80" and b.value().startswith(b"GET /three HTTP/1.1\r\nhost: b\r\n")
    b.accept()
    b.protocol.dataReceived(response(b"third"))
    assert user.value().endswith(b"third") and not user.disconnecting


def test_pipelined_request_waits_for_response() -> None:
    """A second request in the same read is forwarded only after the first response is complete."""
    proto, user, opener, _ = make_proxy()
    proto.dataReceived(b"GET http://a/1 HTTP/1.1\r\nHost: a\r\n\r\nGET http://a/2 HTTP/1.1\r\nHost: a\r\n\r\n")
    [a] = opener.streams
    assert a.value().count(b"GET ") == 1
    assert user.producerState == "paused"
    a.accept()
    a.protocol.dataReceived(response(b"1"))
    assert a.value().count(b"GET ") == 2 and b"GET /2 " in a.value()
    a.protocol.dataReceived(response(b"2"))
    assert user.value().count(b"HTTP/1.1 200 OK") == 2
    assert user.producerState == "producing"


def test_chunked_bodies_both_ways() -> None:
    """A chunked request body goes upstream chunked; a chunked response is passed on chunked."""
    proto, user, opener, _ = make_proxy()
    proto.dataReceived(b"POST http://a/up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    [a] = opener.streams
    proto.dataReceived(b"6\r\n world\r\n0\r\n\r\n")
    sent = a.value()
    assert b"transfer-encoding: chunked" in sent.lower()
    assert sent.endswith(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    a.accept()
    a.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert user.value().endswith(b"3\r\nabc\r\n0\r\n\r\n")


def test_close_delimited_response_and_http10_user() -> None:
    """A response ended by the target's close is completed for the user, whose HTTP/1.0 connection then closes."""
    proto, user, opener, _ = make_proxy()
    proto.dataReceived(b"GET http://a/ HTTP/1.0\r\n\r\n")
    [a] = opener.streams
    a.accept()
    a.protocol.dataReceived(b"HTTP/1.0 200 OK\r\n\r\npart1")
    a.protocol.dataReceived(b"part2")
    a.protocol.connectionLost(Failure(ConnectionDone()))
    assert user.value().endswith(b"part1part2") and user.disconnecting and not user.aborted


def test_forward_refused_and_truncated() -> None:
    """A refused target gives 502; a target that dies mid-response aborts the user's connection."""
    proto, user, opener, _ = make_proxy()
    proto.dataReceived(b"GET http://a:1/ HTTP/1.1\r\nHost: a\r\n\r\n")
    opener.streams[0].refuse("Connection was refused by other side: 111: Connection refused.")
    assert user.value().startswith(b"HTTP/1.1 502 ") and b"111" in user.value()

    proto, user, opener, _ = make_proxy()
    proto.dataReceived(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n")
    [a] = opener.streams
    a.accept()
    a.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    a.protocol.connectionLost(Failure(ConnectionAborted("reset")))
    assert user.aborted


def test_backpressure_both_ways() -> None:
    """A full stream pauses reading from the user; a full user transport pauses the stream."""
    proto, user, opener, _ = make_proxy()
    proto.dataReceived(b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nxx")
    [a] = opener.streams
    assert a.producer is not None and a.streaming
    a.producer.pauseProducing()
    assert user.producerState == "paused"
    a.producer.resumeProducing()
    assert user.producerState == "producing"
    assert user.producer is not None and user.streaming
    user.producer.pauseProducing()
    assert a.producerState == "paused"
    user.producer.resumeProducing()
    assert a.producerState == "producing"


def test_header_timeout() -> None:
    """A client that sends no complete head within the limit is disconnected; a complete head stops the timer."""
    proto, user, _, clock = make_proxy()
    proto.dataReceived(b"GET http://a/ HTTP/1.1\r\n")
    clock.advance(HEADER_TIMEOUT - 1)
    assert not user.disconnecting
    clock.advance(1)
    assert user.disconnecting and user.value() == b""

    proto, user, opener, clock = make_proxy()
    proto.dataReceived(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n")
    clock.advance(HEADER_TIMEOUT * 3)
    assert not user.disconnecting
    opener.streams[0].accept()
    opener.streams[0].protocol.dataReceived(response(b"ok"))
    assert clock.getDelayedCalls()  # waiting for the next request head again
    proto.connectionLost(Failure(ConnectionDone()))
    assert not clock.getDelayedCalls() and opener.streams[0].disconnecting


@pytest.mark.parametrize("data,status", [
    (b"\x16\x03\x01\x00\xff garbage\r\n\r\n", b"400"),
    (b"GET /origin-form HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
    (b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX: " + b"a" * (70 * 1024), b"431"),
    (b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX: " + b"a" * (70 * 1024) + b"\r\n\r\n", b"431"),
])
def test_bad_input_refused(data: bytes, status: bytes) -> None:
    """Malformed, origin-form and oversized heads are answered with 400/431 and closed; no stream is opened."""
    proto, user, opener, _ = make_proxy()
    proto.dataReceived(data)
    assert user.value().startswith(b"HTTP/1.1 " + status + b" ")
    assert user.disconnecting and opener.streams == []
    proto.dataReceived(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n")
    assert opener.streams == []


def test_websocket_upgrade_passes_through() -> None:
    """A WebSocket upgrade keeps its Upgrade headers; after the 101 raw bytes flow both ways."""
    proto, user, opener, _ = make_proxy()
    proto.dataReceived(b"GET http://a/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                       b"Sec-WebSocket-Key: k\r\n\r\n")
    [a] = opener.streams
    assert b"connection: upgrade" in a.value().lower() and b"upgrade: websocket" in a.value().lower()
    a.accept()
    a.protocol.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\n\r\nframe1")
    assert user.value().startswith(b"HTTP/1.1 101 ") and user.value().endswith(b"\r\n\r\nframe1")
    a.clear()
    proto.dataReceived(b"client-frame")
    assert a.value() == b"client-frame"
    a.protocol.connectionLost(Failure(ConnectionDone()))
    assert user.disconnecting
