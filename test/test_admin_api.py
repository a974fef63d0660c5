"""The web admin's JSON API over real HTTP (treq) against an in-process nps with a real listener."""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import tempfile
import time
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from nps.admin.api import AdminApp
from nps.client import NpcService
from nps.config import ServerConfig
from nps.modes import load_modes
from nps.server import NpsServer
from nps.store import Store
from inprocess import Collect, Echo, wait_for
from support import free_port

PASSWORD = "correct horse battery staple"


def routes() -> list[tuple[str, str]]:
    """Every (method, path) of the API, with ids filled in."""
    found = []
    for rule in AdminApp.app.url_map.iter_rules():
        path = rule.rule
        if not path.startswith("/api/v1/") or path == "/api/v1/login":
            continue
        path = path.replace("<int:client_id>", "1").replace("<int:tunnel_id>", "1").replace(
            "<int:host_id>", "1").replace("<int:token_id>", "1")
        for method in sorted(rule.methods or ()):
            if method not in ("HEAD", "OPTIONS"):
                found.append((method, path))
    return found


class AdminApiTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="nps-admin-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.echo_port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(self.echo_port.stopListening)
        self.echo_addr = f"127.0.0.1:{self.echo_port.getHost().port}"

    @inlineCallbacks
    def start(self, **config: Any):  # type: ignore[no-untyped-def]
        settings = dict(path=None, bridge_ip="127.0.0.1", bridge_port=0, data_dir=self.data_dir,
                        web_port=free_port(), web_ip="127.0.0.1", web_password=PASSWORD)
        settings.update(config)
        server = NpsServer(ServerConfig(**settings), reactor, load_modes())
        server.privilegedStartService()
        server.startService()
        self.addCleanup(lambda: server.stopService() if server.running else None)
        self.server = server
        self.base = f"http://127.0.0.1:{server.config.web_port}{server.config.web_base_url}"
        yield wait_for(lambda: server.admin.admin_ready, 30)
        return server

    @inlineCallbacks
    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None):  # type: ignore[no-untyped-def]
        """Fires with (status, parsed JSON or bytes, response)."""
        hdrs = {k: [v] for k, v in (headers or {}).items()}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", ["application/json"])
        response = yield treq.request(method, self.base + path, data=data, headers=hdrs, pool=self.pool,
                                      reactor=reactor)
        content = yield treq.content(response)
        try:
            parsed = json.loads(content)
        except ValueError:
            parsed = content
        return response.code, parsed, response

    @inlineCallbacks
    def login(self, username: str = "admin", password: str = PASSWORD):  # type: ignore[no-untyped-def]
        """Fires with headers carrying the session cookie and the CSRF token."""
        code, body, response = yield self.call("POST", "/api/v1/login", {"username": username, "password": password})
        self.assertEqual(code, 200, body)
        cookie = response.headers.getRawHeaders("set-cookie")[0]
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=Strict", cookie)
        return {"Cookie": cookie.split(";")[0], "X-CSRF-Token": body["csrf_token"]}

    @inlineCallbacks
    def test_every_route_refuses_unauthenticated(self):  # type: ignore[no-untyped-def]
        yield self.start()
        all_routes = routes()
        self.assertGreater(len(all_routes), 20)
        for method, path in all_routes:
            body = {} if method in ("POST", "PATCH", "PUT") else None
            code, answer, _ = yield self.call(method, path, body)
            self.assertEqual(code, 401, f"{method} {path}: {answer}")
            self.assertIn("error", answer)
        # a bad bearer token, a forged cookie and NPS's empty-auth_key bypass are refused too
        for headers in ({"Authorization": "Bearer nps_guess"}, {"Cookie": "nps_session=forged"}):
            code, _, _ = yield self.call("GET", "/api/v1/clients", headers=headers)
            self.assertEqual(code, 401)
        now = str(int(time.time()))
        code, answer, _ = yield self.call(
            "GET", f"/api/v1/clients?auth_key={hashlib.md5(now.encode()).hexdigest()}&timestamp={now}")
        self.assertEqual(code, 401)
        self.assertIn("auth_key", answer["error"])

    @inlineCallbacks
    def test_auth_key_only_when_set(self):  # type: ignore[no-untyped-def]
        yield self.start(auth_key="a-long-shared-api-secret")
        now = str(int(time.time()))
        good = hashlib.md5(("a-long-shared-api-secret" + now).encode()).hexdigest()
        code, answer, _ = yield self.call("GET", f"/api/v1/clients?auth_key={good}&timestamp={now}")
        self.assertEqual(code, 200, answer)
        old = str(int(time.time()) - 300)
        stale = hashlib.md5(("a-long-shared-api-secret" + old).encode()).hexdigest()
        code, _, _ = yield self.call("GET", f"/api/v1/clients?auth_key={stale}&timestamp={old}")
        self.assertEqual(code, 401)

    @inlineCallbacks
    def test_csrf_and_logout(self):  # type: ignore[no-untyped-def]
        yield self.start()
        headers = yield self.login()
        no_csrf = {"Cookie": headers["Cookie"]}
        code, answer, _ = yield self.call("POST", "/api/v1/clients", {"remark": "x"}, headers=no_csrf)
        self.assertEqual(code, 403)
        self.assertIn("CSRF", answer["error"])
        wrong = dict(no_csrf, **{"X-CSRF-Token": "nope"})
        code, _, _ = yield self.call("POST", "/api/v1/clients", {"remark": "x"}, headers=wrong)
        self.assertEqual(code, 403)
        # a form post (what another site could send) is refused
        code, _, _ = yield self.call("POST", "/api/v1/clients", raw=b"remark=x",
                                     headers=dict(headers, **{"Content-Type": "application/x-www-form-urlencoded"}))
        self.assertEqual(code, 415)
        code, _, _ = yield self.call("GET", "/api/v1/clients", headers=no_csrf)
        self.assertEqual(code, 200)
        code, _, _ = yield self.call("POST", "/api/v1/logout", {}, headers=headers)
        self.assertEqual(code, 200)
        code, _, _ = yield self.call("GET", "/api/v1/clients", headers=no_csrf)
        self.assertEqual(code, 401)

    @inlineCallbacks
    def test_login_rate_limited(self):  # type: ignore[no-untyped-def]
        yield self.start()
        codes = []
        for _ in range(7):
            code, _, _ = yield self.call("POST", "/api/v1/login", {"username": "admin", "password": "wrong"})
            codes.append(code)
        self.assertEqual(codes[:5], [401] * 5)
        self.assertEqual(codes[5:], [429, 429])
        # even the right password waits now
        code, answer, response = yield self.call("POST", "/api/v1/login", {"username": "admin", "password": PASSWORD})
        self.assertEqual(code, 429, answer)
        self.assertTrue(response.headers.getRawHeaders("retry-after"))

    @inlineCallbacks
    def test_password_stored_hashed_and_bearer_token(self):  # type: ignore[no-untyped-def]
        yield self.start()
        store = Store(self.data_dir)
        try:
            stored = store.admin_password_hash("admin")
        finally:
            store.close()
        self.assertTrue(stored.startswith("scrypt$"))
        self.assertNotIn(PASSWORD, stored)
        headers = yield self.login()
        code, token, _ = yield self.call("POST", "/api/v1/tokens", {"name": "script"}, headers=headers)
        self.assertEqual(code, 201)
        bearer = {"Authorization": f"Bearer {token['token']}"}
        code, answer, _ = yield self.call("POST", "/api/v1/clients", {"remark": "by-script"}, headers=bearer)
        self.assertEqual(code, 201, answer)  # no CSRF token needed for bearer tokens
        code, _, _ = yield self.call("DELETE", f"/api/v1/tokens/{token['id']}", headers=headers)
        self.assertEqual(code, 200)
        code, _, _ = yield self.call("GET", "/api/v1/clients", headers=bearer)
        self.assertEqual(code, 401)

    @inlineCallbacks
    def test_crud_validation_and_live_apply(self):  # type: ignore[no-untyped-def]
        allowed = free_port()
        yield self.start(allow_ports=((allowed, allowed), (20000, 60000)))
        headers = yield self.login()
        code, client, _ = yield self.call("POST", "/api/v1/clients", {"remark": "office"}, headers=headers)
        self.assertEqual(code, 201, client)
        self.assertEqual(len(client["vkey"]), 24)
        self.assertIn(f"-vkey={client['vkey']} -type=tcp", client["command"])
        self.assertFalse(client["online"])
        cid = client["id"]
        # validation: outside allow_ports, port in use, bad target, unknown mode, duplicate host
        code, answer, _ = yield self.call("POST", "/api/v1/tunnels", {
            "client_id": cid, "mode": "tcp", "server_port": 80, "targets": [self.echo_addr]}, headers=headers)
        self.assertEqual(code, 400)
        self.assertIn("allow_ports", answer["error"])
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        busy_port = busy.getsockname()[1]
        if 20000 <= busy_port <= 60000:
            code, answer, _ = yield self.call("POST", "/api/v1/tunnels", {
                "client_id": cid, "mode": "tcp", "server_port": busy_port, "server_ip": "127.0.0.1",
                "targets": [self.echo_addr]}, headers=headers)
            self.assertEqual(code, 409, answer)
            self.assertIn("in use", answer["error"])
        code, answer, _ = yield self.call("POST", "/api/v1/tunnels", {
            "client_id": cid, "mode": "tcp", "server_port": allowed, "targets": ["no port here"]}, headers=headers)
        self.assertEqual(code, 400)
        self.assertIn("target", answer["error"])
        code, answer, _ = yield self.call("POST", "/api/v1/tunnels", {
            "client_id": cid, "mode": "nonsense", "server_port": allowed}, headers=headers)
        self.assertEqual(code, 400)
        code, host, _ = yield self.call("POST", "/api/v1/hosts", {
            "client_id": cid, "host": "a.example.com", "targets": [self.echo_addr]}, headers=headers)
        self.assertEqual(code, 201, host)
        code, answer, _ = yield self.call("POST", "/api/v1/hosts", {
            "client_id": cid, "host": "a.example.com", "targets": [self.echo_addr]}, headers=headers)
        self.assertEqual(code, 409)
        self.assertIn("already", answer["error"])
        code, answer, _ = yield self.call("GET", "/api/v1/tunnels/999", headers=headers)
        self.assertEqual(code, 404)

        # a real npc; the tunnel opens at once, traffic flows and is counted
        npc = NpcService(reactor, "127.0.0.1", self.server.bridge_address.port, client["vkey"], load_modes(),
                         on_fatal=lambda code, msg: None, max_retry_delay=0.5)
        npc.startService()
        self.addCleanup(lambda: npc.stopService() if npc.running else None)
        yield wait_for(lambda: cid in self.server.sessions)
        code, listed, _ = yield self.call("GET", f"/api/v1/clients/{cid}", headers=headers)
        self.assertTrue(listed["online"])
        self.assertTrue(listed["remote_addr"].startswith("127.0.0.1"))
        code, tunnel, _ = yield self.call("POST", "/api/v1/tunnels", {
            "client_id": cid, "mode": "tcp", "server_port": allowed, "server_ip": "127.0.0.1",
            "targets": self.echo_addr}, headers=headers)
        self.assertEqual(code, 201, tunnel)
        self.assertTrue(tunnel["running"])
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        user = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", allowed), user)
        user.transport.write(b"hello through the admin")
        yield wait_for(lambda: user.received == b"hello through the admin")
        yield wait_for(lambda: self.server.tunnels[tunnel["id"]].counter.bytes_out >= 23)
        code, traffic, _ = yield self.call("GET", "/api/v1/traffic", headers=headers)
        self.assertGreaterEqual(traffic["tunnels"][str(tunnel["id"])]["bytes_in"], 23)
        self.assertGreaterEqual(traffic["clients"][str(cid)]["bytes_out"], 23)
        # flushed to the store
        yield self.server.traffic.flush()
        store = Store(self.data_dir)
        try:
            self.assertGreaterEqual(store.traffic("tunnel")[tunnel["id"]][0], 23)
        finally:
            store.close()
        # deleting the tunnel closes its port and its open connection
        code, answer, _ = yield self.call("DELETE", f"/api/v1/tunnels/{tunnel['id']}", headers=headers)
        self.assertEqual(code, 200, answer)
        self.assertEqual(answer["connections_closed"], 1)
        yield user.closed
        self.assertNotIn(tunnel["id"], self.server.tunnels)
        # deleting the client disconnects it
        code, _, _ = yield self.call("DELETE", f"/api/v1/clients/{cid}", headers=headers)
        self.assertEqual(code, 200)
        yield wait_for(lambda: cid not in self.server.sessions)

    @inlineCallbacks
    def test_client_login_sees_only_its_own(self):  # type: ignore[no-untyped-def]
        yield self.start(allow_user_login=True)
        headers = yield self.login()
        code, mine, _ = yield self.call("POST", "/api/v1/clients", {
            "remark": "mine", "web_username": "alice", "web_password": "alice's long password"}, headers=headers)
        self.assertEqual(code, 201, mine)
        self.assertEqual(mine["web_password"], "")
        store = Store(self.data_dir)
        try:
            self.assertTrue(store.get_client(mine["id"]).web_password.startswith("scrypt$"))
        finally:
            store.close()
        code, other, _ = yield self.call("POST", "/api/v1/clients", {"remark": "other"}, headers=headers)
        port_a, port_b = free_port(), free_port()
        code, other_tunnel, _ = yield self.call("POST", "/api/v1/tunnels", {
            "client_id": other["id"], "mode": "tcp", "server_port": port_b, "server_ip": "127.0.0.1",
            "targets": [self.echo_addr]}, headers=headers)
        self.assertEqual(code, 201, other_tunnel)
        alice = yield self.login("alice", "alice's long password")
        code, clients, _ = yield self.call("GET", "/api/v1/clients", headers=alice)
        self.assertEqual([c["id"] for c in clients], [mine["id"]])
        code, _, _ = yield self.call("GET", f"/api/v1/clients/{other['id']}", headers=alice)
        self.assertEqual(code, 404)
        code, _, _ = yield self.call("GET", f"/api/v1/tunnels/{other_tunnel['id']}", headers=alice)
        self.assertEqual(code, 404)
        code, _, _ = yield self.call("DELETE", f"/api/v1/tunnels/{other_tunnel['id']}", headers=alice)
        self.assertEqual(code, 404)
        code, tunnels, _ = yield self.call("GET", "/api/v1/tunnels", headers=alice)
        self.assertEqual(tunnels, [])
        code, _, _ = yield self.call("POST", "/api/v1/clients", {"remark": "x"}, headers=alice)
        self.assertEqual(code, 403)
        code, answer, _ = yield self.call("POST", "/api/v1/tunnels", {
            "client_id": other["id"], "mode": "tcp", "server_port": port_a, "targets": [self.echo_addr]},
            headers=alice)
        self.assertEqual(code, 403)
        code, own, _ = yield self.call("POST", "/api/v1/tunnels", {
            "mode": "tcp", "server_port": port_a, "server_ip": "127.0.0.1", "targets": [self.echo_addr]},
            headers=alice)
        self.assertEqual(code, 201, own)
        self.assertEqual(own["client_id"], mine["id"])
        code, _, _ = yield self.call("GET", "/api/v1/tokens", headers=alice)
        self.assertEqual(code, 403)

    @inlineCallbacks
    def test_client_login_off_by_default(self):  # type: ignore[no-untyped-def]
        yield self.start()
        headers = yield self.login()
        yield self.call("POST", "/api/v1/clients", {"web_username": "bob", "web_password": "bob's long password"},
                        headers=headers)
        code, _, _ = yield self.call("POST", "/api/v1/login", {"username": "bob", "password": "bob's long password"})
        self.assertEqual(code, 401)

    @inlineCallbacks
    def test_openapi_base_url_and_ui(self):  # type: ignore[no-untyped-def]
        yield self.start(web_base_url="/nps")
        headers = yield self.login()
        code, doc, _ = yield self.call("GET", "/api/v1/openapi.json", headers=headers)
        self.assertEqual(code, 200)
        self.assertEqual(doc["openapi"], "3.0.3")
        for method, path in routes():
            templated = path.replace("/1", "/{id}")
            self.assertIn(templated, doc["paths"], path)
            self.assertIn(method.lower(), doc["paths"][templated], path)
        code, page, response = yield self.call("GET", "/")
        self.assertEqual(code, 200)
        self.assertIn(b"<html", page.lower() if isinstance(page, bytes) else b"")
        self.assertEqual(response.headers.getRawHeaders("x-frame-options"), ["DENY"])
        response = yield treq.get(f"http://127.0.0.1:{self.server.config.web_port}/nps", pool=self.pool,
                                  reactor=reactor, allow_redirects=False)
        yield treq.content(response)
        self.assertEqual(response.code, 302)

    @inlineCallbacks
    def test_websocket_needs_login_and_same_origin(self):  # type: ignore[no-untyped-def]
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        yield self.start()
        headers = yield self.login()
        port = self.server.config.web_port

        def upgrade(origin: str, cookie: str) -> Any:
            lines = ["GET /api/v1/live HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: Upgrade",
                     "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                     f"Origin: {origin}"] + ([f"Cookie: {cookie}"] if cookie else [])
            raw = Collect()
            d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), raw)
            d.addCallback(lambda _: raw.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode()))
            return d.addCallback(lambda _: raw)

        for origin, cookie, status in (("http://evil.example", headers["Cookie"], b"403"),
                                       (f"http://127.0.0.1:{port}", "", b"401")):
            raw = yield upgrade(origin, cookie)
            yield wait_for(lambda: b"\r\n\r\n" in raw.received)
            self.assertTrue(raw.received.startswith(b"HTTP/1.1 " + status), raw.received[:100])
            raw.transport.loseConnection()
            yield raw.closed
        raw = yield upgrade(f"http://127.0.0.1:{port}", headers["Cookie"])
        yield wait_for(lambda: b'"type":"hello"' in raw.received)
        self.assertTrue(raw.received.startswith(b"HTTP/1.1 101"))
        self.assertEqual(self.server.admin.hub.listener_count, 1)
        raw.transport.loseConnection()
        yield raw.closed
        yield wait_for(lambda: self.server.admin.hub.listener_count == 0)

    @inlineCallbacks
    def test_generated_password_when_unset(self):  # type: ignore[no-untyped-def]
        yield self.start(web_password="")
        generated = self.server.admin.generated_password
        self.assertGreaterEqual(len(generated), 16)
        yield self.login("admin", generated)
        code, _, _ = yield self.call("POST", "/api/v1/login", {"username": "admin", "password": ""})
        self.assertIn(code, (400, 401))

    @inlineCallbacks
    def test_bad_bodies_are_4xx(self):  # type: ignore[no-untyped-def]
        """Wrong types and shapes in every writable field get a 4xx with a message, never a 500."""
        yield self.start()
        headers = yield self.login()
        code, client, _ = yield self.call("POST", "/api/v1/clients", {"remark": "x"}, headers=headers)
        cid = client["id"]
        code, tunnel, _ = yield self.call("POST", "/api/v1/tunnels", {
            "client_id": cid, "mode": "tcp", "server_port": free_port(), "server_ip": "127.0.0.1",
            "targets": [self.echo_addr]}, headers=headers)
        self.assertEqual(code, 201, tunnel)
        code, host, _ = yield self.call("POST", "/api/v1/hosts", {
            "client_id": cid, "host": "b.example.com", "targets": [self.echo_addr]}, headers=headers)
        self.assertEqual(code, 201, host)
        weird: list[Any] = ["abc", -1, 70000, None, [], {}, True, 1.5, "x" * 5000, "\x00"]
        fields = {"clients": ["remark", "vkey", "enabled", "flow_limit", "max_conn", "web_username",
                              "web_password", "rate_limit", "nope"],
                  "tunnels": ["client_id", "mode", "server_port", "server_ip", "targets", "password",
                              "enabled", "options", "nope"],
                  "hosts": ["client_id", "host", "location", "scheme", "targets", "headers", "enabled", "nope"]}
        ids = {"clients": cid, "tunnels": tunnel["id"], "hosts": host["id"]}
        for kind, names in fields.items():
            for name in names:
                for value in weird:
                    for method, path in (("POST", f"/api/v1/{kind}"), ("PATCH", f"/api/v1/{kind}/{ids[kind]}")):
                        code, answer, _ = yield self.call(method, path, {name: value}, headers=headers)
                        self.assertLess(code, 500, f"{method} {path} {name}={value!r}: {answer}")
                        if code >= 400:
                            self.assertIsInstance(answer, dict, f"{method} {path} {name}={value!r}")
                            self.assertTrue(answer.get("error"), f"{method} {path} {name}={value!r}")
        for raw in (b"[1,2]", b"{", b"\xff\xfe", b"null", b'"x"'):
            code, answer, _ = yield self.call("POST", "/api/v1/clients", raw=raw,
                                              headers=dict(headers, **{"Content-Type": "application/json"}))
            self.assertEqual(code, 400, raw)
        code, _, _ = yield self.call("GET", "/api/v1/tunnels?client_id=abc", headers=headers)
        self.assertEqual(code, 400)


class AdminLogTests(TestCase):
    """What the admin prints at start: the generated password once, a loud warning for a weak one."""

    timeout = 60

    def setUp(self) -> None:
        from twisted.logger import globalLogPublisher

        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.data_dir = tempfile.mkdtemp(prefix="nps-admin-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)

    @inlineCallbacks
    def start(self, **config: Any):  # type: ignore[no-untyped-def]
        settings = dict(path=None, bridge_ip="127.0.0.1", bridge_port=0, data_dir=self.data_dir,
                        web_port=free_port(), web_ip="127.0.0.1")
        settings.update(config)
        server = NpsServer(ServerConfig(**settings), reactor, load_modes())
        server.privilegedStartService()
        server.startService()
        yield wait_for(lambda: server.admin.admin_ready, 30)
        yield server.stopService()
        return server

    def text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.events)

    @inlineCallbacks
    def test_generated_password_printed_once(self):  # type: ignore[no-untyped-def]
        server = yield self.start()
        password = server.admin.generated_password
        self.assertEqual(self.text().count(password), 1)
        self.events.clear()
        again = yield self.start()
        self.assertEqual(again.admin.generated_password, "")  # not a new one, not printed again
        self.assertNotIn(password, self.text())

    @inlineCallbacks
    def test_weak_password_warned(self):  # type: ignore[no-untyped-def]
        yield self.start(web_password="123456")
        self.assertIn("web_password in nps.conf is WEAK", self.text())


class PersistedFlowTests(TestCase):
    """flow_limit counts the bytes persisted by earlier runs, not only this run's."""

    timeout = 60

    def setUp(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="nps-flow-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.echo_port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(self.echo_port.stopListening)

    @inlineCallbacks
    def test_flow_limit_counts_persisted_bytes(self):  # type: ignore[no-untyped-def]
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        port = free_port()
        store = Store(self.data_dir)
        try:
            client = store.add_client(remark="metered", flow_limit=1)
            store.add_tunnel(client.id, "tcp", port, [f"127.0.0.1:{self.echo_port.getHost().port}"],
                             server_ip="127.0.0.1")
            store.add_traffic([("client", client.id, 600_000, 600_000)])  # 1.2 MB used by an earlier run
        finally:
            store.close()
        server = NpsServer(ServerConfig(path=None, bridge_ip="127.0.0.1", bridge_port=0, data_dir=self.data_dir),
                           reactor, load_modes())
        server.privilegedStartService()
        server.startService()
        self.addCleanup(lambda: server.stopService() if server.running else None)
        npc = NpcService(reactor, "127.0.0.1", server.bridge_address.port, client.vkey, load_modes(),
                         on_fatal=lambda code, msg: None, max_retry_delay=0.5)
        npc.startService()
        self.addCleanup(lambda: npc.stopService() if npc.running else None)
        yield wait_for(lambda: client.id in server.sessions and server.traffic.loaded)
        self.assertEqual(server.flow_base.get(client.id), 1_200_000)
        self.assertIn("flow_limit", server.limit_reached(client.id))
        user = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), user)
        user.transport.write(b"over the limit")
        yield user.closed
        self.assertEqual(user.received, b"")
        # an admin resets the client's traffic: it may move bytes again
        yield server.traffic.reset("client", client.id)
        self.assertEqual(server.limit_reached(client.id), "")


def _self_signed(directory: str) -> tuple[str, str, bytes]:
    """A certificate for 127.0.0.1 and its key, as files; @return: (cert path, key path, cert PEM)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = f"{directory}/web.pem", f"{directory}/web.key"
    with open(cert_path, "wb") as f:
        f.write(pem)
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path, pem


class HttpsAdminTests(TestCase):
    """web_open_ssl: the admin over HTTPS, and its session cookie is Secure."""

    timeout = 60

    def setUp(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="nps-tls-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)

    @inlineCallbacks
    def test_https_login_secure_cookie(self):  # type: ignore[no-untyped-def]
        from twisted.internet.ssl import Certificate
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

        cert, key, pem = _self_signed(self.data_dir)
        port = free_port()
        server = NpsServer(ServerConfig(path=None, bridge_ip="127.0.0.1", bridge_port=0, data_dir=self.data_dir,
                                        web_port=port, web_ip="127.0.0.1", web_password=PASSWORD,
                                        web_open_ssl=True, web_cert_file=cert, web_key_file=key),
                           reactor, load_modes())
        server.privilegedStartService()
        server.startService()
        self.addCleanup(lambda: server.stopService() if server.running else None)
        yield wait_for(lambda: server.admin.admin_ready, 30)
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(pem)), pool=pool)
        response = yield treq.request("POST", f"https://127.0.0.1:{port}/api/v1/login", agent=agent,
                                      data=json.dumps({"username": "admin", "password": PASSWORD}).encode(),
                                      headers={"Content-Type": ["application/json"]})
        body = yield treq.json_content(response)
        self.assertEqual(response.code, 200, body)
        cookie = response.headers.getRawHeaders("set-cookie")[0]
        self.assertIn("Secure", cookie)
        self.assertIn("HttpOnly", cookie)

