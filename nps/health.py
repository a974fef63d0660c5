# -*- test-case-name: test.test_health -*-
"""
npc-side health checks of load-balanced targets (npc.conf C{[health...]}
sections): npc is the one that can reach the targets, so it checks them
and tells the server when one goes down or comes back; the server takes a
down target out of its round robin.

A check is a TCP connect (C{health_check_type=tcp}) or an HTTP GET of
C{health_http_url} answered with a 2xx status (C{http}), each bounded by
C{health_check_timeout}.  C{health_check_max_failed} failures in a row mark
a target down; one success marks it up again.
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from nps.config import HealthSection, parse_host_port
from nps.connect import connect_tcp

__all__ = ["HealthChecker", "Report"]

#: Called with (target, up) when a target changes state.
Report = Callable[[str, bool], None]
#: Most bytes read while waiting for an HTTP status line.
MAX_STATUS_LINE = 4096


class _HttpProbe(Protocol):
    """Sends one GET and fires C{result} with whether the status is 2xx."""

    transport: Any

    def __init__(self, path: str, host: str, result: Deferred[bool]) -> None:
        self._path = path
        self._host = host
        self._result = result
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(f"GET {self._path} HTTP/1.1\r\nHost: {self._host}\r\nUser-Agent: npc-health\r\n"
                             "Connection: close\r\n\r\n".encode("latin-1"))

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        line, found, _ = self._buffer.partition(b"\n")
        if not found and len(self._buffer) < MAX_STATUS_LINE:
            return
        parts = line.split(b" ", 2)
        ok = len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] == b"2" and len(parts[1]) == 3
        self._finish(ok)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._finish(False)

    def _finish(self, ok: bool) -> None:
        if not self._result.called:
            self._result.callback(ok)


class _Probe(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class HealthChecker(Service):
    """Checks one C{[health...]} section's targets every C{interval} seconds."""

    log = Logger()

    def __init__(self, reactor: Any, section: HealthSection, report: Report) -> None:
        self.reactor = reactor
        self.section = section
        self.report = report
        self.setName(f"health:{section.name}")
        self.failures: dict[str, int] = {t: 0 for t in section.targets}
        self.down: set[str] = set()
        self._busy: set[str] = set()
        self._loop = LoopingCall(self.check_all)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.section.interval, now=True)

    def stopService(self) -> Any:
        if self._loop.running:
            self._loop.stop()
        return super().stopService()

    def check_all(self) -> None:
        """One round: check every target not still being checked."""
        for target in self.section.targets:
            if target in self._busy:
                continue
            self._busy.add(target)
            self.check(target).addBoth(self._checked, target)

    def check(self, target: str) -> Deferred[bool]:
        """Fires with whether C{target} is healthy now (never fails)."""
        result: Deferred[bool] = Deferred()
        try:
            host, port = parse_host_port(target)
        except ValueError:
            result.callback(False)
            return result
        timeout = float(self.section.timeout)
        factory: Any
        if self.section.type == "http":
            factory = Factory.forProtocol(lambda: _HttpProbe(self.section.http_url, target, result))
        else:
            factory = Factory.forProtocol(_Probe)
        factory.noisy = False
        d = connect_tcp(self.reactor, host, port, factory, timeout=timeout)

        def expired() -> None:
            if not result.called:
                result.callback(False)

        timer = self.reactor.callLater(timeout, expired)

        def connected(protocol: Any) -> None:
            if self.section.type != "http":
                if not result.called:
                    result.callback(True)
            elif result.called:
                protocol.transport.abortConnection()
            else:
                result.addBoth(lambda ok: (protocol.transport.abortConnection() if not ok else None, ok)[1])

        def failed(failure: Failure) -> None:
            if not result.called:
                result.callback(False)

        d.addCallbacks(connected, failed)

        def done(ok: bool) -> bool:
            if timer.active():
                timer.cancel()
            return ok

        return result.addCallback(done)

    def _checked(self, ok: Any, target: str) -> None:
        self._busy.discard(target)
        if ok is True:
            self.failures[target] = 0
            if target in self.down:
                self.down.discard(target)
                self.log.info("health {name}: {target} is up again", name=self.section.name, target=target)
                self.report(target, True)
            return
        self.failures[target] = self.failures.get(target, 0) + 1
        if self.failures[target] >= self.section.max_failed and target not in self.down:
            self.down.add(target)
            self.log.warn("health {name}: {target} is down ({n} failed {type} checks)", name=self.section.name,
                          target=target, n=self.failures[target], type=self.section.type)
            self.report(target, False)
