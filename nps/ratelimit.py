# -*- test-case-name: test.test_ratelimit -*-
"""A client's C{rate_limit}: one token bucket per client, applied with backpressure.

L{TokenBucket} is the arithmetic alone (no I/O, no clock of its own).
L{RateLimiter} puts one bucket on a reactor clock and wakes the streams that
wait for it.  L{LimitedStream} sits between a mux stream on the server and
the protocol that uses it (a relay half, a SOCKS5 or file handler, a UDP
peer session): every byte either way is charged to the client's bucket, and
while the bucket is in debt the producers feeding that stream are paused —
the public socket for bytes towards the client (upload), the mux stream
itself for bytes coming back (download, which holds back the npc through the
stream's credit window).  Nothing blocks and nothing is buffered beyond what
the relay would hold anyway; a reactor timer resumes the producers once the
bucket has refilled.

Both directions share the one bucket, as in NPS (and frp): C{rate_limit=512}
means 512 KB/s in total for all of a client's connections, up and down.
Clients without a C{rate_limit} get no wrapper at all, so other clients and
their tunnels are neither slowed nor charged.
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProducer,
    IProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

__all__ = ["TokenBucket", "RateLimiter", "LimitedStream", "BURST_SECONDS"]

#: The bucket holds this many seconds of traffic (a burst of 2x the rate).
BURST_SECONDS = 2.0


class TokenBucket:
    """
    A token bucket in bytes, refilled at C{rate} bytes per second up to C{capacity}.

    A charge is always granted and may leave the bucket in debt (negative);
    whoever charged then waits L{delay} seconds.  Granting whole chunks and
    paying afterwards keeps the average rate exact without splitting writes.
    """

    def __init__(self, rate: float, now: float, capacity: float | None = None) -> None:
        """
        @param rate: bytes per second, > 0.
        @param now: the current time (seconds, any epoch, never going back).
        @param capacity: the burst in bytes; default L{BURST_SECONDS} x C{rate}.
        """
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self.rate = float(rate)
        self.capacity = float(capacity) if capacity is not None else BURST_SECONDS * self.rate
        self.tokens = self.capacity
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def consume(self, size: int, now: float) -> float:
        """
        Take C{size} tokens.

        @return: seconds until the bucket is out of debt (0.0: go on at once).
        """
        self._refill(now)
        self.tokens -= size
        return self.delay(now)

    def delay(self, now: float) -> float:
        """
        @return: seconds from C{now} until the tokens are back at zero (0.0 if not in debt).
        """
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def set_rate(self, rate: float, now: float, capacity: float | None = None) -> None:
        """Change the rate (a client's C{rate_limit} edited live); the debt is kept, the burst capped."""
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self._refill(now)
        self.rate = float(rate)
        self.capacity = float(capacity) if capacity is not None else BURST_SECONDS * self.rate
        self.tokens = min(self.tokens, self.capacity)


class RateLimiter:
    """One client's bucket on a reactor clock, with the streams waiting for it."""

    def __init__(self, clock: IReactorTime, kbytes_per_second: int) -> None:
        """
        @param kbytes_per_second: the client's C{rate_limit} (KB/s, 1 KB = 1024 bytes).
        """
        self._clock = clock
        self.kbytes_per_second = kbytes_per_second
        self.bucket = TokenBucket(kbytes_per_second * 1024, clock.seconds())
        self._waiters: dict[int, Callable[[], None]] = {}
        self._timer: IDelayedCall | None = None

    def set_rate(self, kbytes_per_second: int) -> None:
        """Apply a new C{rate_limit} to this client's open streams."""
        if kbytes_per_second != self.kbytes_per_second:
            self.kbytes_per_second = kbytes_per_second
            self.bucket.set_rate(kbytes_per_second * 1024, self._clock.seconds())
            self._reschedule()

    def charge(self, size: int) -> bool:
        """
        Count C{size} bytes.

        @return: True when the caller must pause and L{wait}.
        """
        return self.bucket.consume(size, self._clock.seconds()) > 0

    def in_debt(self) -> bool:
        return self.bucket.delay(self._clock.seconds()) > 0

    def wait(self, key: int, wake: Callable[[], None]) -> None:
        """Call C{wake} (once) when the bucket is out of debt; C{key} identifies the waiter."""
        self._waiters[key] = wake
        if self._timer is None:
            self._reschedule()

    def cancel(self, key: int) -> None:
        """A waiter went away (its stream closed)."""
        self._waiters.pop(key, None)
        if not self._waiters and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    @property
    def waiting(self) -> int:
        """How many streams are paused by this limiter now."""
        return len(self._waiters)

    def _reschedule(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._waiters:
            delay = self.bucket.delay(self._clock.seconds())
            self._timer = self._clock.callLater(delay, self._wake)

    def _wake(self) -> None:
        self._timer = None
        if self.bucket.delay(self._clock.seconds()) > 0:
            self._reschedule()
            return
        # Everyone waiting gets one turn, in the order they started waiting; a
        # waiter that goes back into debt waits again (behind the others).
        waiters, self._waiters = self._waiters, {}
        for wake in waiters.values():
            wake()
        if self._waiters and self._timer is None:
            self._reschedule()


@implementer(IPushProducer)
class _Gate:
    """Stands in for a producer and keeps it paused while any reason holds."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.reasons: set[str] = set()

    def hold(self, reason: str) -> None:
        # Pause even when already held: someone else (a relay's join) may have resumed it.
        self.reasons.add(reason)
        self.producer.pauseProducing()

    def release(self, reason: str) -> None:
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons:
                self.producer.resumeProducing()

    def pauseProducing(self) -> None:
        self.hold("consumer")

    def resumeProducing(self) -> None:
        self.release("consumer")

    def stopProducing(self) -> None:
        self.producer.stopProducing()


@implementer(IProtocol, ITransport, IPushProducer, IConsumer)
class LimitedStream:
    """
    The protocol attached to a server-side mux stream, and the transport its
    inner protocol sees: charges every byte to a L{RateLimiter}.

    Anything else the inner protocol asks of its transport (C{link},
    C{getPeer}, C{loseWriteConnection}, ...) goes to the stream.
    """

    def __init__(self, inner: IProtocol, limiter: RateLimiter | None,
                 on_bytes: Callable[[], None] | None = None) -> None:
        """
        @param inner: the protocol that uses the stream.
        @param limiter: the client's bucket; None to only count (C{on_bytes}).
        @param on_bytes: called after each chunk either way (the server checks
            the client's C{flow_limit} there).
        """
        self.inner = inner
        self.limiter = limiter
        self._on_bytes = on_bytes
        self.stream: Any = None
        self._up: _Gate | None = None
        self._down: _Gate | None = None
        self._waiting = False
        self._gone = False
        if IHalfCloseableProtocol.providedBy(inner):
            alsoProvides(self, IHalfCloseableProtocol)

    # -- the stream's protocol ----------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self.stream = transport
        self._down = _Gate(transport)
        self.inner.makeConnection(self)

    def connectionMade(self) -> None:
        """Part of IProtocol; L{makeConnection} does the work."""

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the client towards the user (download)."""
        self.inner.dataReceived(data)
        self._charge(len(data))

    def readConnectionLost(self) -> None:
        self.inner.readConnectionLost()  # type: ignore[attr-defined]

    def writeConnectionLost(self) -> None:
        self.inner.writeConnectionLost()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure) -> None:
        self._gone = True
        if self._waiting and self.limiter is not None:
            self._waiting = False
            self.limiter.cancel(id(self))
        self.inner.connectionLost(reason)

    # -- the inner protocol's transport ---------------------------------------------

    def write(self, data: bytes) -> None:
        """Bytes from the user towards the client (upload)."""
        self.stream.write(data)
        self._charge(len(data))

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if not streaming:
            self._up = None
            self.stream.registerProducer(producer, streaming)
            return
        self._up = _Gate(producer)
        if self._waiting:
            self._up.hold("rate")
        self.stream.registerProducer(self._up, True)

    def unregisterProducer(self) -> None:
        self._up = None
        self.stream.unregisterProducer()

    def pauseProducing(self) -> None:
        if self._down is not None:
            self._down.pauseProducing()

    def resumeProducing(self) -> None:
        if self._down is not None:
            self._down.resumeProducing()

    def stopProducing(self) -> None:
        self.stream.stopProducing()

    def loseConnection(self) -> None:
        self.stream.loseConnection()

    def getPeer(self) -> Any:
        return self.stream.getPeer()

    def getHost(self) -> Any:
        return self.stream.getHost()

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not defined here: the stream's (link, mux, reset, ...).
        stream = self.__dict__.get("stream")
        if stream is None:
            raise AttributeError(name)
        return getattr(stream, name)

    # -- the bucket -------------------------------------------------------------------

    def _charge(self, size: int) -> None:
        if self.limiter is not None and self.limiter.charge(size) and not self._gone:
            self._throttle()
        if self._on_bytes is not None:
            self._on_bytes()

    def _throttle(self) -> None:
        if self._up is not None:
            self._up.hold("rate")
        if self._down is not None:
            self._down.hold("rate")
        if not self._waiting and self.limiter is not None:
            self._waiting = True
            self.limiter.wait(id(self), self._resume)

    def _resume(self) -> None:
        self._waiting = False
        if self._gone:
            return
        if self._down is not None:
            self._down.release("rate")
        if self._up is not None:
            self._up.release("rate")
