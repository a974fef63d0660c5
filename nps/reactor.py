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
from typing import Any, Callable

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

log = Logger()


class LeanEPollReactor(EPollReactor):
    """C{EPollReactor} minus the per-event logging context, plus after-dispatch hooks.

    L{call_after_dispatch} lets a writer gather what the ready descriptors of
    one poll produce and send it once, when they have all been handled (the
    bridge corks its frames this way).  Outside event dispatch there is
    nothing to wait for, so L{dispatching} is False and writers send at once.
    """

    dispatching = False

    def __init__(self) -> None:
        super().__init__()
        self._after_dispatch: list[Callable[[], None]] = []

    def call_after_dispatch(self, hook: Callable[[], None]) -> None:
        """Run C{hook} once the events of the current poll are all handled."""
        self._after_dispatch.append(hook)

    def doPoll(self, timeout: float | None) -> None:
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        self.dispatching = True
        try:
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    dispatch(selectable, fd, event)
        finally:
            self.dispatching = False
            hooks = self._after_dispatch
            while hooks:
                self._after_dispatch = []
                for hook in hooks:
                    try:
                        hook()
                    except Exception:
                        log.failure("after-dispatch hook {hook!r} failed", hook=hook)
                hooks = self._after_dispatch

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
