# -*- test-case-name: test.test_admin_traffic -*-
"""Persist the runtime traffic counters (clients, tunnels, hosts) to the store every flow_store_interval."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from nps.server import NpsServer

__all__ = ["TrafficFlusher", "DEFAULT_FLUSH_SECONDS", "flush_seconds"]

#: When nps.conf has no C{flow_store_interval}: flush every 10 s (a kill -9 loses at most that).
DEFAULT_FLUSH_SECONDS = 10.0
KINDS = ("client", "tunnel", "host")


def flush_seconds(flow_store_interval: int) -> float:
    """@return: Seconds between flushes: C{flow_store_interval} is in minutes as in NPS, 0 means the default."""
    return flow_store_interval * 60.0 if flow_store_interval > 0 else DEFAULT_FLUSH_SECONDS


class TrafficFlusher(Service):
    """
    Adds the counters' growth since the last flush to the store's C{traffic}
    table, in one transaction off the reactor thread; also on stop.

    Records with negative ids (config-file tunnels, public-key sessions) are
    not persisted, as in NPS. The server's C{flow_base} is kept so that
    C{flow_limit} counts persisted plus runtime bytes.
    """

    log = Logger()

    def __init__(self, server: "NpsServer", interval: float) -> None:
        self._server = server
        self.interval = interval
        #: Persisted totals as of the last successful flush: {kind: {id: (in, out)}}.
        self.persisted: dict[str, dict[int, tuple[int, int]]] = {k: {} for k in KINDS}
        #: What each runtime counter held at the last flush: {(kind, id): (counter, in, out)}.
        self._last: dict[tuple[str, int], tuple[Any, int, int]] = {}
        self._loop = LoopingCall(self.flush)
        self._loop.clock = server.reactor
        self._flushing: Deferred[None] | None = None
        self.loaded = False

    def _counters(self) -> dict[tuple[str, int], Any]:
        server = self._server
        found: dict[tuple[str, int], Any] = {}
        for client_id, counter in server.client_counters.items():
            found[("client", client_id)] = counter
        for tunnel_id, running in server.tunnels.items():
            found[("tunnel", tunnel_id)] = running.counter
        for host_id, counter in dict(getattr(server, "host_counters", {}) or {}).items():
            found[("host", host_id)] = counter
        return {key: c for key, c in found.items() if key[1] > 0}

    def _unflushed(self, key: tuple[str, int], counter: Any) -> tuple[int, int]:
        last = self._last.get(key)
        if last is not None and last[0] is counter:
            return counter.bytes_in - last[1], counter.bytes_out - last[2]
        return counter.bytes_in, counter.bytes_out

    def totals(self, kind: str) -> dict[int, tuple[int, int]]:
        """@return: Persisted plus not yet flushed bytes, C{{id: (in, out)}}."""
        result = dict(self.persisted[kind])
        for (k, record_id), counter in self._counters().items():
            if k != kind:
                continue
            d_in, d_out = self._unflushed((k, record_id), counter)
            old_in, old_out = result.get(record_id, (0, 0))
            result[record_id] = (old_in + d_in, old_out + d_out)
        return result

    def _update_flow_base(self) -> None:
        """C{flow_limit} uses runtime counter + base, base = persisted - runtime bytes already persisted."""
        base: dict[int, int] = {}
        for client_id, (b_in, b_out) in self.persisted["client"].items():
            last = self._last.get(("client", client_id))
            counter = self._server.client_counters.get(client_id)
            flushed = last[1] + last[2] if last is not None and last[0] is counter else 0
            base[client_id] = b_in + b_out - flushed
        self._server.flow_base = base

    @inlineCallbacks
    def load(self):  # type: ignore[no-untyped-def]
        """Read the persisted totals (at start)."""
        for kind in KINDS:
            self.persisted[kind] = yield self._server.store.call("traffic", kind)
        self.loaded = True
        self._update_flow_base()

    def flush(self) -> Deferred[None]:
        """Write the growth since the last flush; fires when written (or failed and logged)."""
        if self._flushing is not None or not self.loaded:
            return self._flushing or succeed(None)
        deltas: list[tuple[str, int, int, int]] = []
        marks: dict[tuple[str, int], tuple[Any, int, int]] = {}
        for key, counter in self._counters().items():
            d_in, d_out = self._unflushed(key, counter)
            marks[key] = (counter, counter.bytes_in, counter.bytes_out)
            if d_in or d_out:
                deltas.append((key[0], key[1], d_in, d_out))
        if not deltas:
            self._last.update(marks)
            return succeed(None)

        def written(_: Any) -> None:
            self._last.update(marks)
            for kind, record_id, d_in, d_out in deltas:
                old_in, old_out = self.persisted[kind].get(record_id, (0, 0))
                self.persisted[kind][record_id] = (old_in + d_in, old_out + d_out)
            self._update_flow_base()

        def done(result: Any) -> None:
            self._flushing = None
            if result is not None:
                self.log.failure("cannot persist traffic counters (will retry)", result)

        d = self._server.store.call("add_traffic", deltas).addCallback(written).addBoth(done)
        self._flushing = d
        return d

    def reset(self, kind: str, record_id: int) -> Deferred[None]:
        """Zero a record's persisted and runtime bytes (an admin resetting a client's flow)."""
        def cleared(_: Any) -> None:
            self.persisted[kind].pop(record_id, None)
            counter = self._counters().get((kind, record_id))
            if counter is not None:
                self._last[(kind, record_id)] = (counter, counter.bytes_in, counter.bytes_out)
            self._update_flow_base()

        return self._server.store.call("reset_traffic", kind, record_id).addCallback(cleared)

    def startService(self) -> None:
        super().startService()

        def started(_: Any) -> None:
            if self.running and not self._loop.running:
                self._loop.start(self.interval, now=False)

        def failed(failure: Any) -> None:
            if self.running:  # a server stopped while starting has nothing to report
                self.log.failure("cannot read persisted traffic counters", failure)

        self.load().addCallbacks(started, failed)

    @inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._flushing is not None:
            yield self._flushing
        yield self.flush()
