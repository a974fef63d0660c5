# -*- test-case-name: test.test_socks5 -*-
"""Tests for the socks5 mode: the sans-io parser (no reactor) and the protocols over StringTransport."""
from __future__ import annotations

import ipaddress
import struct
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from nps.interfaces import IProxyMode
from nps.model import Tunnel
from nps.modes import load_modes
from nps.mux import StreamRefused
from nps.plugins import socks5 as plugin
from nps.protocols.socks5 import (
    AddressType,
    Command,
    DatagramFramer,
    Reply,
    Request,
    Send,
    ServerHandshake,
    Socks5Error,
    decode_udp,
    encode_address,
    encode_reply,
    encode_udp,
    frame_datagram,
    reply_for_error,
)
from nps.server import ClientOffline

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NO_AUTH = b"\x05\x01\x00"
CONNECT_V4 = b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50"
CONNECT_NAME = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
CONNECT_V6 = b"\x05\x01\x00\x04" + ipaddress.IPv6Address("2001:db8::1").packed + b"\x00\x16"


def accounts(user: str, password: str) -> Any:
    return lambda u, p: (u, p) == (user, password)


# ------------------------------------------------------------ the parser ---


def test_no_auth_connect_ipv4() -> None:
    """Without accounts method 0x00 is chosen and an IPv4 CONNECT is parsed."""
    machine = ServerHandshake()
    assert machine.feed(NO_AUTH) == [Send(b"\x05\x00")]
    assert machine.feed(CONNECT_V4) == [Request(Command.CONNECT, AddressType.IPV4, "10.0.0.1", 80)]
    assert machine.done


def test_connect_domain_and_ipv6() -> None:
    """Domain names pass through unresolved; IPv6 addresses come out in text form."""
    events = ServerHandshake().feed(NO_AUTH + CONNECT_NAME)
    assert events[-1] == Request(Command.CONNECT, AddressType.DOMAIN, "example.com", 443)
    events = ServerHandshake().feed(NO_AUTH + CONNECT_V6)
    assert events[-1] == Request(Command.CONNECT, AddressType.IPV6, "2001:db8::1", 22)


def test_rest_after_request() -> None:
    """Bytes pipelined after the request are handed over in C{rest}."""
    events = ServerHandshake().feed(NO_AUTH + CONNECT_V4 + b"GET / HTTP/1.0\r\n")
    assert events[-1].rest == b"GET / HTTP/1.0\r\n"


def test_udp_associate_request() -> None:
    """UDP ASSOCIATE with an all-zero address is a request like CONNECT."""
    events = ServerHandshake().feed(NO_AUTH + b"\x05\x03\x00\x01" + bytes(6))
    assert events[-1] == Request(Command.UDP_ASSOCIATE, AddressType.IPV4, "0.0.0.0", 0)


def test_auth_required_rejects_no_auth_client() -> None:
    """With accounts, a client offering only 0x00 gets 0xFF (no acceptable method)."""
    with pytest.raises(Socks5Error) as e:
        ServerHandshake(accounts("u", "p")).feed(NO_AUTH)
    assert e.value.out == b"\x05\xff"


def test_auth_good_and_bad_credentials() -> None:
    """Right credentials get status 0; wrong ones status 1, after the method choice owed."""
    machine = ServerHandshake(accounts("u", "p"))
    events = machine.feed(b"\x05\x02\x00\x02" + b"\x01\x01u\x01p" + CONNECT_V4)
    assert events[:2] == [Send(b"\x05\x02"), Send(b"\x01\x00")]
    assert machine.user == "u"
    with pytest.raises(Socks5Error) as e:
        ServerHandshake(accounts("u", "p")).feed(b"\x05\x01\x02" + b"\x01\x01u\x01x")
    assert e.value.out == b"\x05\x02\x01\x01"
    assert "wrong user name or password" in str(e.value)


def test_only_user_password_offered_without_accounts() -> None:
    """Without accounts a client that offers only 0x02 is let in with any credentials."""
    events = ServerHandshake().feed(b"\x05\x01\x02\x01\x01a\x01b" + CONNECT_V4)
    assert events[:2] == [Send(b"\x05\x02"), Send(b"\x01\x00")]


@pytest.mark.parametrize("data, out, words", [
    (b"GET / HTTP/1.1\r\n", b"", "not a SOCKS5 greeting"),
    (b"\x04\x01\x00\x50", b"", "SOCKS4"),
    (b"\x05\x00", b"\x05\xff", "no authentication method"),
    (b"\x05\x01\x01", b"\x05\xff", "no acceptable"),
    (NO_AUTH + b"\x05\x02\x00\x01" + bytes(6), b"\x05\x00" + encode_reply(Reply.COMMAND_NOT_SUPPORTED), "BIND"),
    (NO_AUTH + b"\x05\x09\x00\x01" + bytes(6), b"\x05\x00" + encode_reply(Reply.COMMAND_NOT_SUPPORTED), "0x09"),
    (NO_AUTH + b"\x05\x01\x00\x02", b"\x05\x00" + encode_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED), "address type"),
    (NO_AUTH + b"\x05\x01\x00\x03\x03a b\x00\x50", b"\x05\x00" + encode_reply(Reply.HOST_UNREACHABLE), "domain"),
    (NO_AUTH + b"\x05\x01\x00\x03\x00\x00\x50", b"\x05\x00" + encode_reply(Reply.HOST_UNREACHABLE), "domain"),
    (NO_AUTH + b"\x04\x01", b"\x05\x00" + encode_reply(Reply.GENERAL_FAILURE), "version"),
])
def test_refusals(data: bytes, out: bytes, words: str) -> None:
    """Each kind of bad input raises with a clear message and the right reply to send."""
    with pytest.raises(Socks5Error) as e:
        ServerHandshake().feed(data)
    assert e.value.out == out
    assert words in str(e.value)


def test_feed_after_done() -> None:
    """The machine takes no bytes after the request: the caller relays them."""
    machine = ServerHandshake()
    machine.feed(NO_AUTH + CONNECT_V4)
    with pytest.raises(Socks5Error):
        machine.feed(b"x")


@SETTINGS
@given(st.data())
def test_any_split_gives_same_events(data: st.DataObject) -> None:
    """Fed in arbitrary pieces, a full authenticated handshake gives the same events as in one piece."""
    wire = b"\x05\x02\x00\x02" + b"\x01\x04user\x06passwd" + CONNECT_NAME + b"early"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    machine = ServerHandshake(accounts("user", "passwd"))
    events: list[Any] = []
    last = 0
    for cut in cuts + [len(wire)]:
        events += machine.feed(wire[last:cut])
        last = cut
        if machine.done:
            break
    request = events[-1]
    assert isinstance(request, Request)
    assert (request.host, request.port) == ("example.com", 443)
    assert events[:2] == [Send(b"\x05\x02"), Send(b"\x01\x00")]
    assert request.rest + wire[last:] == b"early"


@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_garbage_never_crashes(chunks: list[bytes], auth: bool) -> None:
    """Random input only ever raises Socks5Error, and at most one message (< 600 bytes) is buffered."""
    machine = ServerHandshake(accounts("u", "p") if auth else None)
    for chunk in chunks:
        try:
            machine.feed(chunk)
        except Socks5Error:
            return
        if machine.done:
            return
        assert machine.buffered < 600


# ------------------------------------------------------------ encodings ---

hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}", fullmatch=True),
)


@pytest.mark.parametrize("host", ["0..0", "a." + "b" * 70, ""])
def test_encode_bad_domain_is_a_clear_value_error(host: str) -> None:
    """A name IDNA refuses (empty label, label over 63) is a ValueError naming it."""
    with pytest.raises(ValueError, match="domain name"):
        encode_address(host, 80)


@SETTINGS
@given(hosts, st.integers(0, 65535), st.binary(max_size=2000))
def test_udp_header_roundtrip(host: str, port: int, payload: bytes) -> None:
    """decode_udp(encode_udp(...)) gives back host, port and data."""
    datagram = decode_udp(encode_udp(host, port, payload))
    assert (datagram.host, datagram.port, datagram.data, datagram.frag) == (host, port, payload, 0)


@SETTINGS
@given(st.binary(max_size=40))
def test_udp_decode_garbage(packet: bytes) -> None:
    """Malformed UDP headers raise Socks5Error, nothing else."""
    try:
        decode_udp(packet)
    except Socks5Error:
        pass


def test_reply_encoding() -> None:
    """Replies carry the bound address in the family's ATYP."""
    assert encode_reply(Reply.SUCCEEDED) == b"\x05\x00\x00\x01" + bytes(6)
    assert encode_reply(Reply.CONNECTION_REFUSED, "::1", 1080) == \
        b"\x05\x05\x00\x04" + ipaddress.IPv6Address("::1").packed + struct.pack("!H", 1080)
    assert encode_reply(0, "proxy.example", 1) == b"\x05\x00\x00\x03\x0dproxy.example\x00\x01"


@SETTINGS
@given(st.lists(st.binary(max_size=3000), max_size=10), st.data())
def test_datagram_framing(packets: list[bytes], data: st.DataObject) -> None:
    """Framed datagrams split anywhere come back out whole and in order."""
    wire = b"".join(frame_datagram(p) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    framer = DatagramFramer()
    out: list[bytes] = []
    last = 0
    for cut in cuts + [len(wire)]:
        out += framer.feed(wire[last:cut])
        last = cut
    assert out == packets
    assert framer.pending == 0


def test_frame_too_large() -> None:
    """A datagram longer than a u16 length cannot be framed."""
    with pytest.raises(ValueError):
        frame_datagram(bytes(65536))


@pytest.mark.parametrize("message, code", [
    ("Connection was refused by other side: 111: Connection refused.", Reply.CONNECTION_REFUSED),
    ("DNS lookup failed: no results for hostname lookup: x.invalid.", Reply.HOST_UNREACHABLE),
    ("No route to host: 113: No route to host.", Reply.HOST_UNREACHABLE),
    ("An error occurred while connecting: 101: Network is unreachable.", Reply.NETWORK_UNREACHABLE),
    ("User timeout caused connection failure.", Reply.HOST_UNREACHABLE),
    ("peer did not answer in time", Reply.HOST_UNREACHABLE),
    ("client 3 is offline", Reply.GENERAL_FAILURE),
])
def test_reply_for_error(message: str, code: Reply) -> None:
    """Failure texts from the npc map to the RFC's reply codes."""
    assert reply_for_error(message) == code


# ------------------------------------------------------------ the protocol ---


class FakeStream(StringTransport):
    """A mux stream stand-in: a transport with an C{opened} Deferred."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred[Any] = Deferred()
        self.protocol: Any = None


class FakeEndpoint:
    def __init__(self, opener: "FakeOpener", link: dict[str, Any]) -> None:
        self._opener = opener
        self._link = link

    def connect(self, factory: Any) -> Deferred[Any]:
        self._opener.links.append(self._link)
        if self._opener.error is not None:
            return fail(self._opener.error)
        protocol = factory.buildProtocol(None)
        stream = FakeStream()
        stream.protocol = protocol
        self._opener.streams.append(stream)
        protocol.makeConnection(stream)
        return succeed(protocol)


class FakeOpener:
    def __init__(self, error: Exception | None = None) -> None:
        self.links: list[dict[str, Any]] = []
        self.streams: list[FakeStream] = []
        self.error = error

    def __call__(self, link: dict[str, Any]) -> FakeEndpoint:
        return FakeEndpoint(self, link)


class FakeUdpPort:
    """What listenUDP returns, enough for the association."""

    def __init__(self, protocol: Any, interface: str) -> None:
        self.protocol = protocol
        self.interface = interface
        self.written: list[tuple[bytes, Any]] = []
        self.reading = True
        self.listening = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", 40000)

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr))

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def stopListening(self) -> None:
        self.listening = False


class Reactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.udp: list[FakeUdpPort] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakeUdpPort:
        assert maxPacketSize == 65535
        udp = FakeUdpPort(protocol, interface)
        self.udp.append(udp)
        return udp

    def resolve(self, name: str, timeout: Any = None) -> Deferred[str]:
        return succeed("127.0.0.1")


def make_server(opener: FakeOpener, options: dict[str, str] | None = None) -> tuple[Any, StringTransport, Reactor]:
    reactor = Reactor()
    tunnel = Tunnel(id=7, client_id=1, mode="socks5", server_port=1080, server_ip="127.0.0.1",
                    options=options or {})
    factory = plugin.Socks5Factory(reactor, tunnel, opener)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 1080),
                                peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
    protocol.makeConnection(transport)
    return protocol, transport, reactor


def test_plugins_provide_the_interface() -> None:
    """Both plugin objects provide IProxyMode and are found by load_modes()."""
    for mode in (plugin.socks5, plugin.socks5_udp):
        assert verifyObject(IProxyMode, mode)
        assert IPlugin.providedBy(mode)
    modes = load_modes()
    assert modes["socks5"] is plugin.socks5 and modes["socks5_udp"] is plugin.socks5_udp


def test_connect_waits_for_open_then_relays() -> None:
    """
    A CONNECT opens a stream with the name passed through, replies only when
    the npc accepted, then relays both ways with producers registered.
    """
    opener = FakeOpener()
    protocol, transport, reactor = make_server(opener)
    protocol.dataReceived(NO_AUTH + CONNECT_NAME + b"early")
    assert opener.links == [{"mode": "socks5", "target": "example.com:443", "remote": "127.0.0.1:5555",
                             "tunnel": 7}]
    stream = opener.streams[0]
    assert transport.value() == b"\x05\x00"
    assert stream.value() == b"early"  # optimistic: rides with the stream open
    assert not reactor.getDelayedCalls()  # handshake timer cancelled
    stream.opened.callback(stream)
    assert transport.value() == b"\x05\x00" + encode_reply(Reply.SUCCEEDED)
    protocol.dataReceived(b"more")
    assert stream.value() == b"earlymore"
    stream.protocol.dataReceived(b"answer")
    assert transport.value().endswith(b"answer")
    assert transport.producer is stream and transport.streaming
    assert stream.producer is transport


@pytest.mark.parametrize("swallowed", [True, False])
def test_connect_refused_maps_reason(swallowed: bool) -> None:
    """
    A refused stream gives reply 0x05 and a close, whether the failure
    reaches C{opened} or only the stream's connectionLost (the server's
    own errback takes it first).
    """
    opener = FakeOpener()
    protocol, transport, _ = make_server(opener)
    protocol.dataReceived(NO_AUTH + CONNECT_V4)
    stream = opener.streams[0]
    reason = "Connection was refused by other side: 111: Connection refused."
    if swallowed:
        stream.opened.callback(None)
    else:
        stream.opened.errback(StreamRefused(reason))
    stream.protocol.connectionLost(Failure(ConnectionLost(reason)))
    assert transport.value() == b"\x05\x00" + encode_reply(Reply.CONNECTION_REFUSED)
    assert transport.disconnecting


def test_client_offline() -> None:
    """When the npc is offline the reply is 0x01 (general failure) and the connection closes."""
    protocol, transport, _ = make_server(FakeOpener(ClientOffline("client 1 is offline")))
    protocol.dataReceived(NO_AUTH + CONNECT_V4)
    assert transport.value() == b"\x05\x00" + encode_reply(Reply.GENERAL_FAILURE)
    assert transport.disconnecting


@pytest.fixture
def observer() -> Iterator[EventLoggingObserver]:
    """Log events emitted during the test."""
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    yield events
    globalLogPublisher.removeObserver(events)


def logged(observer: EventLoggingObserver, words: str) -> bool:
    return any(words in formatEvent(e) for e in observer)


def test_handshake_timeout_logs_and_closes(observer: EventLoggingObserver) -> None:
    """A client that stalls mid-handshake is closed after the timeout, with a log line."""
    protocol, transport, reactor = make_server(FakeOpener())
    protocol.dataReceived(b"\x05\x01")
    reactor.advance(plugin.HANDSHAKE_TIMEOUT)
    assert transport.disconnecting
    assert logged(observer, "no complete request within 15s (stuck in greeting)")
    assert not reactor.getDelayedCalls()


def test_garbage_closes_with_log(observer: EventLoggingObserver) -> None:
    """Garbage gets a log line and a close of that connection only."""
    opener = FakeOpener()
    protocol, transport, reactor = make_server(opener)
    protocol.dataReceived(b"\x16\x03\x01\x02\x00")
    assert transport.disconnecting and transport.value() == b""
    assert logged(observer, "127.0.0.1:5555 refused: not a SOCKS5 greeting (first byte 0x16)")
    assert not opener.links
    protocol.connectionLost(Failure(ConnectionLost()))
    assert not reactor.getDelayedCalls()


def test_accounts_from_tunnel() -> None:
    """Tunnel accounts make user/password mandatory; the right pair gets through."""
    opener = FakeOpener()
    protocol, transport, _ = make_server(opener, {"accounts": "alice=pw\n"})
    protocol.dataReceived(b"\x05\x02\x00\x02\x01\x05alice\x02pw" + CONNECT_V4)
    assert transport.value() == b"\x05\x02\x01\x00"
    assert opener.links[0]["target"] == "10.0.0.1:80"
    protocol2, transport2, _ = make_server(FakeOpener(), {"accounts": "alice=pw\n"})
    protocol2.dataReceived(NO_AUTH)
    assert transport2.value() == b"\x05\xff" and transport2.disconnecting


def test_udp_association() -> None:
    """
    UDP ASSOCIATE opens a UDP port and one socks5_udp stream, replies with
    the port once the stream is open, carries the client's datagrams framed
    (dropping strangers and fragments), returns framed answers to the
    client, and ends with the control connection.
    """
    opener = FakeOpener()
    protocol, transport, reactor = make_server(opener)
    protocol.dataReceived(NO_AUTH + b"\x05\x03\x00\x01" + bytes(6))
    (udp,) = reactor.udp
    stream = opener.streams[0]
    assert opener.links[0]["mode"] == "socks5_udp"
    assert transport.value() == b"\x05\x00"
    stream.opened.callback(stream)
    assert transport.value() == b"\x05\x00" + encode_reply(Reply.SUCCEEDED, "127.0.0.1", 40000)
    packet = encode_udp("10.1.2.3", 53, b"query")
    udp.protocol.datagramReceived(packet, ("127.0.0.1", 6000))
    udp.protocol.datagramReceived(packet, ("10.9.9.9", 6000))  # not the client
    udp.protocol.datagramReceived(encode_udp("10.1.2.3", 53, b"frag", frag=1), ("127.0.0.1", 6000))
    udp.protocol.datagramReceived(b"\x00\x00", ("127.0.0.1", 6000))  # truncated
    assert stream.value() == frame_datagram(packet)
    answer = encode_udp("10.1.2.3", 53, b"reply")
    stream.protocol.dataReceived(frame_datagram(answer))
    assert udp.written == [(answer, ("127.0.0.1", 6000))]
    assert stream.producer is not None
    stream.producer.pauseProducing()
    assert not udp.reading
    stream.producer.resumeProducing()
    assert udp.reading
    protocol.connectionLost(Failure(ConnectionLost()))
    assert not udp.listening
    assert stream.disconnecting


def test_udp_association_refused() -> None:
    """If the npc refuses the UDP stream the client gets a failure reply and the port closes."""
    opener = FakeOpener()
    protocol, transport, reactor = make_server(opener)
    protocol.dataReceived(NO_AUTH + b"\x05\x03\x00\x01" + bytes(6))
    stream = opener.streams[0]
    stream.opened.callback(None)
    stream.protocol.connectionLost(Failure(ConnectionLost("mode 'socks5_udp' is not supported by this npc")))
    assert transport.value() == b"\x05\x00" + encode_reply(Reply.GENERAL_FAILURE)
    assert transport.disconnecting
    assert not reactor.udp[0].listening


def test_npc_udp_relay() -> None:
    """
    npc side: datagrams from the stream go out of a UDP socket (names
    resolved), answers come back framed with the sender's address, and a
    paused stream pauses the sockets.
    """
    reactor = Reactor()
    d = plugin.socks5_udp.serve(reactor, {"mode": "socks5_udp"})
    relay = d.result
    stream = StringTransport()
    relay.makeConnection(stream)
    relay.dataReceived(frame_datagram(encode_udp("127.0.0.1", 7, b"a")) + frame_datagram(encode_udp("localhost", 7, b"b")))
    (sock,) = reactor.udp
    assert sock.written == [(b"a", ("127.0.0.1", 7)), (b"b", ("127.0.0.1", 7))]
    sock.protocol.datagramReceived(b"echo", ("127.0.0.1", 7))
    assert stream.value() == frame_datagram(encode_udp("127.0.0.1", 7, b"echo"))
    stream.producer.pauseProducing()
    assert not sock.reading
    relay.connectionLost(Failure(ConnectionLost()))
    assert not sock.listening
