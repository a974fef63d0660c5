# -*- test-case-name: test.test_client -*-
"""The npc client: keeps one bridge session up and serves the streams on it."""
from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from nps.bridge.client import BridgeClientFactory, BridgeClientProtocol, BridgeRefused
from nps.model import Tunnel
from nps.mux import MuxStream

PING_INTERVAL = 5.0
CONNECT_TIMEOUT = 10.0

#: Called with (exit code, message) when npc must stop for good.
FatalHandler = Callable[[int, str], None]


class NpcService(MultiService):
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
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.server = f"{server_host}:{server_port}"
        self.vkey = vkey
        self.modes = modes
        self.tunnels = list(tunnels)
        self.remark = remark
        self.auto_reconnect = auto_reconnect
        self.idle_timeout = max(disconnect_timeout, 1) * PING_INTERVAL
        self._on_fatal = on_fatal
        self.connected_once = False
        self.current: BridgeClientProtocol | None = None
        endpoint = HostnameEndpoint(reactor, server_host, server_port, timeout=CONNECT_TIMEOUT)
        self._client_service = ClientService(
            endpoint,
            BridgeClientFactory(self, reactor),
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=max_retry_delay, factor=2.0,
                                      jitter=random.random),
            clock=reactor,
            prepareConnection=self._prepare,
        )
        self._client_service.setServiceParent(self)

    def startService(self) -> None:
        self.log.info("npc connecting to {server}", server=self.server)
        super().startService()

    def _prepare(self, protocol: Any) -> Any:
        return protocol.ready.addCallbacks(self._connected, self._refused)

    def _connected(self, protocol: BridgeClientProtocol) -> BridgeClientProtocol:
        self.connected_once = True
        self.current = protocol
        welcome = protocol.welcome
        self.log.info("connected to server {server} as client {id} (server {version})",
                      server=self.server, id=welcome.get("client_id"), version=welcome.get("server_version"))
        if self.tunnels and protocol.mux is not None:
            protocol.mux.send_control({"type": "register", "tunnels": [t.to_wire() for t in self.tunnels]})
        return protocol

    def _refused(self, failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, BridgeRefused):
            message = str(error)
            self.log.error("server {server} refused the connection: {message}", server=self.server, message=message)
            if not self.connected_once and ("refused us" in message or "protocol version" in message
                                            or "prove" in message):
                self._fatal(1, f"cannot log in to {self.server}: {message}")
        else:
            self.log.warn("cannot reach server {server}: {message}", server=self.server,
                          message=failure.getErrorMessage())
        return failure

    def session_lost(self, protocol: BridgeClientProtocol, reason: str) -> None:
        if self.current is protocol:
            self.current = None
        self.log.warn("disconnected from server {server}: {reason}", server=self.server, reason=reason)
        if "replaced by a newer connection" in reason:
            self._fatal(1, f"another npc logged in with the same vkey; stopping ({reason})")
        elif not self.auto_reconnect:
            self._fatal(1, "connection lost and auto_reconnection=false; stopping")
        else:
            self.log.info("reconnecting to {server} (backoff with jitter)", server=self.server)

    def _fatal(self, code: int, message: str) -> None:
        if self.running:
            self.reactor.callLater(0, self._client_service.stopService)
        if self._on_fatal is not None:
            self._on_fatal(code, message)
        else:
            self.log.critical("{message}", message=message)

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
        elif kind == "goaway":
            self.log.warn("server is closing the session: {reason}", reason=message.get("reason"))

    def stream_opened(self, stream: MuxStream) -> None:
        link = stream.link
        mux = stream.mux
        mode = self.modes.get(str(link.get("mode", "")))
        if mode is None:
            mux.refuse_stream(stream, f"mode {link.get('mode')!r} is not supported by this npc")
            return
        d = mode.serve(self.reactor, link)

        def accepted(protocol: Any) -> None:
            mux.accept_stream(stream, protocol)

        def refused(failure: Failure) -> None:
            reason = failure.getErrorMessage()
            self.log.info("stream to {target} for {remote} refused: {reason}", target=link.get("target"),
                          remote=link.get("remote"), reason=reason)
            mux.refuse_stream(stream, reason)

        d.addCallbacks(accepted, refused)
