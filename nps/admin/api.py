# -*- test-case-name: test.test_admin_api -*-
"""
The JSON API under C{/api/v1} and the web UI's files, one Klein app.

Every route but C{POST /api/v1/login} needs a caller: a session cookie
(browser; unsafe methods also need the C{X-CSRF-Token} header), a bearer
token (C{Authorization: Bearer nps_...}), or NPS's C{auth_key} +
C{timestamp} query parameters when nps.conf sets C{auth_key}.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import attrs
from autobahn.twisted.resource import WebSocketResource
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest
from twisted.web.static import File

from nps import __version__
from nps.admin import passwords
from nps.admin.auth import COOKIE_NAME, LoginLimiter, Principal, SessionManager, auth_key_valid, cookie_header, \
    describe
from nps.admin.live import LiveFactory, LiveHub
from nps.admin.openapi import openapi_document
from nps.config import format_host_port, port_allowed
from nps.model import ClientRecord, Host, Tunnel
from nps.store import KNOWN_MODES, PORTLESS_MODES, StoreError

if TYPE_CHECKING:
    from nps.admin.traffic import TrafficFlusher
    from nps.server import NpsServer

__all__ = ["AdminApp", "ApiError", "STATIC_DIR"]

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_BODY = 64 * 1024
SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")
CLIENT_FIELDS = ("remark", "vkey", "enabled", "config_conn_allow", "rate_limit", "flow_limit", "max_conn",
                 "max_tunnels", "basic_username", "basic_password", "web_username", "web_password", "crypt",
                 "compress")
TUNNEL_FIELDS = ("client_id", "mode", "server_port", "server_ip", "targets", "remark", "password", "local_path",
                 "strip_pre", "enabled", "options")
HOST_FIELDS = ("client_id", "host", "location", "scheme", "targets", "host_change", "headers", "cert_file",
               "key_file", "redirect_https", "remark", "enabled", "options")
#: Host fields naming files on the server: the admin's only.
ADMIN_ONLY_HOST_FIELDS = ("cert_file", "key_file")
_HOSTNAME = re.compile(r"^[A-Za-z0-9.\-]{1,253}$|^\[[0-9A-Fa-f:.]{2,45}\]$")
#: A fixed hash checked when the user name is unknown, so both cases take as long.
_DUMMY_HASH = passwords.hash_password("nps-dummy-password")
log = Logger(namespace="nps.admin")


class ApiError(Exception):
    """An error answered to the caller as C{{"error": message}} with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _store_error(e: StoreError) -> ApiError:
    message = str(e)
    if message.startswith("no ") and " with id " in message:
        return ApiError(404, message)
    if "already" in message:
        return ApiError(409, message)
    return ApiError(400, message)


class AdminApp:
    """The Klein app of the web admin, bound to a running L{NpsServer}."""

    app = Klein()

    def __init__(self, server: "NpsServer", traffic: "TrafficFlusher", hub: LiveHub, pool: ThreadPool,
                 secure: bool = False) -> None:
        self.server = server
        self.traffic = traffic
        self.hub = hub
        self._pool = pool
        self.secure = secure
        clock = server.reactor.seconds
        self.sessions = SessionManager(clock)
        self.limiter = LoginLimiter(clock)
        self._index: bytes | None = None

    @property
    def config(self) -> Any:
        return self.server.config

    @property
    def cookie_path(self) -> str:
        return (self.config.web_base_url or "") + "/"

    # -- plumbing -----------------------------------------------------------

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """CPU-heavy work (scrypt) off the reactor thread."""
        return deferToThreadPool(self.server.reactor, self._pool, f, *args)

    def _store(self, method: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return self.server.store.call(method, *args, **kwargs)

    @staticmethod
    def _json(request: IRequest, value: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps(value, separators=(",", ":")).encode("utf-8")

    @staticmethod
    def _body(request: IRequest) -> dict[str, Any]:
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            raise ApiError(415, "send the body as JSON with Content-Type: application/json")
        raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body is larger than {MAX_BODY} bytes")
        try:
            body = json.loads(raw or b"{}")
        except ValueError as e:
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    @staticmethod
    def _remote(request: IRequest) -> str:
        peer = request.getClientAddress()
        return str(getattr(peer, "host", "?"))

    async def _principal(self, request: IRequest) -> Principal | None:
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        if header[:7].lower() == "bearer ":
            token = header[7:].strip()
            found = await self._store("find_api_token", passwords.token_digest(token)) if token else None
            if found is None:
                raise ApiError(401, "unknown or revoked API token")
            return Principal(f"token:{found['name']}", found["client_id"], "token")
        args = request.args or {}
        if b"auth_key" in args:
            given = args[b"auth_key"][0].decode("utf-8", "replace")
            stamp = args.get(b"timestamp", [b""])[0].decode("utf-8", "replace")
            key = self.config.auth_key
            if not key:
                raise ApiError(401, "auth_key login is off: nps.conf sets no auth_key")
            if self.limiter.retry_after(self._remote(request)):
                raise ApiError(429, "too many failed logins from your address; try again later")
            if not auth_key_valid(key, given, stamp, time.time()):
                self.limiter.failed(self._remote(request))
                raise ApiError(401, "bad auth_key or timestamp (must be within 20 s of the server's clock)")
            return Principal("auth_key", None, "auth_key")
        sid = (request.getCookie(COOKIE_NAME.encode()) or b"").decode("latin-1")
        return self.sessions.get(sid) if sid else None

    async def _auth(self, request: IRequest) -> Principal:
        principal = await self._principal(request)
        if principal is None:
            raise ApiError(401, "log in first (session cookie, bearer token or auth_key)")
        if principal.via == "session" and request.method not in SAFE_METHODS:
            given = (request.getHeader(b"x-csrf-token") or b"").decode("latin-1")
            import hmac
            if not given or not hmac.compare_digest(given.encode(), principal.csrf.encode()):
                raise ApiError(403, "missing or wrong X-CSRF-Token header")
        return principal

    async def _run(self, request: IRequest, handler: Callable[[Principal], Awaitable[Any]],
                   status: int = 200) -> bytes:
        """Authenticate, run C{handler}, answer JSON; errors become C{{"error": ...}}."""
        try:
            principal = await self._auth(request)
            result = await handler(principal)
        except ApiError as e:
            if e.status == 429:
                request.setHeader(b"Retry-After", b"60")
            return self._json(request, {"error": e.message}, e.status)
        except StoreError as e:
            error = _store_error(e)
            return self._json(request, {"error": error.message}, error.status)
        return self._json(request, result, status)

    # -- session ------------------------------------------------------------

    @app.route("/api/v1/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        try:
            body = self._body(request)
            username = body.get("username")
            password = body.get("password")
            if not isinstance(username, str) or not isinstance(password, str) or not username:
                raise ApiError(400, "username and password (strings) are required")
            remote = self._remote(request)
            keys = (f"ip:{remote}", f"user:{username[:128]}")
            wait = self.limiter.retry_after(*keys)
            if wait:
                request.setHeader(b"Retry-After", str(int(wait) + 1).encode())
                raise ApiError(429, f"too many failed logins; try again in {int(wait) + 1} s")
            client_id = await self._check_login(username[:128], password[:1024])
            if client_id is False:
                self.limiter.failed(*keys)
                log.warn("web login failed for {user!r} from {remote}", user=username[:64], remote=remote)
                raise ApiError(401, "wrong user name or password")
            self.limiter.succeeded(*keys)
        except ApiError as e:
            return self._json(request, {"error": e.message}, e.status)
        sid, principal = self.sessions.create(username, client_id if isinstance(client_id, int) else None)
        request.setHeader(b"Set-Cookie", cookie_header(sid, self.cookie_path, self.secure))
        log.info("web login: {user} from {remote}", user=username, remote=remote)
        return self._json(request, describe(principal))

    async def _check_login(self, username: str, password: str) -> int | None | bool:
        """@return: None for the admin, a client id for a client's login, False if wrong."""
        stored = await self._store("admin_password_hash", username)
        if stored:
            ok = await self._in_thread(passwords.verify_password, password, stored)
            return None if ok else False
        if self.config.allow_user_login:
            clients: list[ClientRecord] = await self._store("list_clients")
            for client in clients:
                if client.enabled and client.web_username and client.web_password and client.web_username == username:
                    ok = await self._in_thread(passwords.verify_password, password, client.web_password)
                    return client.id if ok else False
            if username == "user":  # NPS: user "user" with the client's vkey as password
                for client in clients:
                    if client.enabled and passwords.verify_password(password, client.vkey):
                        return client.id
        await self._in_thread(passwords.verify_password, password, _DUMMY_HASH)
        return False

    @app.route("/api/v1/logout", methods=["POST"])
    async def logout(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            sid = (request.getCookie(COOKIE_NAME.encode()) or b"").decode("latin-1")
            self.sessions.end(sid)
            request.setHeader(b"Set-Cookie", cookie_header("", self.cookie_path, self.secure, max_age=0))
            return {"ok": True}
        return await self._run(request, handle)

    @app.route("/api/v1/session", methods=["GET"])
    async def session(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            return describe(principal)
        return await self._run(request, handle)

    @app.route("/api/v1/openapi.json", methods=["GET"])
    async def openapi(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            return openapi_document(__version__, self.config.web_base_url or "")
        return await self._run(request, handle)

    # -- status -------------------------------------------------------------

    def _server_addr(self, request: IRequest) -> str:
        """The C{-server=} for npc: public_addr, else the host this page was opened with."""
        from nps.cli.nps_main import server_addr

        config = self.config
        if config.public_addr or config.p2p_ip:
            return server_addr(config)
        host = (request.getHeader(b"host") or b"").decode("latin-1").strip()
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        else:
            host = host.rsplit(":", 1)[0]
        if not _HOSTNAME.match(host):
            return server_addr(config)
        return format_host_port(host.strip("[]"), self.server.bridge_address.port)

    @app.route("/api/v1/status", methods=["GET"])
    async def status(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            totals = self.traffic.totals("client")
            online = [c for c in self.server.sessions if c > 0 and principal.may_see(c)]
            visible = {c: v for c, v in totals.items() if principal.may_see(c)}
            clients: list[ClientRecord] = await self._store("list_clients")
            return {
                "version": __version__,
                "server_addr": self._server_addr(request),
                "bridge_type": self.config.bridge_type,
                "clients": len([c for c in clients if principal.may_see(c.id)]),
                "clients_online": len(online),
                "tunnels_running": len([t for t, r in self.server.tunnels.items()
                                        if r.port is not None and principal.may_see(r.tunnel.client_id)]),
                "bytes_in": sum(v[0] for v in visible.values()),
                "bytes_out": sum(v[1] for v in visible.values()),
                "allow_ports": [list(r) for r in self.config.allow_ports],
                "modes": sorted(set(self.server.modes) | {"secret"}),
                "history": self.hub.history_for(principal),
            }
        return await self._run(request, handle)

    @app.route("/api/v1/traffic", methods=["GET"])
    async def traffic_route(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            owners = await self._owners()
            result: dict[str, Any] = {}
            for kind in ("client", "tunnel", "host"):
                result[kind + "s"] = {
                    str(i): {"bytes_in": v[0], "bytes_out": v[1]}
                    for i, v in self.traffic.totals(kind).items()
                    if principal.may_see(i if kind == "client" else owners[kind].get(i, 0))
                }
            return result
        return await self._run(request, handle)

    async def _owners(self) -> dict[str, dict[int, int]]:
        snapshot = await self._store("snapshot")
        return {"tunnel": {t.id: t.client_id for t in snapshot.tunnels},
                "host": {h.id: h.client_id for h in snapshot.hosts}}

    # -- clients ------------------------------------------------------------

    def _client_json(self, client: ClientRecord, request: IRequest) -> dict[str, Any]:
        data = attrs.asdict(client)
        data["web_password"] = ""
        data["web_password_set"] = bool(client.web_password)
        session = self.server.sessions.get(client.id)
        if session is not None:
            data.update(online=True, remote_addr=session.remote, version=session.version)
        else:
            data["online"] = False
        b_in, b_out = self.traffic.totals("client").get(client.id, (0, 0))
        counter = self.server.client_counters.get(client.id)
        data.update(bytes_in=b_in, bytes_out=b_out, connections_open=counter.open if counter else 0)
        data["command"] = f"npc -server={self._server_addr(request)} -vkey={client.vkey} -type=tcp"
        return data

    async def _client_fields(self, body: dict[str, Any], client_id: int | None) -> dict[str, Any]:
        fields = {k: v for k, v in body.items() if k in CLIENT_FIELDS}
        unknown = sorted(set(body) - set(CLIENT_FIELDS) - {"id"})
        if unknown:
            raise ApiError(400, f"unknown client fields: {', '.join(unknown)}")
        if "vkey" in fields and not fields["vkey"]:
            del fields["vkey"]
        if "web_username" in fields and fields["web_username"]:
            name = fields["web_username"]
            if not isinstance(name, str):
                raise ApiError(400, "web_username must be a string")
            if await self._store("admin_password_hash", name):
                raise ApiError(409, f"web_username {name!r} is an admin's user name")
            for other in await self._store("list_clients"):
                if other.web_username == name and other.id != client_id:
                    raise ApiError(409, f"web_username {name!r} is already used by client {other.id}")
        if isinstance(fields.get("web_password"), str) and fields["web_password"]:
            fields["web_password"] = await self._in_thread(passwords.hash_password, fields["web_password"])
        elif "web_password" in fields:
            del fields["web_password"]  # empty: keep the current one
        return fields

    @app.route("/api/v1/clients", methods=["GET"])
    async def list_clients(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> list[dict[str, Any]]:
            clients: list[ClientRecord] = await self._store("list_clients")
            return [self._client_json(c, request) for c in clients if principal.may_see(c.id)]
        return await self._run(request, handle)

    @app.route("/api/v1/clients", methods=["POST"])
    async def add_client(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            self._admin_only(principal)
            body = self._body(request)
            fields = await self._client_fields(body, None)
            client = await self._store("add_client", **fields)
            await self._applied("clients", client.id)
            return self._client_json(client, request)
        return await self._run(request, handle, 201)

    @app.route("/api/v1/clients/<int:client_id>", methods=["GET"])
    async def get_client(self, request: IRequest, client_id: int) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            self._may_see(principal, client_id, "client")
            return self._client_json(await self._store("get_client", client_id), request)
        return await self._run(request, handle)

    @app.route("/api/v1/clients/<int:client_id>", methods=["PATCH", "PUT"])
    async def update_client(self, request: IRequest, client_id: int) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            self._admin_only(principal)
            fields = await self._client_fields(self._body(request), client_id)
            client = await self._store("update_client", client_id, **fields)
            if "web_username" in fields or "web_password" in fields or not client.enabled:
                self.sessions.end_client(client_id)
            await self._applied("clients", client_id)
            return self._client_json(client, request)
        return await self._run(request, handle)

    @app.route("/api/v1/clients/<int:client_id>", methods=["DELETE"])
    async def delete_client(self, request: IRequest, client_id: int) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            self._admin_only(principal)
            await self._store("delete_client", client_id)
            await self._store("reset_traffic", "client", client_id)
            self.sessions.end_client(client_id)
            await self._applied("clients", client_id)
            return {"deleted": client_id}
        return await self._run(request, handle)

    @app.route("/api/v1/clients/<int:client_id>/reset_traffic", methods=["POST"])
    async def reset_client_traffic(self, request: IRequest, client_id: int) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            self._admin_only(principal)
            await self._store("get_client", client_id)
            await self.traffic.reset("client", client_id)
            return {"reset": client_id}
        return await self._run(request, handle)

    # -- tunnels ------------------------------------------------------------

    def _tunnel_json(self, tunnel: Tunnel) -> dict[str, Any]:
        data = tunnel.to_wire()
        running = self.server.tunnels.get(tunnel.id)
        data["running"] = running is not None and running.port is not None
        b_in, b_out = self.traffic.totals("tunnel").get(tunnel.id, (0, 0))
        data.update(bytes_in=b_in, bytes_out=b_out,
                    connections_open=running.counter.open if running is not None else 0)
        return data

    def _tunnel_fields(self, body: dict[str, Any], principal: Principal) -> dict[str, Any]:
        unknown = sorted(set(body) - set(TUNNEL_FIELDS) - {"id"})
        if unknown:
            raise ApiError(400, f"unknown tunnel fields: {', '.join(unknown)}")
        fields = {k: v for k, v in body.items() if k in TUNNEL_FIELDS}
        if isinstance(fields.get("targets"), str):
            fields["targets"] = [t for t in re.split(r"[\s,]+", fields["targets"]) if t]
        if not principal.is_admin:
            if fields.setdefault("client_id", principal.client_id) != principal.client_id:
                raise ApiError(403, "you may only manage your own client's tunnels")
        return fields

    async def _check_tunnel(self, tunnel: Tunnel, old: Tunnel | None) -> None:
        """Checks the store cannot make: mode served here, allow_ports, port free on this machine."""
        if tunnel.mode not in self.server.modes and tunnel.mode != "secret":
            available = ", ".join(sorted(set(self.server.modes) | {"secret"}))
            raise ApiError(400, f"mode {tunnel.mode!r} is not served by this nps (available: {available})")
        if tunnel.mode in PORTLESS_MODES or not tunnel.enabled:
            return
        if not 1 <= tunnel.server_port <= 65535:
            raise ApiError(400, f"server_port must be 1-65535, got {tunnel.server_port}")
        if not port_allowed(tunnel.server_port, self.config.allow_ports):
            ranges = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in self.config.allow_ports)
            raise ApiError(400, f"server_port {tunnel.server_port} is outside allow_ports ({ranges})")
        same = old is not None and old.enabled and (old.server_port, old.server_ip, old.mode == "udp") == \
            (tunnel.server_port, tunnel.server_ip, tunnel.mode == "udp") and old.id in self.server.tunnels
        if same:
            return
        reactor = self.server.reactor
        try:
            if tunnel.mode == "udp":
                port = reactor.listenUDP(tunnel.server_port, DatagramProtocol(), interface=tunnel.server_ip)
            else:
                port = reactor.listenTCP(tunnel.server_port, Factory.forProtocol(Protocol),
                                         interface=tunnel.server_ip)
        except Exception as e:
            reason = getattr(e, "socketError", None) or e
            raise ApiError(409, f"port {tunnel.server_port} on {tunnel.server_ip} is in use: {reason}") from None
        await port.stopListening()

    @app.route("/api/v1/tunnels", methods=["GET"])
    async def list_tunnels(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> list[dict[str, Any]]:
            wanted = _int_arg(request, b"client_id")
            tunnels: list[Tunnel] = await self._store("list_tunnels", wanted)
            mode = _str_arg(request, b"mode")
            return [self._tunnel_json(t) for t in tunnels
                    if principal.may_see(t.client_id) and (not mode or t.mode == mode)]
        return await self._run(request, handle)

    @app.route("/api/v1/tunnels", methods=["POST"])
    async def add_tunnel(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            fields = self._tunnel_fields(self._body(request), principal)
            for name in ("client_id", "mode"):
                if name not in fields:
                    raise ApiError(400, f"a tunnel needs {name}")
            if fields["mode"] not in KNOWN_MODES and fields["mode"] not in self.server.modes:
                raise ApiError(400, f"unknown mode {fields['mode']!r} (known: {', '.join(KNOWN_MODES)})")
            draft = await self._draft_tunnel(fields, None)
            await self._check_tunnel(draft, None)
            tunnel = await self._store("add_tunnel", **fields)
            await self._applied("tunnels", tunnel.client_id)
            return self._tunnel_json(tunnel)
        return await self._run(request, handle, 201)

    async def _draft_tunnel(self, fields: dict[str, Any], old: Tunnel | None) -> Tunnel:
        """The tunnel as the store would keep it, to check before writing (the store checks it again)."""
        try:
            base = old or Tunnel(id=0, client_id=0, mode="tcp")
            values = dict(fields)
            if "targets" in values:
                values["targets"] = tuple(values["targets"]) if isinstance(values["targets"], (list, tuple)) \
                    else values["targets"]
            draft = attrs.evolve(base, **values)
            if not isinstance(draft.server_port, int) or isinstance(draft.server_port, bool):
                raise ApiError(400, f"server_port must be an integer, got {draft.server_port!r}")
            if not isinstance(draft.server_ip, str) or not isinstance(draft.mode, str):
                raise ApiError(400, "server_ip and mode must be strings")
            return draft
        except TypeError as e:
            raise ApiError(400, f"bad tunnel: {e}") from None

    async def _owned_tunnel(self, principal: Principal, tunnel_id: int) -> Tunnel:
        tunnel: Tunnel = await self._store("get_tunnel", tunnel_id)
        self._may_see(principal, tunnel.client_id, "tunnel", tunnel_id)
        return tunnel

    @app.route("/api/v1/tunnels/<int:tunnel_id>", methods=["GET"])
    async def get_tunnel(self, request: IRequest, tunnel_id: int) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            return self._tunnel_json(await self._owned_tunnel(principal, tunnel_id))
        return await self._run(request, handle)

    @app.route("/api/v1/tunnels/<int:tunnel_id>", methods=["PATCH", "PUT"])
    async def update_tunnel(self, request: IRequest, tunnel_id: int) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            old = await self._owned_tunnel(principal, tunnel_id)
            fields = self._tunnel_fields(self._body(request), principal)
            if not principal.is_admin:
                fields.pop("client_id", None)
            await self._check_tunnel(await self._draft_tunnel(fields, old), old)
            tunnel = await self._store("update_tunnel", tunnel_id, **fields)
            await self._applied("tunnels", tunnel.client_id)
            return self._tunnel_json(tunnel)
        return await self._run(request, handle)

    @app.route("/api/v1/tunnels/<int:tunnel_id>", methods=["DELETE"])
    async def delete_tunnel(self, request: IRequest, tunnel_id: int) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            tunnel = await self._owned_tunnel(principal, tunnel_id)
            await self._store("delete_tunnel", tunnel_id)
            await self._store("reset_traffic", "tunnel", tunnel_id)
            await self._applied("tunnels", tunnel.client_id)
            closed = self._close_connections(tunnel_id)
            return {"deleted": tunnel_id, "connections_closed": closed}
        return await self._run(request, handle)

    def _close_connections(self, tunnel_id: int) -> int:
        """Reset the open streams of a deleted tunnel."""
        closed = 0
        for session in list(self.server.sessions.values()):
            mux = session.mux
            if mux is None:
                continue
            for stream in mux.streams():
                if stream.link.get("tunnel") == tunnel_id:
                    stream.reset("tunnel deleted on the server")
                    closed += 1
        return closed

    # -- hosts --------------------------------------------------------------

    def _host_json(self, host: Host) -> dict[str, Any]:
        data = host.to_wire()
        b_in, b_out = self.traffic.totals("host").get(host.id, (0, 0))
        data.update(bytes_in=b_in, bytes_out=b_out)
        return data

    def _host_fields(self, body: dict[str, Any], principal: Principal) -> dict[str, Any]:
        unknown = sorted(set(body) - set(HOST_FIELDS) - {"id"})
        if unknown:
            raise ApiError(400, f"unknown host fields: {', '.join(unknown)}")
        fields = {k: v for k, v in body.items() if k in HOST_FIELDS}
        if isinstance(fields.get("targets"), str):
            fields["targets"] = [t for t in re.split(r"[\s,]+", fields["targets"]) if t]
        if not principal.is_admin:
            if fields.setdefault("client_id", principal.client_id) != principal.client_id:
                raise ApiError(403, "you may only manage your own client's hosts")
            for name in ADMIN_ONLY_HOST_FIELDS:
                if fields.get(name):
                    raise ApiError(403, f"only the admin may set {name} (a file on the server)")
        return fields

    async def _owned_host(self, principal: Principal, host_id: int) -> Host:
        host: Host = await self._store("get_host", host_id)
        self._may_see(principal, host.client_id, "host", host_id)
        return host

    @app.route("/api/v1/hosts", methods=["GET"])
    async def list_hosts(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> list[dict[str, Any]]:
            hosts: list[Host] = await self._store("list_hosts", _int_arg(request, b"client_id"))
            return [self._host_json(h) for h in hosts if principal.may_see(h.client_id)]
        return await self._run(request, handle)

    @app.route("/api/v1/hosts", methods=["POST"])
    async def add_host(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            fields = self._host_fields(self._body(request), principal)
            for name in ("client_id", "host"):
                if name not in fields:
                    raise ApiError(400, f"a host needs {name}")
            host = await self._store("add_host", **fields)
            await self._applied("hosts", host.client_id)
            return self._host_json(host)
        return await self._run(request, handle, 201)

    @app.route("/api/v1/hosts/<int:host_id>", methods=["GET"])
    async def get_host(self, request: IRequest, host_id: int) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            return self._host_json(await self._owned_host(principal, host_id))
        return await self._run(request, handle)

    @app.route("/api/v1/hosts/<int:host_id>", methods=["PATCH", "PUT"])
    async def update_host(self, request: IRequest, host_id: int) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            await self._owned_host(principal, host_id)
            fields = self._host_fields(self._body(request), principal)
            if not principal.is_admin:
                fields.pop("client_id", None)
            host = await self._store("update_host", host_id, **fields)
            await self._applied("hosts", host.client_id)
            return self._host_json(host)
        return await self._run(request, handle)

    @app.route("/api/v1/hosts/<int:host_id>", methods=["DELETE"])
    async def delete_host(self, request: IRequest, host_id: int) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            host = await self._owned_host(principal, host_id)
            await self._store("delete_host", host_id)
            await self._applied("hosts", host.client_id)
            return {"deleted": host_id}
        return await self._run(request, handle)

    # -- API tokens ---------------------------------------------------------

    @app.route("/api/v1/tokens", methods=["GET"])
    async def list_tokens(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> list[dict[str, Any]]:
            self._admin_only(principal)
            tokens: list[dict[str, Any]] = await self._store("list_api_tokens")
            return tokens
        return await self._run(request, handle)

    @app.route("/api/v1/tokens", methods=["POST"])
    async def add_token(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            self._admin_only(principal)
            body = self._body(request)
            name = body.get("name", "")
            client_id = body.get("client_id")
            if not isinstance(name, str) or len(name) > 128:
                raise ApiError(400, "name must be a string of at most 128 characters")
            if client_id is not None and (not isinstance(client_id, int) or isinstance(client_id, bool)):
                raise ApiError(400, "client_id must be an integer or null")
            token = passwords.new_token()
            token_id = await self._store("add_api_token", name, passwords.token_digest(token), client_id)
            return {"id": token_id, "name": name, "client_id": client_id, "token": token}
        return await self._run(request, handle, 201)

    @app.route("/api/v1/tokens/<int:token_id>", methods=["DELETE"])
    async def delete_token(self, request: IRequest, token_id: int) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            self._admin_only(principal)
            await self._store("delete_api_token", token_id)
            return {"deleted": token_id}
        return await self._run(request, handle)

    # -- live updates -------------------------------------------------------

    @app.route("/api/v1/live", methods=["GET"])
    async def live(self, request: IRequest) -> Any:
        try:
            principal = await self._auth(request)
            origin = (request.getHeader(b"origin") or b"").decode("latin-1")
            host = (request.getHeader(b"host") or b"").decode("latin-1")
            if origin and origin.split("://", 1)[-1] != host:
                raise ApiError(403, f"WebSocket from another site ({origin}) refused")
        except ApiError as e:
            return self._json(request, {"error": e.message}, e.status)
        return WebSocketResource(LiveFactory(self.hub, principal))

    # -- the UI's files -----------------------------------------------------

    @app.route("/", methods=["GET", "HEAD"])
    def index(self, request: IRequest) -> bytes:
        if self._index is None:
            with open(os.path.join(STATIC_DIR, "index.html"), "rb") as f:  # small; read once
                self._index = f.read()
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        return self._index

    @app.route("/static/", branch=True, methods=["GET", "HEAD"])
    def static(self, request: IRequest) -> Any:
        request.setHeader(b"Cache-Control", b"no-cache")
        return File(STATIC_DIR)

    @app.route("/api/", branch=True)
    async def unknown_api(self, request: IRequest) -> bytes:
        async def handle(principal: Principal) -> dict[str, Any]:
            raise ApiError(404, f"no API route {request.method.decode()} {request.path.decode('latin-1')}")
        return await self._run(request, handle)

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _admin_only(principal: Principal) -> None:
        if not principal.is_admin:
            raise ApiError(403, "only the admin may do this")

    @staticmethod
    def _may_see(principal: Principal, client_id: int, what: str, record_id: int | None = None) -> None:
        if not principal.may_see(client_id):
            raise ApiError(404, f"no {what} with id {record_id if record_id is not None else client_id}")

    async def _applied(self, what: str, client_id: int | None) -> None:
        """Apply a store change at once (ports open/close, clients drop) and tell open pages."""
        await self.server.refresh()
        # A store poll already under way may have read the revision before this write; the
        # second refresh starts after it and so sees the write.
        await self.server.refresh()
        self.hub.changed(what, client_id)


def _int_arg(request: IRequest, name: bytes) -> int | None:
    values = (request.args or {}).get(name)
    if not values or not values[0]:
        return None
    try:
        return int(values[0])
    except ValueError:
        raise ApiError(400, f"{name.decode()} must be an integer") from None


def _str_arg(request: IRequest, name: bytes) -> str:
    values = (request.args or {}).get(name)
    return values[0].decode("utf-8", "replace") if values else ""
