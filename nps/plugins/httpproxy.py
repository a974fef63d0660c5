# -*- test-case-name: test.test_httpproxy -*-
"""The C{httpProxy} mode: an HTTP forward proxy on the server, exits on the client.

Users point their HTTP proxy setting at the tunnel's public port:

  - C{CONNECT host:port}: after the (optional) Basic proxy authentication a
    stream to C{host:port} is opened on the npc; once the npc has connected
    the user gets C{200 Connection established} and the two are spliced
    with L{nps.relay.join}.  A refused target gives 502 (504 on timeouts).
  - absolute-form requests (C{GET http://host:port/path HTTP/1.1}): each is
    rewritten to origin-form, stripped of hop-by-hop headers and sent over a
    stream to C{host:port}; the response comes back through a second h11
    machine, so message boundaries are known and the user's connection stays
    keep-alive.  The stream is reused while requests go to the same target.
  - anything else (origin-form, malformed heads, oversized heads) is refused
    with 400/431 and the connection closed; a slow head times out.

The npc side only dials the target (raw TCP): all HTTP work is done here.
"""
from __future__ import annotations

from typing import Any, Callable

import h11
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProtocol, IPushProducer, \
    IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from nps.accounts import accounts_for, check
from nps.config import format_host_port
from nps.interfaces import IProxyMode
from nps.model import Tunnel
from nps.plugins.tcp import connect_target, listen_public_tcp
from nps.protocols.httpproxy import (CONNECT_ESTABLISHED, ProxyError, ProxyRequest, auth_required, classify,
                                     clean_headers, error_response, new_upstream_connection,
                                     new_user_connection, status_for_refusal)
from nps.relay import Relay, join, tune_socket

__all__ = ["HttpProxyMode", "HttpProxyFactory", "HttpProxyProtocol", "httpproxy"]

#: Seconds a user has to send a complete request head (also the keep-alive idle limit).
HEADER_TIMEOUT = 30.0

Opener = Callable[[dict[str, Any]], IStreamClientEndpoint]


def _reason_text(failure: Failure) -> str:
    """The bare reason of a stream failure (without the exception class' preamble)."""
    args = getattr(failure.value, "args", ())
    if args and isinstance(args[0], str) and args[0]:
        return args[0]
    return failure.getErrorMessage()


class _Prepared(Factory):
    """Hands out one protocol that already exists."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


class _StreamWatch:
    """Tells the proxy once whether a stream it opened was accepted or refused.

    The stream's C{opened} Deferred may reach us as a failure, or as C{None}
    when an earlier errback consumed the failure; the stream's
    C{connectionLost} carries the reason then.  Whichever says "refused"
    first wins; C{None} waits for C{connectionLost}.
    """

    def __init__(self, on_open: Callable[[], None], on_refused: Callable[[str], None]) -> None:
        self._on_open = on_open
        self._on_refused = on_refused
        self.state = "opening"  # "open" | "refused"

    def opened_result(self, result: Any) -> None:
        if self.state != "opening":
            return
        if isinstance(result, Failure):
            self.state = "refused"
            self._on_refused(_reason_text(result))
        elif result is not None:
            self.state = "open"
            self._on_open()

    def lost(self, reason: Failure) -> bool:
        """The stream ended; returns True if that was its refusal."""
        if self.state != "opening":
            return False
        self.state = "refused"
        self._on_refused(_reason_text(reason))
        return True


@implementer(IPushProducer)
class _UpstreamGate:
    """Registered on an upstream stream: its backpressure pauses the user's reads."""

    def __init__(self, proxy: "HttpProxyProtocol", upstream: "Upstream") -> None:
        self._proxy = proxy
        self._upstream = upstream

    def pauseProducing(self) -> None:
        if self._proxy._upstream is self._upstream:
            self._proxy._pause("upstream")

    def resumeProducing(self) -> None:
        if self._proxy._upstream is self._upstream:
            self._proxy._resume("upstream")

    def stopProducing(self) -> None:
        """The stream is gone; L{Upstream.connectionLost} deals with it."""


@implementer(IPushProducer)
class _UserGate:
    """Registered once on the user's transport: its backpressure pauses the current upstream."""

    paused = False

    def __init__(self, proxy: "HttpProxyProtocol") -> None:
        self._proxy = proxy

    def _stream(self) -> Any:
        upstream = self._proxy._upstream
        return None if upstream is None or upstream.gone else upstream.transport

    def pauseProducing(self) -> None:
        self.paused = True
        stream = self._stream()
        if stream is not None:
            stream.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        stream = self._stream()
        if stream is not None:
            stream.resumeProducing()

    def stopProducing(self) -> None:
        """The user's connection is gone; L{HttpProxyProtocol.connectionLost} deals with it."""


class Upstream(Protocol):
    """The client half of HTTP/1.1 on one mux stream to one target."""

    transport: Any
    gone = False
    raw = False

    def __init__(self, proxy: "HttpProxyProtocol", target: str) -> None:
        self.proxy = proxy
        self.target = target
        self.h11 = new_upstream_connection()
        self.response_started = False
        self.watch = _StreamWatch(self._accepted, self._refused)

    def reusable(self) -> bool:
        """Idle and open: the next request to the same target may use it."""
        return (not self.gone and not self.raw and self.watch.state != "refused"
                and self.h11.our_state is h11.IDLE and self.h11.their_state is h11.IDLE)

    def send(self, event: Any) -> None:
        """Frame C{event} with h11 and write it to the stream."""
        data = self.h11.send(event)
        if data and not self.gone:
            self.transport.write(data)

    def _accepted(self) -> None:
        """The npc connected the target: nothing to do, bytes already flow."""

    def _refused(self, reason: str) -> None:
        self.proxy._upstream_refused(self, reason)

    def dataReceived(self, data: bytes) -> None:
        if self.raw:
            self.proxy.transport.write(data)
            return
        self.h11.receive_data(data)
        self.proxy._pump_upstream(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        if self.watch.lost(reason):
            return
        self.proxy._upstream_lost(self)


class _ConnectSide(Relay):
    """The stream half of a CONNECT tunnel; joined to the user once the target is connected."""

    def __init__(self, proxy: "HttpProxyProtocol", target: str) -> None:
        super().__init__()
        self.proxy = proxy
        self.target = target
        self.watch = _StreamWatch(self._accepted, self._refused)

    def connectionMade(self) -> None:
        """Not joined yet: L{HttpProxyProtocol} joins after the 200."""

    def _accepted(self) -> None:
        self.proxy._connect_established(self)

    def _refused(self, reason: str) -> None:
        self.proxy._connect_refused(self, reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.watch.lost(reason):
            self.gone = True
            return
        super().connectionLost(reason)


class HttpProxyProtocol(Relay):
    """One user connection to the proxy port.

    Modes: C{"http"} (reading requests with h11), C{"connecting"} (CONNECT
    waits for the target), C{"relay"} (CONNECT established: L{Relay}),
    C{"raw"} (a WebSocket upgrade went through), C{"closing"}.
    """

    log = Logger()
    factory: "HttpProxyFactory"
    transport: Any

    def __init__(self) -> None:
        super().__init__()
        self._user = new_user_connection()
        self._mode = "http"
        self._upstream: Upstream | None = None
        self._connect_side: _ConnectSide | None = None
        self._connect_request: ProxyRequest | None = None
        self._pauses: set[str] = set()
        self._head_timer: IDelayedCall | None = None
        self._user_gate = _UserGate(self)
        self._remote = ""
        self._method = b""
        self._target = ""

    # -- connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        tune_socket(self.transport, keepalive=True)
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        self._remote = format_host_port(host, peer.port) if host is not None else str(peer)
        self.transport.registerProducer(self._user_gate, True)
        self._arm_head_timer()

    def dataReceived(self, data: bytes) -> None:
        if self._mode == "relay":
            super().dataReceived(data)
            return
        if self._mode == "raw":
            upstream = self._upstream
            if upstream is not None and not upstream.gone:
                upstream.transport.write(data)
            return
        if self._mode == "closing":
            return
        try:
            self._user.receive_data(data)
        except h11.RemoteProtocolError:
            return
        self._pump_user()

    def readConnectionLost(self) -> None:
        if self._mode == "relay":
            super().readConnectionLost()
            return
        if self._mode == "raw":
            upstream = self._upstream
            if upstream is not None and not upstream.gone:
                upstream.transport.loseWriteConnection()
            return
        if self._mode == "http":
            try:
                self._user.receive_data(b"")
            except h11.RemoteProtocolError:
                pass
            self._pump_user()
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_head_timer()
        mode, self._mode = self._mode, "closing"
        if mode == "relay":
            super().connectionLost(reason)
            return
        self.gone = True
        self.connected = False
        self._drop_upstream()
        side = self._connect_side
        if side is not None and not side.gone and side.transport is not None:
            side.transport.loseConnection()

    # -- flow control ------------------------------------------------------------

    def _pause(self, why: str) -> None:
        if not self._pauses and self.connected:
            self.transport.pauseProducing()
        self._pauses.add(why)

    def _resume(self, why: str) -> None:
        if why not in self._pauses:
            return
        self._pauses.discard(why)
        if not self._pauses and self.connected and self._mode != "closing":
            self.transport.resumeProducing()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.factory.clock.callLater(self.factory.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        timer, self._head_timer = self._head_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._mode != "http":
            return
        self.log.info("httpProxy tunnel {tunnel}: {remote} sent no complete request head in {timeout}s; closing",
                      tunnel=self.factory.tunnel.id, remote=self._remote, timeout=self.factory.header_timeout)
        self._mode = "closing"
        self.transport.loseConnection()

    # -- refusals -------------------------------------------------------------------

    def _refuse(self, status: int, message: str, response: bytes | None = None) -> None:
        """Answer C{status} (unless a response is under way) and close this connection."""
        self.log.info("httpProxy tunnel {tunnel}: refused {remote} {method} {target}: {status} {message}",
                      tunnel=self.factory.tunnel.id, remote=self._remote,
                      method=self._method.decode("ascii", "replace") or "-", target=self._target or "-",
                      status=status, message=message)
        self._mode = "closing"
        self._cancel_head_timer()
        if self._user.our_state in (h11.IDLE, h11.SEND_RESPONSE) and not self._response_started():
            self.transport.write(response if response is not None else error_response(status, message))
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()
        self._drop_upstream()

    def _response_started(self) -> bool:
        upstream = self._upstream
        return upstream is not None and upstream.response_started

    # -- requests from the user --------------------------------------------------------

    def _pump_user(self) -> None:
        while self._mode == "http":
            try:
                event = self._user.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint if e.error_status_hint in (400, 431) else 400
                if status == 431:
                    message = "request head larger than 64 KiB"
                else:
                    message = f"malformed request: {e}"
                self._refuse(status, message)
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                # One request at a time: the next waits until this response is done.
                self._pause("cycle")
                return
            if isinstance(event, h11.Request):
                self._cancel_head_timer()
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._forward_body(event)
            elif isinstance(event, h11.EndOfMessage):
                if self._connect_request is not None:
                    self._start_connect(self._connect_request)
                else:
                    self._forward_body(h11.EndOfMessage())
            elif isinstance(event, h11.ConnectionClosed):
                self._mode = "closing"
                self.transport.loseConnection()
                self._drop_upstream()

    def _on_request(self, request: h11.Request) -> None:
        self._method = request.method
        self._target = request.target.decode("ascii", "replace")[:256]
        try:
            proxied = classify(request)
        except ProxyError as e:
            self._refuse(e.status, e.message)
            return
        self._target = proxied.target
        accounts = self.factory.accounts
        if accounts:
            credentials = proxied.credentials
            if credentials is None:
                self._refuse(407, "no proxy credentials", auth_required())
                return
            if not check(accounts, *credentials):
                self._refuse(407, f"wrong proxy credentials for user {credentials[0]!r}", auth_required())
                return
        if proxied.kind == "connect":
            self._connect_request = proxied
            return
        assert proxied.request is not None
        upstream = self._upstream
        if upstream is None or upstream.target != proxied.target or not upstream.reusable():
            self._drop_upstream()
            upstream = self._open_upstream(proxied.target)
            if upstream is None:
                return
        upstream.response_started = False
        try:
            upstream.send(proxied.request)
        except h11.LocalProtocolError as e:
            self._refuse(400, f"cannot forward this request: {e}")

    def _forward_body(self, event: Any) -> None:
        upstream = self._upstream
        if upstream is None or upstream.gone:
            return
        if upstream.h11.our_state is not h11.SEND_BODY:
            return  # the target already answered and closed its side of the exchange
        try:
            upstream.send(event)
        except h11.LocalProtocolError as e:
            self._refuse(400, f"cannot forward the request body: {e}")

    def _link(self, target: str) -> dict[str, Any]:
        return {"mode": HttpProxyMode.name, "target": target, "remote": self._remote,
                "tunnel": self.factory.tunnel.id}

    # -- absolute-form requests: upstream streams -------------------------------------------

    def _open_upstream(self, target: str) -> Upstream | None:
        upstream = Upstream(self, target)
        self._upstream = upstream
        d = self.factory.opener(self._link(target)).connect(_Prepared(upstream))
        failures: list[Failure] = []
        d.addErrback(failures.append)
        if failures:
            self._upstream = None
            self._refuse(502, f"cannot reach {target}: {failures[0].getErrorMessage()}")
            return None
        if upstream.gone:
            return None
        stream = upstream.transport
        stream.registerProducer(_UpstreamGate(self, upstream), True)
        if self._user_gate.paused:
            stream.pauseProducing()
        opened = getattr(stream, "opened", None)
        if opened is not None:
            opened.addBoth(upstream.watch.opened_result)
        else:
            upstream.watch.opened_result(stream)
        return upstream

    def _drop_upstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        self._resume("upstream")
        if upstream is not None and not upstream.gone and upstream.transport is not None:
            upstream.transport.loseConnection()

    def _upstream_refused(self, upstream: Upstream, reason: str) -> None:
        if upstream is not self._upstream:
            return
        self._upstream = None
        if self._mode in ("http", "raw"):
            self._refuse(status_for_refusal(reason), f"cannot reach {upstream.target}: {reason}")

    def _upstream_lost(self, upstream: Upstream) -> None:
        if upstream is not self._upstream:
            return
        if self._mode == "raw":
            self._mode = "closing"
            self._upstream = None
            self.transport.loseConnection()
            return
        if upstream.h11.their_state in (h11.IDLE, h11.DONE, h11.MUST_CLOSE, h11.CLOSED) \
                and not upstream.response_started:
            if upstream.h11.our_state in (h11.IDLE, h11.DONE, h11.MUST_CLOSE, h11.CLOSED) \
                    and self._user.their_state is h11.IDLE:
                self._upstream = None  # an idle kept-alive stream went away: fine
                return
        try:
            upstream.h11.receive_data(b"")
        except h11.RemoteProtocolError:
            pass
        self._pump_upstream(upstream)
        if self._upstream is upstream:
            self._upstream = None
            if self._mode == "http" and (upstream.response_started or self._user.their_state is not h11.IDLE):
                self._refuse(502, f"{upstream.target} closed the connection before the response was complete")

    # -- responses from upstream ---------------------------------------------------------

    def _send_user(self, event: Any) -> bool:
        try:
            data = self._user.send(event)
        except h11.LocalProtocolError as e:
            self._refuse(502, f"cannot relay the response: {e}")
            return False
        if data:
            self.transport.write(data)
        return True

    def _pump_upstream(self, upstream: Upstream) -> None:
        while self._upstream is upstream and self._mode == "http":
            try:
                event = upstream.h11.next_event()
            except h11.RemoteProtocolError as e:
                self._refuse(502, f"bad response from {upstream.target}: {e}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    self._switch_to_raw(upstream, event)
                    return
                headers = clean_headers(event.headers)
                if not self._send_user(h11.InformationalResponse(status_code=event.status_code,
                                                                 headers=headers, reason=event.reason)):
                    return
            elif isinstance(event, h11.Response):
                upstream.response_started = True
                if not self._send_user(h11.Response(status_code=event.status_code,
                                                    headers=clean_headers(event.headers),
                                                    reason=event.reason)):
                    return
            elif isinstance(event, h11.Data):
                if not self._send_user(h11.Data(data=event.data)):
                    return
            elif isinstance(event, h11.EndOfMessage):
                if not self._send_user(h11.EndOfMessage()):
                    return
                self._exchange_done(upstream)
                return
            elif isinstance(event, h11.ConnectionClosed):
                return

    def _exchange_done(self, upstream: Upstream) -> None:
        """The response is complete: keep or drop the stream, then read the next request."""
        upstream.response_started = False
        if upstream.h11.our_state is h11.DONE and upstream.h11.their_state is h11.DONE:
            upstream.h11.start_next_cycle()
        else:
            self._drop_upstream()
        user = self._user
        if user.our_state is h11.DONE and user.their_state is h11.DONE:
            user.start_next_cycle()
            self._arm_head_timer()
            self._resume("cycle")
            self._pump_user()
        else:
            # Connection: close, HTTP/1.0, or the target answered before the body was sent.
            self._mode = "closing"
            self._drop_upstream()
            self.transport.loseConnection()

    def _switch_to_raw(self, upstream: Upstream, event: h11.InformationalResponse) -> None:
        """The target accepted a WebSocket upgrade: pass the 101 on, then splice raw bytes."""
        headers = clean_headers(event.headers, keep_upgrade=True)
        if not self._send_user(h11.InformationalResponse(status_code=101, headers=headers, reason=event.reason)):
            return
        self._mode = "raw"
        upstream.raw = True
        self._cancel_head_timer()
        from_user = self._user.trailing_data[0]
        from_upstream = upstream.h11.trailing_data[0]
        if from_upstream:
            self.transport.write(from_upstream)
        if from_user:
            upstream.transport.write(from_user)
        self._resume("cycle")

    # -- CONNECT ---------------------------------------------------------------------

    def _start_connect(self, request: ProxyRequest) -> None:
        self._mode = "connecting"
        self._pause("connect")
        self._drop_upstream()
        side = _ConnectSide(self, request.target)
        self._connect_side = side
        d = self.factory.opener(self._link(request.target)).connect(_Prepared(side))
        failures: list[Failure] = []
        d.addErrback(failures.append)
        if failures:
            self._connect_refused(side, failures[0].getErrorMessage())
            return
        opened = getattr(side.transport, "opened", None)
        if opened is not None:
            opened.addBoth(side.watch.opened_result)
        else:
            side.watch.opened_result(side.transport)

    def _connect_refused(self, side: _ConnectSide, reason: str) -> None:
        if side is not self._connect_side or self._mode != "connecting":
            return
        self._connect_side = None
        self._mode = "http"  # so _refuse may still answer
        self._refuse(status_for_refusal(reason), f"cannot reach {side.target}: {reason}")

    def _connect_established(self, side: _ConnectSide) -> None:
        if side is not self._connect_side or self._mode != "connecting":
            if side.transport is not None:
                side.transport.loseConnection()
            return
        self._mode = "relay"
        self.transport.write(CONNECT_ESTABLISHED)
        early = self._user.trailing_data[0]
        self.transport.unregisterProducer()
        self._pauses.clear()
        side.peer = self
        self.peer = side
        if early:
            side.transport.write(early)
        join(self, side)


class HttpProxyFactory(Factory):
    """The public port of one C{httpProxy} tunnel."""

    noisy = False
    protocol = HttpProxyProtocol  # type: ignore[assignment]

    def __init__(self, tunnel: Tunnel, opener: Opener, clock: Any,
                 header_timeout: float = HEADER_TIMEOUT) -> None:
        self.tunnel = tunnel
        self.opener = opener
        self.clock = clock
        self.header_timeout = header_timeout
        #: user -> password; empty means no authentication.
        self.accounts = accounts_for(tunnel)


@implementer(IPlugin, IProxyMode)
class HttpProxyMode:
    """C{mode=httpProxy}: an HTTP proxy whose exits are on the client's network."""

    name = "httpProxy"

    def listen(self, reactor: Any, tunnel: Tunnel, opener: Opener) -> Deferred[IListeningPort]:
        factory = HttpProxyFactory(tunnel, opener, reactor)
        return listen_public_tcp(reactor, tunnel, factory)

    def serve(self, reactor: Any, link: dict[str, Any]) -> Deferred[IProtocol]:
        """npc side: dial the target; the server side does all the HTTP work."""
        return connect_target(reactor, str(link.get("target", "")))


httpproxy = HttpProxyMode()
