# -*- test-case-name: test.test_e2e_quic_bridge -*-
"""The UDP bridge transport: the bridge protocol on one QUIC stream.

C{bridge_type=kcp} (NPS's name) or C{bridge_type=quic} in nps.conf adds a
UDP listener on C{bridge_port}'s number beside the TCP one; npc C{-type=kcp}
/ C{-type=quic} (C{conn_type=} in npc.conf) dials it.  It is QUIC (aioquic,
driven by L{nps.p2p.quic}), not KCP: same purpose as NPS's KCP bridge, a
bridge that keeps going over lossy links, but the Go npc's KCP is not spoken.

Each npc opens one QUIC connection and one bidirectional stream on it; the
stream carries exactly what a TCP bridge connection carries (our handshake,
then the mux), so the server runs L{BridgeServerFactory}'s protocol on it
and npc runs L{BridgeClientFactory}'s.

Certificates: the server shows the TLS bridge's certificate (C{tls_cert_file}
/ C{tls_key_file}, else the self-signed one in C{DATA_DIR/bridge_tls/},
L{nps.tlsbridge}).  The bridge handshake authenticates both ends with the
vkey whatever the certificate, and on top npc checks the certificate like
C{-type=tls} does: against C{-tls_ca} when given, else pinned on first use
in the known-servers file (the same entry as the TLS bridge on that port).
"""
from __future__ import annotations

import ssl
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives import serialization
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import CannotListenError, ConnectError, TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from nps.p2p.quic import (
    CONNECTION_WINDOW,
    DATAGRAM_SIZE,
    ERR_REFUSED,
    STREAM_WINDOW,
    QuicEndpoint,
    QuicSession,
    QuicStream,
)
from nps.tlsbridge import KnownServers, TlsSetupError, default_known_servers, fingerprint, server_cert_files

log = Logger()

#: Bridge transports that mean "the UDP (QUIC) bridge".
UDP_TYPES = ("kcp", "quic")
ALPN = "nps-bridge/1"
#: QUIC connections the server holds at once (handshaking ones included).
MAX_SESSIONS = 1024
#: Seconds a new QUIC connection has to open its bridge stream.
STREAM_DEADLINE = 10.0
#: A peer silent this long is gone (the mux pings every 5 s).
IDLE_TIMEOUT = 30.0
#: Seconds a closing connection waits for its last bytes to be acknowledged.
FLUSH_GRACE = 3.0
FLUSH_POLL = 0.05


def _configuration(is_client: bool) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        idle_timeout=IDLE_TIMEOUT,
        max_data=CONNECTION_WINDOW,
        max_stream_data=STREAM_WINDOW,
        max_datagram_size=DATAGRAM_SIZE,
        congestion_control_algorithm="cubic",
    )


def _flushed(session: QuicSession) -> bool:
    """Nothing of ours waits to be sent or acknowledged on C{session}."""
    conn = session.conn
    for stream in conn._streams.values():
        sender = stream.sender
        if sender._buffer_stop > sender._buffer_start or (sender._buffer_fin is not None and not sender.is_finished):
            return False
    return True


def close_when_flushed(session: QuicSession, reason: str, grace: float = FLUSH_GRACE) -> Deferred[None]:
    """Close C{session} once what was written is acknowledged (or after C{grace} seconds)."""
    reactor = session.reactor
    deadline = reactor.seconds() + grace
    done: Deferred[None] = Deferred()

    def check() -> None:
        if session.active and not _flushed(session) and reactor.seconds() < deadline:
            reactor.callLater(FLUSH_POLL, check)
            return
        if session.active:
            session.close(reason)
        done.callback(None)

    check()
    return done


# -- server ------------------------------------------------------------------------------


class QuicBridgeListener:
    """The UDP bridge port of nps: QUIC connections whose first stream is a bridge connection."""

    def __init__(self, reactor: Any, factory: Any, config: Any) -> None:
        self.reactor = reactor
        self.factory = factory
        self.config = config
        self.port: Any = None
        self.endpoint: QuicEndpoint | None = None
        self._deadlines: dict[QuicSession, IDelayedCall] = {}
        self._bridges: dict[QuicSession, QuicStream] = {}

    def listen(self) -> Any:
        """Bind UDP C{bridge_port} on C{bridge_ip}.

        @raise SystemExit: the port is taken or the certificate cannot be made or read.
        """
        config = self.config
        try:
            cert_file, key_file = server_cert_files(config)
            quic = _configuration(is_client=False)
            quic.load_cert_chain(cert_file, key_file)
        except (TlsSetupError, OSError, ValueError) as e:
            raise SystemExit(f"nps: UDP (QUIC) bridge certificate: {e}") from None
        self.endpoint = QuicEndpoint(self.reactor, server_config=quic, on_stream=self._stream,
                                     on_session=self._session, max_sessions=MAX_SESSIONS, name="bridge")
        self.endpoint.noisy = False
        try:
            self.port = self.reactor.listenUDP(config.bridge_port, self.endpoint, interface=config.bridge_ip)
        except CannotListenError as e:
            raise SystemExit(f"nps: cannot listen on UDP bridge {config.bridge_ip}:{config.bridge_port}: "
                             f"{e.socketError}") from None
        address = self.port.getHost()
        der = quic.certificate.public_bytes(serialization.Encoding.DER) if quic.certificate else b""
        log.info("bridge (UDP, QUIC; bridge_type={kind}) listening on {host}:{port}, certificate {fp}",
                 kind=config.bridge_type, host=address.host, port=address.port, fp=fingerprint(der))
        return self.port

    @property
    def address(self) -> Any:
        return self.port.getHost()

    def _session(self, session: QuicSession) -> None:
        self._deadlines[session] = self.reactor.callLater(STREAM_DEADLINE, self._no_stream, session)
        session.closed.addBoth(lambda _: self._forget(session))

    def _no_stream(self, session: QuicSession) -> None:
        self._deadlines.pop(session, None)
        if session not in self._bridges and session.active:
            log.warn("bridge (UDP): {peer} opened no bridge stream in {t:.0f}s; closing",
                     peer=_peer_text(session), t=STREAM_DEADLINE)
            self.factory.server.stats.handshake_failed("timeout")
            session.close("no bridge stream")

    def _forget(self, session: QuicSession) -> None:
        call = self._deadlines.pop(session, None)
        if call is not None and call.active():
            call.cancel()
        self._bridges.pop(session, None)

    def _stream(self, stream: QuicStream) -> None:
        session = stream.session
        if session in self._bridges or self.port is None:
            stream.reset(ERR_REFUSED)  # one bridge per QUIC connection
            return
        self._bridges[session] = stream
        call = self._deadlines.pop(session, None)
        if call is not None and call.active():
            call.cancel()
        stream.on_close = lambda s, reason: self._bridge_closed(session)
        protocol = self.factory.buildProtocol(stream.getPeer())
        stream.attach(protocol)

    def _bridge_closed(self, session: QuicSession) -> None:
        if session.active:
            close_when_flushed(session, "bridge closed")

    def stop_accepting(self) -> None:
        """Take no new QUIC connections (existing ones go on until L{close})."""
        if self.endpoint is not None:
            self.endpoint.server_config = None

    def close(self) -> Deferred[None]:
        """Let written bytes (the server's goodbye) reach the clients, then close everything."""
        endpoint, port = self.endpoint, self.port
        self.port = None
        if endpoint is None:
            return succeed(None)
        endpoint.server_config = None
        waits = [close_when_flushed(session, "server shutting down")
                 for session in list(endpoint.sessions.values())]
        def stop(_: Any) -> Any:
            for call in self._deadlines.values():
                if call.active():
                    call.cancel()
            self._deadlines.clear()
            return port.stopListening() if port is not None else None

        return gatherResults(waits).addCallback(stop)


def listen_udp_bridge(reactor: Any, config: Any, factory: Any) -> QuicBridgeListener | None:
    """The UDP bridge listener when C{bridge_type} is C{kcp} or C{quic}, else None.

    @raise SystemExit: the port is taken or the certificate cannot be loaded.
    """
    if config.bridge_type not in UDP_TYPES:
        return None
    listener = QuicBridgeListener(reactor, factory, config)
    listener.listen()
    return listener


def _peer_text(session: QuicSession) -> str:
    host, port = session.peer
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- client ------------------------------------------------------------------------------


class CertificateMismatch(ConnectError):
    """The server's QUIC certificate is not the pinned one (or fails C{-tls_ca})."""


class QuicBridgeClient:
    """How npc dials the UDP bridge: a QUIC connection, one stream, the bridge protocol on it.

    Same interface as L{nps.tlsbridge.TlsClient} (C{connect}, C{authenticated},
    C{take_mismatch}), so L{nps.client.NpcService} uses either.
    """

    def __init__(self, host: str, port: int, *, ca_file: str = "", server_name: str = "",
                 known_servers: str = "") -> None:
        self.server = f"{host}:{port}"
        self.ca_file = ca_file
        self.server_name = server_name or host
        self.known = None if ca_file else KnownServers(known_servers or default_known_servers())
        self.seen: str | None = None
        self.mismatch: str | None = None
        self._session: QuicSession | None = None

    def _config(self) -> QuicConfiguration:
        config = _configuration(is_client=True)
        if self.ca_file:
            config.load_verify_locations(cafile=self.ca_file)
            config.server_name = self.server_name
        else:
            config.verify_mode = ssl.CERT_NONE  # pinned by fingerprint below; the vkey proves the server
            config.server_name = self.server_name if not _is_ip(self.server_name) else None
        return config

    def connect(self, reactor: Any, host: str, port: int, factory: Any, timeout: float) -> Deferred[Any]:
        """Fire with the bridge protocol, its stream open, once QUIC's handshake is done."""
        if _is_ip(host):
            resolved: Deferred[str] = Deferred()
            resolved.callback(host)
        else:
            resolved = reactor.resolve(host)
        return resolved.addCallback(lambda ip: self._dial(reactor, ip, port, factory, timeout))

    def _dial(self, reactor: Any, ip: str, port: int, factory: Any, timeout: float) -> Deferred[Any]:
        endpoint = QuicEndpoint(reactor, name="bridge")
        endpoint.noisy = False
        udp = reactor.listenUDP(0, endpoint, interface="::" if isIPv6Address(ip) else "0.0.0.0")
        try:
            session = endpoint.connect((ip, port), self._config())
        except Exception:
            udp.stopListening()
            raise
        self._session = session
        session.closed.addBoth(lambda _: udp.stopListening())
        result: Deferred[Any] = Deferred()

        def expired() -> None:
            if not result.called:
                session.close("handshake timeout")
                result.errback(ConnectTimeout(string=f"no QUIC answer from {self.server} in {timeout:.0f}s"))

        timer = reactor.callLater(timeout, expired)

        def ready(_: Any) -> None:
            if timer.active():
                timer.cancel()
            if result.called:
                return
            problem = self._check(session)
            if problem is not None:
                self.mismatch = problem
                session.close("certificate refused")
                result.errback(CertificateMismatch(string=problem))
                return
            stream = session.open_stream()
            stream.on_close = lambda s, reason: self._bridge_closed(session)
            protocol = factory.buildProtocol(stream.getPeer())
            stream.attach(protocol)
            result.callback(protocol)

        def failed(failure: Failure) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                result.errback(ConnectError(string=f"QUIC to {self.server}: {failure.getErrorMessage()}"))

        session.handshake.addCallbacks(ready, failed)
        return result

    def _check(self, session: QuicSession) -> str | None:
        """Why the server's certificate is refused, or None (unpinned, pinned, or CA-checked)."""
        cert = getattr(session.conn.tls, "_peer_certificate", None)
        if cert is None:
            return f"the server {self.server} showed no certificate"
        self.seen = fingerprint(cert.public_bytes(serialization.Encoding.DER))
        if self.known is None:
            return None  # aioquic checked it against -tls_ca
        try:
            pinned = self.known.lookup(self.server)
        except Exception as e:
            return str(e)
        if pinned is None or pinned[0] == self.seen:
            return None
        return (f"the server {self.server} presented certificate {self.seen} on the UDP bridge, but "
                f"{self.known.path} line {pinned[1]} pins {pinned[0]}: someone may be intercepting the "
                f"connection. If the server's certificate was changed on purpose, delete that line from "
                f"{self.known.path} and start npc again")

    @staticmethod
    def _bridge_closed(session: QuicSession) -> None:
        if session.active:
            close_when_flushed(session, "bridge closed")

    def authenticated(self) -> None:
        """The server proved the vkey: pin its certificate if nothing is pinned for it yet."""
        if self.known is None or self.seen is None or self.known.lookup(self.server) is not None:
            return
        try:
            self.known.add(self.server, self.seen)
        except OSError as e:
            log.warn("bridge (UDP): cannot record {server} in {path}: {error}", server=self.server,
                     path=self.known.path, error=str(e))
            return
        log.info("bridge (UDP): trusting {server} certificate {fp} from now on (pinned in {path})",
                 server=self.server, fp=self.seen, path=self.known.path)

    def take_mismatch(self) -> str | None:
        """A refused certificate seen since the last call (npc must stop), else None."""
        message, self.mismatch = self.mismatch, None
        return message


def _is_ip(host: str) -> bool:
    return bool(isIPAddress(host) or isIPv6Address(host))


def client_udp(host: str, port: int, common: Any) -> QuicBridgeClient | None:
    """The UDP bridge dialer for npc when C{conn_type} is C{kcp} or C{quic}, else None."""
    if common.conn_type not in UDP_TYPES:
        return None
    return QuicBridgeClient(host, port, ca_file=common.tls_ca, server_name=common.tls_server_name,
                            known_servers=common.tls_known_servers)
