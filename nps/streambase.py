"""Twisted transport plumbing shared by every multiplexed stream class.

L{nps.mux.MuxStream}, L{nps.legacy.mux.LegacyStream} and
L{nps.p2p.quic.QuicStream} are transports (C{ITransport}), producers towards
the protocol attached to them (C{IPushProducer}) and consumers of that
protocol's producer (C{IConsumer}). The parts that do not depend on the wire
live here; each stream class supplies the hooks (L{StreamTransport._drain_inbuf},
L{StreamTransport._update_producer}, C{loseConnection}) and overrides what it
does differently. Only registration and trivial methods are here: no data path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IAddress, IDelayedCall, IProducer, IProtocol, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IAddress)
@attrs.frozen
class StreamAddress:
    """Address of one end of a mux stream: the stream id and who is behind it."""

    stream_id: int
    remote: str = ""


class StreamTransport:
    """Base of a stream that is a transport, a push producer and a consumer.

    Subclasses declare C{@implementer(ITransport, IPushProducer, IConsumer)}.

    A subclass sets C{protocol}, C{_producer}, C{_streaming}, C{_producer_paused},
    C{_read_paused} and C{_finished} in its C{__init__}, and implements
    C{_drain_inbuf} (deliver what was buffered while reading was paused or no
    protocol was attached), C{_update_producer} (pause or resume the registered
    producer by the stream's backlog) and C{loseConnection}.
    """

    disconnected = False
    #: True once a close has begun (protocols such as LineReceiver read it).
    disconnecting = False

    protocol: IProtocol | None
    _producer: Any
    _streaming: bool
    _producer_paused: bool
    _read_paused: bool
    _finished: bool

    def _drain_inbuf(self) -> None:
        """Deliver buffered incoming data to the protocol, as far as reading is not paused."""
        raise NotImplementedError

    def _update_producer(self) -> None:
        """Pause or resume the registered producer according to what is unsent."""
        raise NotImplementedError

    def loseConnection(self) -> None:
        raise NotImplementedError

    def _finish(self, reason: Failure) -> None:
        """The stream is over: tell the protocol C{reason} and forget the stream."""
        raise NotImplementedError

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Streams have no Nagle; accepted so relays may call it on any transport."""

    # -- IPushProducer (towards our protocol) ------------------------------

    def pauseProducing(self) -> None:
        self._read_paused = True

    def resumeProducing(self) -> None:
        self._read_paused = False
        self._drain_inbuf()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- IConsumer --------------------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(f"Cannot register producer {producer!r}: {self._producer!r} is registered")
        if self._finished:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = bool(streaming)
        self._producer_paused = False
        self._update_producer()

    def unregisterProducer(self) -> None:
        self._producer = None

    # -- called by the mux or session ----------------------------------------

    def attach(self, protocol: IProtocol) -> None:
        """Connect C{protocol} to this stream (it becomes the stream's transport)."""
        self.protocol = protocol
        protocol.makeConnection(cast(ITransport, self))
        self._drain_inbuf()


class LinkStreamTransport(StreamTransport):
    """A L{StreamTransport} opened for a link dict; its addresses are L{StreamAddress}es."""

    stream_id: int
    link: dict[str, Any]

    def getPeer(self) -> StreamAddress:
        return StreamAddress(self.stream_id, str(self.link.get("remote", "")))

    def getHost(self) -> StreamAddress:
        return StreamAddress(self.stream_id, "")

    def reset(self, reason: str = "") -> None:
        """Abort the stream now, telling the peer why (as far as its wire can)."""
        raise NotImplementedError


class StreamRefused(Exception):
    """The peer reset a stream we tried to open; C{str()} is its reason."""


_S = TypeVar("_S", bound=LinkStreamTransport)


class PendingOpens(Generic[_S]):
    """
    A mux's streams opened by us and not yet answered: C{_pending_opens} maps
    a stream id to the Deferred its opener waits on and the timer that gives up.
    """

    _pending_opens: dict[int, tuple[Deferred[_S], IDelayedCall]]

    def _fail_open(self, stream: _S, reason: str) -> None:
        """Fail the opener of C{stream}, if it still waits, with L{StreamRefused}(C{reason})."""
        pending = self._pending_opens.pop(stream.stream_id, None)
        if pending is not None:
            d, timer = pending
            if timer.active():
                timer.cancel()
            d.errback(StreamRefused(reason))

    def _cancel_open(self, stream: _S, reason: str) -> None:
        """Give up opening C{stream} (timeout or cancelled): reset it and fail its opener."""
        pending = self._pending_opens.pop(stream.stream_id, None)
        if pending is None:
            return
        d, timer = pending
        if timer.active():
            timer.cancel()
        stream.reset(reason)
        if not d.called:
            d.errback(StreamRefused(reason))


class BridgeProducer(PendingOpens[_S]):
    """
    A mux as the push producer of its bridge transport. While the bridge is
    paused, streams that want to send wait in C{_waiting_streams} (their own
    producers paused); resuming the bridge lets them go, until it pauses again.

    The mux sets the attributes below in its C{__init__}.
    """

    _streams: dict[int, _S]
    _waiting_streams: set[_S]
    _writes_paused: bool
    _closed: bool
    close_reason: str
    _ping_call: IDelayedCall | None
    _on_close: Callable[[str], None] | None

    def connection_lost(self, reason: str) -> None:
        """
        The bridge is gone (or the mux gave up on it): stop pinging, fail every
        open that waits, end every stream, and tell C{_on_close} the first time.
        """
        if self._closed and not self._streams and not self._pending_opens:
            return
        first = not self._closed
        self._closed = True
        if not self.close_reason:
            self.close_reason = reason
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        for _, timer in list(self._pending_opens.values()):
            if timer.active():
                timer.cancel()
        pending, self._pending_opens = self._pending_opens, {}
        for d, _ in pending.values():
            d.errback(StreamRefused(f"bridge lost: {self.close_reason}"))
        lost = Failure(ConnectionLost(f"bridge lost: {self.close_reason}"))
        for stream in list(self._streams.values()):
            stream._finish(lost)
        self._streams.clear()
        self._waiting_streams.clear()
        if first and self._on_close is not None:
            self._on_close(self.close_reason)

    def _remove(self, stream: _S) -> None:
        """Forget a finished stream (and fail its opener if it still waits)."""
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
        self._waiting_streams.discard(stream)
        self._fail_open(stream, "stream closed")

    def pauseProducing(self) -> None:
        self._writes_paused = True

    def resumeProducing(self) -> None:
        self._writes_paused = False
        waiting, self._waiting_streams = self._waiting_streams, set()
        for stream in waiting:
            if not stream._finished:
                stream._update_producer()
            if self._writes_paused:
                # Re-paused while resuming: the rest keep waiting.
                self._waiting_streams.update(s for s in waiting if not s._finished)
                break

    def stopProducing(self) -> None:
        self.connection_lost("bridge transport closed")
