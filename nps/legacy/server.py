# -*- test-case-name: test.test_legacy_server,test.test_e2e_legacy -*-
"""NPS 0.26 clients on our bridge port (C{legacy_bridge=true} in nps.conf).

The bridge protocol hands a connection here when its first byte is the
C{T} of NPS's C{"TST"} (ours starts with C{\\x89}).  L{LegacyConnection}
runs the NPS handshake (L{nps.protocols.legacy_handshake}) within the
bridge's handshake timeout and unfinished-handshake cap, then serves the
work type:

  - C{main} (signal) and C{chan} (nps-mux): together they make a
    L{nps.server.ClientSession} whose C{mux} is a L{LegacySessionMux}, so
    every mode opens streams to a legacy client as to ours;
  - C{file}: a second nps-mux, used for file-mode streams;
  - C{conf}: config-file mode (tunnels from the npc's npc.conf, C{npc status});
  - C{rgst}: C{npc register} (C{ip_limit});
  - C{sert}: a secret visitor, relayed raw to the secret tunnel's provider.

The NPS key proof is an unsalted C{md5(vkey)}: anyone who sees it once can
replay it.  Legacy sessions are therefore marked C{(legacy 0.26)} in their
version string (C{nps client list}, admin) and each login logs a warning.
"""
from __future__ import annotations

import hmac
import secrets
import string
import weakref
from typing import TYPE_CHECKING, Any, Iterable

import attrs
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from nps.accounts import ACCOUNTS_OPTION, format_accounts
from nps.config import format_host_port
from nps.legacy.crypt import SnappyCodec, TlsCodec, server_context, warm_up
from nps.legacy.mux import LegacyMux, LegacyStream
from nps.model import Tunnel
from nps.mux import StreamRefused
from nps.protocols import legacy_handshake as lh
from nps.protocols.legacy_link import CONN_TYPES, DATAGRAM_TYPES, LinkError, encode_link, to_legacy
from nps.relay import Relay, RelayFactory

if TYPE_CHECKING:
    from nps.bridge.server import BridgeServerProtocol
    from nps.server import ClientSession, NpsServer

__all__ = ["LegacyConnection", "LegacyRegistry", "LegacySessionMux", "VERSION_MARK", "legacy_handler"]

log = Logger()

#: Appended to a legacy client's version (shown by C{nps client list} and the admin).
VERSION_MARK = " (legacy 0.26)"
#: Seconds a config-file-mode conversation may last.
CONF_TIMEOUT = 30.0
#: Seconds the tunnels a C{conf} connection opened wait for the client's C{main}/C{chan}.
PENDING_TIMEOUT = 60.0
#: Public-key config clients that may wait for their main/chan connections at a time.
MAX_PENDING_PUBLIC = 64
#: Longest health report on the signal connection.
MAX_HEALTH_REPORT = 4096
#: Most tunnels one config-file client may open (ports of a range count one each).
MAX_CONFIG_TUNNELS = 256
_VKEY_ALPHABET = string.ascii_lowercase + string.digits


def _digest_matches(digest: bytes, vkey: str) -> bool:
    return hmac.compare_digest(lh.md5_hex(vkey), digest)


@attrs.define(eq=False)
class LegacyClient:
    """Who a legacy connection authenticated as.

    @ivar client_id: the store's client id, or the ephemeral (negative) id
        of a config-file client that logged in with C{public_vkey}.
    @ivar vkey: the key it proved (for a public client, the one-time key we gave it).
    @ivar public: it logged in with C{public_vkey} (only C{conf} is allowed).
    """

    client_id: int | None
    vkey: str
    public: bool = False
    remark: str = ""
    crypt: bool = False
    compress: bool = False
    #: Tunnels (ids) opened by its C{conf} connection, waiting for or owned by its session.
    tunnels: list[int] = attrs.field(factory=list)
    #: Domains (our host wire records) from its C{conf} connection, routed once its session starts.
    hosts: list[dict[str, Any]] = attrs.field(factory=list)
    expiry: IDelayedCall | None = None


class LegacySessionMux:
    """The C{session.mux} of a legacy client: opens streams on its C{chan} (or C{file}) nps-mux.

    It translates our link dicts into NPS's link header and applies NPS's
    per-stream C{crypt}/C{compress}; C{udp} streams carry one datagram per
    nps-mux message.
    """

    def __init__(self, session_handle: "LegacyHandle", chan: LegacyMux) -> None:
        self._handle = session_handle
        self.chan = chan
        self.file: LegacyMux | None = None
        self._clock = chan._clock

    @property
    def close_reason(self) -> str:
        return self.chan.close_reason

    @property
    def stream_count(self) -> int:
        return self.chan.stream_count + (self.file.stream_count if self.file is not None else 0)

    def start_stream(self, link: dict[str, Any], timeout: float = 30.0) -> LegacyStream:
        """Open a stream to the legacy client for C{link}.

        C{crypt}/C{compress} marks in C{link} are taken over (and removed
        from it): the legacy stream does NPS's TLS or snappy itself.

        @raise StreamRefused: the bridge is closed or C{link} cannot be carried.
        """
        crypt = link.pop("crypt", False) is True
        compress = link.pop("compress", False) is True
        link.pop("crypt_salt", None)
        mode = str(link.get("mode", ""))
        if mode == "file":
            if self.file is None or self.file.closed:
                raise StreamRefused("this NPS 0.26 client has no file connection (its npc.conf needs the "
                                    "file tunnel)")
            return self.file.start_stream(link, timeout=timeout)
        if mode not in CONN_TYPES:
            raise StreamRefused(f"mode {mode!r} cannot be carried to an NPS 0.26 client")
        try:
            header = encode_link(to_legacy(link, crypt=crypt, compress=compress))
        except LinkError as e:
            raise StreamRefused(str(e)) from None
        codec: Any = None
        if crypt:
            codec = TlsCodec(server_context(), server=True)
        elif compress:
            codec = SnappyCodec()
        udp5 = mode == "socks5_udp"
        return self.chan.start_stream(link, preamble=header, codec=codec,
                                      datagrams=mode in DATAGRAM_TYPES or udp5, prefixed_replies=udp5,
                                      timeout=timeout)

    def send_control(self, message: dict[str, Any]) -> None:
        """NPS clients have no control channel; what we would have said goes to the log."""
        log.debug("legacy client: not sent (no control channel): {message}", message=message)

    def protocol_error(self, message: str) -> None:
        log.error("legacy client: {message}; closing", message=message)
        self._handle.close(message)

    def go_away(self, code: Any, reason: str = "") -> None:
        self._handle.close(reason)

    def refuse_stream(self, stream: LegacyStream, reason: str) -> None:
        stream.reset(reason)

    def accept_stream(self, stream: LegacyStream, protocol: Any) -> None:
        stream.attach(protocol)


class LegacyHandle:
    """Stands where a L{BridgeServerProtocol} stands in a L{ClientSession}."""

    stream_secret = None

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.mux: LegacySessionMux | None = None
        self.signal: LegacyConnection | None = None
        self.chan: LegacyConnection | None = None
        self.transport: Any = None
        self.closed = False
        self.session: Any = None

    def close(self, reason: str) -> None:
        if self.mux is not None:
            self.mux.chan.uncork()
            if not self.mux.chan.close_reason:
                self.mux.chan.close_reason = reason
        for conn in (self.signal, self.chan):
            if conn is not None:
                conn.bridge.transport.loseConnection()
        if self.mux is not None and self.mux.file is not None:
            self.mux.file.go_away(reason)


class LegacyRegistry:
    """The legacy clients of one L{NpsServer}: logins, sessions, config-file tunnels."""

    def __init__(self, server: "NpsServer") -> None:
        self.server = server
        #: One-time keys handed to public-key config clients: C{md5 hex -> client}.
        self._temporary: dict[bytes, LegacyClient] = {}
        #: Private-key clients' config-file tunnels waiting for main/chan: C{client id -> client}.
        self._pending: dict[int, LegacyClient] = {}
        #: Live sessions: C{client id -> (session, handle)}.
        self.handles: dict[int, tuple["ClientSession", LegacyHandle]] = {}
        #: File muxes that arrived before their session (or for a session).
        self._files: dict[int, LegacyMux] = {}
        #: Sessions with their signal but not yet their chan connection.
        self._half: dict[int, LegacyHandle] = {}

    # -- who is it -------------------------------------------------------------------

    def lookup(self, digest: bytes) -> LegacyClient | None:
        """The client whose C{md5(vkey)} is C{digest} (checked against every key, in constant time each)."""
        found: LegacyClient | None = None
        for client in self.server._clients.values():
            if _digest_matches(digest, client.vkey) and found is None:
                pending = self._pending.get(client.id)
                found = pending if pending is not None and pending.vkey == client.vkey else LegacyClient(
                    client.id, client.vkey, remark=client.remark, crypt=client.crypt, compress=client.compress)
        for temporary_digest, temporary in self._temporary.items():
            if hmac.compare_digest(temporary_digest, digest) and found is None:
                found = temporary
        public = self.server.config.public_vkey
        if public and _digest_matches(digest, public) and found is None:
            found = LegacyClient(None, public, public=True)
        return found

    def enabled(self, client: LegacyClient) -> bool:
        if client.public or client.client_id is None or client.client_id < 0:
            return True
        record = self.server._clients.get(client.client_id)
        return record is not None and record.enabled

    # -- sessions --------------------------------------------------------------------

    def signal_connected(self, client: LegacyClient, conn: "LegacyConnection") -> None:
        assert client.client_id is not None
        entry = self.handles.get(client.client_id)
        if entry is not None and entry[1].signal is not None and entry[1].mux is not None:
            # A new npc with this vkey: the old session goes, as in NPS.
            session, handle = entry
            log.info("client {id}: new NPS 0.26 connection from {new} replaces the one from {old}",
                     id=client.client_id, new=conn.peer, old=handle.peer)
            self.end_session(client.client_id, f"replaced by a newer connection from {conn.peer}")
        handle = self._handle_for(client, conn.peer)
        old = handle.signal
        handle.signal = conn
        handle.transport = conn.bridge.transport
        if old is not None and old is not conn:
            old.bridge.transport.loseConnection()

        def lost() -> None:
            if handle.signal is conn:
                self._connection_lost(client, handle, "signal connection closed")

        conn.on_lost = lost

    def chan_connected(self, client: LegacyClient, conn: "LegacyConnection", version: str) -> LegacyMux:
        assert client.client_id is not None
        handle = self._handle_for(client, conn.peer)
        if handle.mux is not None:
            self.end_session(client.client_id, "a second chan connection replaces this one")
            handle = self._handle_for(client, conn.peer)
        server = self.server

        def lost(reason: str) -> None:
            if handle.mux is not None and handle.mux.chan is mux:
                self._connection_lost(client, handle, reason)

        mux = LegacyMux(conn.bridge.transport, server.reactor, name=f"legacy client {client.client_id}",
                        on_close=lost, ping_interval=server.ping_interval, idle_timeout=server.idle_timeout)
        handle.chan = conn
        if handle.transport is None:
            handle.transport = conn.bridge.transport
        handle.mux = LegacySessionMux(handle, mux)
        file_mux = self._files.pop(client.client_id, None)
        if file_mux is not None and not file_mux.closed:
            handle.mux.file = file_mux
        self._start_session(client, handle, version)
        return mux

    def file_connected(self, client: LegacyClient, conn: "LegacyConnection") -> LegacyMux:
        assert client.client_id is not None
        client_id = client.client_id

        def closed(reason: str) -> None:
            if self._files.get(client_id) is mux:
                del self._files[client_id]

        mux = LegacyMux(conn.bridge.transport, self.server.reactor,
                        name=f"legacy client {client.client_id} file", on_close=closed,
                        ping_interval=self.server.ping_interval, idle_timeout=self.server.idle_timeout)
        entry = self.handles.get(client.client_id)
        if entry is not None and entry[1].mux is not None:
            entry[1].mux.file = mux
        else:
            old = self._files.get(client.client_id)
            if old is not None:
                old.go_away("replaced")
            self._files[client.client_id] = mux
        return mux

    def _handle_for(self, client: LegacyClient, peer: str) -> LegacyHandle:
        assert client.client_id is not None
        entry = self.handles.get(client.client_id)
        if entry is not None:
            return entry[1]
        handle = self._half.get(client.client_id)
        if handle is None or handle.closed:
            handle = LegacyHandle(peer)
            self._half[client.client_id] = handle
        return handle

    def _start_session(self, client: LegacyClient, handle: LegacyHandle, version: str) -> None:
        from nps.server import ClientSession  # circular at import time
        assert client.client_id is not None
        self._half.pop(client.client_id, None)
        server = self.server
        old = server.sessions.get(client.client_id)
        if old is not None:
            # Replaced, as NPS does when a second npc uses the same vkey.
            server._drop_session(old, _replaced_code(), f"replaced by an NPS 0.26 client from {handle.peer}")
        record = server._clients.get(client.client_id)
        remark = record.remark if record is not None else (client.remark or "public")
        session = ClientSession(client.client_id, remark, handle, handle.peer,  # type: ignore[arg-type]
                                (version or "?")[:48] + VERSION_MARK, public=client.client_id < 0)
        session.crypt = client.crypt or bool(record is not None and record.crypt)
        session.compress = client.compress or bool(record is not None and record.compress)
        session.config_tunnels.extend(t for t in client.tunnels if t in server.tunnels)
        client.tunnels.clear()
        if client.expiry is not None and client.expiry.active():
            client.expiry.cancel()
        client.expiry = None
        self._pending.pop(client.client_id, None)
        self.handles[client.client_id] = (session, handle)
        handle.session = session
        log.warn("client {id} ({remark}) logged in with the NPS 0.26 protocol from {remote}: its vkey check is "
                 "md5 only (replayable by anyone who sees the bridge traffic), the bridge is not encrypted",
                 id=client.client_id, remark=remark, remote=handle.peer)
        server.session_started(session)
        hosts, client.hosts = client.hosts, []
        if hosts:
            for result in server.vhosts.register(session, hosts):
                if not result.get("ok"):
                    log.warn("legacy client {id}: domain {remark!r} refused: {error}", id=client.client_id,
                             remark=result.get("remark"), error=result.get("error"))

    def _connection_lost(self, client: LegacyClient, handle: LegacyHandle, reason: str) -> None:
        assert client.client_id is not None
        if handle.closed:
            return
        entry = self.handles.get(client.client_id)
        if entry is not None and entry[1] is handle:
            self.end_session(client.client_id, reason)
        else:
            handle.closed = True
            handle.close(reason)
            if self._half.get(client.client_id) is handle:
                del self._half[client.client_id]

    def end_session(self, client_id: int, reason: str) -> None:
        entry = self.handles.pop(client_id, None)
        if entry is None:
            return
        session, handle = entry
        handle.closed = True
        if handle.mux is not None and not handle.mux.chan.close_reason:
            handle.mux.chan.close_reason = reason
        handle.close(reason)
        if handle.mux is not None:
            handle.mux.chan.connection_lost(reason)
        self.server.session_ended(session)
        for key, temporary in list(self._temporary.items()):
            if temporary.client_id == client_id:
                del self._temporary[key]

    # -- config-file mode ------------------------------------------------------------

    def public_client(self, record: dict[str, Any]) -> LegacyClient | None:
        """A config-file client that logged in with C{public_vkey}: it gets an id and a one-time key.

        None when L{MAX_PENDING_PUBLIC} public clients already wait for their session.
        """
        waiting = sum(1 for c in self._temporary.values() if c.client_id not in self.handles)
        if waiting >= MAX_PENDING_PUBLIC:
            return None
        vkey = "".join(secrets.choice(_VKEY_ALPHABET) for _ in range(16))
        cnf = record.get("Cnf") if isinstance(record.get("Cnf"), dict) else {}
        assert isinstance(cnf, dict)
        client = LegacyClient(next(self.server._ephemeral_ids), vkey, remark=str(record.get("Remark", ""))[:128],
                              crypt=cnf.get("Crypt") is True, compress=cnf.get("Compress") is True)
        self._temporary[lh.md5_hex(vkey)] = client
        self._expire_later(client)
        return client

    def private_client(self, client: LegacyClient) -> LegacyClient:
        """A store client in config-file mode: its earlier pending tunnels go."""
        assert client.client_id is not None
        old = self._pending.pop(client.client_id, None)
        if old is not None:
            self._drop_tunnels(old)
        fresh = LegacyClient(client.client_id, client.vkey, remark=client.remark, crypt=client.crypt,
                             compress=client.compress)
        self._pending[client.client_id] = fresh
        self._expire_later(fresh)
        return fresh

    def _expire_later(self, client: LegacyClient) -> None:
        client.expiry = self.server.reactor.callLater(PENDING_TIMEOUT, self._expire, client)

    def _expire(self, client: LegacyClient) -> None:
        client.expiry = None
        if client.client_id in self.handles:
            return
        log.info("legacy client {id}: no main/chan connection {t:.0f}s after its config; closing its tunnels",
                 id=client.client_id, t=PENDING_TIMEOUT)
        self._drop_tunnels(client)
        for key, temporary in list(self._temporary.items()):
            if temporary is client:
                del self._temporary[key]
        if client.client_id is not None and self._pending.get(client.client_id) is client:
            del self._pending[client.client_id]

    def _drop_tunnels(self, client: LegacyClient) -> None:
        for tunnel_id in client.tunnels:
            self.server._close_tunnel(tunnel_id)
        client.tunnels.clear()

    def open_tunnels(self, client: LegacyClient, record: dict[str, Any]) -> Deferred[str | None]:
        """Open the tunnels of one NPS C{task} record; fires with None or why not."""
        server = self.server
        assert client.client_id is not None
        try:
            tunnels = tunnels_from_task(record, client.client_id, server._ephemeral_ids)
            if len(client.tunnels) + len(tunnels) > MAX_CONFIG_TUNNELS:
                raise ValueError(f"more than {MAX_CONFIG_TUNNELS} tunnels from one config file")
            for tunnel in tunnels:
                server._check_tunnel(tunnel)
        except ValueError as e:
            return succeed(str(e))
        results: list[Deferred[str | None]] = []
        for tunnel in tunnels:
            client.tunnels.append(tunnel.id)
            results.append(server._open_tunnel(tunnel))
        entry = self.handles.get(client.client_id)

        def done(errors: list[str | None]) -> str | None:
            if entry is not None:
                entry[0].config_tunnels.extend(client.tunnels)
                client.tunnels.clear()
            failed = [e for e in errors if e]
            return "; ".join(failed) if failed else None

        return gatherResults(results).addCallback(done)

    def running_remarks(self, client_id: int) -> list[str]:
        """Remarks of C{client_id}'s domains and open tunnels (C{npc status})."""
        remarks = [route.host.remark for route in self.server.vhosts.registry
                   if route.host.client_id == client_id]
        remarks += [running.tunnel.remark for running in self.server.tunnels.values()
                    if running.tunnel.client_id == client_id and running.port is not None]
        return remarks

    def check_host(self, client: LegacyClient, record: dict[str, Any]) -> str | None:
        """Accept one NPS C{host} record for C{client} (routed when its session starts); None or why not."""
        from nps.model import Host
        from nps.vhost.service import MAX_CONFIG_HOSTS, check_host_record

        if len(client.hosts) >= MAX_CONFIG_HOSTS:
            return f"more than {MAX_CONFIG_HOSTS} domains from one config file"
        try:
            wire = host_from_nps(record)
            host = Host.from_wire(dict(wire, client_id=client.client_id or 0))
            check_host_record(host)
        except ValueError as e:
            return str(e)
        other = self.server.vhosts.registry.conflict(host)
        if other is not None and other.host.client_id != client.client_id:
            return f"{host.host}{host.location} is already routed to client {other.host.client_id}"
        client.hosts.append(wire)
        return None

    def secret_tunnel(self, digest: bytes) -> Any:
        """The running secret tunnel whose C{md5(password)} is C{digest}, or None."""
        found = None
        for running in self.server.tunnels.values():
            tunnel = running.tunnel
            if tunnel.mode == "secret" and tunnel.password and _digest_matches(digest, tunnel.password):
                found = found or running
        return found


def _replaced_code() -> Any:
    from nps.protocols.frames import GoAwayCode
    return GoAwayCode.REPLACED


_registries: "weakref.WeakKeyDictionary[NpsServer, LegacyRegistry]" = weakref.WeakKeyDictionary()


def registry_for(server: "NpsServer") -> LegacyRegistry:
    registry = _registries.get(server)
    if registry is None:
        registry = _registries[server] = LegacyRegistry(server)
    return registry


# -- NPS task records -> our tunnels ------------------------------------------------------

MAX_PORTS = MAX_CONFIG_TUNNELS


def expand_ports(text: str) -> list[int]:
    """NPS's port list C{"9001-9003,10001"} -> C{[9001, 9002, 9003, 10001]} (bounded).

    @raise ValueError: on a bad entry or too many ports.
    """
    ports: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, sep, high = part.partition("-")
        try:
            start = int(low)
            end = int(high) if sep else start
        except ValueError:
            raise ValueError(f"bad port {part!r}") from None
        if not (0 < start <= end < 65536):
            raise ValueError(f"bad port range {part!r}")
        if len(ports) + end - start + 1 > MAX_PORTS:
            raise ValueError(f"more than {MAX_PORTS} ports in {text!r}")
        ports.extend(range(start, end + 1))
    return ports


def host_from_nps(record: dict[str, Any]) -> dict[str, Any]:
    """Our host wire record for an NPS C{file.Host} record from an npc.conf.

    @raise ValueError: naming what is missing.
    """
    name = record.get("Host")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("domain has no host")
    target = record.get("Target") if isinstance(record.get("Target"), dict) else {}
    assert isinstance(target, dict)
    targets = [_target(t) for t in str(target.get("TargetStr", "") or "").replace("\n", ",").split(",")
               if t.strip()]
    headers: dict[str, str] = {}
    for line in str(record.get("HeaderChange", "") or "").split("\n"):
        header, sep, value = line.partition(":")
        if sep and header.strip():
            headers[header.strip()] = value.strip()
    return {"id": 0, "client_id": 0, "host": name.strip(), "location": str(record.get("Location", "") or "/"),
            "scheme": str(record.get("Scheme", "") or "all"), "targets": targets,
            "host_change": str(record.get("HostChange", "") or ""), "headers": headers,
            "remark": str(record.get("Remark", ""))[:128]}


def _target(text: str) -> str:
    text = text.strip()
    return f"127.0.0.1:{text}" if text.isdigit() else text


def tunnels_from_task(record: dict[str, Any], client_id: int, ids: Iterable[int]) -> list[Tunnel]:
    """Our tunnels for one NPS C{file.Tunnel} record from an npc.conf (one per server port).

    @raise ValueError: naming what is wrong in the record.
    """
    ids = iter(ids)
    mode = record.get("Mode")
    if not isinstance(mode, str) or not mode:
        raise ValueError("task has no Mode")
    remark = str(record.get("Remark", ""))[:128]
    target = record.get("Target") if isinstance(record.get("Target"), dict) else {}
    assert isinstance(target, dict)
    target_text = str(target.get("TargetStr", "") or "")
    targets = tuple(_target(t) for t in target_text.replace("\n", ",").split(",") if t.strip())
    server_ip = str(record.get("ServerIp", "") or "0.0.0.0")
    options: dict[str, str] = {}
    accounts = record.get("MultiAccount")
    if isinstance(accounts, dict) and isinstance(accounts.get("AccountMap"), dict):
        options[ACCOUNTS_OPTION] = format_accounts({str(k): str(v) for k, v in accounts["AccountMap"].items()})
    common = dict(client_id=client_id, mode=mode, server_ip=server_ip, password=str(record.get("Password", "")),
                  local_path=str(record.get("LocalPath", "")), strip_pre=str(record.get("StripPre", "")),
                  options=options)
    if mode in ("secret", "p2p"):
        return [Tunnel(id=next(ids), targets=targets, remark=remark, **common)]  # type: ignore[arg-type]
    ports = expand_ports(str(record.get("Ports", "") or record.get("Port", "")))
    if not ports:
        raise ValueError(f"task {remark!r} has no server_port")
    if len(ports) == 1:
        return [Tunnel(id=next(ids), server_port=ports[0], targets=targets, remark=remark,
                       **common)]  # type: ignore[arg-type]
    target_ports = expand_ports(target_text.replace("\n", ",")) if mode in ("tcp", "udp") else []
    if mode in ("tcp", "udp") and len(target_ports) != len(ports):
        raise ValueError(f"task {remark!r}: {len(ports)} server ports but {len(target_ports)} target ports")
    host = str(record.get("TargetAddr", "") or "127.0.0.1")
    out = []
    for index, port in enumerate(ports):
        port_targets = (format_host_port(host, target_ports[index]),) if target_ports else targets
        out.append(Tunnel(id=next(ids), server_port=port, targets=port_targets, remark=f"{remark}_{port}",
                          **common))  # type: ignore[arg-type]
    return out


# -- one connection ------------------------------------------------------------------------


class LegacyConnection:
    """An NPS 0.26 connection on the bridge port, from the handshake to its work type."""

    def __init__(self, bridge: "BridgeServerProtocol") -> None:
        self.bridge = bridge
        self.server: "NpsServer" = bridge.factory.server
        self.registry = registry_for(self.server)
        self.peer = bridge.peer
        self._handshake: lh.LegacyServerHandshake | None = lh.LegacyServerHandshake()
        self._version = ""
        self.client: LegacyClient | None = None
        self._target: Any = None  # what gets the bytes after the handshake
        self._reader: lh.LegacyMessageReader | None = None
        self._role = ""
        self._conf_timer: IDelayedCall | None = None
        self._busy = False
        self._events: list[lh.Hello | lh.KeyProof | lh.WorkType] = []
        self.on_lost: Any = None

    # -- bytes in ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._target is not None:
            self._target(data)
            return
        handshake = self._handshake
        if handshake is None:
            return
        try:
            self._events.extend(handshake.feed(data))
        except lh.LegacyHandshakeError as e:
            self._fail(str(e), "bad_magic_or_version")
            return
        self._run_events()

    def _run_events(self) -> None:
        """Handle the parsed handshake steps in order (a key lookup may pause them)."""
        while self._events and not self._busy and self._handshake is not None:
            event = self._events.pop(0)
            if isinstance(event, lh.Hello):
                if event.core != lh.CORE_VERSION:
                    self._fail(f"NPS core version {event.core!r} (only {lh.CORE_VERSION} is supported)",
                               "bad_magic_or_version")
                    return
                self._version = event.full
                self.bridge.transport.write(lh.server_version_proof())
            elif isinstance(event, lh.KeyProof):
                self._check_key(event.digest)
            else:
                self._work(event.flag, event.rest)

    def _check_key(self, digest: bytes, retried: bool = False) -> None:
        client = self.registry.lookup(digest)
        if client is None and not retried:
            # Maybe a client added a moment ago by another process: look again once.
            self.bridge.transport.pauseProducing()
            self._busy = True
            self.server.refresh().addBoth(lambda _: self._retry_key(digest))
            return
        if client is None or not self.registry.enabled(client):
            reason = "unknown vkey" if client is None else f"client {client.client_id} is disabled"
            self.bridge.transport.write(lh.REJECTED)
            self._fail(reason, "wrong_vkey")
            return
        self.client = client
        self.bridge.transport.write(lh.ACCEPTED)

    def _retry_key(self, digest: bytes) -> None:
        self._busy = False
        if not self.bridge.connected:
            return
        self._check_key(digest, retried=True)
        if self.client is not None:
            self.bridge.transport.resumeProducing()
            self._run_events()

    def _fail(self, reason: str, stat: str) -> None:
        log.warn("legacy bridge: {peer}: {reason}; closing", peer=self.peer, reason=reason)
        self.server.stats.handshake_failed(stat)
        self._handshake = None
        self.bridge.legacy_handshake_done()
        self.bridge.transport.loseConnection()

    # -- work types -------------------------------------------------------------------

    def _work(self, flag: bytes, rest: bytes) -> None:
        self._handshake = None
        client = self.client
        assert client is not None
        if flag not in (lh.WORK_REGISTER, lh.WORK_SECRET):
            # rgst and sert keep the handshake's timer and slot until their request is read.
            self.bridge.legacy_handshake_done()
        self._role = flag.decode()
        if client.public and flag not in (lh.WORK_CONFIG, lh.WORK_REGISTER, lh.WORK_SECRET):
            log.warn("legacy bridge: {peer}: public_vkey may only be used for config-file mode; closing",
                     peer=self.peer)
            self.bridge.transport.loseConnection()
            return
        if flag == lh.WORK_MAIN:
            self.registry.signal_connected(client, self)
            self._reader = lh.LegacyMessageReader(rest)
            self._target = self._signal_data
            self._signal_data(b"")
        elif flag == lh.WORK_CHAN:
            mux = self.registry.chan_connected(client, self, self._version)
            self._target = mux.data_received
            self.on_lost = lambda: mux.connection_lost("connection closed")
            if rest:
                mux.data_received(rest)
        elif flag == lh.WORK_FILE:
            mux = self.registry.file_connected(client, self)
            self._target = mux.data_received
            self.on_lost = lambda: mux.connection_lost("connection closed")
            if rest:
                mux.data_received(rest)
        elif flag == lh.WORK_CONFIG:
            self._start_conf(rest)
        elif flag == lh.WORK_REGISTER:
            self._reader = lh.LegacyMessageReader(rest)
            self._target = self._register_data
            self._register_data(b"")
        elif flag == lh.WORK_SECRET:
            self._reader = lh.LegacyMessageReader(rest)
            self._target = self._secret_data
            self._secret_data(b"")
        else:
            log.warn("legacy bridge: {peer}: p2p ({flag}) is not supported; closing", peer=self.peer,
                     flag=flag.decode())
            self.bridge.transport.loseConnection()

    def _guard(self, feed: Any) -> bool:
        try:
            feed()
        except lh.LegacyHandshakeError as e:
            log.warn("legacy bridge: {peer} ({role}): {error}; closing", peer=self.peer, role=self._role,
                     error=str(e))
            self._target = lambda data: None
            self.bridge.transport.loseConnection()
            return False
        return True

    def _signal_data(self, data: bytes) -> None:
        """Health reports (C{int32 len} + C{"target*#*0|1*#*"}): logged."""
        reader = self._reader
        assert reader is not None
        if not self._guard(lambda: reader.feed(data)):
            return
        while True:
            size = reader.int32()
            if size is None:
                return
            if not 0 < size <= MAX_HEALTH_REPORT:
                log.warn("legacy bridge: {peer}: health report of {n} bytes; closing", peer=self.peer, n=size)
                self.bridge.transport.loseConnection()
                return
            # int32 already consumed; wait for the body.
            body = reader._reader.take(size)
            if body is None:
                reader._reader._pos -= 4
                return
            self._health(body.decode("utf-8", "replace"))

    def _health(self, report: str) -> None:
        """NPS's C{"target*#*0|1*#*"}: a target of the client's load balancing went down (0) or up (1)."""
        parts = report.split(lh.LIST_SEP)
        client = self.client
        entry = self.registry.handles.get(client.client_id or 0) if client is not None else None
        if len(parts) < 2 or parts[1] not in ("0", "1") or entry is None:
            log.info("legacy bridge: {peer}: ignoring health report {report!r}", peer=self.peer, report=report[:300])
            return
        self.server.vhosts.health(entry[0], {"type": "health", "target": parts[0], "up": parts[1] == "1"})

    def _register_data(self, data: bytes) -> None:
        reader = self._reader
        assert reader is not None and self.client is not None
        if not self._guard(lambda: reader.feed(data)):
            return
        hours = reader.int32()
        if hours is None:
            return
        self.bridge.legacy_handshake_done()
        self._target = lambda data: None
        ip = self.bridge.transport.getPeer().host
        try:
            self.server.register_ip(ip, float(hours), self.client.client_id)
        except ValueError as e:
            log.warn("legacy bridge: {peer}: npc register refused: {error}", peer=self.peer, error=str(e))
        self.bridge.transport.loseConnection()

    def _secret_data(self, data: bytes) -> None:
        reader = self._reader
        assert reader is not None
        if not self._guard(lambda: reader.feed(data)):
            return
        digest = reader.digest() if reader.buffered >= 32 else None
        if digest is None:
            return
        self.bridge.legacy_handshake_done()
        leftover = reader._reader.rest()
        running = self.registry.secret_tunnel(digest)
        if running is None:
            log.warn("legacy bridge: {peer}: secret visit refused: wrong password", peer=self.peer)
            self._target = lambda data: None
            self.bridge.transport.loseConnection()
            return
        tunnel = running.tunnel
        visitor = Relay()
        self._target = visitor.dataReceived
        self.on_lost = lambda: visitor.connectionLost()
        visitor.makeConnection(self.bridge.transport)
        if leftover:
            visitor.dataReceived(leftover)
        d = self.server.opener_for(running)({"mode": "tcp", "target": tunnel.targets[0],
                                             "remote": f"secret visitor {self.peer}",
                                             "tunnel": tunnel.id}).connect(RelayFactory(visitor))

        def missing(failure: Any) -> None:
            log.warn("legacy bridge: secret tunnel {remark!r} for {peer}: {error}", remark=tunnel.remark,
                     peer=self.peer, error=failure.getErrorMessage())
            self.bridge.transport.loseConnection()

        d.addErrback(missing)

    # -- config-file mode -------------------------------------------------------------

    def _start_conf(self, rest: bytes) -> None:
        client = self.client
        assert client is not None
        if not client.public:
            record = self.server._clients.get(client.client_id or 0)
            if record is None or not record.config_conn_allow:
                log.warn("legacy bridge: {peer}: client {id} may not use config-file mode; closing",
                         peer=self.peer, id=client.client_id)
                self.bridge.transport.loseConnection()
                return
        self._reader = lh.LegacyMessageReader(rest)
        self._target = self._conf_data
        self._conf_timer = self.server.reactor.callLater(CONF_TIMEOUT, self._conf_timeout)
        self.bridge.transport.write(lh.bool_byte(client.public))
        self._conf_data(b"")

    def _conf_timeout(self) -> None:
        self._conf_timer = None
        log.warn("legacy bridge: {peer}: config conversation longer than {t:.0f}s; closing", peer=self.peer,
                 t=CONF_TIMEOUT)
        self.bridge.transport.abortConnection()

    def _conf_data(self, data: bytes) -> None:
        reader = self._reader
        assert reader is not None
        if not self._guard(lambda: reader.feed(data)):
            return
        while not self._busy:
            message: lh.ConfMessage | None = None

            def next_message() -> None:
                nonlocal message
                message = reader.conf()

            if not self._guard(next_message) or message is None:
                return
            self._conf_message(message)

    def _conf_message(self, message: lh.ConfMessage) -> None:
        client = self.client
        assert client is not None
        transport = self.bridge.transport
        if message.flag == lh.CONF_STATUS:
            found = self.registry.lookup(message.payload)
            remarks = self.registry.running_remarks(found.client_id) if found and found.client_id else []
            transport.write(lh.status_list(remarks))
            return
        record = _json_object(message.payload)
        if record is None:
            log.warn("legacy bridge: {peer}: config message {flag} is not a JSON object; closing",
                     peer=self.peer, flag=message.flag.decode())
            transport.write(lh.bool_byte(False))
            transport.loseConnection()
            return
        if message.flag == lh.CONF_CLIENT:
            if not client.public:
                transport.write(lh.bool_byte(True))
                return
            fresh = self.registry.public_client(record)
            if fresh is None:
                log.warn("legacy bridge: {peer}: too many public-key config clients waiting for their session; "
                         "refusing", peer=self.peer)
                transport.write(lh.bool_byte(False))
                transport.loseConnection()
                return
            self.client = fresh
            log.info("legacy bridge: {peer}: public-key config client, now client {id}", peer=self.peer,
                     id=fresh.client_id)
            transport.write(lh.bool_byte(True) + fresh.vkey.encode("ascii"))
            return
        if client.public:
            log.warn("legacy bridge: {peer}: config sent {flag} before its client record; closing",
                     peer=self.peer, flag=message.flag.decode())
            transport.write(lh.bool_byte(False))
            transport.loseConnection()
            return
        if client.client_id is not None and client.client_id > 0 and client is not self.registry._pending.get(
                client.client_id):
            self.client = client = self.registry.private_client(client)
        if message.flag == lh.CONF_HOST:
            error = self.registry.check_host(client, record)
            if error:
                log.warn("legacy client {id}: domain {host!r} from its npc.conf refused: {error}",
                         id=client.client_id, host=str(record.get("Host", ""))[:255], error=error)
            transport.write(lh.bool_byte(error is None))
            if error:
                transport.loseConnection()
            return
        # CONF_TASK: one answer per task (NPS sent one per port, but its npc reads one).
        self._busy = True
        self.bridge.transport.pauseProducing()

        def answered(error: str | None) -> None:
            self._busy = False
            if not self.bridge.connected:
                return
            if error:
                log.warn("legacy client {id}: tunnel {remark!r} from its npc.conf refused: {error}",
                         id=client.client_id, remark=str(record.get("Remark", "")), error=error)
            transport.write(lh.bool_byte(error is None))
            if error:
                transport.loseConnection()
                return
            transport.resumeProducing()
            self._conf_data(b"")

        self.registry.open_tunnels(client, record).addCallback(answered)

    def connectionLost(self) -> None:
        if self._conf_timer is not None and self._conf_timer.active():
            self._conf_timer.cancel()
        self._conf_timer = None
        self._handshake = None
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()


def _json_object(payload: bytes) -> dict[str, Any] | None:
    import json
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


#: Seconds between two "set legacy_bridge=true" lines for one address (an old npc retries every 5 s).
REFUSAL_LOG_INTERVAL = 600.0
_refusals_logged: dict[str, float] = {}


def legacy_handler(bridge: "BridgeServerProtocol") -> LegacyConnection | None:
    """A handler for an NPS 0.26 connection, or None (and a log line) when C{legacy_bridge} is off."""
    server = bridge.factory.server
    if not getattr(server.config, "legacy_bridge", False):
        host = bridge.transport.getPeer().host
        now = server.reactor.seconds()
        if now - _refusals_logged.get(host, float("-inf")) >= REFUSAL_LOG_INTERVAL:
            if len(_refusals_logged) > 4096:
                _refusals_logged.clear()
            _refusals_logged[host] = now
            log.warn("bridge: {peer} speaks the NPS 0.26 protocol (an old npc); set legacy_bridge=true in "
                     "nps.conf to accept such clients (said once per {t:.0f} min per address)", peer=bridge.peer,
                     t=REFUSAL_LOG_INTERVAL / 60)
        server.stats.handshake_failed("rejected")
        return None
    warm_up(server.reactor)
    return LegacyConnection(bridge)

