# -*- test-case-name: test.test_vhost_service -*-
"""
The server-wide domain proxy: the C{http_proxy_port} and C{https_proxy_port}
listeners, the route table fed from the store and from config-file clients,
health reports, TLS certificates, and streams to the owning clients.

L{NpsServer} holds one L{VhostService} as C{server.vhosts} and calls it at
start, on every store change, on register and health control messages,
when a session ends, and at stop.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from nps.model import HOST_SCHEMES, Host
from nps.stats import TrafficCounter
from nps.vhost.registry import Registry, Route

if TYPE_CHECKING:
    from nps.server import ClientSession, NpsServer

__all__ = ["VhostService", "MAX_CONFIG_HOSTS", "load_tls_context"]

#: Most hosts one config-file client may register.
MAX_CONFIG_HOSTS = 256
_MAX_HEADER_VALUE = 4096


def load_tls_context(cert_file: str, key_file: str) -> Any:
    """
    Build a server TLS context from PEM files (chain allowed in C{cert_file});
    ALPN offers HTTP/1.1 only, since the terminated side speaks HTTP/1.1.
    Blocking: run it in a thread.

    @return: an object with C{getContext()}, for C{TLSMemoryBIOFactory}.
    @raise Exception: when a file cannot be read or the key does not match.
    """
    from OpenSSL import SSL

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    context.use_certificate_chain_file(os.fsencode(cert_file))
    context.use_privatekey_file(os.fsencode(key_file))
    context.check_privatekey()

    def select(connection: Any, offered: list[bytes]) -> Any:
        return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    context.set_alpn_select_callback(select)

    class _Factory:
        def getContext(self) -> Any:
            return context

    return _Factory()


def check_host_record(host: Host) -> None:
    """
    What the route table needs of a host beyond the store's rules.

    @raise ValueError: for a bad scheme, location or header.
    """
    if host.scheme not in HOST_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(HOST_SCHEMES)}")
    if not host.location.startswith("/") or any(c in host.location for c in " \t\r\n"):
        raise ValueError(f"location {host.location!r} must be a URL path")
    for name, value in host.headers.items():
        if not name or any(not (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in name) or not name.isascii():
            raise ValueError(f"bad header name {name!r}")
        if any(c in value for c in "\r\n\x00") or len(value) > _MAX_HEADER_VALUE:
            raise ValueError(f"bad value for header {name!r}")
    if any(c in host.host_change for c in "\r\n\x00 "):
        raise ValueError("bad host_change")
    try:
        host.host_change.encode("latin-1")
        for name, value in host.headers.items():
            value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("headers must be Latin-1 text") from None


class VhostService:
    """Listeners, routes and streams of the domain proxy (one per server)."""

    log = Logger()

    def __init__(self, server: "NpsServer") -> None:
        self.server = server
        self.reactor = server.reactor
        self.registry = Registry()
        #: Traffic per host id (config-file hosts have negative ids).
        self.counters: dict[int, TrafficCounter] = {}
        self._session_hosts: dict[Any, list[int]] = {}
        self._ports: list[Any] = []
        self._tls: dict[tuple[str, str], Any] = {}
        self._loading: dict[tuple[str, str], list[Deferred[Any]]] = {}
        self.http_address: Any = None
        self.https_address: Any = None

    # -- settings (read live, so a reload takes effect) -----------------------------

    @property
    def add_origin_header(self) -> bool:
        return bool(self.server.config.http_add_origin_header)

    @property
    def just_proxy(self) -> bool:
        return bool(self.server.config.https_just_proxy)

    @property
    def https_port(self) -> int:
        if self.https_address is not None:
            return int(self.https_address.port)
        return int(self.server.config.https_proxy_port or 0)

    @property
    def default_cert(self) -> tuple[str, str]:
        config = self.server.config
        return config.https_default_cert_file, config.https_default_key_file

    @property
    def has_default_cert(self) -> bool:
        return all(self.default_cert)

    def basic_auth(self, client_id: int) -> tuple[str, str] | None:
        """The client's C{basic_username}/C{basic_password} that its sites require (NPS's Cnf.U/P), if set."""
        client = self.server._clients.get(client_id)
        if client is None or not client.basic_username:
            return None
        return client.basic_username, client.basic_password

    # -- lifecycle ----------------------------------------------------------------------

    def listen(self) -> None:
        """Bind the configured vhost ports (privileged start); a busy port stops start-up."""
        from nps.vhost.http import VhostHttpFactory
        from nps.vhost.https import VhostTlsFactory

        config = self.server.config
        ip = config.http_proxy_ip
        for port, factory, what in ((config.http_proxy_port, VhostHttpFactory(self, "http"), "http"),
                                    (config.https_proxy_port, VhostTlsFactory(self), "https")):
            if not port:
                continue
            try:
                listening = self.reactor.listenTCP(port, factory, interface=ip)
            except CannotListenError as e:
                for other in self._ports:
                    other.stopListening()
                raise SystemExit(f"nps: cannot listen on {what}_proxy_port {ip}:{port}: {e.socketError}") from None
            self._ports.append(listening)
            address = listening.getHost()
            if what == "http":
                self.http_address = address
            else:
                self.https_address = address
            self.log.info("domain proxy ({what}) listening on {host}:{port}", what=what,
                          host=address.host, port=address.port)
        if config.https_proxy_port and not config.https_just_proxy and not self.has_default_cert:
            self.log.warn("https_just_proxy=false without https_default_cert_file/key_file: "
                          "only hosts with their own cert_file can be served over HTTPS")

    def stop(self) -> Deferred[Any]:
        ports, self._ports = self._ports, []
        return DeferredList([maybeDeferred(p.stopListening) for p in ports])

    # -- stored hosts -------------------------------------------------------------------

    def apply_snapshot(self, snapshot: Any) -> None:
        """Route the store's enabled hosts of enabled clients (no-config mode)."""
        clients = {c.id: c for c in snapshot.clients}
        wanted = []
        for host in snapshot.hosts:
            client = clients.get(host.client_id)
            if host.enabled and client is not None and client.enabled:
                wanted.append(host)
        for host, error in self.registry.sync(wanted):
            self.log.error("host {id} ({host}): not routed: {error}", id=host.id, host=host.host, error=error)
        for host in wanted:
            self.counters.setdefault(host.id, TrafficCounter())

    # -- config-file hosts ------------------------------------------------------------

    def register(self, session: "ClientSession", records: Any) -> list[dict[str, Any]]:
        """
        Replace the hosts a config-file client declared (control C{register}).

        @return: one C{{"remark", "ok", "error"}} result per record.
        """
        if not isinstance(records, list):
            return [{"remark": "hosts", "ok": False, "error": "hosts must be a list"}]
        if len(records) > MAX_CONFIG_HOSTS:
            return [{"remark": "hosts", "ok": False, "error": f"at most {MAX_CONFIG_HOSTS} hosts"}]
        old = self._session_hosts.pop(session, [])
        kept: dict[tuple[Any, ...], int] = {}
        for host_id in old:
            route = self.registry.get(host_id)
            if route is not None:
                kept[_identity(route.host)] = host_id
        results: list[dict[str, Any]] = []
        mine: list[int] = []
        new_hosts: list[tuple[Host, str]] = []
        for record in records:
            remark = str(record.get("remark", "")) if isinstance(record, dict) else ""
            try:
                host = Host.from_wire(record)
                host = attrs.evolve(host, id=next(self.server._ephemeral_ids), client_id=session.client_id,
                                    cert_file="", key_file="")
                check_host_record(host)
            except ValueError as e:
                results.append({"remark": remark, "ok": False, "error": str(e)})
                continue
            same = kept.pop(_identity(host), None)
            if same is not None:
                mine.append(same)
                results.append({"remark": remark, "ok": True, "error": ""})
                continue
            new_hosts.append((host, remark))
            results.append({"remark": remark, "ok": True, "error": ""})
        for host_id in kept.values():
            self._remove(host_id)
        for index, (host, remark) in enumerate(new_hosts):
            try:
                self.registry.add(host)
            except ValueError as e:
                for result in results:
                    if result["remark"] == remark and result["ok"]:
                        result.update(ok=False, error=str(e))
                        break
                continue
            mine.append(host.id)
            self.counters[host.id] = TrafficCounter()
            self.log.info("host {id} ({remark}): {host}{location} ({scheme}) -> client {client} {targets}",
                          id=host.id, remark=remark, host=host.host, location=host.location, scheme=host.scheme,
                          client=session.client_id, targets=",".join(host.targets))
        if mine:
            self._session_hosts[session] = mine
        return results

    def session_gone(self, session: "ClientSession") -> None:
        """A session ended: its config-file hosts go, and its health reports."""
        for host_id in self._session_hosts.pop(session, []):
            self._remove(host_id)
        if not any(s.client_id == session.client_id for s in self._session_hosts) and \
                self.server.sessions.get(session.client_id) is None:
            self.registry.clear_health(session.client_id)

    def _remove(self, host_id: int) -> None:
        route = self.registry.remove(host_id)
        counter = self.counters.pop(host_id, None)
        if route is not None:
            self.log.info("host {id} ({host}) removed after {n} connections", id=host_id, host=route.host.host,
                          n=counter.connections if counter else 0)

    # -- health reports from npc --------------------------------------------------------

    def health(self, session: "ClientSession", message: dict[str, Any]) -> None:
        """Control C{{"type": "health", "target": "host:port", "up": bool}}."""
        target = message.get("target")
        up = message.get("up")
        if not isinstance(target, str) or not isinstance(up, bool) or len(target) > 300:
            self.log.info("client {id}: ignoring malformed health report", id=session.client_id)
            return
        routes = self.registry.set_health(session.client_id, target, up)
        self.log.info("client {id}: target {target} is {state} (used by {n} hosts)", id=session.client_id,
                      target=target, state="up again" if up else "down", n=routes)

    # -- streams -----------------------------------------------------------------------

    def open_stream(self, route: Route, target: str, remote: str, factory: Any) -> str | None:
        """
        Open a stream to the client owning C{route}, to C{target}; attach
        C{factory}'s protocol at once.

        @return: None, or why the stream could not be opened now.
        """
        from nps.server import StreamEndpoint

        host = route.host
        counters = [self.counters.setdefault(host.id, TrafficCounter()),
                    self.server.client_counters.setdefault(host.client_id, TrafficCounter())]
        link = {"mode": "tcp", "target": target, "remote": remote, "host": host.host, "host_id": host.id}
        d = StreamEndpoint(self.server, host.client_id, link, counters).connect(factory)
        failed: list[Failure] = []
        d.addErrback(failed.append)
        if failed:
            from nps.server import ClientOffline, LimitReached

            if failed[0].check(ClientOffline):
                return "the client serving this site is offline"
            if failed[0].check(LimitReached):
                return f"limit reached: {failed[0].getErrorMessage()}"
            return failed[0].getErrorMessage()
        return None

    # -- certificates --------------------------------------------------------------------

    def tls_factory(self, cert_file: str, key_file: str) -> Deferred[Any]:
        """
        A C{TLSMemoryBIOFactory} serving HTTP vhosts with this certificate,
        loaded in a thread the first time and cached.
        """
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from nps.vhost.http import VhostHttpFactory

        key = (cert_file, key_file)
        cached = self._tls.get(key)
        if cached is not None:
            return succeed(cached)
        waiter: Deferred[Any] = Deferred()
        waiting = self._loading.get(key)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        self._loading[key] = [waiter]

        def done(result: Any) -> None:
            waiters = self._loading.pop(key, [])
            if isinstance(result, Failure):
                self.log.error("cannot load certificate {cert} / key {key}: {error}", cert=cert_file, key=key_file,
                               error=result.getErrorMessage() or repr(result.value))
                for w in waiters:
                    w.errback(result)
                return
            factory = TLSMemoryBIOFactory(result, False, VhostHttpFactory(self, "https"))
            self._tls[key] = factory
            self.log.info("loaded certificate {cert}", cert=cert_file)
            for w in waiters:
                w.callback(factory)

        deferToThreadPool(self.reactor, self.reactor.getThreadPool(), load_tls_context,
                          cert_file, key_file).addBoth(done)
        return waiter

    def forget_certificates(self) -> None:
        """Re-read certificate files on next use (after a reload)."""
        self._tls.clear()


def _identity(host: Host) -> tuple[Any, ...]:
    wire = host.to_wire()
    wire.pop("id", None)
    wire.pop("client_id", None)
    return tuple(sorted((key, repr(value)) for key, value in wire.items()))


def hosts_summary(hosts: Sequence[Host]) -> str:
    return ", ".join(f"{h.host}{h.location}" for h in hosts)
