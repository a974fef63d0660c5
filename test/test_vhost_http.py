# -*- test-case-name: test.test_vhost_http -*-
"""The HTTP vhost protocol in memory (StringTransport, Clock): timeouts, routing, backpressure."""
from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from nps.model import Host
from nps.vhost.http import HEADER_TIMEOUT, KEEPALIVE_TIMEOUT, VhostHttpFactory
from nps.vhost.registry import Registry


class FakeService:
    """Stands in for VhostService: a route table, streams that are StringTransports."""

    def __init__(self) -> None:
        self.reactor = Clock()
        self.registry = Registry()
        self.add_origin_header = False
        self.https_port = 0
        self.streams: list[tuple[Any, StringTransport]] = []
        self.refuse = ""
        self.credentials: tuple[str, str] | None = None

    def basic_auth(self, client_id: int) -> tuple[str, str] | None:
        return self.credentials

    def open_stream(self, route: Any, target: str, remote: str, factory: Any) -> str | None:
        if self.refuse:
            return self.refuse
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.streams.append((protocol, transport))
        return None


def connect(service: FakeService) -> tuple[Any, StringTransport]:
    factory = VhostHttpFactory(service)  # type: ignore[arg-type]
    protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 5555))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 5555))
    protocol.makeConnection(transport)
    return protocol, transport


def service_with_hosts() -> FakeService:
    service = FakeService()
    service.registry.add(Host(id=1, client_id=1, host="a.com", targets=("t:1",)))
    service.registry.add(Host(id=2, client_id=1, host="b.com", targets=("t:2",), host_change="inner"))
    return service


def test_slowloris_head_timeout() -> None:
    """A head that does not complete within the header timeout gets 408 and a close."""
    service = service_with_hosts()
    protocol, transport = connect(service)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a.c")
    service.reactor.advance(HEADER_TIMEOUT - 1)
    protocol.dataReceived(b"o")
    assert transport.value() == b""
    service.reactor.advance(1)
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert transport.disconnecting
    assert service.streams == []


def test_idle_connection_closed_quietly() -> None:
    """A connection that sends nothing is closed after the header timeout without a response."""
    service = service_with_hosts()
    _, transport = connect(service)
    service.reactor.advance(HEADER_TIMEOUT)
    assert transport.value() == b"" and transport.disconnecting


def test_requests_routed_and_streams_switched() -> None:
    """Each request goes to its host's stream; a different host closes the old stream;
    after the response the keep-alive timer runs."""
    service = service_with_hosts()
    protocol, transport = connect(service)
    protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: a.com\r\n\r\n")
    backend, stream = service.streams[0]
    assert stream.value() == b"GET /x HTTP/1.1\r\nHost: a.com\r\n\r\n"
    assert transport.producer is stream and stream.producer is not None
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert transport.value() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    protocol.dataReceived(b"GET /y HTTP/1.1\r\nHost: b.com\r\n\r\n")
    assert stream.disconnecting
    backend2, stream2 = service.streams[1]
    assert stream2.value() == b"GET /y HTTP/1.1\r\nHost: inner\r\n\r\n"
    assert transport.producer is stream2
    backend2.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
    service.reactor.advance(KEEPALIVE_TIMEOUT)
    assert transport.disconnecting


def test_backpressure_pauses_browser() -> None:
    """A full stream pauses reading from the browser (the gate is the stream's producer)."""
    service = service_with_hosts()
    protocol, transport = connect(service)
    protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 10\r\n\r\n12345")
    _, stream = service.streams[0]
    stream.producer.pauseProducing()
    assert transport.producerState == "paused"
    stream.producer.resumeProducing()
    assert transport.producerState == "producing"
    protocol.dataReceived(b"67890GET / HTTP/1.1\r\nHost: a.com\r\n\r\n")
    assert stream.value().endswith(b"\r\n\r\n1234567890")
    assert transport.producerState == "paused"  # the pipelined request waits for the response


def test_backend_lost_before_response_502() -> None:
    """When the client cannot reach the target (stream reset before a response) the browser gets 502."""
    service = service_with_hosts()
    protocol, transport = connect(service)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a.com\r\n\r\n")
    backend, _ = service.streams[0]
    backend.connectionLost(Failure(ConnectionLost("connect to t:1 refused")))
    assert transport.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"connect to t:1 refused" in transport.value()
    assert transport.disconnecting


def test_offline_and_limits() -> None:
    """A client offline gives 502, a limit 503; both name the host."""
    for refusal, status in (("the client serving this site is offline", b"502"), ("limit reached: max_conn 1", b"503")):
        service = service_with_hosts()
        service.refuse = refusal
        protocol, transport = connect(service)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a.com\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 " + status)
        assert b"a.com" in transport.value()


def test_bad_response_from_backend() -> None:
    """A malformed response head from the backend becomes a 502 for the browser."""
    service = service_with_hosts()
    protocol, transport = connect(service)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a.com\r\n\r\n")
    backend, _ = service.streams[0]
    backend.dataReceived(b"SSH-2.0-OpenSSH\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 502 ")


def test_basic_auth() -> None:
    """A client with basic_username/basic_password gets 401 without the right credentials."""
    import base64

    for header, ok in ((b"", False), (b"Authorization: Basic " + base64.b64encode(b"u:wrong") + b"\r\n", False),
                       (b"Authorization: Bearer x\r\n", False),
                       (b"Authorization: Basic " + base64.b64encode(b"u:p") + b"\r\n", True)):
        service = service_with_hosts()
        service.credentials = ("u", "p")
        protocol, transport = connect(service)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a.com\r\n" + header + b"\r\n")
        if ok:
            assert service.streams and transport.value() == b""
            assert b"Authorization" not in service.streams[0][1].value()
        else:
            assert transport.value().startswith(b"HTTP/1.1 401 Unauthorized\r\n")
            assert b"WWW-Authenticate: Basic" in transport.value() and not service.streams


from hypothesis import given, settings, strategies as st  # noqa: E402

from nps.vhost.http import _ResponseTracker  # noqa: E402


def _response(kind: str, body: bytes, lf_only: bool) -> bytes:
    eol = b"\n" if lf_only else b"\r\n"
    lines = [b"HTTP/1.1 200 OK", b"Server: x"]
    if kind == "length":
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    else:
        lines.append(b"Transfer-Encoding: chunked")
        payload = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return b"HTTP/1.1 100 Continue" + eol + eol + eol.join(lines) + eol + eol + payload


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["length", "chunked"]), st.binary(max_size=300), st.booleans(),
       st.lists(st.integers(min_value=1, max_value=80), min_size=1, max_size=30), st.binary(max_size=40))
def test_response_tracker_boundaries(kind: str, body: bytes, lf_only: bool, cuts: list[int], after: bytes) -> None:
    """However a response arrives, the tracker passes exactly its bytes on (after a 100) and hands back the rest."""
    response = _response(kind, body, lf_only)
    data = response + after
    tracker = _ResponseTracker(b"GET")
    passed, extra, done, pos = b"", b"", False, 0
    for size in cuts + [len(data)]:
        if done or pos >= len(data):
            break
        out, extra, done = tracker.feed(data[pos:pos + size])
        passed += out
        pos += size
    assert done
    assert passed.lstrip(b"\r\n") == response.lstrip(b"\r\n")
    assert extra + data[pos:] == after


def test_stream_reused_for_same_host() -> None:
    """Keep-alive requests for the same site go down one stream (head passed on as received);
    a request for another site switches streams, and coming back opens a new one."""
    service = service_with_hosts()
    protocol, transport = connect(service)
    first = b"GET /1 HTTP/1.1\r\nHost: a.com\r\nX-Odd:  spaced \r\n\r\n"
    protocol.dataReceived(first)
    backend, stream = service.streams[0]
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    protocol.dataReceived(b"GET /2 HTTP/1.1\r\nHost: A.COM:80\r\n\r\n")
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    assert len(service.streams) == 1 and not stream.disconnecting
    assert stream.value() == first + b"GET /2 HTTP/1.1\r\nHost: A.COM:80\r\n\r\n"
    protocol.dataReceived(b"GET /3 HTTP/1.1\r\nHost: b.com\r\n\r\n")
    assert len(service.streams) == 2 and stream.disconnecting
    backend2, _ = service.streams[1]
    backend2.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3")
    protocol.dataReceived(b"GET /4 HTTP/1.1\r\nHost: a.com\r\n\r\n")
    assert len(service.streams) == 3
    assert transport.value().endswith(b"\r\n\r\n1" + b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"
                                      + b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3")


def test_target_kept_per_connection_until_down() -> None:
    """With several targets a connection stays on the one it got (one stream), new connections
    take the next in turn, and a target reported down is left for the next healthy one."""
    service = FakeService()
    service.registry.add(Host(id=1, client_id=7, host="lb.com", targets=("t:1", "t:2")))
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    protocol, _ = connect(service)
    for _ in range(3):
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: lb.com\r\n\r\n")
        service.streams[-1][0].dataReceived(ok)
    assert [b.target for b, _ in service.streams] == ["t:1"]
    other, _ = connect(service)
    other.dataReceived(b"GET / HTTP/1.1\r\nHost: lb.com\r\n\r\n")
    assert service.streams[-1][0].target == "t:2"
    service.registry.set_health(7, "t:1", False)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: lb.com\r\n\r\n")
    assert service.streams[0][1].disconnecting
    assert service.streams[-1][0].target == "t:2" and len(service.streams) == 3


def test_keepalive_timer_restarts_per_request() -> None:
    """The keep-alive timeout counts from the end of the last response, however many came before."""
    service = service_with_hosts()
    protocol, transport = connect(service)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    for _ in range(3):
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a.com\r\n\r\n")
        service.reactor.advance(KEEPALIVE_TIMEOUT + 5)  # a slow response is not timed out
        assert not transport.disconnecting
        service.streams[0][0].dataReceived(ok)
        service.reactor.advance(KEEPALIVE_TIMEOUT - 1)
        assert not transport.disconnecting
    assert not transport.disconnecting
    service.reactor.advance(1)
    assert transport.disconnecting and transport.value().count(ok) == 3
    assert service.reactor.getDelayedCalls() == []


def test_pipelined_requests_in_one_read() -> None:
    """Two requests in one read: the second waits for the first response, then goes to its own host."""
    service = service_with_hosts()
    protocol, transport = connect(service)
    protocol.dataReceived(b"GET /1 HTTP/1.1\r\nHost: a.com\r\n\r\nGET /2 HTTP/1.1\r\nHost: b.com\r\n\r\n")
    assert len(service.streams) == 1 and transport.producerState == "paused"
    service.streams[0][0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert len(service.streams) == 2 and transport.producerState == "producing"
    assert service.streams[1][1].value() == b"GET /2 HTTP/1.1\r\nHost: inner\r\n\r\n"


def test_origin_headers_rewrite_head() -> None:
    """With http_add_origin_header the head is rebuilt with the X-Forwarded-* headers."""
    service = service_with_hosts()
    service.add_origin_header = True
    protocol, _ = connect(service)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a.com\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
    assert service.streams[0][1].value() == (
        b"GET / HTTP/1.1\r\nHost: a.com\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.9\r\nX-Real-IP: 10.0.0.9\r\n"
        b"X-Forwarded-Proto: http\r\n\r\n")


def test_route_table_changes_seen_by_open_connections() -> None:
    """A keep-alive connection routes by the current table: a host replaced goes to its new
    target, a removed host gets 404, and a second location on the name is honoured."""
    service = service_with_hosts()
    protocol, transport = connect(service)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    get = b"GET /static/x HTTP/1.1\r\nHost: a.com\r\n\r\n"
    protocol.dataReceived(get)
    service.streams[-1][0].dataReceived(ok)
    service.registry.add(Host(id=1, client_id=1, host="a.com", targets=("t:9",)))
    protocol.dataReceived(get)
    assert service.streams[-1][0].target == "t:9" and len(service.streams) == 2
    service.streams[-1][0].dataReceived(ok)
    service.registry.add(Host(id=3, client_id=1, host="a.com", location="/static", targets=("t:3",)))
    protocol.dataReceived(get)
    assert service.streams[-1][0].target == "t:3"
    service.streams[-1][0].dataReceived(ok)
    protocol.dataReceived(b"GET /other HTTP/1.1\r\nHost: a.com\r\n\r\n")
    assert service.streams[-1][0].target == "t:9"
    service.streams[-1][0].dataReceived(ok)
    service.registry.remove(1)
    protocol.dataReceived(b"GET /other HTTP/1.1\r\nHost: a.com\r\n\r\n")
    assert transport.value().endswith(b"</html>\n") and b"404 Not Found" in transport.value()


def test_request_bodies_pass_through_in_pieces() -> None:
    """Length and chunked request bodies go to the stream byte for byte however they are split;
    bytes after the body wait as the next request."""
    service = service_with_hosts()
    protocol, transport = connect(service)
    chunked = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\n"
    head = b"POST /up HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = head + chunked + b"GET /next HTTP/1.1\r\nHost: a.com\r\n\r\n"
    for cut in (len(head), len(head) + 3, len(head) + len(chunked) - 1, len(head) + len(chunked) + 5):
        service.streams.clear()
        protocol, transport = connect(service)
        protocol.dataReceived(data[:cut])
        protocol.dataReceived(data[cut:])
        backend, stream = service.streams[0]
        assert stream.value() == head + chunked
        backend.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        assert stream.value() == head + chunked + b"GET /next HTTP/1.1\r\nHost: a.com\r\n\r\n"
    service.streams.clear()
    protocol, transport = connect(service)
    protocol.dataReceived(b"PUT / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 10\r\n\r\n123")
    protocol.dataReceived(b"4567")
    protocol.dataReceived(b"890GET")
    backend, stream = service.streams[0]
    assert stream.value().endswith(b"\r\n\r\n1234567890")
    backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    protocol.dataReceived(b" / HTTP/1.1\r\nHost: b.com\r\n\r\n")
    assert service.streams[1][1].value() == b"GET / HTTP/1.1\r\nHost: inner\r\n\r\n"
