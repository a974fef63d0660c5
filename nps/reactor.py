# -*- test-case-name: test.test_cli -*-
"""An epoll reactor with a leaner dispatch loop, installed by the console scripts.

Twisted's epoll reactor wraps every ready descriptor's C{doRead}/C{doWrite}
in C{log.callWithLogger}, which pushes a legacy logging context per event.
Our code logs through C{twisted.logger.Logger} with its own namespaces, so
on a relay that costs time on every hop and buys nothing.  Errors are still
handled by the reactor's own C{_doReadOrWrite}.
"""
from __future__ import annotations

import errno
from typing import Any

from twisted.internet.epollreactor import EPollReactor


class LeanEPollReactor(EPollReactor):
    """C{EPollReactor} minus the per-event logging context."""

    def doPoll(self, timeout: float | None) -> None:
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                dispatch(selectable, fd, event)

    doIteration = doPoll


def install() -> Any:
    """Install L{LeanEPollReactor} unless a reactor is installed already."""
    import sys

    if "twisted.internet.reactor" in sys.modules:
        return sys.modules["twisted.internet.reactor"]
    from twisted.internet.main import installReactor

    reactor = LeanEPollReactor()
    installReactor(reactor)
    return reactor
