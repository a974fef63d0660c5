# -*- test-case-name: test.test_client -*-
"""The npc client: keeps one bridge session up and serves the streams on it."""
from __future__ import annotations

import os
import random
from typing import Any, Callable, Sequence

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from nps.connect import connect_tcp
from nps.bridge.client import BridgeClientFactory, BridgeClientProtocol, BridgeRefused
from nps.debug import attach_client_debug
from nps.fatalstop import FatalStopService
from nps.metrics import ClientStats
from nps.config import HealthSection
from nps.health import HealthChecker
from nps.model import Host, Tunnel, describe_link
from nps.mux import MuxStream
from nps.streamcodec import CodecError, CodecProtocol, codec_for
from nps.bridge.quic_transport import QuicBridgeClient
from nps.tlsbridge import TlsClient
from nps.p2p.peer import P2PClient
from nps.visitor import Visitor, listen_visitor

PING_INTERVAL = 5.0
CONNECT_TIMEOUT = 10.0

#: Called with (exit code, message) when npc must stop for good.
FatalHandler = Callable[[int, str], None]


class NpcService(FatalStopService):
    """Connect to C{server}, authenticate with C{vkey}, register C{tunnels}, serve streams."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        server_host: str,
        server_port: int,
        vkey: str,
        modes: dict[str, Any],
        *,
        tunnels: Sequence[Tunnel] = (),
        remark: str = "",
        auto_reconnect: bool = True,
        disconnect_timeout: int = 60,
        on_fatal: FatalHandler | None = None,
        max_retry_delay: float = 30.0,
        debug_addr: str = "",
        reload_tunnels: Callable[[], Sequence[Tunnel]] | None = None,
        visitors: Sequence[Visitor] = (),
        hosts: Sequence[Host] = (),
        health: Sequence[HealthSection] = (),
        crypt: bool = False,
        compress: bool = False,
        tls: TlsClient | QuicBridgeClient | None = None,
        limits: dict[str, int] | None = None,
        web_login: tuple[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.server = f"{server_host}:{server_port}"
        self.vkey = vkey
        self.modes = modes
        self.tunnels = list(tunnels)
        #: npc.conf domain sections, routed by the server's vhost listeners.
        self.hosts = list(hosts)
        #: Re-reads the domain sections on reload (set by nps.tap.client for npc.conf mode).
        self.reload_hosts: Callable[[], Sequence[Host]] | None = None
        #: npc.conf [health...] sections: checked here, reported to the server (nps.health).
        self.health_checkers = [HealthChecker(reactor, section, self._health_changed) for section in health]
        for checker in self.health_checkers:
            checker.setServiceParent(self)
        self.remark = remark
        #: npc.conf [common] crypt/compress: ask the server to encrypt/compress every stream.
        self.crypt = crypt
        self.compress = compress
        #: conn_type=tls: how to dial the bridge (nps.tlsbridge); None for plain TCP.
        self.tls = tls
        self.auto_reconnect = auto_reconnect
        self.idle_timeout = max(disconnect_timeout, 1) * PING_INTERVAL
        self._on_fatal = on_fatal
        self._reload_tunnels = reload_tunnels
        self.visitors = list(visitors)
        #: npc.conf [common] rate_limit/flow_limit/max_conn: limits this npc asks the server to apply to it.
        self.limits = dict(limits or {})
        #: npc.conf [common] web_username/web_password: this client's own login to the web admin.
        self.web_login = web_login
        self._visitor_ports: list[Any] = []
        self.connected_once = False
        self.current: BridgeClientProtocol | None = None
        self._pending_fatal: tuple[int, str] | None = None
        self._server_host = server_host
        self._server_port = server_port
        self._factory = BridgeClientFactory(self, reactor)
        self._retry_delay = backoffPolicy(initialDelay=0.5, maxDelay=max_retry_delay, factor=2.0,
                                          jitter=random.random)
        self._failures = 0
        self._attempt: Deferred[Any] | None = None
        self._retry_call: IDelayedCall | None = None
        # Prometheus metrics and the pprof_addr debug listener (nps.metrics, nps.debug).
        self.stats = ClientStats(self)
        #: p2p visitor links and provider offers (nps.p2p.peer).
        self.p2p = P2PClient(self)
        attach_client_debug(self, debug_addr)

    # -- connection loop ---------------------------------------------------------
    # Our own loop rather than ClientService: ClientService raises NoTransition when a
    # connection rejected by prepareConnection later closes (Twisted 24-26).

    def privilegedStartService(self) -> None:
        """Open the visitors' local ports now, so a taken port stops start-up with an error."""
        for visitor in self.visitors:
            self._visitor_ports.append(listen_visitor(self.reactor, self, visitor))
            self.log.info("{kind} {name}: local port {ip}:{port} -> {how} (by password)", kind=visitor.kind,
                          name=visitor.name, ip=visitor.local_ip, port=visitor.local_port,
                          how="provider npc (direct if punching works, else via server)"
                          if visitor.kind == "p2p" else "server")
        super().privilegedStartService()

    def startService(self) -> None:
        self.log.info("npc connecting to {server}", server=self.server)
        super().startService()
        self._connect()

    def stopService(self) -> Any:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        if self._attempt is not None:
            self._attempt.cancel()
        if self.current is not None:
            self.current.transport.loseConnection()
        self.p2p.stop()
        for port in self._visitor_ports:
            port.stopListening()
        self._visitor_ports.clear()
        return super().stopService()

    def _connect(self) -> None:
        self._retry_call = None
        if not self.running:
            return
        if self.tls is not None:
            d = self.tls.connect(self.reactor, self._server_host, self._server_port, self._factory,
                                 CONNECT_TIMEOUT)
        else:
            d = connect_tcp(self.reactor, self._server_host, self._server_port, self._factory,
                            timeout=CONNECT_TIMEOUT)
        self._attempt = d

        def connected(protocol: BridgeClientProtocol) -> Any:
            self._attempt = None
            return protocol.ready.addCallbacks(self._connected, self._refused)

        def unreachable(failure: Failure) -> None:
            self._attempt = None
            mismatch = self.tls.take_mismatch() if self.tls is not None else None
            if mismatch is not None:  # the UDP bridge checks its certificate before the bridge protocol runs
                self.log.critical("{message}", message=mismatch)
                self._fatal(1, f"refusing the server's certificate: {mismatch}")
                return
            if self.running:
                self.log.warn("cannot reach server {server}: {message}", server=self.server,
                              message=failure.getErrorMessage())
                self._schedule_retry()

        d.addCallbacks(connected, unreachable)
        d.addErrback(lambda f: None)

    def _schedule_retry(self) -> None:
        if not self.running or self._retry_call is not None or self._pending_fatal is not None:
            return
        self._failures += 1
        delay = self._retry_delay(self._failures)
        self.log.info("retrying {server} in {delay:.1f}s", server=self.server, delay=delay)
        self._retry_call = self.reactor.callLater(delay, self._connect)

    def _connected(self, protocol: BridgeClientProtocol) -> BridgeClientProtocol:
        if self.connected_once:
            self.stats.reconnected()
        self.connected_once = True
        self._failures = 0
        if self.tls is not None:
            self.tls.authenticated()  # the server proved the vkey: pin its certificate on first use
        self.current = protocol
        welcome = protocol.welcome
        self.log.info("connected to server {server} as client {id} (server {version})",
                      server=self.server, id=welcome.get("client_id"), version=welcome.get("server_version"))
        if (self.tunnels or self.hosts or self.web_login) and protocol.mux is not None:
            protocol.mux.send_control(self._register_message())
        if protocol.mux is not None:
            for checker in self.health_checkers:
                for target in sorted(checker.down):
                    protocol.mux.send_control({"type": "health", "target": target, "up": False})
        return protocol

    def _health_changed(self, target: str, up: bool) -> None:
        """A health check changed state: tell the server (it moves the target in or out of rotation)."""
        if self.current is not None and self.current.mux is not None:
            self.current.mux.send_control({"type": "health", "target": target, "up": up})

    def _register_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "register", "tunnels": [t.to_wire() for t in self.tunnels]}
        if self.hosts:
            message["hosts"] = [h.to_wire() for h in self.hosts]
        if self.limits:
            message["limits"] = self.limits
        if self.web_login is not None:
            message["web_login"] = {"username": self.web_login[0], "password": self.web_login[1]}
        return message

    def _refused(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, BridgeRefused):
            message = str(error)
            mismatch = self.tls.take_mismatch() if self.tls is not None else None
            if mismatch is not None:
                self.log.critical("{message}", message=mismatch)
                self._pending_fatal = (1, f"refusing the server's TLS certificate: {mismatch}")
                return None
            self.log.error("server {server} refused the connection: {message}", server=self.server, message=message)
            if not self.connected_once and ("refused us" in message or "protocol version" in message
                                            or "prove" in message):
                # Stop once this connection has closed (see bridge_closed).
                self._pending_fatal = (1, f"cannot log in to {self.server}: {message}")
        return None

    def bridge_closed(self, protocol: BridgeClientProtocol) -> None:
        """Any bridge connection ended (before or after its handshake)."""
        if self._pending_fatal is not None:
            code, message = self._pending_fatal
            self._pending_fatal = None
            self._fatal(code, message)
        elif self.current is None or self.current is protocol:
            self.current = None
            self._schedule_retry()

    def session_lost(self, protocol: BridgeClientProtocol, reason: str) -> None:
        self.p2p.bridge_lost()
        if self.current is protocol:
            self.current = None
        self.log.warn("disconnected from server {server}: {reason}", server=self.server, reason=reason)
        if "replaced by a newer connection" in reason:
            self._pending_fatal = (1, f"another npc logged in with the same vkey; stopping ({reason})")
        elif not self.auto_reconnect:
            self._pending_fatal = (1, "connection lost and auto_reconnection=false; stopping")

    def reload(self) -> None:
        """Re-read npc.conf (SIGHUP): the server opens new tunnels, closes removed ones, keeps the rest."""
        if self._reload_tunnels is None:
            self.log.info("reload: no npc.conf to re-read (tunnels are defined on the server)")
            return
        try:
            tunnels = self._reload_tunnels()
        except Exception as e:  # ConfigError and friends: keep what runs
            self.log.error("reload: keeping the running tunnels: {error}", error=str(e))
            return
        self.tunnels = list(tunnels)
        if self.reload_hosts is not None:
            try:
                self.hosts = list(self.reload_hosts())
            except Exception as e:  # ConfigError: keep the running domains
                self.log.error("reload: keeping the running domains: {error}", error=str(e))
        self.log.info("reload: npc.conf has {n} tunnels", n=len(self.tunnels))
        if self.current is not None and self.current.mux is not None:
            self.current.mux.send_control(self._register_message())

    # -- what the server sends ---------------------------------------------------

    def control_received(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "registered":
            results = message.get("results")
            if not isinstance(results, list):
                return
            for result in results:
                if not isinstance(result, dict):
                    continue
                if result.get("ok"):
                    self.log.info("tunnel {remark} is open on the server", remark=result.get("remark"))
                else:
                    self.log.error("tunnel {remark} refused by the server: {error}",
                                   remark=result.get("remark"), error=result.get("error"))
        elif kind.startswith("p2p_"):
            self.p2p.control(message)
        elif kind == "goaway":
            self.log.warn("server is closing the session: {reason}", reason=message.get("reason"))

    def _local_refusal(self, link: dict[str, Any]) -> str:
        """Why this npc will not serve C{link} whatever the server says (empty: it will).

        With an npc.conf, the directories npc shares are the C{local_path}s
        of its own file tunnels, so a server cannot make it serve another
        one.  Without one (tunnels defined on the server, as in NPS) the
        authenticated server decides.
        """
        if link.get("mode") != "file" or not self.tunnels:
            return ""
        own = {os.path.realpath(t.local_path) for t in self.tunnels if t.mode == "file" and t.local_path}
        asked = os.path.realpath(str(link.get("local_path", "")))
        if asked not in own:
            return f"local_path {link.get('local_path')!r} is not a file tunnel in this npc's config"
        return ""

    def stream_opened(self, stream: MuxStream) -> None:
        link = stream.link
        mux = stream.mux
        mode = self.modes.get(str(link.get("mode", "")))
        if mode is None:
            mux.refuse_stream(stream, f"mode {link.get('mode')!r} is not supported by this npc")
            return
        refusal = self._local_refusal(link)
        if refusal:
            self.log.warn("refusing a stream the server asked for: {reason}", reason=refusal)
            mux.refuse_stream(stream, refusal)
            return
        bridge = self.current if self.current is not None and self.current.mux is mux else None
        refusal = _crypt_refusal(link, bridge)
        if refusal:
            self.log.warn("refusing a stream the server asked for: {reason}", reason=refusal)
            mux.refuse_stream(stream, refusal)
            return
        try:
            codec = codec_for(link, bridge.secret if bridge is not None else None, opener=False)
        except CodecError as e:
            self.log.warn("refusing a stream the server asked for: {reason}", reason=str(e))
            mux.refuse_stream(stream, str(e))
            return
        d = mode.serve(self.reactor, link)

        def accepted(protocol: Any) -> None:
            if codec is not None:
                protocol = CodecProtocol(protocol, codec, f"stream {stream.stream_id}")
            mux.accept_stream(stream, protocol)

        def refused(failure: Failure) -> None:
            reason = failure.getErrorMessage()
            self.log.info("stream to {target} for {remote} refused: {reason}", target=describe_link(link),
                          remote=link.get("remote"), reason=reason)
            mux.refuse_stream(stream, reason)

        d.addCallbacks(accepted, refused)


def _crypt_refusal(link: dict[str, Any], bridge: BridgeClientProtocol | None) -> str:
    """Why a stream must be refused for its crypt/compress settings (empty: serve it).

    When the session is encrypted (the server's authenticated welcome says
    C{crypt}), a stream without crypt is refused: its bytes would cross
    the bridge in the clear.
    """
    if bridge is None:
        return "stream of an old bridge session"
    if bridge.welcome.get("crypt") is True and link.get("crypt") is not True:
        return "this session's streams must be encrypted (crypt) but the stream is not"
    if link.get("crypt") is True and bridge.secret is None:
        return "the stream asks for crypt but this bridge session has no key exchange"
    return ""
