# -*- test-case-name: test.test_e2e_p2p -*-
"""The npc side of p2p: the visitor's link to a provider, and the provider's answers.

A visitor's local connections go over one QUIC connection straight to the
provider npc when hole punching works (the "direct" path), and through the
server's secret relay otherwise (the "relayed" path); the path in use is
logged, reported to the server and shown in npc's C{/debug}.
"""
from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from nps.config import format_host_port, parse_host_port
from nps.p2p.quic import (
    ERR_REFUSED,
    QuicEndpoint,
    QuicSession,
    QuicStream,
    client_configuration,
    make_certificate,
    server_configuration,
)
from nps.p2p.rendezvous import proof
from nps.protocols.p2p import TOKEN_SIZE, Kind, P2PWireError, encode, parse
from nps.relay import Relay, RelayFactory

if TYPE_CHECKING:
    from nps.client import NpcService
    from nps.visitor import Visitor

#: IP TTL of punching probes: enough to leave our own NAT (opening its mapping towards
#: the peer), too little to reach the peer's NAT, where an unsolicited packet would
#: make a conntrack entry that clashes with the mapping the peer is about to open.
PROBE_TTL = 2
#: The visitor starts QUIC this long after both sides began probing.
CONNECT_DELAY = 1.0
#: Seconds from the server's token to a finished QUIC handshake before relaying.
PUNCH_TIMEOUT = 8.0
REGISTER_INTERVAL = 0.25
PROBE_INTERVAL = 0.2
#: A visitor pings its provider this often (QUIC idle timeout and NAT mappings).
KEEPALIVE = 10.0
#: After a failed punch, connections are relayed this long before punching again.
RETRY_DIRECT = 60.0
#: How long a provider keeps an offer's UDP port open waiting for the visitor.
OFFER_TIMEOUT = 25.0


def _listen_udp(reactor: Any, endpoint: QuicEndpoint) -> Any:
    return reactor.listenUDP(0, endpoint, interface="0.0.0.0")


def _is_probe(data: bytes, addr: tuple[str, int]) -> bool:
    """
    Take a non-QUIC datagram on a punched socket if it is one of our p2p wire
    messages (the other side's probes only open its NAT; nothing to answer).
    """
    try:
        parse(data)
    except P2PWireError:
        return False
    return True


class _Sender:
    """Sends one datagram every C{interval} seconds until stopped."""

    def __init__(self, reactor: Any, send: Callable[[], None], interval: float) -> None:
        self._loop = LoopingCall(send)
        self._loop.clock = reactor
        self._loop.start(interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()


class _Punching:
    """What both ends of a pairing keep while they punch: the datagram senders and one timer."""

    _register: _Sender | None
    _probe: _Sender | None
    _timer: IDelayedCall | None

    def _stop_punching(self) -> None:
        """Stop sending registrations and probes, and cancel the timer."""
        for sender in (self._register, self._probe):
            if sender is not None:
                sender.stop()
        self._register = self._probe = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class VisitorLink(_Punching):
    """One p2p visitor's way to its provider: direct (QUIC), relayed, or being set up."""

    log = Logger()

    def __init__(self, client: "P2PClient", visitor: "Visitor") -> None:
        self.client = client
        self.visitor = visitor
        self.reactor = client.reactor
        self.state = "idle"
        self.reason = ""
        self.peer = ""
        self.visit_id = ""
        self.retry_at = 0.0
        self.session: QuicSession | None = None
        self.direct_connections = 0
        self.relayed_connections = 0
        self._waiting: list[Relay] = []
        self._endpoint: QuicEndpoint | None = None
        self._port: Any = None
        self._register: _Sender | None = None
        self._probe: _Sender | None = None
        self._timer: IDelayedCall | None = None
        self._keepalive: LoopingCall | None = None
        self._key = b""
        self._rid = b""

    @property
    def path(self) -> str:
        return self.state

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.visitor.name, "local_port": self.visitor.local_port, "path": self.state,
                "peer": self.peer, "reason": self.reason, "direct_connections": self.direct_connections,
                "relayed_connections": self.relayed_connections}

    # -- local connections ---------------------------------------------------------

    def open(self, local: Relay) -> None:
        """Carry a new local connection over the best path we have (or will have)."""
        if self.state == "direct" and self.session is not None and self.session.active:
            self._direct(local)
        elif self.state == "relayed" and self.reactor.seconds() < self.retry_at:
            self._relay(local)
        elif self.state == "connecting":
            self._waiting.append(local)
        else:
            self._waiting.append(local)
            self._start()

    def _direct(self, local: Relay) -> None:
        assert self.session is not None
        self.direct_connections += 1
        stream = self.session.open_stream()
        stream.write(proof(self._key))
        stream.attach(RelayFactory(local).buildProtocol(None))

    def _relay(self, local: Relay) -> None:
        from nps.visitor import relay_through_server

        self.relayed_connections += 1
        relay_through_server(self.client.service, self.visitor, local, target=self.visitor.target)

    def _dispatch(self) -> None:
        waiting, self._waiting = self._waiting, []
        for local in waiting:
            if local.gone:
                continue
            if self.state == "direct":
                self._direct(local)
            elif self.state == "relayed":
                self._relay(local)
            else:
                local.transport.loseConnection()

    # -- setting up the direct path ----------------------------------------------------

    def _start(self) -> None:
        current = self.client.service.current
        mux = current.mux if current is not None else None
        if mux is None:
            self.log.warn("p2p {name}: not connected to the server; closing the local connection",
                          name=self.visitor.name)
            self.state = "idle"
            self._dispatch()
            return
        self.state = "connecting"
        self.reason = ""
        self.visit_id = secrets.token_hex(8)
        self.client.links[self.visit_id] = self
        self._timer = self.reactor.callLater(PUNCH_TIMEOUT + 4.0, self._give_up, "no answer from the server")
        mux.send_control({"type": "p2p_connect", "id": self.visit_id, "password": self.visitor.password,
                          "target": self.visitor.target})
        self.log.info("p2p {name}: asking the server to pair us with the provider", name=self.visitor.name)

    def control(self, message: dict[str, Any]) -> None:
        if self.state != "connecting":
            return
        kind = message["type"]
        if kind == "p2p_token":
            self._on_token(message)
        elif kind == "p2p_peer":
            self._on_peer(message)
        elif kind == "p2p_failed":
            if message.get("relay"):
                self._fallback(str(message.get("error", "")))
            else:
                self.log.error("p2p {name}: the server refused: {error}", name=self.visitor.name,
                               error=message.get("error"))
                self._cleanup()
                self.state = "idle"
                self.reason = str(message.get("error", ""))[:200]
                self._dispatch()

    def _on_token(self, message: dict[str, Any]) -> None:
        try:
            token = bytes.fromhex(str(message["token"]))
            host = str(message.get("udp_host") or self.client.service._server_host)
            server = (host, int(message["udp_port"]))
            if len(token) != TOKEN_SIZE:
                raise ValueError("bad token")
        except (KeyError, ValueError) as e:
            self._fallback(f"bad p2p_token message: {e}")
            return
        self._endpoint = QuicEndpoint(self.reactor, on_other=_is_probe, name=f"p2p {self.visitor.name}")
        try:
            self._port = _listen_udp(self.reactor, self._endpoint)
        except CannotListenError as e:
            self._fallback(f"cannot open a UDP port: {e}")
            return
        self._timer_reset(PUNCH_TIMEOUT, "punching timed out")
        datagram = encode(Kind.REGISTER, token)
        endpoint = self._endpoint
        self._register = _Sender(self.reactor, lambda: endpoint.send(datagram, server), REGISTER_INTERVAL)

    def _on_peer(self, message: dict[str, Any]) -> None:
        try:
            host, port = parse_host_port(str(message["peer"]))
            cert = str(message["cert"]).encode()
            self._key = bytes.fromhex(str(message["key"]))
            self._rid = bytes.fromhex(str(message["rid"]))[:TOKEN_SIZE]
        except (KeyError, ValueError) as e:
            self._fallback(f"bad p2p_peer message: {e}")
            return
        if self._endpoint is None:
            self._fallback("p2p_peer before p2p_token")
            return
        if self._register is not None:
            self._register.stop()
        peer = (host, port)
        self.peer = format_host_port(host, port)
        endpoint = self._endpoint
        probe = encode(Kind.PROBE, self._rid)
        self._probe = _Sender(self.reactor, lambda: endpoint.send(probe, peer, PROBE_TTL), PROBE_INTERVAL)
        self.log.info("p2p {name}: provider is at {peer}; punching", name=self.visitor.name, peer=self.peer)

        def connect() -> None:
            if self.state != "connecting" or self._endpoint is not endpoint:
                return
            session = endpoint.connect(peer, client_configuration(cert))
            session.handshake.addCallbacks(self._connected, lambda f: self._fallback(f.getErrorMessage()))

        self.reactor.callLater(CONNECT_DELAY, connect)

    def _connected(self, session: QuicSession) -> None:
        if self.state != "connecting":
            session.close("not needed")
            return
        self._stop_timers()
        self.session = session
        self.state = "direct"
        self.log.info("p2p {name}: direct path to the provider at {peer} (QUIC); connections no longer "
                      "pass through the server", name=self.visitor.name, peer=self.peer)
        self.client.report(self.visitor, "direct", "")
        self._keepalive = LoopingCall(session.ping)
        self._keepalive.clock = self.reactor
        self._keepalive.start(KEEPALIVE, now=False)
        session.closed.addCallback(self._lost, session)
        self._dispatch()

    def _lost(self, reason: str, session: QuicSession) -> None:
        if self.session is not session:
            return
        self.session = None
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None
        if self.state == "direct":
            self.state = "idle"
            self.reason = f"direct path closed: {reason}"
            self.log.warn("p2p {name}: the direct path closed ({reason}); the next connection punches again",
                          name=self.visitor.name, reason=reason)
        self._close_port()

    def _fallback(self, reason: str) -> None:
        if self.state != "connecting":
            return
        self.state = "relayed"
        self._cleanup()
        self.reason = reason
        self.retry_at = self.reactor.seconds() + RETRY_DIRECT
        self.log.warn("p2p {name}: no direct path ({reason}); relaying through the server",
                      name=self.visitor.name, reason=reason)
        self.client.report(self.visitor, "relayed", reason)
        self._dispatch()

    def _give_up(self, reason: str) -> None:
        self._timer = None
        self._fallback(reason)

    def _timer_reset(self, delay: float, reason: str) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, self._give_up, reason)

    def _stop_timers(self) -> None:
        self._stop_punching()
        self.client.links.pop(self.visit_id, None)

    def _cleanup(self) -> None:
        self._stop_timers()
        if self._endpoint is not None:
            for session in list(self._endpoint.sessions.values()):
                session.close("punching abandoned")
        self._close_port()

    def _close_port(self) -> None:
        if self._port is not None:
            self._port.stopListening()
        self._port = None
        self._endpoint = None

    def bridge_lost(self) -> None:
        """The bridge went down: a punch in progress cannot finish (a direct path stays up)."""
        if self.state == "connecting":
            self._fallback("the bridge to the server closed")

    def stop(self) -> None:
        self._cleanup()
        if self.session is not None:
            self.session.close("npc stopping")
        self.session = None
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self.state = "idle"


class ProviderOffer(_Punching):
    """One pairing on the provider's side: a UDP port waiting for the visitor's QUIC connection."""

    log = Logger()

    def __init__(self, client: "P2PClient", rid: str, target: str, key: bytes, remark: str) -> None:
        self.client = client
        self.reactor = client.reactor
        self.rid = rid
        self.target = target
        self.key = key
        self.remark = remark
        self.session: QuicSession | None = None
        self.endpoint: QuicEndpoint | None = None
        self._port: Any = None
        self._register: _Sender | None = None
        self._probe: _Sender | None = None
        self._timer: IDelayedCall | None = None
        self._expected = proof(key)

    def start(self, server: tuple[str, int], token: bytes) -> str:
        """Open the UDP port and register it with the server; returns an error or ""."""
        cert, key, _ = self.client.certificate()
        self.endpoint = QuicEndpoint(self.reactor, server_config=server_configuration(cert, key),
                                     on_stream=self._stream, on_other=_is_probe,
                                     on_session=self._session, max_sessions=1, name=f"p2p {self.remark}")
        try:
            self._port = _listen_udp(self.reactor, self.endpoint)
        except CannotListenError as e:
            return f"cannot open a UDP port: {e}"
        datagram = encode(Kind.REGISTER, token)
        endpoint = self.endpoint
        self._register = _Sender(self.reactor, lambda: endpoint.send(datagram, server), REGISTER_INTERVAL)
        self._timer = self.reactor.callLater(OFFER_TIMEOUT, self._expire)
        return ""

    def on_peer(self, peer: tuple[str, int]) -> None:
        if self._register is not None:
            self._register.stop()
            self._register = None
        if self.endpoint is None:
            return
        self.endpoint.accept_from = peer
        endpoint = self.endpoint
        probe = encode(Kind.PROBE, bytes.fromhex(self.rid)[:TOKEN_SIZE])
        self._probe = _Sender(self.reactor, lambda: endpoint.send(probe, peer, PROBE_TTL), PROBE_INTERVAL)
        self.log.info("p2p {remark}: visitor is at {peer}; punching", remark=self.remark,
                      peer=format_host_port(*peer))

    def _session(self, session: QuicSession) -> None:
        self.session = session
        session.handshake.addCallbacks(self._connected, lambda f: None)
        session.closed.addCallback(self._closed)

    def _connected(self, session: QuicSession) -> None:
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.log.info("p2p {remark}: direct path from the visitor at {peer} (QUIC)", remark=self.remark,
                      peer=format_host_port(*session.peer))

    def _closed(self, reason: str) -> None:
        self.log.info("p2p {remark}: direct path closed ({reason})", remark=self.remark, reason=reason)
        self.stop()

    def _expire(self) -> None:
        self._timer = None
        if self.session is None or self.session.handshake.called is False:
            self.log.warn("p2p {remark}: the visitor never connected directly (it relays)", remark=self.remark)
            self.stop()

    def _stream(self, stream: QuicStream) -> None:
        stream.attach(_Gate(self))

    def stop(self) -> None:
        self._stop_punching()
        if self.session is not None and self.session.active:
            self.session.close("closed")
        if self._port is not None:
            self._port.stopListening()
            self._port = None
        self.client.offers.pop(self.rid, None)


class _Gate(Protocol):
    """The first bytes of a direct stream: the visitor's proof; then a relay to the target."""

    transport: Any
    log = Logger()

    def __init__(self, offer: ProviderOffer) -> None:
        self.offer = offer
        self._buf = b""
        self._passed = False
        self._lost = False

    def dataReceived(self, data: bytes) -> None:
        if self._passed:
            return
        self._buf += data
        size = len(self.offer._expected)
        if len(self._buf) < size:
            return
        if not hmac.compare_digest(self._buf[:size], self.offer._expected):
            self.log.warn("p2p {remark}: a direct stream without the pairing's proof was refused",
                          remark=self.offer.remark)
            self.transport.reset(ERR_REFUSED)
            return
        self._passed = True
        rest, self._buf = self._buf[size:], b""
        self.transport.pauseProducing()
        from nps.plugins.tcp import connect_target

        stream: QuicStream = self.transport
        d = connect_target(self.offer.reactor, self.offer.target)

        def connected(relay: Any) -> None:
            if self._lost:
                relay.transport.loseConnection()
                return
            stream.unread(rest)
            stream.attach(relay)

        def failed(failure: Failure) -> None:
            self.log.info("p2p {remark}: cannot reach {target}: {error}", remark=self.offer.remark,
                          target=self.offer.target, error=failure.getErrorMessage())
            if not self._lost:
                stream.reset(ERR_REFUSED)

        d.addCallbacks(connected, failed)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True


class P2PClient:
    """npc's p2p state: visitor links (by visitor) and provider offers (by pairing id)."""

    log = Logger()

    def __init__(self, service: "NpcService") -> None:
        self.service = service
        self.reactor = service.reactor
        self._links: dict[tuple[str, int], VisitorLink] = {}
        #: visit id -> link, while the link waits for the server.
        self.links: dict[str, VisitorLink] = {}
        self.offers: dict[str, ProviderOffer] = {}
        self._certificate: tuple[Any, Any, bytes] | None = None

    def certificate(self) -> tuple[Any, Any, bytes]:
        """This npc's self-signed QUIC certificate (made on first use; visitors pin it)."""
        if self._certificate is None:
            self._certificate = make_certificate()
        return self._certificate

    def link_for(self, visitor: "Visitor") -> VisitorLink:
        key = (visitor.local_ip, visitor.local_port)
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = VisitorLink(self, visitor)
        return link

    def snapshot(self) -> list[dict[str, Any]]:
        return [link.snapshot() for link in self._links.values()]

    def report(self, visitor: "Visitor", path: str, reason: str) -> None:
        current = self.service.current
        if current is not None and current.mux is not None:
            current.mux.send_control({"type": "p2p_path", "password": visitor.password, "path": path,
                                      "reason": reason[:200]})

    def control(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        visit_id = message.get("id")
        if kind in ("p2p_token", "p2p_failed") or (kind == "p2p_peer" and visit_id is not None):
            link = self.links.get(str(visit_id))
            if link is not None:
                link.control(message)
        elif kind == "p2p_offer":
            self._offer(message)
        elif kind == "p2p_peer":
            offer = self.offers.get(str(message.get("rid")))
            if offer is not None:
                try:
                    offer.on_peer(parse_host_port(str(message.get("peer"))))
                except ValueError:
                    offer.stop()
        elif kind == "p2p_cancel":
            offer = self.offers.get(str(message.get("rid")))
            if offer is not None:
                offer.stop()

    def _offer(self, message: dict[str, Any]) -> None:
        current = self.service.current
        mux = current.mux if current is not None else None
        rid = str(message.get("rid", ""))
        if mux is None or not rid or rid in self.offers:
            return
        try:
            token = bytes.fromhex(str(message["token"]))
            key = bytes.fromhex(str(message["key"]))
            target = str(message["target"])
            parse_host_port(target)
            host = str(message.get("udp_host") or self.service._server_host)
            server = (host, int(message["udp_port"]))
            if len(token) != TOKEN_SIZE or len(key) < 16:
                raise ValueError("bad token or key")
        except (KeyError, ValueError) as e:
            mux.send_control({"type": "p2p_decline", "rid": rid, "error": f"bad p2p_offer: {e}"})
            return
        refusal = self._refusal(target)
        if refusal:
            self.log.warn("p2p: declining a pairing: {reason}", reason=refusal)
            mux.send_control({"type": "p2p_decline", "rid": rid, "error": refusal})
            return
        offer = ProviderOffer(self, rid, target, key, str(message.get("remark", "p2p"))[:128])
        error = offer.start(server, token)
        if error:
            mux.send_control({"type": "p2p_decline", "rid": rid, "error": error})
            return
        self.offers[rid] = offer
        mux.send_control({"type": "p2p_accept", "rid": rid, "cert": self.certificate()[2].decode()})

    def _refusal(self, target: str) -> str:
        """With an npc.conf, only the targets of its own p2p tunnels are served."""
        tunnels = self.service.tunnels
        if not tunnels:
            return ""
        allowed = {t for tunnel in tunnels if tunnel.mode == "p2p" for t in tunnel.targets}
        return "" if target in allowed else f"target {target} is not a p2p target in this npc's config"

    def bridge_lost(self) -> None:
        for link in list(self._links.values()):
            link.bridge_lost()

    def stop(self) -> None:
        for link in list(self._links.values()):
            link.stop()
        for offer in list(self.offers.values()):
            offer.stop()
