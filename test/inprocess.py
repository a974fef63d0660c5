"""Helpers for in-process tests on the real reactor over loopback (test_server, test_metrics)."""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater


class Echo(Protocol):
    """Sends back whatever it receives."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Collect(Protocol):
    """Collects what it receives; C{closed} fires on disconnect."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


@inlineCallbacks
def wait_for(predicate: Callable[[], Any], timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Poll C{predicate} every 20 ms until true; fail after C{timeout} seconds."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        yield deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"condition not met within {timeout}s")
