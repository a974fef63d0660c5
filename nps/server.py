# -*- test-case-name: test.test_server -*-
"""The nps server: client sessions, tunnels and their public listeners."""
from __future__ import annotations

import hashlib
import itertools
import time
from typing import Any, Callable

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import implementer

from nps import __version__
from nps.admin import passwords
from nps.access import DENY_OPTION, SourcePolicy, SourceRefused, host_of, normalize_ip, parse_deny_list
from nps.accounts import ACCOUNTS_OPTION, accounts_for, format_accounts
from nps.bridge.server import BridgeServerFactory, BridgeServerProtocol, SessionRejected
from nps.config import ConfigError, ServerConfig, load_server_config, port_allowed
from nps.debug import attach_server_debug
from nps.metrics import ServerStats
from nps.model import ClientRecord, Tunnel, describe_link
from nps.mux import StreamRefused
from nps.relay import Relay, RelayFactory
from nps.protocols.frames import GoAwayCode
from nps.protocols.handshake import key_id
from nps.ratelimit import LimitedStream, RateLimiter
from nps.stats import TrafficCounter
from nps.streamcodec import CodecError, session_link, wrap_protocol
from nps.bridge.quic_transport import listen_udp_bridge
from nps.tlsbridge import listen_extra_tls, tls_factory
from nps.store import AsyncStore, Snapshot, Store
from nps.vhost.service import VhostService

PING_INTERVAL = 5.0
STORE_POLL_INTERVAL = 1.0
DRAIN_TIMEOUT = 10.0
MAX_CONFIG_TUNNELS = 256


class ClientOffline(Exception):
    """The tunnel's client has no bridge session right now."""


class LimitReached(Exception):
    """A limit of the tunnel's client (max_conn, flow_limit) refuses a new connection."""


#: The limits an npc may set for itself in its npc.conf [common] (they can only lower the server's).
SELF_LIMITS = ("rate_limit", "flow_limit", "max_conn")
#: Longest C{npc register -time} (hours).
MAX_REGISTER_HOURS = 24 * 366
#: Seconds between reloads of the registered addresses (another process may add some).
REGISTERED_IPS_POLL = 5.0
#: Seconds an C{npc register} connection may stay.
REGISTER_SESSION_TIMEOUT = 15.0


@attrs.define(eq=False)
class ClientSession:
    """One authenticated npc connection."""

    client_id: int
    remark: str
    protocol: BridgeServerProtocol
    remote: str
    version: str
    public: bool
    config_tunnels: list[int] = attrs.field(factory=list)
    started: float = attrs.field(factory=time.time)
    #: This session's streams are encrypted / compressed (nps.streamcodec).
    crypt: bool = False
    compress: bool = False
    #: Limits the npc set for itself (npc.conf [common] rate_limit/flow_limit/max_conn).
    self_limits: dict[str, int] = attrs.field(factory=dict)
    #: An C{npc register} connection: it registers its address and leaves, it serves no tunnels.
    register_only: bool = False

    @property
    def mux(self) -> Any:
        return self.protocol.mux


@attrs.define(eq=False)
class RunningTunnel:
    tunnel: Tunnel
    port: Any = None
    counter: TrafficCounter = attrs.field(factory=TrafficCounter)


@implementer(IStreamClientEndpoint)
class StreamEndpoint:
    """Opens a mux stream with C{link} to whichever session C{client_id} has now."""

    def __init__(self, server: "NpsServer", client_id: int, link: dict[str, Any], counters: list[Any]) -> None:
        self._server = server
        self._client_id = client_id
        self._link = link
        self._counters = counters

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        """Open the stream and attach the protocol at once (it may write before npc answers)."""
        session = self._server.sessions.get(self._client_id)
        if session is None or session.mux is None:
            return fail(ClientOffline(f"client {self._client_id} is offline"))
        refusal = self._server.source_allowed(self._client_id, self._link.get("tunnel"),
                                              host_of(str(self._link.get("remote", ""))))
        if refusal:
            return fail(SourceRefused(refusal))
        limit = self._server.limit_reached(self._client_id)
        if limit:
            self._server.log.info("client {client}: refusing {remote}: {limit}", client=self._client_id,
                                  remote=self._link.get("remote"), limit=limit)
            return fail(LimitReached(limit))
        self._link = session_link(session, self._server.tunnels.get(int(self._link.get("tunnel", 0))), self._link)
        try:
            stream = session.mux.start_stream(self._link)
        except StreamRefused as e:
            return fail(e)
        for counter in self._counters:
            counter.connections += 1
            counter.open += 1
        own = TrafficCounter(connections=1)
        stream.counters.extend(self._counters)
        stream.counters.append(own)
        access = AccessLog(self._client_id, self._link, own, self._server.reactor.seconds())
        counters = self._counters

        def closed(stream: Any, reason: Any) -> None:
            for counter in counters:
                counter.open -= 1
            access.closed(stream, reason)

        stream.on_close = closed
        protocol = protocolFactory.buildProtocol(stream.getPeer())
        if protocol is None:
            stream.reset("refused locally")
            return fail(ConnectionRefusedError("factory refused the stream"))
        user = protocol
        try:
            protocol = wrap_protocol(protocol, self._link, session.protocol.stream_secret, opener=True,
                                     name=f"client {self._client_id} stream {stream.stream_id}")
        except CodecError as e:
            stream.reset(str(e))
            return fail(e)
        assert stream.opened is not None
        stream.opened.addErrback(self._refused)
        stream.attach(self._server.limited(self._client_id, protocol))
        return succeed(user)

    def _refused(self, failure: Any) -> None:
        link = self._link
        self._server.log.info("client {client}: stream to {target} for {remote} refused: {reason}",
                              client=self._client_id, target=describe_link(link), remote=link.get("remote"),
                              reason=failure.getErrorMessage())


#: One line per tunneled connection, in its own namespace so it can be routed or filtered.
access_log = Logger(namespace="nps.access")


class AccessLog:
    """Writes one line per tunneled connection when its stream ends."""

    def __init__(self, client_id: int, link: dict[str, Any], counter: TrafficCounter, started: float) -> None:
        self._client_id = client_id
        self._link = link
        self._counter = counter
        self._started = started

    def closed(self, stream: Any, reason: Any) -> None:
        link = self._link
        ended = "closed" if reason.check(ConnectionDone) else reason.getErrorMessage()
        access_log.info(
            "client={client} tunnel={tunnel} mode={mode} from={remote} to={target} in={bytes_in} out={bytes_out} "
            "duration={duration:.3f}s end={ended}",
            client=self._client_id, tunnel=link.get("tunnel"), mode=link.get("mode"), remote=link.get("remote"),
            target=describe_link(link), bytes_in=self._counter.bytes_in, bytes_out=self._counter.bytes_out,
            duration=stream.mux._clock.seconds() - self._started, ended=ended,
        )


class NpsServer(MultiService):
    """Everything C{nps} runs: bridge listener, store, tunnels."""

    log = Logger()

    def __init__(self, config: ServerConfig, reactor: Any, modes: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.modes = modes
        self.ping_interval = PING_INTERVAL
        self.idle_timeout = max(config.disconnect_timeout, 1) * PING_INTERVAL
        self.store = AsyncStore(config.data_dir, reactor)
        self.store.setServiceParent(self)
        self.sessions: dict[int, ClientSession] = {}
        self.tunnels: dict[int, RunningTunnel] = {}
        self.client_counters: dict[int, TrafficCounter] = {}
        #: The domain proxy (http_proxy_port/https_proxy_port; nps.vhost) and its traffic per host id.
        self.vhosts = VhostService(self)
        self.host_counters: dict[int, TrafficCounter] = self.vhosts.counters
        self._clients: dict[int, ClientRecord] = {}
        self._keys: dict[str, tuple[str, int | None]] = {}
        self._revision = -1
        self._ephemeral_ids = itertools.count(-1, -1)
        self._secrets: dict[str, int] = {}
        #: The UDP p2p rendezvous (when nps.conf sets p2p_port).
        self.rendezvous: Any = None
        self._p2p_port: Any = None
        self._bridge_port: Any = None
        self._tls_port: Any = None
        #: bridge_type=kcp|quic: the UDP (QUIC) bridge on bridge_port's number (nps.bridge.quic_transport).
        self.udp_bridge: Any = None
        self._poller = LoopingCall(self._poll_store)
        self._poller.clock = reactor
        #: Seconds a stopping server waits for open connections to finish.
        self.drain_timeout = DRAIN_TIMEOUT
        self._draining_logged = False
        self._sync: Deferred[Any] | None = None
        self._sync_waiters: list[Deferred[None]] = []
        #: deny_ips and ip_limit (nps.access); per-client rate limiters (nps.ratelimit).
        self.policy = SourcePolicy(config.deny_ips, config.ip_limit)
        self.limiters: dict[int, RateLimiter] = {}
        self._cutting: set[int] = set()
        self._refusal_logged: dict[tuple[str, str], float] = {}
        self._ips_loaded = float("-inf")
        # Prometheus metrics and the pprof_ip/pprof_port debug listener (nps.metrics, nps.debug).
        self.stats = ServerStats(self)
        attach_server_debug(self)
        #: Called with (session, online) when an npc comes or goes (the web admin's live page).
        self.session_observers: list[Callable[[ClientSession, bool], None]] = []
        #: Per client, persisted bytes not in client_counters, for flow_limit (nps.admin.traffic).
        self.flow_base: dict[int, int] = {}
        self.traffic: Any = None
        # Traffic counters flushed to the store; the web admin on web_port (nps.admin).
        from nps.admin.service import attach_admin
        self.admin = attach_admin(self)

    # -- lifecycle ------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind the bridge port now, so a busy port stops start-up with an error."""
        store = Store(self.config.data_dir)
        try:
            store.mark_all_offline()
            snapshot = store.snapshot()
            self.policy.replace_registered(store.registered_ips())
        finally:
            store.close()
        self._apply_clients(snapshot)
        factory = BridgeServerFactory(self, self.reactor)
        try:
            self._bridge_port = self.reactor.listenTCP(
                self.config.bridge_port, tls_factory(self.config, factory), interface=self.config.bridge_ip
            )
        except CannotListenError as e:
            # SystemExit: twistd and our console script both print just this line.
            raise SystemExit(f"nps: cannot listen on bridge {self.config.bridge_ip}:{self.config.bridge_port}: "
                             f"{e.socketError}") from None
        address = self._bridge_port.getHost()
        self.log.info("bridge listening on {host}:{port} (protocol nps/{v})",
                      host=address.host, port=address.port, v=__version__)
        self._tls_port = listen_extra_tls(self.reactor, self.config, factory)
        self.udp_bridge = listen_udp_bridge(self.reactor, self.config, factory)
        self.vhosts.listen()
        self._listen_p2p()
        self._initial = snapshot
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self._sync_tunnels(self._initial)
        self.vhosts.apply_snapshot(self._initial)
        self._revision = self._initial.revision
        self._poller.start(STORE_POLL_INTERVAL, now=False)

    @inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        """Graceful stop: no new users or clients, open streams drain (up to
        C{drain_timeout}), then every client is told to reconnect later."""
        if self._poller.running:
            self._poller.stop()
        if self._bridge_port is not None:
            yield self._bridge_port.stopListening()
        if self._tls_port is not None:
            yield self._tls_port.stopListening()
        if self.udp_bridge is not None:
            self.udp_bridge.stop_accepting()  # its sessions live on the port: it closes last
        if self._p2p_port is not None:
            yield self._p2p_port.stopListening()
            self._p2p_port = None
        yield self.vhosts.stop()
        for tunnel_id in list(self.tunnels):
            yield self._close_tunnel(tunnel_id)
        yield self._drain()
        sessions = list(self.sessions.values())
        self.sessions.clear()  # so session_ended leaves the store alone from here on
        if sessions:
            yield self.store.call("mark_all_offline").addErrback(self._store_failed)
        for session in sessions:
            if session.mux is not None:
                session.mux.go_away(GoAwayCode.SHUTDOWN, "server shutting down; reconnect shortly")
        if self.udp_bridge is not None:
            yield self.udp_bridge.close()
            self.udp_bridge = None
        yield super().stopService()

    @inlineCallbacks
    def _drain(self):  # type: ignore[no-untyped-def]
        """Wait until no stream is open on any session, or C{drain_timeout} has passed."""
        deadline = self.reactor.seconds() + self.drain_timeout
        while self.reactor.seconds() < deadline:
            open_streams = sum(s.mux.stream_count for s in self.sessions.values() if s.mux is not None)
            if not open_streams:
                return
            if not self._draining_logged:
                self._draining_logged = True
                self.log.info("shutting down: waiting up to {t:.0f}s for {n} open connections to finish",
                              t=self.drain_timeout, n=open_streams)
            yield deferLater(self.reactor, 0.1, lambda: None)
        self.log.info("shutting down: drain timeout reached; closing the remaining connections")

    def reload(self) -> Deferred[None]:
        """Re-read nps.conf (SIGHUP, C{nps reload}) and apply what can change live.

        Keys, limits and timeouts take effect; tunnels and their connections
        stay up.  The bridge address and the data dir need a restart.
        """
        if self.config.path is None:
            self.log.info("reload: running on built-in defaults, nothing to re-read")
            return succeed(None)
        try:
            new = load_server_config(self.config.path)
        except ConfigError as e:
            self.log.error("reload: keeping the running configuration: {error}", error=str(e))
            return succeed(None)
        for key in ("bridge_ip", "bridge_port", "bridge_type", "data_dir"):
            if getattr(new, key) != getattr(self.config, key):
                self.log.warn("reload: {key} changed; it takes effect after a restart", key=key)
                new = attrs.evolve(new, **{key: getattr(self.config, key)})
        self.config = new
        self.idle_timeout = max(new.disconnect_timeout, 1) * PING_INTERVAL
        self.policy.deny = new.deny_ips
        self.policy.ip_limit = new.ip_limit
        for warning in dict.fromkeys(new.warnings):
            self.log.warn("config: {warning}", warning=warning)
        self.log.info("reload: {path} applied", path=new.path)
        self._revision = -1  # re-apply clients (public_vkey) and tunnels from the store
        return self.refresh()

    @property
    def bridge_address(self) -> Any:
        return self._bridge_port.getHost()

    # -- authentication ---------------------------------------------------------

    def lookup_key(self, kid: str) -> str | None:
        entry = self._keys.get(kid)
        return entry[0] if entry else None

    def attach(self, protocol: BridgeServerProtocol, message: dict[str, Any]) -> tuple[ClientSession, dict[str, Any]]:
        """Called once a peer proved its key: bind it to a client record."""
        vkey, client_id = self._keys[str(message["kid"])]
        version = str(message.get("version", ""))[:64]
        remark = str(message.get("remark", ""))[:128]
        if message.get("role") == "register":
            # npc register: a short connection beside the client's own session.
            session = ClientSession(next(self._ephemeral_ids) if client_id is None else client_id,
                                    remark or "register", protocol, protocol.peer, version,
                                    public=client_id is None, register_only=True)
            return session, {"client_id": session.client_id, "server_version": __version__,
                             "ping_interval": self.ping_interval}
        if client_id is None:
            session = ClientSession(next(self._ephemeral_ids), remark or "public", protocol,
                                    protocol.peer, version, public=True)
        else:
            client = self._clients[client_id]
            if not client.enabled:
                raise SessionRejected(f"client {client_id} is disabled on the server")
            session = ClientSession(client_id, client.remark, protocol, protocol.peer, version, public=False)
            old = self.sessions.get(client_id)
            if old is not None:
                self.log.info("client {id}: new connection from {new} replaces the one from {old}",
                              id=client_id, new=protocol.peer, old=old.remote)
                self._drop_session(old, GoAwayCode.REPLACED,
                                   f"replaced by a newer connection with the same vkey from {protocol.peer}")
        record = self._clients.get(session.client_id)
        session.crypt = message.get("crypt") is True or (record is not None and record.crypt)
        session.compress = message.get("compress") is True or (record is not None and record.compress)
        if (session.crypt or session.compress) and protocol.stream_secret is None:
            raise SessionRejected("this client's streams are encrypted or compressed (crypt/compress) but this "
                                  "npc made no key exchange; upgrade npc")
        return session, {"client_id": session.client_id, "server_version": __version__,
                         "ping_interval": self.ping_interval, "crypt": session.crypt, "compress": session.compress}

    def session_started(self, session: ClientSession) -> None:
        if session.register_only:
            self.log.info("client {id}: npc register connection from {remote}", id=session.client_id,
                          remote=session.remote)
            # It has this long to ask; then it goes (authenticated peers cannot pile these up).
            self.reactor.callLater(REGISTER_SESSION_TIMEOUT, session.protocol.transport.loseConnection)
            return
        self.sessions[session.client_id] = session
        self.client_counters.setdefault(session.client_id, TrafficCounter())
        self.log.info("client {id} ({remark}) online from {remote}, npc {version}",
                      id=session.client_id, remark=session.remark, remote=session.remote, version=session.version)
        if session.public:
            self._record_public(session)
        else:
            self.store.call("set_client_online", session.client_id, True,
                            remote_addr=session.remote, version=session.version).addErrback(self._store_failed)
        self._notify_observers(session, True)

    def session_ended(self, session: ClientSession) -> None:
        if session.register_only:
            return
        if session.public:
            self.limiters.pop(session.client_id, None)  # its id is never used again
        reason = session.mux.close_reason if session.mux is not None else "closed"
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
            if session.public:
                self.store.call("end_public_session", session.client_id).addErrback(self._store_failed)
            else:
                self.store.call("set_client_online", session.client_id, False,
                                remote_addr=session.remote).addErrback(self._store_failed)
            self._notify_observers(session, False)
        for tunnel_id in session.config_tunnels:
            self._close_tunnel(tunnel_id)
        session.config_tunnels.clear()
        self.vhosts.session_gone(session)
        if self.rendezvous is not None:
            self.rendezvous.session_ended(session)
        counter = self.client_counters.get(session.client_id, TrafficCounter())
        self.log.info("client {id} offline ({reason}); traffic so far: {n} connections, "
                      "{bytes_in} bytes in, {bytes_out} bytes out", id=session.client_id, reason=reason,
                      n=counter.connections, bytes_in=counter.bytes_in, bytes_out=counter.bytes_out)

    def _record_public(self, session: ClientSession) -> None:
        """Show a public-key npc (and its open tunnels) in C{nps client list}."""
        open_tunnels = sum(1 for tunnel_id in session.config_tunnels if tunnel_id in self.tunnels)
        self.store.call("set_public_session", session.client_id, remark=session.remark,
                        remote_addr=session.remote, version=session.version,
                        tunnels=open_tunnels).addErrback(self._store_failed)

    def _notify_observers(self, session: ClientSession, online: bool) -> None:
        for observer in list(self.session_observers):
            try:
                observer(session, online)
            except Exception:
                self.log.failure("session observer failed")

    def _drop_session(self, session: ClientSession, code: GoAwayCode, reason: str) -> None:
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
            self._notify_observers(session, False)
        for tunnel_id in session.config_tunnels:
            self._close_tunnel(tunnel_id)
        session.config_tunnels.clear()
        self.vhosts.session_gone(session)
        if session.mux is not None:
            session.mux.go_away(code, reason)
        else:
            session.protocol.transport.loseConnection()

    # -- control messages ---------------------------------------------------------

    def control_received(self, session: ClientSession, message: dict[str, Any]) -> None:
        kind = message["type"]
        if session.register_only:
            if kind == "register_ip":
                self._register_ip_message(session, message.get("hours"))
            elif kind != "goaway":
                self.log.info("client {id}: ignoring {kind!r} on an npc register connection",
                              id=session.client_id, kind=kind)
            return
        if kind == "register":
            self._take_self_limits(session, message.get("limits"))
            if "web_login" in message:
                self._take_web_login(session, message["web_login"])
            self._register_tunnels(session, message.get("tunnels"), message.get("hosts"))
        elif kind == "health":
            self.vhosts.health(session, message)
        elif kind == "register_ip":
            self._register_ip_message(session, message.get("hours"))
        elif isinstance(kind, str) and kind.startswith("p2p_"):
            self._p2p_control(session, message)
        elif kind != "goaway":
            self.log.info("client {id}: ignoring control message {kind!r}", id=session.client_id, kind=kind)

    def _register_tunnels(self, session: ClientSession, records: Any, hosts: Any = None) -> None:
        """Config-file mode: open the tunnels (and route the hosts) listed in the client's npc.conf."""
        if session.mux is None:
            return
        if not session.public and not self._clients[session.client_id].config_conn_allow:
            session.mux.send_control({"type": "registered", "results": [
                {"ok": False, "error": "this client may not register tunnels from its config file"}]})
            return
        if not isinstance(records, list) or len(records) > MAX_CONFIG_TUNNELS:
            session.mux.protocol_error("register message needs a list of at most "
                                       f"{MAX_CONFIG_TUNNELS} tunnels")
            return
        # A repeated register (npc reloaded its npc.conf) replaces the list: unchanged
        # tunnels keep their port and connections, removed ones close, new ones open.
        current = {_identity(self.tunnels[t].tunnel): t for t in session.config_tunnels if t in self.tunnels}
        kept: list[int] = []
        to_open: list[tuple[Tunnel, Deferred[str | None]]] = []
        remarks: list[str] = []
        pending: list[Deferred[str | None]] = []
        for record in records:
            remarks.append(_remark(record))
            try:
                tunnel = Tunnel.from_wire(record)
                tunnel = attrs.evolve(tunnel, id=next(self._ephemeral_ids), client_id=session.client_id)
                self._check_tunnel(tunnel)
                self._check_tunnel_quota(session, len(kept))
            except ValueError as e:
                pending.append(succeed(str(e)))
                continue
            existing = current.pop(_identity(tunnel), None)
            if existing is not None:
                kept.append(existing)
                pending.append(succeed(None))
                continue
            kept.append(tunnel.id)
            opened: Deferred[str | None] = Deferred()
            to_open.append((tunnel, opened))
            pending.append(opened)
        session.config_tunnels[:] = kept
        host_results = self.vhosts.register(session, hosts if hosts is not None else [])
        # Open the new ones once the removed ones have let go of their ports.
        closing = [self._close_tunnel(tunnel_id) for tunnel_id in current.values()]

        def open_new(_: Any) -> None:
            for tunnel, opened in to_open:
                self._open_tunnel(tunnel).chainDeferred(opened)

        gatherResults(closing).addCallback(open_new)

        def report(errors: list[str | None]) -> None:
            results = [{"remark": remark, "ok": error is None, "error": error or ""}
                       for remark, error in zip(remarks, errors)] + host_results
            if session.mux is not None:
                session.mux.send_control({"type": "registered", "results": results})
            if session.public and self.sessions.get(session.client_id) is session:
                self._record_public(session)

        gatherResults(pending).addCallback(report)

    def _check_tunnel(self, tunnel: Tunnel) -> None:
        deny = tunnel.options.get(DENY_OPTION, "")
        if deny:
            parse_deny_list(deny)  # ValueError names the bad entry
        if tunnel.mode in ("secret", "p2p"):
            if not tunnel.password or not tunnel.targets:
                raise ValueError(f"a {tunnel.mode} tunnel needs password= and target_addr=")
            return
        if tunnel.mode not in self.modes:
            raise ValueError(f"mode {tunnel.mode!r} is not supported by this server "
                             f"(available: {', '.join(sorted(self.modes))})")
        if tunnel.mode not in ("secret", "p2p"):
            if not 0 < tunnel.server_port < 65536:
                raise ValueError(f"server_port {tunnel.server_port} is not a port number")
            if not port_allowed(tunnel.server_port, self.config.allow_ports):
                raise ValueError(f"server_port {tunnel.server_port} is not in allow_ports")

    # -- tunnels --------------------------------------------------------------------

    def opener_for(self, running: RunningTunnel) -> Any:
        tunnel = running.tunnel

        def opener(link: dict[str, Any]) -> IStreamClientEndpoint:
            counters = [running.counter, self.client_counters.setdefault(tunnel.client_id, TrafficCounter())]
            return StreamEndpoint(self, tunnel.client_id, link, counters)

        return opener

    def _open_tunnel(self, tunnel: Tunnel) -> Deferred[str | None]:
        """Start listening for C{tunnel}; fires with None or an error message."""
        if tunnel.mode in ("secret", "p2p"):
            return succeed(self._register_secret(tunnel))
        mode = self.modes.get(tunnel.mode)
        if mode is None:
            message = f"mode {tunnel.mode!r} is not supported yet"
            self.log.warn("tunnel {id} ({remark}): {message}", id=tunnel.id, remark=tunnel.remark, message=message)
            return succeed(message)
        running = RunningTunnel(tunnel)
        self.tunnels[tunnel.id] = running
        try:
            d = mode.listen(self.reactor, self._with_client_accounts(tunnel), self.opener_for(running))
        except Exception as e:  # a mode's bad input, reported like a listen failure
            d = fail(e)

        def listening(port: Any) -> None:
            if self.tunnels.get(tunnel.id) is not running:
                port.stopListening()
                return None
            running.port = port
            self.log.info("tunnel {id} ({remark}): {mode} {ip}:{port} -> client {client} {targets}",
                          id=tunnel.id, remark=tunnel.remark, mode=tunnel.mode, ip=tunnel.server_ip,
                          port=tunnel.server_port, client=tunnel.client_id, targets=",".join(tunnel.targets))
            return None

        def failed(failure: Any) -> str:
            if self.tunnels.get(tunnel.id) is running:
                del self.tunnels[tunnel.id]
            message = f"cannot open {tunnel.mode} port {tunnel.server_ip}:{tunnel.server_port}: " \
                      f"{failure.getErrorMessage()}"
            self.log.error("tunnel {id} ({remark}): {message}", id=tunnel.id, remark=tunnel.remark, message=message)
            return message

        return d.addCallbacks(listening, failed)

    def _with_client_accounts(self, tunnel: Tunnel) -> Tunnel:
        """Add the owning client's basic_username/basic_password to the tunnel's accounts."""
        client = self._clients.get(tunnel.client_id)
        if client is None or not client.basic_username:
            return tunnel
        accounts = accounts_for(tunnel)
        accounts.setdefault(client.basic_username, client.basic_password)
        return attrs.evolve(tunnel, options=dict(tunnel.options, **{ACCOUNTS_OPTION: format_accounts(accounts)}))

    # -- limits (enforced here, never trusted from npc) ------------------------------

    def client_limits(self, client_id: int) -> dict[str, int]:
        """
        The limits in force for C{client_id}: C{rate_limit} (KB/s), C{flow_limit} (MB),
        C{max_conn}; 0 means none.  The store's value, lowered by what the npc
        asked for itself in its npc.conf [common] (it can never raise them).
        """
        client = self._clients.get(client_id)
        session = self.sessions.get(client_id)
        own = session.self_limits if session is not None else {}
        limits = {}
        for key in SELF_LIMITS:
            values = [v for v in (getattr(client, key, 0) if client is not None else 0, own.get(key, 0)) if v > 0]
            limits[key] = min(values) if values else 0
        return limits

    def limit_reached(self, client_id: int) -> str:
        """Why a new connection for C{client_id} must be refused now (empty: it may go ahead)."""
        limits = self.client_limits(client_id)
        counter = self.client_counters.setdefault(client_id, TrafficCounter())
        if limits["max_conn"] and counter.open >= limits["max_conn"]:
            return f"max_conn {limits['max_conn']} reached"
        return self.flow_used_up(client_id, limits)

    def flow_used_up(self, client_id: int, limits: dict[str, int] | None = None) -> str:
        """Why C{client_id} may move no more bytes (its C{flow_limit} is used up), or empty."""
        flow_limit = (limits or self.client_limits(client_id))["flow_limit"]
        if not flow_limit:
            return ""
        counter = self.client_counters.setdefault(client_id, TrafficCounter())
        if counter.bytes_in + counter.bytes_out + self.flow_base.get(client_id, 0) >= flow_limit * 1024 * 1024:
            return f"flow_limit of {flow_limit} MB used up"
        return ""

    def limited(self, client_id: int, protocol: Any) -> Any:
        """
        What to attach to a new stream of C{client_id} in place of C{protocol}:
        C{protocol} itself for a client without rate_limit and flow_limit, else
        a L{LimitedStream} charging the client's bucket and watching its quota.
        """
        limits = self.client_limits(client_id)
        limiter = self._limiter_for(client_id, limits["rate_limit"])
        if limiter is None and not limits["flow_limit"]:
            return protocol
        on_bytes = (lambda: self._check_flow(client_id)) if limits["flow_limit"] else None
        return LimitedStream(protocol, limiter, on_bytes)

    def _limiter_for(self, client_id: int, rate: int) -> RateLimiter | None:
        if rate <= 0:
            self.limiters.pop(client_id, None)
            return None
        limiter = self.limiters.get(client_id)
        if limiter is None:
            limiter = self.limiters[client_id] = RateLimiter(self.reactor, rate)
        else:
            limiter.set_rate(rate)
        return limiter

    def _update_limiters(self) -> None:
        for client_id in list(self.limiters):
            self._limiter_for(client_id, self.client_limits(client_id)["rate_limit"])

    def _check_flow(self, client_id: int) -> None:
        if client_id in self._cutting:
            return
        reason = self.flow_used_up(client_id)
        if reason:
            self._cutting.add(client_id)
            self.reactor.callLater(0, self._cut_client, client_id, reason)

    def _cut_client(self, client_id: int, reason: str) -> None:
        """The client's flow_limit is used up: its open connections end too."""
        self._cutting.discard(client_id)
        session = self.sessions.get(client_id)
        if session is None or session.mux is None:
            return
        streams = [stream for stream in list(getattr(session.mux, "_streams", {}).values())
                   if stream.link.get("mode") != "secret" and not stream.disconnected]
        if not streams:
            return
        self.log.warn("client {id}: {reason}; closing its {n} open connections", id=client_id, reason=reason,
                      n=len(streams))
        for stream in streams:
            stream.reset(reason)

    def _check_tunnel_quota(self, session: ClientSession, accepted: int) -> None:
        """A stored client's max_tunnels counts its npc.conf tunnels too (as in NPS)."""
        client = self._clients.get(session.client_id)
        if client is None or not client.max_tunnels:
            return
        stored = sum(1 for tunnel_id, running in self.tunnels.items()
                     if tunnel_id > 0 and running.tunnel.client_id == session.client_id)
        if stored + accepted >= client.max_tunnels:
            raise ValueError(f"max_tunnels {client.max_tunnels} reached ({stored} on the server, "
                             f"{accepted} from npc.conf)")

    def _take_self_limits(self, session: ClientSession, limits: Any) -> None:
        """npc.conf [common] rate_limit/flow_limit/max_conn, sent with a register message."""
        if limits is None:
            return
        if not isinstance(limits, dict):
            self.log.info("client {id}: ignoring limits that are not an object", id=session.client_id)
            return
        own: dict[str, int] = {}
        for key in SELF_LIMITS:
            value = limits.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 40:
                self.log.info("client {id}: ignoring its {key}={value!r} (not a number >= 0)",
                              id=session.client_id, key=key, value=str(value)[:32])
                continue
            if value:
                own[key] = value
        session.self_limits = own
        if own:
            self.log.info("client {id}: npc.conf limits {limits}", id=session.client_id,
                          limits=", ".join(f"{k}={v}" for k, v in sorted(own.items())))
        self._update_limiters()

    def _take_web_login(self, session: ClientSession, login: Any) -> Deferred[None]:
        """
        npc.conf [common] web_username/web_password (sent with a register message): the
        client's own login to the web admin, as in NPS. Stored hashed on the client's
        record; only for a stored client that may register from its config file, and
        never with a name the admin or another client uses.
        """
        def refuse(why: str) -> Deferred[None]:
            self.log.warn("client {id}: not setting its web login from npc.conf: {why}",
                          id=session.client_id, why=why)
            return succeed(None)

        if not isinstance(login, dict) or not all(isinstance(login.get(k), str) for k in ("username", "password")):
            return refuse("web_login must be an object with string username and password")
        username, password = login["username"], login["password"]
        if not 0 < len(username) <= 64 or not username.isprintable() or not 0 < len(password) <= 256:
            return refuse("web_username must be 1-64 printable characters and web_password 1-256")
        if session.public:
            return refuse("it logs in with public_vkey; add it with `nps client add` to give it a web login")
        client = self._clients.get(session.client_id)
        if client is None or not client.config_conn_allow:
            return refuse("this client may not take settings from its config file")
        if username == (self.config.web_username or "admin") or any(
                c.web_username == username for c in self._clients.values() if c.id != client.id):
            return refuse(f"the name {username!r} is already used by the admin or another client")
        weak = passwords.weakness(password, username)
        if weak:
            self.log.warn("client {id}: web_password in its npc.conf is weak: {why}", id=client.id, why=weak)

        def unchanged() -> bool:
            return client.web_username == username and bool(client.web_password) and \
                passwords.verify_password(password, client.web_password)

        def store(same: bool) -> Any:
            if same:
                return None
            return deferToThread(passwords.hash_password, password).addCallback(
                lambda hashed: self.store.call("update_client", client.id, web_username=username,
                                               web_password=hashed)).addCallback(saved)

        def saved(_: Any) -> None:
            self.log.info("client {id}: web login {user!r} set from its npc.conf", id=client.id, user=username)
            self.refresh()

        d: Deferred[None] = deferToThread(unchanged).addCallback(store)
        return d.addErrback(self._store_failed)

    # -- who may connect: deny_ips and ip_limit (nps.access) ----------------------------

    def source_allowed(self, client_id: int, tunnel_id: Any, remote_ip: str) -> str:
        """
        Why a new public connection from C{remote_ip} to C{tunnel_id} of
        C{client_id} must be refused (empty: it may go ahead): the server's and
        the tunnel's C{deny_ips}, and C{ip_limit}.  Every mode goes through it
        (L{StreamEndpoint.connect}).
        """
        running = self.tunnels.get(tunnel_id) if isinstance(tunnel_id, int) else None
        deny = running.tunnel.options.get(DENY_OPTION, "") if running is not None else ""
        now = self.reactor.seconds()
        reason = self.policy.check(remote_ip, now, deny)
        if reason:
            key = (remote_ip, reason)
            if self._refusal_logged.get(key, float("-inf")) + 10.0 <= now:
                if len(self._refusal_logged) > 10000:
                    self._refusal_logged.clear()
                self._refusal_logged[key] = now
                self.log.warn("client {client} tunnel {tunnel}: refusing {ip}: {reason}", client=client_id,
                              tunnel=tunnel_id, ip=remote_ip, reason=reason)
        return reason

    def register_ip(self, ip: str, hours: float, client_id: int | None = None) -> float:
        """
        Let C{ip} use tunnels for C{hours} hours when C{ip_limit=true}
        (C{npc register}, and the legacy npc's C{rgst} connection).

        @return: when the registration expires (POSIX time).
        @raise ValueError: if C{ip} is not an address or C{hours} is out of range.
        """
        address = normalize_ip(ip)
        if not 0 < hours <= MAX_REGISTER_HOURS:
            raise ValueError(f"hours must be between 0 and {MAX_REGISTER_HOURS}, got {hours!r}")
        expires = self.reactor.seconds() + hours * 3600
        self.policy.register(address, expires)
        owner = client_id if client_id is not None and client_id > 0 else None
        self.store.call("register_ip", address, expires, owner).addErrback(self._store_failed)
        self.log.info("ip_limit: {ip} registered by client {client} for {hours:g} hours", ip=address,
                      client=client_id, hours=hours)
        return expires

    def _register_ip_message(self, session: ClientSession, hours: Any) -> None:
        if session.mux is None:
            return
        try:
            if isinstance(hours, bool) or not isinstance(hours, (int, float)):
                raise ValueError(f"hours must be a number, got {str(hours)[:32]!r}")
            ip = host_of(session.remote)
            expires = self.register_ip(ip, float(hours), session.client_id)
        except ValueError as e:
            session.mux.send_control({"type": "ip_registered", "ok": False, "error": str(e)})
            return
        session.mux.send_control({"type": "ip_registered", "ok": True, "ip": ip, "hours": float(hours),
                                  "expires": expires, "ip_limit": self.config.ip_limit})
        if session.register_only:
            session.mux.go_away(GoAwayCode.NORMAL, "registered")

    def _reload_registered_ips(self) -> None:
        now = self.reactor.seconds()
        if now - self._ips_loaded < REGISTERED_IPS_POLL:
            return
        self._ips_loaded = now
        self.policy.expire(now)
        if self.config.ip_limit:
            self.store.call("registered_ips", now).addCallbacks(self.policy.replace_registered, self._store_failed)

    # -- secret tunnels: no public port, visitors come over their own bridge --------

    def _register_secret(self, tunnel: Tunnel) -> str | None:
        key = _secret_key(tunnel.password)
        other = self._secrets.get(key)
        if other is not None and other in self.tunnels:
            message = f"the password of secret tunnel {tunnel.remark!r} is already used by another tunnel"
            self.log.error("tunnel {id}: {message}", id=tunnel.id, message=message)
            return message
        running = RunningTunnel(tunnel, port=_SecretHandle())
        self.tunnels[tunnel.id] = running
        self._secrets[key] = tunnel.id
        self.log.info("tunnel {id} ({remark}): {mode} -> client {client} {targets}", id=tunnel.id,
                      remark=tunnel.remark, mode=tunnel.mode, client=tunnel.client_id,
                      targets=",".join(tunnel.targets))
        if tunnel.mode == "p2p" and not self.config.p2p_port:
            self.log.warn("tunnel {id} ({remark}): p2p_port is not set in nps.conf: its visitors relay "
                          "through the server", id=tunnel.id, remark=tunnel.remark)
        return None

    def secret_tunnel(self, password: str) -> RunningTunnel | None:
        """The running secret or p2p tunnel with this password, if any."""
        tunnel_id = self._secrets.get(_secret_key(password))
        return self.tunnels.get(tunnel_id) if tunnel_id is not None else None

    # -- p2p: UDP rendezvous (nps.p2p.rendezvous) ------------------------------------------

    def _listen_p2p(self) -> None:
        """Open the UDP p2p_port (when set) where npcs register their addresses for hole punching."""
        from nps.p2p.rendezvous import Rendezvous

        public = self.config.p2p_ip if self.config.p2p_ip not in ("", "0.0.0.0", "::") else ""
        rendezvous = Rendezvous(self, self.reactor, public)
        self.rendezvous = rendezvous
        if not self.config.p2p_port:
            return  # visitors are told to relay; their path reports are still logged
        try:
            self._p2p_port = self.reactor.listenUDP(self.config.p2p_port, rendezvous,
                                                    interface=self.config.bridge_ip or "")
        except CannotListenError as e:
            raise SystemExit(f"nps: cannot listen on p2p UDP port {self.config.p2p_port}: {e.socketError}") from None
        rendezvous.port = self._p2p_port.getHost().port
        self.log.info("p2p rendezvous listening on UDP {host}:{port}", host=self._p2p_port.getHost().host,
                      port=rendezvous.port)

    def _p2p_control(self, session: ClientSession, message: dict[str, Any]) -> None:
        if self.rendezvous is not None:
            self.rendezvous.control(session, message)

    def stream_from_client(self, session: ClientSession, stream: Any) -> None:
        """A client opened a stream: a secret visitor asking for a tunnel by its password."""
        mux = stream.mux
        link = stream.link
        if link.get("mode") != "secret" or not isinstance(link.get("password"), str):
            mux.refuse_stream(stream, "clients may only open secret-visitor streams")
            return
        tunnel_id = self._secrets.get(_secret_key(link["password"]))
        running = self.tunnels.get(tunnel_id) if tunnel_id is not None else None
        if running is None:
            self.log.warn("client {id}: secret visit from {remote} refused: wrong password",
                          id=session.client_id, remote=session.remote)
            mux.refuse_stream(stream, "wrong password (no such secret tunnel)")
            return
        tunnel = running.tunnel
        remote = f"{tunnel.mode} visitor {session.remote}"
        target = link.get("target") or tunnel.targets[0]
        if tunnel.mode != "p2p" or target not in tunnel.targets:
            target = tunnel.targets[0]  # a secret tunnel's visitor cannot choose
        visitor_side = Relay()
        d = self.opener_for(running)({"mode": "tcp", "target": target, "remote": remote,
                                      "tunnel": tunnel.id}).connect(RelayFactory(visitor_side))

        def provider_ready(_: Any) -> None:
            mux.accept_stream(stream, visitor_side)

        def provider_missing(failure: Any) -> None:
            mux.refuse_stream(stream, f"secret tunnel {tunnel.remark!r}: {failure.getErrorMessage()}")

        d.addCallbacks(provider_ready, provider_missing)

    def _close_tunnel(self, tunnel_id: int) -> Deferred[None]:
        running = self.tunnels.pop(tunnel_id, None)
        if running is None or running.port is None:
            return succeed(None)
        counter = running.counter
        self.log.info("tunnel {id} ({remark}) closed after {n} connections, {bytes_in} bytes in, "
                      "{bytes_out} bytes out", id=tunnel_id, remark=running.tunnel.remark,
                      n=counter.connections, bytes_in=counter.bytes_in, bytes_out=counter.bytes_out)
        return maybeDeferred(running.port.stopListening)

    # -- store sync ---------------------------------------------------------------------

    def _apply_clients(self, snapshot: Snapshot) -> None:
        self._clients = {c.id: c for c in snapshot.clients}
        keys: dict[str, tuple[str, int | None]] = {key_id(c.vkey): (c.vkey, c.id) for c in snapshot.clients}
        if self.config.public_vkey:
            keys[key_id(self.config.public_vkey)] = (self.config.public_vkey, None)
        self._keys = keys
        self._update_limiters()
        for client_id, session in list(self.sessions.items()):
            if session.public:
                continue
            client = self._clients.get(client_id)
            if client is None:
                self._drop_session(session, GoAwayCode.REJECTED, "client deleted on the server")
            elif not client.enabled:
                self._drop_session(session, GoAwayCode.REJECTED, "client disabled on the server")
                self.store.call("set_client_online", client_id, False,
                                remote_addr=session.remote).addErrback(self._store_failed)

    def _sync_tunnels(self, snapshot: Snapshot) -> None:
        wanted = {t.id: t for t in snapshot.tunnels if t.enabled and t.client_id in self._clients}
        for tunnel_id, running in list(self.tunnels.items()):
            if tunnel_id < 0:
                continue  # config-file tunnels belong to their session
            if wanted.get(tunnel_id) != running.tunnel:
                self._close_tunnel(tunnel_id)
        for tunnel_id, tunnel in wanted.items():
            if tunnel_id not in self.tunnels:
                self._open_tunnel(tunnel)

    def _poll_store(self) -> None:
        self.refresh()
        self._reload_registered_ips()
        for client_id in list(self.sessions):
            self._check_flow(client_id)

    def refresh(self) -> Deferred[None]:
        """Apply the store's changes now (coalesced); fires when done."""
        waiter: Deferred[None] = Deferred()
        self._sync_waiters.append(waiter)
        if self._sync is None:
            def check(revision: int) -> Any:
                if revision == self._revision:
                    return None
                return self.store.call("snapshot").addCallback(apply)

            def apply(snapshot: Snapshot) -> None:
                self.log.info("store revision {old} -> {new}: applying changes",
                              old=self._revision, new=snapshot.revision)
                self._revision = snapshot.revision
                self._apply_clients(snapshot)
                self._sync_tunnels(snapshot)
                self.vhosts.apply_snapshot(snapshot)

            self._sync = self.store.call("revision").addCallback(check).addErrback(self._store_failed)
            self._sync.addBoth(self._sync_done)
        return waiter

    def _sync_done(self, _: Any) -> None:
        self._sync = None
        waiters, self._sync_waiters = self._sync_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _store_failed(self, failure: Any) -> None:
        self.log.failure("store operation failed", failure)


class _SecretHandle:
    """Stands in for a listening port: a secret tunnel has none."""

    def stopListening(self) -> None:
        return None


def _secret_key(password: str) -> str:
    """Secret tunnels are found by a hash of their password (the password itself is not kept as a key)."""
    return hashlib.sha256(b"nps-secret\x00" + password.encode("utf-8")).hexdigest()


def _identity(tunnel: Tunnel) -> tuple[Any, ...]:
    """What makes two config-file tunnels the same tunnel (everything but the ids)."""
    wire = tunnel.to_wire()
    wire.pop("id", None)
    wire.pop("client_id", None)
    return tuple(sorted((key, repr(value)) for key, value in wire.items()))


def _remark(record: Any) -> str:
    return str(record.get("remark", "")) if isinstance(record, dict) else ""
