# -*- test-case-name: test.test_e2e_legacy_reverse,test.test_legacy_server -*-
"""Our npc against an NPS 0.26 server (C{npc -proto=0.26 -server= -vkey=}).

For users who cannot replace their Go nps yet.  L{LegacyNpcService} keeps
NPS's two connections up, the signal (C{main}) and the nps-mux tunnel
(C{chan}), reconnecting with a growing delay when either ends.  Each
stream the server opens starts with NPS's link header; we serve it with
our own mode plugins (C{tcp}, C{udp}; C{http} is served as C{tcp}),
under NPS's per-stream C{crypt} (TLS, certificate not checked, as the Go
npc does) or C{compress} (snappy).

Tunnels are those defined on the server (NPS's no-config mode).
"""
from __future__ import annotations

import random
from typing import Any, Callable

from twisted.application.internet import backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from nps.connect import connect_tcp
from nps.legacy.crypt import SnappyCodec, TlsCodec, client_context
from nps.legacy.mux import LegacyMux, LegacyStream
from nps.protocols import legacy_handshake as lh
from nps.protocols.legacy_link import LinkError, LinkReader, from_legacy
from nps.relay import tune_socket

__all__ = ["LegacyNpcService", "LegacyRefused"]

HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0


class LegacyRefused(Exception):
    """The server refused us (wrong vkey) or is not an NPS 0.26 server; C{str()} says which."""


class LegacyClientProtocol(Protocol):
    """One connection to an NPS 0.26 server: handshake, work type, then signal or nps-mux."""

    log = Logger()
    transport: Any

    def __init__(self, service: "LegacyNpcService", work: bytes) -> None:
        self.service = service
        self.work = work
        self.ready: Deferred[LegacyClientProtocol] = Deferred()
        self.mux: LegacyMux | None = None
        self._buf = b""
        self._step = 0
        self._timer: IDelayedCall | None = None
        self._done = False

    def connectionMade(self) -> None:
        tune_socket(self.transport, keepalive=True)
        self._timer = self.service.reactor.callLater(HANDSHAKE_TIMEOUT, self._timeout)
        self.transport.write(lh.client_hello())

    def _timeout(self) -> None:
        self._timer = None
        self._fail(LegacyRefused(f"no answer to the NPS handshake in {HANDSHAKE_TIMEOUT:.0f}s"))

    def _fail(self, error: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(error)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.mux is not None:
            self.mux.data_received(data)
            return
        if self._done:
            return  # the signal connection: nothing we act on (p2p is not supported)
        self._buf += data
        if self._step == 0 and len(self._buf) >= 32:
            proof, self._buf = self._buf[:32], self._buf[32:]
            if proof != lh.server_version_proof():
                self._fail(LegacyRefused("the server is not an NPS 0.26 server (version proof differs)"))
                return
            self.transport.write(lh.md5_hex(self.service.vkey))
            self._step = 1
        if self._step == 1 and len(self._buf) >= 4:
            answer, rest = self._buf[:4], self._buf[4:]
            self._buf = b""
            if answer != lh.ACCEPTED:
                self._fail(LegacyRefused("the server refused the vkey"))
                return
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self._done = True
            self.transport.write(self.work)
            if self.work == lh.WORK_CHAN:
                self.mux = LegacyMux(self.transport, self.service.reactor, name="NPS 0.26 server",
                                     on_stream=self.service.stream_opened,
                                     ping_interval=5.0, idle_timeout=self.service.idle_timeout)
                if rest:
                    self.mux.data_received(rest)
            self.ready.callback(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if not self.ready.called:
            self.ready.errback(LegacyRefused(f"connection closed during the handshake: {reason.getErrorMessage()}"))
        if self.mux is not None:
            self.mux.connection_lost(reason.getErrorMessage())
        self.service.connection_closed(self)


class _Factory(Factory):
    noisy = False

    def __init__(self, service: "LegacyNpcService", work: bytes) -> None:
        self.service = service
        self.work = work

    def buildProtocol(self, addr: Any) -> LegacyClientProtocol:
        return LegacyClientProtocol(self.service, self.work)


class _LinkHeader(Protocol):
    """Reads the NPS link header at the start of a stream, then hands the stream to a mode."""

    log = Logger()

    def __init__(self, service: "LegacyNpcService", stream: LegacyStream) -> None:
        self.service = service
        self.stream = stream
        self.reader = LinkReader()

    def dataReceived(self, data: bytes) -> None:
        try:
            result = self.reader.feed(data)
            if result is None:
                return
            raw, rest = result
            link = from_legacy(raw)
        except LinkError as e:
            self.log.warn("stream {id}: bad link header from the server: {error}", id=self.stream.stream_id,
                          error=str(e))
            self.stream.reset(str(e))
            return
        self.stream.pauseProducing()
        self.stream.link = link
        self.service.serve(self.stream, link, rest)


class LegacyNpcService(MultiService):
    """Keep an NPS 0.26 session (signal + tunnel) to C{host:port} and serve its streams."""

    log = Logger()

    def __init__(self, reactor: Any, host: str, port: int, vkey: str, modes: dict[str, Any], *,
                 disconnect_timeout: int = 60, max_retry_delay: float = 30.0,
                 on_fatal: Callable[[int, str], None] | None = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.host = host
        self.port = port
        self.server = f"{host}:{port}"
        self.vkey = vkey
        self.modes = modes
        self.idle_timeout = max(disconnect_timeout, 1) * 5.0
        self._on_fatal = on_fatal
        self._delay = backoffPolicy(initialDelay=1.0, maxDelay=max_retry_delay, factor=2.0, jitter=random.random)
        self._failures = 0
        self._retry: IDelayedCall | None = None
        self._current: list[LegacyClientProtocol] = []
        self.connected_once = False
        self.online = False

    def startService(self) -> None:
        super().startService()
        self.log.info("npc (NPS 0.26 protocol) connecting to {server}", server=self.server)
        self._connect()

    def stopService(self) -> Any:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        for protocol in list(self._current):
            protocol.transport.loseConnection()
        return super().stopService()

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return

        def open_one(work: bytes) -> Deferred[LegacyClientProtocol]:
            d = connect_tcp(self.reactor, self.host, self.port, _Factory(self, work), timeout=CONNECT_TIMEOUT)

            def connected(protocol: LegacyClientProtocol) -> Deferred[LegacyClientProtocol]:
                self._current.append(protocol)
                return protocol.ready

            return d.addCallback(connected)

        def signal_ready(_: Any) -> Deferred[LegacyClientProtocol]:
            return open_one(lh.WORK_CHAN)

        def chan_ready(_: Any) -> None:
            self._failures = 0
            self.connected_once = True
            self.online = True
            self.log.info("connected to NPS 0.26 server {server}", server=self.server)

        def failed(failure: Failure) -> None:
            message = failure.getErrorMessage()
            self.log.warn("cannot log in to {server}: {message}", server=self.server, message=message)
            if failure.check(LegacyRefused) and "vkey" in message and not self.connected_once:
                self._fatal(1, f"{self.server} refused the vkey")
                return
            self._drop_all()

        open_one(lh.WORK_MAIN).addCallback(signal_ready).addCallbacks(chan_ready, failed)

    def _drop_all(self) -> None:
        for protocol in list(self._current):
            protocol.transport.loseConnection()
        if not self._current:
            self._schedule_retry()

    def connection_closed(self, protocol: LegacyClientProtocol) -> None:
        if protocol in self._current:
            self._current.remove(protocol)
            if self.online:
                self.online = False
                self.log.warn("disconnected from NPS 0.26 server {server}", server=self.server)
            # NPS's session is both connections: when one goes, so does the other.
            for other in list(self._current):
                other.transport.loseConnection()
        if not self._current:
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        if not self.running or self._retry is not None:
            return
        self._failures += 1
        delay = self._delay(self._failures)
        self.log.info("retrying {server} in {delay:.1f}s", server=self.server, delay=delay)
        self._retry = self.reactor.callLater(delay, self._connect)

    def _fatal(self, code: int, message: str) -> None:
        self.reactor.callLater(0, self._stop_for_good, code, message)

    def _stop_for_good(self, code: int, message: str) -> None:
        if self.running:
            self.stopService()
        if self._on_fatal is not None:
            self._on_fatal(code, message)
        else:
            self.log.critical("{message}", message=message)

    # -- streams -------------------------------------------------------------------------

    def stream_opened(self, stream: LegacyStream) -> None:
        stream.attach(_LinkHeader(self, stream))

    def serve(self, stream: LegacyStream, link: dict[str, Any], rest: bytes) -> None:
        """Serve C{stream} for C{link} with our mode plugin, under NPS's crypt/compress."""
        mode = self.modes.get(str(link["mode"]))
        if mode is None or link["mode"] == "socks5_udp":
            self.log.warn("stream {id}: {mode} streams are not supported with -proto=0.26", id=stream.stream_id,
                          mode=link["mode"])
            stream.reset("unsupported")
            return
        codec: Any = None
        if link.get("crypt"):
            codec = TlsCodec(client_context(), server=False)
        elif link.get("compress"):
            codec = SnappyCodec()
        d = mode.serve(self.reactor, link)

        def served(protocol: Any) -> None:
            stream.reattach(protocol, codec=codec, datagrams=link["mode"] == "udp", rest=rest)

        def failed(failure: Failure) -> None:
            self.log.info("stream to {target} for {remote} refused: {reason}", target=link.get("target"),
                          remote=link.get("remote"), reason=failure.getErrorMessage())
            stream.reset(failure.getErrorMessage())

        d.addCallbacks(served, failed)


def make_legacy_npc(reactor: Any, server: str, vkey: str, *, disconnect_timeout: int = 60,
                    on_fatal: Callable[[int, str], None] | None = None) -> LegacyNpcService:
    """The service C{npc -proto=0.26 -server=HOST:PORT -vkey=KEY} runs."""
    from nps.config import parse_host_port
    from nps.modes import load_modes

    host, port = parse_host_port(server)
    return LegacyNpcService(reactor, host, port, vkey, load_modes(), disconnect_timeout=disconnect_timeout,
                            on_fatal=on_fatal)


def legacy_main(args: list[str]) -> int:
    """C{npc -proto=0.26 -server=HOST:PORT -vkey=KEY [-disconnect_timeout=N] [-log_level=N]}.

    @param args: the command line with Go flags already turned into C{--name=value}.
    """
    import sys

    from nps.cli.run import begin_logging, nps_log_level, run_service

    values = {"proto": "", "server": "", "vkey": "", "type": "tcp", "disconnect_timeout": "60", "log_level": "6"}
    words = iter(args)
    for arg in words:
        name, equals, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in values:
            print(f"npc: {arg!r} is not supported with -proto=0.26 (it takes -server, -vkey, -type=tcp, "
                  "-disconnect_timeout, -log_level)", file=sys.stderr)
            return 2
        values[name] = value if equals else next(words, "")
    if values["proto"] != "0.26":
        print(f"npc: -proto={values['proto']!r}: the only other protocol is 0.26 (NPS 0.26 servers)",
              file=sys.stderr)
        return 2
    if values["type"] != "tcp":
        print("npc: -proto=0.26 supports -type=tcp only", file=sys.stderr)
        return 2
    if not values["server"] or not values["vkey"]:
        print("npc: -proto=0.26 needs -server=HOST:PORT and -vkey=KEY", file=sys.stderr)
        return 2
    try:
        timeout = int(values["disconnect_timeout"])
        level = int(values["log_level"])
        from nps.config import parse_host_port
        parse_host_port(values["server"])
    except ValueError as e:
        print(f"npc: {e}", file=sys.stderr)
        return 2
    begin_logging(nps_log_level(level), sys.stdout)
    return run_service(lambda reactor, on_fatal: make_legacy_npc(
        reactor, values["server"], values["vkey"], disconnect_timeout=timeout, on_fatal=on_fatal), "npc")
