# -*- test-case-name: test.test_datagrams -*-
"""Tests for L{nps.protocols.datagrams} (datagram framing) and the C{udp} mode's protocols.

The parser is tested on plain bytes (with hypothesis); the server and npc
sides of L{nps.plugins.udp} with C{StringTransport} streams, fake UDP ports
and a L{Clock}. Real sockets are in C{test_e2e_udp}.
"""
from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import MessageLengthError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from nps.interfaces import IProxyMode
from nps.model import Tunnel
from nps.modes import load_modes
from nps.plugins import udp as udp_module
from nps.plugins.udp import (
    IDLE_TIMEOUT,
    MAX_PENDING,
    PublicUdpProtocol,
    TargetSession,
    UdpMode,
    idle_timeout_from_env,
)
from nps.protocols.datagrams import MAX_DATAGRAM, DatagramFrameError, DatagramParser, encode_datagram
from nps.server import ClientOffline

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

datagram_lists = st.lists(
    st.one_of(st.binary(max_size=300), st.integers(0, MAX_DATAGRAM).map(lambda n: b"\xa5" * n)),
    max_size=12,
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """C{data} cut at the given offsets (taken modulo its length, sorted)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points + [len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


# ------------------------------------------------------------- framing ---


def test_encode_is_length_then_payload() -> None:
    """A frame is the u16 big-endian length followed by the datagram; 0 bytes is valid."""
    assert encode_datagram(b"abc") == b"\x00\x03abc"
    assert encode_datagram(b"") == b"\x00\x00"
    assert encode_datagram(b"x" * MAX_DATAGRAM)[:2] == b"\xff\xff"


def test_encode_refuses_oversized() -> None:
    """A datagram longer than the maximum cannot be framed (clear error, not truncation)."""
    with pytest.raises(DatagramFrameError, match="65536 bytes is larger than the maximum of 65535"):
        encode_datagram(b"x" * (MAX_DATAGRAM + 1))
    with pytest.raises(DatagramFrameError):
        encode_datagram(b"x" * 11, max_size=10)


def test_parser_keeps_boundaries_and_empty_datagrams() -> None:
    """Several frames in one chunk, including empty datagrams, come out one by one."""
    data = b"".join(encode_datagram(d) for d in [b"", b"one", b"", b"two!"])
    assert DatagramParser().feed(data) == [b"", b"one", b"", b"two!"]


def test_parser_byte_by_byte() -> None:
    """Fed one byte at a time, the parser returns each datagram when its last byte arrives."""
    parser = DatagramParser()
    out: list[bytes] = []
    for byte in encode_datagram(b"hello") + encode_datagram(b""):
        out.extend(parser.feed(bytes([byte])))
    assert out == [b"hello", b""]
    assert parser.buffered == 0


def test_parser_holds_partial_frame() -> None:
    """A partial frame is held (and counted) until the rest arrives."""
    parser = DatagramParser()
    assert parser.feed(b"\x00\x05he") == []
    assert parser.buffered == 4
    assert parser.feed(b"llo\x00") == [b"hello"]
    assert parser.buffered == 1


def test_parser_max_size_is_a_clear_error() -> None:
    """A length above the parser's limit raises, naming both sizes, and so does later input."""
    parser = DatagramParser(max_size=100)
    with pytest.raises(DatagramFrameError, match="announces 101 bytes, more than the maximum of 100"):
        parser.feed(struct.pack("!H", 101) + b"x" * 101)
    with pytest.raises(DatagramFrameError):
        parser.feed(encode_datagram(b"ok"))


def test_parser_rejects_bad_limit() -> None:
    """The limit must fit the u16 length field."""
    with pytest.raises(ValueError):
        DatagramParser(max_size=MAX_DATAGRAM + 1)


def test_finish_reports_truncated_stream() -> None:
    """finish() raises if the stream ended inside a frame, and is quiet otherwise."""
    parser = DatagramParser()
    parser.feed(encode_datagram(b"whole"))
    parser.finish()
    parser.feed(b"\x00\x09abc")
    with pytest.raises(DatagramFrameError, match="5 bytes of it received"):
        parser.finish()


@SETTINGS
@given(datagram_lists, st.lists(st.integers(min_value=0), max_size=20))
def test_any_datagrams_split_anywhere_parse_back(datagrams: list[bytes], cuts: list[int]) -> None:
    """Any sequence of datagrams, framed and split at arbitrary points, parses back exactly."""
    stream = b"".join(encode_datagram(d) for d in datagrams)
    parser = DatagramParser()
    out: list[bytes] = []
    for piece in split_at(stream, cuts):
        out.extend(parser.feed(piece))
    assert out == datagrams
    parser.finish()


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_bytes_never_crash(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes only ever produce datagrams (any u16 length is valid) or a partial frame."""
    parser = DatagramParser()
    total = 0
    for piece in split_at(data, cuts):
        for datagram in parser.feed(piece):
            total += 2 + len(datagram)
    assert total + parser.buffered == len(data)


# ------------------------------------------------------------ server side ---


class FakeStream(StringTransport):
    """A StringTransport standing in for a MuxStream (it has reset())."""

    def __init__(self) -> None:
        super().__init__()
        self.reset_reason: str | None = None

    def reset(self, reason: str = "") -> None:
        self.reset_reason = reason
        self.disconnecting = True


class FakeEndpoint:
    def __init__(self, opener: "FakeOpener", link: dict[str, Any]) -> None:
        self.opener = opener
        self.link = link

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.opener.error is not None:
            return fail(self.opener.error)
        protocol = factory.buildProtocol(None)
        stream = FakeStream()
        self.opener.streams.append((self.link, stream, protocol))
        if self.opener.hold:
            d: Deferred[Any] = Deferred()
            self.opener.held.append((d, stream, protocol))
            return d
        protocol.makeConnection(stream)
        return succeed(protocol)


class FakeOpener:
    """Records links; connects protocols to FakeStreams (or fails, or holds them)."""

    def __init__(self) -> None:
        self.streams: list[tuple[dict[str, Any], FakeStream, Any]] = []
        self.error: Exception | None = None
        self.hold = False
        self.held: list[tuple[Deferred[Any], FakeStream, Any]] = []

    def __call__(self, link: dict[str, Any]) -> FakeEndpoint:
        return FakeEndpoint(self, link)


class FakeUdpPort:
    """The UDP transport of a DatagramProtocol: records writes."""

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.error = error
        self.connected_to: tuple[str, int] | None = None
        self.stopped = False

    def write(self, datagram: bytes, addr: Any = None) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((datagram, addr))

    def connect(self, host: str, port: int) -> None:
        self.connected_to = (host, port)

    def stopListening(self) -> None:
        self.stopped = True


def make_public(targets: tuple[str, ...] = ("127.0.0.1:53",), **kwargs: Any) -> tuple[PublicUdpProtocol, FakeOpener,
                                                                                      FakeUdpPort, Clock, list[Any]]:
    clock = Clock()
    opener = FakeOpener()
    tunnel = Tunnel(id=7, client_id=1, mode="udp", server_port=5353, targets=targets)
    public = PublicUdpProtocol(clock, tunnel, opener, **kwargs)
    events: list[Any] = []
    public.log = Logger(observer=events.append)  # type: ignore[misc]
    port = FakeUdpPort()
    public.makeConnection(port)  # type: ignore[arg-type]
    return public, opener, port, clock, events


PEER_A = ("192.0.2.1", 4000)
PEER_B = ("192.0.2.2", 4001)


def test_new_peer_opens_a_stream_with_its_link() -> None:
    """The first datagram of a peer opens a stream with the udp link and goes into it framed."""
    public, opener, _, _, _ = make_public()
    public.datagramReceived(b"query", PEER_A)
    assert len(opener.streams) == 1
    link, stream, _ = opener.streams[0]
    assert link == {"mode": "udp", "target": "127.0.0.1:53", "remote": "192.0.2.1:4000", "tunnel": 7}
    assert stream.value() == b"\x00\x05query"
    assert stream.producer is not None and stream.streaming
    public.datagramReceived(b"", PEER_A)
    assert len(opener.streams) == 1
    assert stream.value() == b"\x00\x05query\x00\x00"


def test_targets_round_robin_per_session() -> None:
    """Each new peer session gets the next target of the tunnel."""
    public, opener, _, _, _ = make_public(targets=("10.0.0.1:53", "10.0.0.2:53"))
    for n in range(3):
        public.datagramReceived(b"x", ("192.0.2.9", 1000 + n))
    assert [link["target"] for link, _, _ in opener.streams] == ["10.0.0.1:53", "10.0.0.2:53", "10.0.0.1:53"]


def test_replies_go_to_their_own_peer() -> None:
    """Framed replies on a peer's stream (split anywhere) are sent to that peer only."""
    public, opener, port, _, _ = make_public()
    public.datagramReceived(b"a", PEER_A)
    public.datagramReceived(b"b", PEER_B)
    (_, _, proto_a), (_, _, proto_b) = opener.streams
    frames = encode_datagram(b"for-a") + encode_datagram(b"")
    proto_a.dataReceived(frames[:3])
    proto_a.dataReceived(frames[3:])
    proto_b.dataReceived(encode_datagram(b"for-b"))
    assert port.sent == [(b"for-a", PEER_A), (b"", PEER_A), (b"for-b", PEER_B)]


def test_send_errors_drop_the_reply_only() -> None:
    """A reply the socket refuses (too long, no buffer) is dropped and counted; the session lives on."""
    public, opener, port, _, events = make_public()
    public.datagramReceived(b"a", PEER_A)
    _, stream, proto = opener.streams[0]
    port.error = MessageLengthError("message too long")
    proto.dataReceived(encode_datagram(b"x"))
    port.error = OSError(105, "No buffer space available")
    proto.dataReceived(encode_datagram(b"y"))
    port.error = None
    proto.dataReceived(encode_datagram(b"z"))
    assert port.sent == [(b"z", PEER_A)]
    assert proto.dropped == 2 and not stream.disconnecting
    assert sum("dropped" in e["log_format"] for e in events) == 1  # rate-limited


def test_idle_session_expires_and_is_forgotten() -> None:
    """After the idle timeout without traffic the stream is closed and the peer forgotten."""
    public, opener, _, clock, _ = make_public(idle_timeout=30.0)
    public.datagramReceived(b"a", PEER_A)
    _, stream, proto = opener.streams[0]
    clock.advance(20)
    proto.dataReceived(encode_datagram(b"reply"))  # traffic (either way) postpones expiry
    clock.advance(20)
    assert not stream.disconnecting
    clock.advance(10)
    assert stream.disconnecting
    proto.connectionLost(Failure(ConnectionError("closed")))
    assert public.sessions == {}
    assert not clock.getDelayedCalls()
    public.datagramReceived(b"again", PEER_A)
    assert len(opener.streams) == 2


def test_backed_up_stream_drops_only_its_peer() -> None:
    """While a peer's stream is paused its datagrams are dropped; other peers flow; resume restores it."""
    public, opener, _, _, _ = make_public()
    public.datagramReceived(b"a1", PEER_A)
    public.datagramReceived(b"b1", PEER_B)
    (_, stream_a, proto_a), (_, stream_b, _) = opener.streams
    stream_a.producer.pauseProducing()
    public.datagramReceived(b"a2", PEER_A)
    public.datagramReceived(b"b2", PEER_B)
    assert stream_a.value() == encode_datagram(b"a1")
    assert stream_b.value() == encode_datagram(b"b1") + encode_datagram(b"b2")
    assert proto_a.dropped == 1
    stream_a.producer.resumeProducing()
    public.datagramReceived(b"a3", PEER_A)
    assert stream_a.value() == encode_datagram(b"a1") + encode_datagram(b"a3")


def test_peer_limit_drops_new_peers_with_one_log_line() -> None:
    """Beyond max_peers, new peers are dropped (rate-limited log); existing peers still flow."""
    public, opener, _, clock, events = make_public(max_peers=2)
    public.datagramReceived(b"a", PEER_A)
    public.datagramReceived(b"b", PEER_B)
    for n in range(5):
        public.datagramReceived(b"c", ("192.0.2.3", 5000 + n))
    assert len(opener.streams) == 2
    full = [e for e in events if "peers already have a session" in e["log_format"]]
    assert len(full) == 1
    clock.advance(udp_module.LOG_INTERVAL)
    public.datagramReceived(b"c", ("192.0.2.3", 6000))
    full = [e for e in events if "peers already have a session" in e["log_format"]]
    assert len(full) == 2 and full[1]["held"] == 4
    public.datagramReceived(b"a2", PEER_A)
    assert opener.streams[0][1].value().endswith(encode_datagram(b"a2"))


def test_offline_client_drops_datagrams_and_retries_later() -> None:
    """When the npc is offline the datagram is dropped, the peer forgotten, and a later one retries."""
    public, opener, _, _, events = make_public()
    opener.error = ClientOffline("client 1 is offline")
    public.datagramReceived(b"a", PEER_A)
    public.datagramReceived(b"a", PEER_A)
    assert public.sessions == {}
    assert sum("failed" in e["log_format"] for e in events) == 1
    opener.error = None
    public.datagramReceived(b"a", PEER_A)
    assert len(opener.streams) == 1 and PEER_A in public.sessions


def test_datagrams_before_the_stream_attaches_are_held() -> None:
    """If the stream attaches later, the first datagrams (up to a bound) are sent then."""
    public, opener, _, _, _ = make_public()
    opener.hold = True
    for n in range(MAX_PENDING + 3):
        public.datagramReceived(b"%d" % n, PEER_A)
    d, stream, proto = opener.held[0]
    proto.makeConnection(stream)
    d.callback(proto)
    parser = DatagramParser()
    assert parser.feed(stream.value()) == [b"%d" % n for n in range(MAX_PENDING)]
    assert proto.dropped == 3


def test_refused_stream_ends_the_session() -> None:
    """A stream the npc refuses (reset) ends the session; the next datagram opens a new one."""
    public, opener, _, clock, _ = make_public()
    public.datagramReceived(b"a", PEER_A)
    _, _, proto = opener.streams[0]
    proto.connectionLost(Failure(ConnectionError("Connection was refused by other side")))
    assert public.sessions == {} and not clock.getDelayedCalls()
    public.datagramReceived(b"a", PEER_A)
    assert len(opener.streams) == 2


def test_closing_the_port_closes_every_session() -> None:
    """stopListening (stopProtocol) closes every peer's stream and opens no new ones."""
    public, opener, _, _, _ = make_public()
    public.datagramReceived(b"a", PEER_A)
    public.datagramReceived(b"b", PEER_B)
    public.doStop()
    assert all(stream.disconnecting for _, stream, _ in opener.streams)
    public.datagramReceived(b"c", ("192.0.2.3", 1))
    assert len(opener.streams) == 2


def test_tunnel_without_target_is_refused() -> None:
    """A udp tunnel needs a target_addr."""
    with pytest.raises(ValueError, match="no target_addr"):
        PublicUdpProtocol(Clock(), Tunnel(id=1, client_id=1, mode="udp", server_port=1), FakeOpener())


# ------------------------------------------------------------ npc side ---


class FakeReactor(Clock):
    """A clock with listenUDP and resolve, enough for UdpMode.serve."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        super().__init__()
        self.names = names or {}
        self.ports: list[tuple[FakeUdpPort, Any, dict[str, Any]]] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakeUdpPort:
        udp_port = FakeUdpPort()
        self.ports.append((udp_port, protocol, {"port": port, "interface": interface, "max": maxPacketSize}))
        protocol.makeConnection(udp_port)
        return udp_port

    def resolve(self, name: str) -> Deferred[str]:
        if name in self.names:
            return succeed(self.names[name])
        return fail(OSError(f"cannot resolve {name}"))


def serve(reactor: FakeReactor, target: str, idle: float = 60.0) -> Any:
    result: list[Any] = []
    UdpMode(idle_timeout=idle).serve(reactor, {"mode": "udp", "target": target, "remote": "1.2.3.4:5"}) \
        .addBoth(result.append)
    return result[0]


def test_serve_opens_a_connected_socket_per_stream() -> None:
    """serve() binds a UDP socket (64 KiB packets) connected to the resolved target."""
    reactor = FakeReactor({"dns.lan": "10.1.1.1"})
    session = serve(reactor, "dns.lan:53")
    assert isinstance(session, TargetSession)
    udp_port, _, options = reactor.ports[0]
    assert udp_port.connected_to == ("10.1.1.1", 53)
    assert options == {"port": 0, "interface": "0.0.0.0", "max": 65535}
    session6 = serve(reactor, "[::1]:53")
    assert reactor.ports[1][0].connected_to == ("::1", 53) and reactor.ports[1][2]["interface"] == "::"
    assert isinstance(session6, TargetSession)


def test_serve_refuses_bad_or_unknown_targets() -> None:
    """A malformed target or an unresolvable name fails serve() (the stream is then reset)."""
    reactor = FakeReactor()
    assert isinstance(serve(reactor, "no-port"), Failure)
    assert isinstance(serve(reactor, "nowhere.invalid:53"), Failure)
    assert reactor.ports == []


def test_npc_session_relays_both_ways_and_closes_its_socket() -> None:
    """Stream frames go to the target socket one datagram each; replies come back framed;
    when the stream ends the socket is closed."""
    reactor = FakeReactor()
    session = serve(reactor, "127.0.0.1:9")
    udp_port, socket_proto, _ = reactor.ports[0]
    stream = FakeStream()
    session.makeConnection(stream)
    session.dataReceived(encode_datagram(b"q1") + encode_datagram(b"")[:1])
    session.dataReceived(b"\x00")
    assert udp_port.sent == [(b"q1", None), (b"", None)]
    socket_proto.datagramReceived(b"r1", ("127.0.0.1", 9))
    assert stream.value() == encode_datagram(b"r1")
    socket_proto.connectionRefused()  # ICMP unreachable: counted, nothing else
    assert session.refused == 1 and not stream.disconnecting
    session.connectionLost(Failure(ConnectionError("stream closed")))
    assert udp_port.stopped
    assert not reactor.getDelayedCalls()


def test_npc_session_expires_when_idle() -> None:
    """The npc side closes an idle stream too."""
    reactor = FakeReactor()
    session = serve(reactor, "127.0.0.1:9", idle=5.0)
    stream = FakeStream()
    session.makeConnection(stream)
    reactor.advance(4)
    reactor.ports[0][1].datagramReceived(b"r", ("127.0.0.1", 9))
    reactor.advance(4)
    assert not stream.disconnecting
    reactor.advance(1)
    assert stream.disconnecting


# ------------------------------------------------------------ plugin ---


def test_plugin_is_found_and_provides_the_interface() -> None:
    """The udp mode is a twisted.plugin found by load_modes and provides IProxyMode."""
    mode = load_modes()["udp"]
    assert verifyObject(IProxyMode, mode)
    assert mode.name == "udp"


def test_listen_binds_udp_with_64k_packets() -> None:
    """listen() binds the tunnel's ip:port with room for the largest datagrams."""
    reactor = FakeReactor()
    tunnel = Tunnel(id=3, client_id=1, mode="udp", server_port=5353, server_ip="127.0.0.1",
                    targets=("127.0.0.1:53",))
    ports: list[Any] = []
    UdpMode(idle_timeout=9.0).listen(reactor, tunnel, FakeOpener()).addCallback(ports.append)
    assert ports == [reactor.ports[0][0]]
    assert reactor.ports[0][2] == {"port": 5353, "interface": "127.0.0.1", "max": 65535}
    assert reactor.ports[0][1].idle_timeout == 9.0


def test_idle_timeout_from_environment() -> None:
    """NPS_UDP_IDLE_TIMEOUT overrides the idle timeout; bad values fall back to the default."""
    assert idle_timeout_from_env({}) == IDLE_TIMEOUT
    assert idle_timeout_from_env({"NPS_UDP_IDLE_TIMEOUT": "1.5"}) == 1.5
    assert idle_timeout_from_env({"NPS_UDP_IDLE_TIMEOUT": "-3"}) == IDLE_TIMEOUT
    assert idle_timeout_from_env({"NPS_UDP_IDLE_TIMEOUT": "soon"}) == IDLE_TIMEOUT
