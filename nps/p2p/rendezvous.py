# -*- test-case-name: test.test_p2p_rendezvous -*-
"""The server side of p2p: pairs a visitor npc with a provider npc and tells each
where the other is (its address as seen from the server's UDP C{p2p_port}).

Only a peer that holds a one-time token the server gave it over its
authenticated bridge session can register a UDP address, so spoofed or stray
datagrams never pair anyone; a wrong password never gets a token.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from nps.config import format_host_port
from nps.protocols.p2p import Kind, P2PWireError, parse

if TYPE_CHECKING:
    from nps.server import ClientSession, NpsServer

#: Seconds a pairing waits for both peers' UDP registrations and the provider's answer.
PAIR_TIMEOUT = 15.0
MAX_PAIRINGS = 1024
MAX_PAIRINGS_PER_SESSION = 16
MAX_ID = 64
MAX_CERT = 8192


class RateLimitedLog:
    """At most C{burst} log lines per C{window} seconds; the rest are counted and summarised."""

    def __init__(self, log: Logger, burst: int = 5, window: float = 10.0, clock: Any = time) -> None:
        self.log = log
        self.burst = burst
        self.window = window
        self._clock = clock
        self._start = -window
        self._count = 0
        self.suppressed = 0

    def warn(self, format: str, **kwargs: Any) -> None:
        now = self._clock.time() if hasattr(self._clock, "time") else self._clock.seconds()
        if now - self._start >= self.window:
            if self.suppressed:
                self.log.warn("p2p: {n} more bad datagrams were dropped without a log line",
                              n=self.suppressed)
            self._start, self._count, self.suppressed = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            self.log.warn(format, **kwargs)
        else:
            self.suppressed += 1


@attrs.define(eq=False)
class Pairing:
    """One visitor-to-provider attempt waiting for its two UDP registrations."""

    rid: str
    visit_id: str
    visitor: "ClientSession"
    provider: "ClientSession"
    tunnel_id: int
    remark: str
    target: str
    key: bytes
    tokens: dict[bytes, str]
    addrs: dict[str, tuple[str, int]] = attrs.Factory(dict)
    cert: str = ""
    timer: IDelayedCall | None = None


class Rendezvous(DatagramProtocol):
    """The UDP C{p2p_port} and the pairings in progress."""

    log = Logger()

    def __init__(self, server: "NpsServer", reactor: Any, public_host: str) -> None:
        self.server = server
        self.reactor = reactor
        #: What peers are told to send to (empty: the host they reach the bridge at).
        self.public_host = public_host
        self.port = 0
        self.pairings: dict[str, Pairing] = {}
        self._by_token: dict[bytes, tuple[Pairing, str]] = {}
        self.bad = RateLimitedLog(self.log)
        self.dropped = 0
        #: tunnel id -> (visitor client id, "direct" or "relayed") last reported.
        self.paths: dict[int, dict[str, Any]] = {}

    # -- UDP ---------------------------------------------------------------------------

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        source = (str(addr[0]), int(addr[1]))
        try:
            kind, token = parse(data)
            if kind != Kind.REGISTER:
                raise P2PWireError(f"kind {kind.name} is not sent to the server")
        except P2PWireError as e:
            self._drop(source, str(e))
            return
        entry = self._by_token.get(hashlib.sha256(token).digest())
        if entry is None:
            self._drop(source, "unknown or used token")
            return
        pairing, side = entry
        known = pairing.addrs.get(side)
        if known is not None and known != source:
            self._drop(source, f"token of pairing {pairing.rid[:8]} already registered from "
                               f"{format_host_port(*known)}")
            return
        if known is None:
            pairing.addrs[side] = source
            self.log.debug("p2p {rid}: {side} registered from {addr}", rid=pairing.rid[:8], side=side,
                           addr=format_host_port(*source))
        self._maybe_pair(pairing)

    def _drop(self, source: tuple[str, int], reason: str) -> None:
        self.dropped += 1
        self.bad.warn("p2p: dropped a datagram from {addr}: {reason}", addr=format_host_port(*source),
                      reason=reason)

    # -- control messages over the bridge --------------------------------------------------

    def control(self, session: "ClientSession", message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "p2p_connect":
            self._connect(session, message)
        elif kind in ("p2p_accept", "p2p_decline"):
            self._provider_answer(session, message)
        elif kind == "p2p_path":
            self._path(session, message)

    def _connect(self, visitor: "ClientSession", message: dict[str, Any]) -> None:
        visit_id = message.get("id")
        password = message.get("password")
        wanted = message.get("target") or ""
        if not isinstance(visit_id, str) or not 0 < len(visit_id) <= MAX_ID or not isinstance(password, str) \
                or not isinstance(wanted, str):
            if visitor.mux is not None:
                visitor.mux.protocol_error("p2p_connect needs a string id and password")
            return

        def refuse(error: str, relay: bool) -> None:
            if visitor.mux is not None:
                visitor.mux.send_control({"type": "p2p_failed", "id": visit_id, "error": error, "relay": relay})

        running = self.server.secret_tunnel(password)
        if running is None or running.tunnel.mode != "p2p":
            self.log.warn("client {id}: p2p visit from {remote} refused: wrong password",
                          id=visitor.client_id, remote=visitor.remote)
            refuse("wrong password (no such p2p tunnel)", False)
            return
        tunnel = running.tunnel
        if not self.port:
            refuse("the server has no p2p_port", True)
            return
        target = wanted or tunnel.targets[0]
        if target not in tunnel.targets:
            refuse(f"target {target} is not one of p2p tunnel {tunnel.remark!r}'s targets", False)
            return
        provider = self.server.sessions.get(tunnel.client_id)
        if provider is None or provider.mux is None:
            refuse(f"the client of p2p tunnel {tunnel.remark!r} is offline", False)
            return
        mine = sum(1 for p in self.pairings.values() if p.visitor is visitor)
        if len(self.pairings) >= MAX_PAIRINGS or mine >= MAX_PAIRINGS_PER_SESSION:
            refuse("too many p2p pairings in progress; relaying", True)
            return
        tokens = {"visitor": secrets.token_bytes(16), "provider": secrets.token_bytes(16)}
        pairing = Pairing(rid=secrets.token_hex(16), visit_id=visit_id, visitor=visitor, provider=provider,
                          tunnel_id=tunnel.id, remark=tunnel.remark, target=target,
                          key=secrets.token_bytes(32), tokens={v: k for k, v in tokens.items()})
        self.pairings[pairing.rid] = pairing
        for side, token in tokens.items():
            self._by_token[hashlib.sha256(token).digest()] = (pairing, side)
        pairing.timer = self.reactor.callLater(PAIR_TIMEOUT, self._expire, pairing)
        self.log.info("p2p tunnel {tunnel} ({remark}): pairing client {v} ({vaddr}) with client {p} ({paddr})",
                      tunnel=tunnel.id, remark=tunnel.remark, v=visitor.client_id, vaddr=visitor.remote,
                      p=provider.client_id, paddr=provider.remote)
        udp = {"udp_host": self.public_host, "udp_port": self.port}
        provider.mux.send_control(dict(udp, type="p2p_offer", rid=pairing.rid, token=tokens["provider"].hex(),
                                       target=target, key=pairing.key.hex(), remark=tunnel.remark))
        assert visitor.mux is not None
        visitor.mux.send_control(dict(udp, type="p2p_token", id=visit_id, token=tokens["visitor"].hex()))

    def _provider_answer(self, provider: "ClientSession", message: dict[str, Any]) -> None:
        pairing = self.pairings.get(str(message.get("rid", "")))
        if pairing is None or pairing.provider is not provider:
            return  # late (expired) or not this client's pairing
        if message["type"] == "p2p_decline":
            self._fail(pairing, f"the provider declined: {str(message.get('error', ''))[:200]}")
            return
        cert = message.get("cert")
        if not isinstance(cert, str) or not cert.startswith("-----BEGIN CERTIFICATE-----") \
                or len(cert) > MAX_CERT:
            self._fail(pairing, "the provider sent no usable certificate")
            return
        pairing.cert = cert
        self._maybe_pair(pairing)

    def _maybe_pair(self, pairing: Pairing) -> None:
        if not pairing.cert or len(pairing.addrs) < 2 or pairing.rid not in self.pairings:
            return
        self._forget(pairing)
        visitor_addr = format_host_port(*pairing.addrs["visitor"])
        provider_addr = format_host_port(*pairing.addrs["provider"])
        self.log.info("p2p {rid}: visitor {vaddr} <-> provider {paddr}: punching", rid=pairing.rid[:8],
                      vaddr=visitor_addr, paddr=provider_addr)
        if pairing.provider.mux is not None:
            pairing.provider.mux.send_control({"type": "p2p_peer", "rid": pairing.rid, "peer": visitor_addr})
        if pairing.visitor.mux is not None:
            pairing.visitor.mux.send_control({"type": "p2p_peer", "id": pairing.visit_id, "rid": pairing.rid,
                                              "peer": provider_addr, "cert": pairing.cert,
                                              "key": pairing.key.hex()})

    def _expire(self, pairing: Pairing) -> None:
        pairing.timer = None
        missing = [side for side in ("visitor", "provider") if side not in pairing.addrs]
        if not pairing.cert:
            missing.append("provider's answer")
        self._fail(pairing, f"no UDP registration or answer in {PAIR_TIMEOUT:.0f}s from: {', '.join(missing)}")

    def _fail(self, pairing: Pairing, error: str) -> None:
        self._forget(pairing)
        self.log.warn("p2p {rid}: {error}; the visitor relays through the server", rid=pairing.rid[:8],
                      error=error)
        if pairing.visitor.mux is not None:
            pairing.visitor.mux.send_control({"type": "p2p_failed", "id": pairing.visit_id,
                                              "error": error, "relay": True})
        if pairing.provider.mux is not None:
            pairing.provider.mux.send_control({"type": "p2p_cancel", "rid": pairing.rid})

    def _forget(self, pairing: Pairing) -> None:
        self.pairings.pop(pairing.rid, None)
        for token in pairing.tokens:
            self._by_token.pop(hashlib.sha256(token).digest(), None)
        if pairing.timer is not None and pairing.timer.active():
            pairing.timer.cancel()
        pairing.timer = None

    def _path(self, visitor: "ClientSession", message: dict[str, Any]) -> None:
        path = message.get("path")
        if path not in ("direct", "relayed"):
            return
        password = message.get("password")
        running = self.server.secret_tunnel(password) if isinstance(password, str) else None
        if running is None:
            return
        reason = str(message.get("reason", ""))[:200]
        self.paths[running.tunnel.id] = {"visitor": visitor.client_id, "path": path, "reason": reason}
        self.log.info("p2p tunnel {id} ({remark}): client {client} uses the {path} path{why}", id=running.tunnel.id,
                      remark=running.tunnel.remark, client=visitor.client_id, path=path,
                      why=f" ({reason})" if reason else "")

    def session_ended(self, session: "ClientSession") -> None:
        """Drop the pairings of a client that went away."""
        for pairing in list(self.pairings.values()):
            if pairing.visitor is session or pairing.provider is session:
                self._fail(pairing, f"client {session.client_id} went offline")


def proof(key: bytes, label: bytes = b"nps-p2p-stream-v1") -> bytes:
    """What a visitor sends first on each direct stream: proves it was paired by the server."""
    return hmac.new(key, label, hashlib.sha256).digest()
