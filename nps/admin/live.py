# -*- test-case-name: test.test_admin_api -*-
"""Live updates for the web UI: an autobahn WebSocket hub pushing client status and traffic."""
from __future__ import annotations

import json
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from nps.admin.auth import Principal

if TYPE_CHECKING:
    from nps.admin.traffic import TrafficFlusher
    from nps.server import ClientSession, NpsServer

__all__ = ["LiveHub", "LiveFactory", "LiveProtocol", "TICK_SECONDS", "HISTORY_SECONDS"]

#: Traffic pushes to open pages, and chart samples.
TICK_SECONDS = 2.0
HISTORY_SECONDS = 10.0
HISTORY_POINTS = 360
MAX_LISTENERS = 200


class LiveProtocol(WebSocketServerProtocol):
    """One browser tab listening; it only receives."""

    hub: "LiveHub"
    principal: Principal

    def onOpen(self) -> None:
        self.hub.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        return None  # the page sends nothing we act on

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.hub.remove(self)

    def push(self, message: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(message, separators=(",", ":")).encode("utf-8"), False)


class LiveFactory(WebSocketServerFactory):
    """Builds a L{LiveProtocol} for one authenticated request."""

    protocol = LiveProtocol

    def __init__(self, hub: "LiveHub", principal: Principal) -> None:
        super().__init__()
        self.hub = hub
        self.principal = principal
        self.setProtocolOptions(autoPingInterval=20, autoPingTimeout=20, maxMessagePayloadSize=4096,
                                maxFramePayloadSize=4096)

    def buildProtocol(self, addr: Any) -> LiveProtocol:
        protocol = super().buildProtocol(addr)
        assert isinstance(protocol, LiveProtocol)
        protocol.hub = self.hub
        protocol.principal = self.principal
        return protocol


class LiveHub:
    """
    Knows the open pages; pushes C{client} events when an npc comes or goes,
    C{changed} events after API writes, and C{traffic} totals every
    L{TICK_SECONDS}. Keeps a short traffic history for the dashboard chart.
    """

    log = Logger()

    def __init__(self, server: "NpsServer", traffic: "TrafficFlusher") -> None:
        self._server = server
        self._traffic = traffic
        self._listeners: set[LiveProtocol] = set()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)
        self._tick = LoopingCall(self._push_traffic)
        self._tick.clock = server.reactor
        self._sample = LoopingCall(self._take_sample)
        self._sample.clock = server.reactor

    def start(self) -> None:
        self._tick.start(TICK_SECONDS, now=False)
        self._sample.start(HISTORY_SECONDS, now=True)

    def stop(self) -> None:
        for loop in (self._tick, self._sample):
            if loop.running:
                loop.stop()
        for listener in list(self._listeners):
            listener.sendClose(1000, "server stopping")

    def add(self, listener: LiveProtocol) -> None:
        if len(self._listeners) >= MAX_LISTENERS:
            listener.sendClose(4008, "too many live pages open")
            return
        self._listeners.add(listener)
        listener.push({"type": "hello", "user": listener.principal.name})

    def remove(self, listener: LiveProtocol) -> None:
        self._listeners.discard(listener)

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    def publish(self, message: dict[str, Any], client_id: int | None) -> None:
        """Send C{message} to every page allowed to see C{client_id} (None: admins only)."""
        for listener in list(self._listeners):
            principal = listener.principal
            if principal.is_admin or (client_id is not None and principal.client_id == client_id):
                listener.push(message)

    def session_changed(self, session: "ClientSession", online: bool) -> None:
        """NpsServer's session observer: an npc came online or went away."""
        if session.public:
            self.publish({"type": "changed", "what": "public"}, None)
            return
        self.publish({"type": "client", "id": session.client_id, "online": online, "remote_addr": session.remote,
                      "version": session.version, "last_seen": time.time()}, session.client_id)

    def changed(self, what: str, client_id: int | None) -> None:
        """An API write changed C{what} (clients, tunnels, hosts): pages reload that list."""
        self.publish({"type": "changed", "what": what, "client_id": client_id}, client_id)

    def _totals(self) -> dict[str, dict[int, tuple[int, int]]]:
        return {kind: self._traffic.totals(kind) for kind in ("client", "tunnel", "host")}

    def _push_traffic(self) -> None:
        if not self._listeners:
            return
        totals = self._totals()
        tunnel_owner = {t: r.tunnel.client_id for t, r in self._server.tunnels.items()}
        open_conns = {c: counter.open for c, counter in self._server.client_counters.items()}
        for listener in list(self._listeners):
            principal = listener.principal

            def visible(kind: str, record_id: int) -> bool:
                if principal.is_admin:
                    return True
                if kind == "client":
                    return record_id == principal.client_id
                if kind == "tunnel":
                    return tunnel_owner.get(record_id) == principal.client_id
                return False

            message = {"type": "traffic", "time": time.time(), "online": sorted(
                c for c in self._server.sessions if c > 0 and (principal.is_admin or c == principal.client_id))}
            for kind, values in totals.items():
                message[kind + "s"] = {str(i): list(v) for i, v in values.items() if visible(kind, i)}
            message["open"] = {str(c): n for c, n in open_conns.items() if visible("client", c)}
            listener.push(message)

    def _take_sample(self) -> None:
        clients = self._traffic.totals("client")
        self.history.append({"t": time.time(), "clients": clients,
                             "in": sum(v[0] for v in clients.values()),
                             "out": sum(v[1] for v in clients.values())})

    def history_for(self, principal: Principal) -> list[dict[str, Any]]:
        """@return: Chart samples C{{t, in, out}} (cumulative bytes) this caller may see."""
        points = []
        for sample in self.history:
            if principal.is_admin:
                points.append({"t": sample["t"], "in": sample["in"], "out": sample["out"]})
            else:
                b_in, b_out = sample["clients"].get(principal.client_id, (0, 0))
                points.append({"t": sample["t"], "in": b_in, "out": b_out})
        return points
