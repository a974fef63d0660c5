# -*- test-case-name: test.test_admin_api -*-
"""The web admin listener (web_ip:web_port, optional TLS) and the traffic flusher, as children of NpsServer."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import ssl
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.util import Redirect

from nps.admin import passwords
from nps.admin.api import AdminApp
from nps.admin.live import LiveHub
from nps.admin.traffic import TrafficFlusher, flush_seconds

if TYPE_CHECKING:
    from nps.server import NpsServer

__all__ = ["AdminService", "attach_admin", "DEFAULT_WEB_PORT"]

#: nps with no nps.conf at all serves the admin on 127.0.0.1 at this port (NPS's guide uses 8080).
DEFAULT_WEB_PORT = 8080
_CSP = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class _AdminRequest(Request):
    """Every admin response gets headers that keep it out of frames and other sites' scripts."""

    def process(self) -> None:
        self.setHeader(b"X-Frame-Options", b"DENY")
        self.setHeader(b"X-Content-Type-Options", b"nosniff")
        self.setHeader(b"Referrer-Policy", b"no-referrer")
        self.setHeader(b"Content-Security-Policy", _CSP)
        super().process()


class AdminService(Service):
    """Serves L{AdminApp} on web_ip:web_port; creates the first admin user."""

    log = Logger(namespace="nps.admin")

    def __init__(self, server: "NpsServer", traffic: TrafficFlusher) -> None:
        self._server = server
        self._pool = ThreadPool(1, 2, name="nps-admin")
        self.hub = LiveHub(server, traffic)
        config = server.config
        self.secure = bool(config.web_open_ssl)
        self.app = AdminApp(server, traffic, self.hub, self._pool, secure=self.secure)
        self.port: Any = None
        #: The password generated at first start (kept only for tests in this process).
        self.generated_password = ""
        #: True once the admin user exists (logins work).
        self.admin_ready = False

    def resource(self) -> Resource:
        """The site's root: the Klein app, below web_base_url if set."""
        resource: Resource = self.app.app.resource()
        base = (self._server.config.web_base_url or "").strip("/")
        for segment in reversed(base.split("/") if base else []):
            parent = _Prefix(resource, segment)
            resource = parent
        return resource

    def privilegedStartService(self) -> None:
        config = self._server.config
        reactor = self._server.reactor
        site = Site(self.resource())
        site.requestFactory = _AdminRequest
        site.displayTracebacks = False
        site.noisy = False
        try:
            if config.web_open_ssl:
                options = _tls_options(config.web_cert_file, config.web_key_file)
                self.port = reactor.listenSSL(config.web_port, site, options, interface=config.web_ip)
            else:
                self.port = reactor.listenTCP(config.web_port, site, interface=config.web_ip)
        except (CannotListenError, OSError, ssl.SSL.Error) as e:
            message = f"cannot serve the web admin on {config.web_ip}:{config.web_port}: {getattr(e, 'socketError', e)}"
            if config.path is not None:
                raise SystemExit(f"nps: {message}") from None
            self.log.error("{message}; running without the web admin (set web_port in nps.conf)", message=message)
            return
        address = self.port.getHost()
        scheme = "https" if config.web_open_ssl else "http"
        host = address.host if ":" not in address.host else f"[{address.host}]"
        self.log.info("web admin on {url}", url=f"{scheme}://{host}:{address.port}{config.web_base_url or ''}/")
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self._pool.start()
        # Stop the pool's threads even if the reactor stops without stopping this service.
        self._server.reactor.addSystemEventTrigger("during", "shutdown", self._stop_pool)
        self.hub.start()
        self.ensure_admin().addErrback(lambda f: self.log.failure("cannot set up the admin user", f))

    @inlineCallbacks
    def ensure_admin(self):  # type: ignore[no-untyped-def]
        """First start: create the admin user from web_password, or with a generated password printed once."""
        config = self._server.config
        store = self._server.store
        username = config.web_username or "admin"
        stored = yield store.call("admin_password_hash", username)
        if config.web_password:
            weak = passwords.weakness(config.web_password, username)
            if weak:
                self.log.warn("!!! web_password in nps.conf is WEAK: {why}. Anyone who guesses it controls "
                              "every tunnel on this server. Use a long random password. !!!", why=weak)
            same = stored and (yield self._thread(passwords.verify_password, config.web_password, stored))
            if not same:
                hashed = yield self._thread(passwords.hash_password, config.web_password)
                yield store.call("set_admin_password", username, hashed)
            self.admin_ready = True
            return
        if stored:
            self.admin_ready = True
            return
        password = passwords.new_password()
        hashed = yield self._thread(passwords.hash_password, password)
        yield store.call("set_admin_password", username, hashed)
        self.generated_password = password
        self.admin_ready = True
        self.log.warn(
            "\n==================================================================\n"
            " web admin user {user!r} created with the password:  {password}\n"
            " it is shown only this once (only its scrypt hash is stored);\n"
            " change it with `nps admin passwd`.\n"
            "==================================================================",
            user=username, password=password)

    def _thread(self, f: Any, *args: Any) -> Any:
        return deferToThreadPool(self._server.reactor, self._pool, f, *args)

    @inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        super().stopService()
        self.hub.stop()
        if self.port is not None:
            yield self.port.stopListening()
        self._stop_pool()

    def _stop_pool(self) -> None:
        if self._pool.started and not self._pool.joined:
            self._pool.stop()


class _Prefix(Resource):
    """One path segment of web_base_url in front of the app; the bare prefix redirects to C{prefix/}."""

    def __init__(self, child: Resource, segment: str) -> None:
        super().__init__()
        self._child = child
        self._segment = segment.encode("utf-8")

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == self._segment:
            if not request.postpath:
                return Redirect(request.uri + b"/")
            return self._child
        return Resource.getChild(self, path, request)

    def render(self, request: Any) -> bytes:
        request.setResponseCode(404)
        return b"not found"


def _tls_options(cert_file: str, key_file: str) -> Any:
    if not cert_file or not key_file:
        raise OSError("web_open_ssl needs web_cert_file and web_key_file")
    with open(cert_file, "rb") as f:
        cert = f.read()
    with open(key_file, "rb") as f:
        key = f.read()
    return ssl.PrivateCertificate.loadPEM(cert + b"\n" + key).options()


def attach_admin(server: "NpsServer") -> AdminService | None:
    """
    Add the traffic flusher (always) and, when web_port is set, the web admin
    to C{server}.
    """
    traffic = TrafficFlusher(server, flush_seconds(server.config.flow_store_interval))
    traffic.setServiceParent(server)
    server.traffic = traffic
    if not server.config.web_port:
        return None
    admin = AdminService(server, traffic)
    admin.setServiceParent(server)
    server.session_observers.append(admin.hub.session_changed)
    return admin
