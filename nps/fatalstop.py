"""A service that a fatal condition stops for good, reporting why (npc's exit on a refused login)."""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.logger import Logger


class FatalStopService(MultiService):
    """
    A C{MultiService} with L{_fatal}: stop the service, then hand C{(code, message)}
    to C{on_fatal} (the command line exits with C{code}) or, without one, log it.

    Subclasses set C{reactor} and C{_on_fatal} in C{__init__}.
    """

    log = Logger()
    reactor: Any
    _on_fatal: Callable[[int, str], None] | None

    def _fatal(self, code: int, message: str) -> None:
        # Often called from connectionLost: act on the next turn, once the connection is gone.
        self.reactor.callLater(0, self._stop_for_good, code, message)

    def _stop_for_good(self, code: int, message: str) -> None:
        if self.running:
            self.stopService()
        if self._on_fatal is not None:
            self._on_fatal(code, message)
        else:
            self.log.critical("{message}", message=message)
