"""Write-through sends, with the frames of one reactor poll gathered into one C{sendmsg}.

Both bridges' multiplexers (L{nps.mux.Mux} and L{nps.legacy.mux.LegacyMux})
write frames the same way: straight to the socket when nothing is gathered,
and, while the reactor is dispatching a poll (L{nps.reactor.LeanEPollReactor}
tells), gathered and sent in one system call once the poll ends.
"""
from __future__ import annotations

from typing import Any

from nps.fastwrite import sequence_writer_for


class CorkedWriter:
    """Mixin: call L{_init_corking} once the transport is known, then send with L{_write_sequence}."""

    _clock: Any
    transport: Any

    def _init_corking(self, transport: Any, clock: Any) -> None:
        """
        @param transport: The bridge's transport.
        @param clock: The reactor; corking needs its C{call_after_dispatch} and
            C{dispatching}, and is off when it has none.
        """
        self._send_now = sequence_writer_for(transport)
        self._corked: list[bytes] = []
        self._can_cork = getattr(clock, "call_after_dispatch", None) is not None

    def _write_sequence(self, buffers: list[bytes]) -> None:
        """Send frames, gathering those of one reactor poll into one C{sendmsg}."""
        if self._can_cork and self._clock.dispatching:
            if not self._corked:
                self._clock.call_after_dispatch(self.uncork)
            self._corked.extend(buffers)
        elif self._corked:
            self._corked.extend(buffers)
            self.uncork()
        else:
            self._send_now(buffers)

    def uncork(self) -> None:
        """Send whatever frames are gathered (before any close, and after each poll)."""
        corked, self._corked = self._corked, []
        if corked and self.transport.connected:
            self._send_now(corked)
