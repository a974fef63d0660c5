# -*- test-case-name: test.test_ratelimit -*-
"""Tests for L{nps.ratelimit}: the token bucket, the limiter on a L{Clock}, and
L{LimitedStream} on real L{nps.mux} streams joined in memory (test_mux's L{Pair})."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.task import Clock
from zope.interface import implementer

sys.path.insert(0, str(Path(__file__).parent))
from test_mux import HalfProto, Pair, Proto  # noqa: E402  (same directory; test/ is not a package)

from nps.ratelimit import BURST_SECONDS, LimitedStream, RateLimiter, TokenBucket  # noqa: E402


@implementer(IPushProducer)
class Producer:
    """A streaming producer that records whether it is paused."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


# -- TokenBucket --------------------------------------------------------------------


def test_bucket_starts_full_with_a_burst_of_two_seconds() -> None:
    """A new bucket holds BURST_SECONDS (2) seconds of traffic; spending it all costs no wait."""
    bucket = TokenBucket(1000, now=0.0)
    assert BURST_SECONDS == 2.0
    assert bucket.capacity == 2000
    assert bucket.consume(2000, now=0.0) == 0.0
    assert bucket.consume(500, now=0.0) == pytest.approx(0.5)


def test_bucket_refills_at_its_rate_up_to_capacity() -> None:
    """Tokens come back at C{rate} per second, never beyond the capacity."""
    bucket = TokenBucket(1000, now=0.0)
    bucket.consume(3000, now=0.0)  # 1000 in debt
    assert bucket.delay(now=0.5) == pytest.approx(0.5)
    assert bucket.delay(now=1.0) == 0.0
    assert bucket.delay(now=100.0) == 0.0
    assert bucket.tokens == 2000


def test_bucket_set_rate_keeps_debt_and_caps_burst() -> None:
    """A lowered rate caps the tokens at the new burst; a debt is repaid at the new rate."""
    bucket = TokenBucket(1000, now=0.0)
    bucket.set_rate(100, now=0.0)
    assert bucket.tokens == 200
    bucket.consume(300, now=0.0)
    assert bucket.delay(now=0.0) == pytest.approx(1.0)


@pytest.mark.parametrize("rate", [0, -1])
def test_bucket_rejects_a_rate_that_is_not_positive(rate: int) -> None:
    """A zero or negative rate is a programming error, named in the exception."""
    with pytest.raises(ValueError, match="rate must be positive"):
        TokenBucket(rate, now=0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100_000), st.floats(0, 2)), min_size=1, max_size=50))
def test_bucket_long_run_rate_is_bounded(charges: list[tuple[int, float]]) -> None:
    """Whatever the pattern, a caller that waits as told never moves more than capacity + rate x time."""
    bucket = TokenBucket(10_000, now=0.0)
    now = 0.0
    total = 0
    for size, gap in charges:
        now += gap
        total += size
        now += bucket.consume(size, now)  # wait until out of debt
        assert total <= bucket.capacity + bucket.rate * now + 1e-6


# -- RateLimiter on a Clock ---------------------------------------------------------------


def test_limiter_wakes_waiters_when_the_debt_is_repaid() -> None:
    """A waiter is called once, at the moment the bucket is back at zero, not before."""
    clock = Clock()
    limiter = RateLimiter(clock, 1)  # 1 KB/s, 2 KB burst
    woken: list[str] = []
    assert not limiter.charge(2048)
    assert limiter.charge(1024)  # one second in debt
    limiter.wait(1, lambda: woken.append("a"))
    limiter.wait(2, lambda: woken.append("b"))
    assert limiter.waiting == 2
    clock.advance(0.99)
    assert woken == []
    clock.advance(0.02)
    assert woken == ["a", "b"]
    assert limiter.waiting == 0
    assert not clock.getDelayedCalls()


def test_limiter_cancel_forgets_a_waiter() -> None:
    """A stream that closes while waiting is not woken, and the timer goes when nobody waits."""
    clock = Clock()
    limiter = RateLimiter(clock, 1)
    limiter.charge(4096)
    limiter.wait(1, lambda: pytest.fail("woken after cancel"))
    limiter.cancel(1)
    assert not clock.getDelayedCalls()
    clock.advance(10)


def test_limiter_set_rate_reschedules() -> None:
    """Raising the rate while someone waits wakes them sooner."""
    clock = Clock()
    limiter = RateLimiter(clock, 1)
    limiter.charge(2048 + 10 * 1024)  # 10 s in debt at 1 KB/s
    woken: list[float] = []
    limiter.wait(1, lambda: woken.append(clock.seconds()))
    limiter.set_rate(10)  # now 1 s
    clock.advance(1.01)
    assert woken and woken[0] == pytest.approx(1.01)


# -- LimitedStream on real mux streams -----------------------------------------------------


def _limited_pair(limiter: RateLimiter, inner: Proto | None = None) -> tuple[Pair, Any, LimitedStream, Proto]:
    """A server-opened stream whose server end is a LimitedStream around C{inner}."""
    pair = Pair()
    limiter._clock = pair.clock  # the pair's clock drives both
    limiter.bucket._stamp = pair.clock.seconds()
    inner = inner or Proto()
    wrapper = LimitedStream(inner, limiter)
    near, _, far, far_proto = pair.open(from_client=False, opener_proto=wrapper)  # type: ignore[arg-type]
    return pair, far_proto, wrapper, inner


def test_upload_pauses_the_producer_and_a_timer_resumes_it() -> None:
    """Bytes the user sends past the bucket pause the public socket (its producer) until tokens are back."""
    clock = Clock()
    limiter = RateLimiter(clock, 1)
    pair, far_proto, wrapper, inner = _limited_pair(limiter)
    producer = Producer()
    wrapper.registerProducer(producer, True)
    inner.transport.write(b"x" * 1024)
    assert not producer.paused
    inner.transport.write(b"x" * 2048)  # 1 KB in debt
    assert producer.paused
    pair.pump()
    assert len(far_proto.received) == 3072  # nothing is held back: the write went through
    pair.clock.advance(1.01)
    assert not producer.paused
    assert limiter.waiting == 0


def test_download_pauses_the_stream_and_keeps_the_rest_for_later() -> None:
    """Bytes from npc past the bucket pause the stream: the rest waits in its window, delivered after the timer."""
    clock = Clock()
    limiter = RateLimiter(clock, 1)
    pair, far_proto, wrapper, inner = _limited_pair(limiter)
    far_proto.transport.write(b"a" * 3000)
    pair.pump()
    far_proto.transport.write(b"b" * 3000)
    pair.pump()
    assert bytes(inner.received) == b"a" * 3000  # 3000 > 2048 burst: paused after the first chunk
    assert wrapper.stream._read_paused
    for _ in range(10):
        pair.clock.advance(1)
        pair.pump()
    assert bytes(inner.received) == b"a" * 3000 + b"b" * 3000


def test_other_limiters_are_not_affected() -> None:
    """A client's empty bucket does not pause another client's stream."""
    slow = RateLimiter(Clock(), 1)
    fast = RateLimiter(Clock(), 100_000)
    pair_slow, _, w_slow, in_slow = _limited_pair(slow)
    pair_fast, far_fast, w_fast, in_fast = _limited_pair(fast)
    p_slow, p_fast = Producer(), Producer()
    w_slow.registerProducer(p_slow, True)
    w_fast.registerProducer(p_fast, True)
    in_slow.transport.write(b"x" * 10_000)
    in_fast.transport.write(b"x" * 10_000)
    assert p_slow.paused and not p_fast.paused


def test_consumer_pause_and_rate_pause_combine() -> None:
    """The stream stays paused while either its consumer or the bucket holds it."""
    clock = Clock()
    limiter = RateLimiter(clock, 1)
    pair, far_proto, wrapper, inner = _limited_pair(limiter)
    wrapper.pauseProducing()  # the user's socket is full
    far_proto.transport.write(b"a" * 3000)
    pair.pump()
    assert inner.received == b""
    wrapper.resumeProducing()
    assert bytes(inner.received) == b"a" * 3000
    wrapper.pauseProducing()
    pair.clock.advance(5)  # the bucket refills; the consumer still holds the stream
    assert wrapper.stream._read_paused
    wrapper.resumeProducing()
    assert not wrapper.stream._read_paused


def test_half_close_is_passed_through() -> None:
    """A wrapper around a half-closeable protocol is half-closeable too and forwards readConnectionLost."""
    limiter = RateLimiter(Clock(), 1000)
    inner = HalfProto()
    assert IHalfCloseableProtocol.providedBy(LimitedStream(inner, limiter))
    pair, far_proto, wrapper, _ = _limited_pair(limiter, inner)
    far_proto.transport.loseWriteConnection()
    pair.pump()
    assert "read_lost" in inner.events


def test_close_while_waiting_cancels_the_wait() -> None:
    """A stream that ends while paused by the bucket leaves no waiter and no timer behind."""
    limiter = RateLimiter(Clock(), 1)
    pair, far_proto, wrapper, inner = _limited_pair(limiter)
    inner.transport.write(b"x" * 5000)
    assert limiter.waiting == 1
    wrapper.stream.reset("bye")
    assert limiter.waiting == 0
    pair.pump()
    assert inner.reason is not None


def test_transport_attributes_come_from_the_stream() -> None:
    """The inner protocol still sees the stream's link, peer and half-close method."""
    limiter = RateLimiter(Clock(), 1000)
    pair, far_proto, wrapper, inner = _limited_pair(limiter)
    assert inner.transport is wrapper
    assert wrapper.link == wrapper.stream.link
    assert wrapper.getPeer() == wrapper.stream.getPeer()
    inner.transport.loseWriteConnection()
    pair.pump()
    assert far_proto.events[-1] in ("made", "lost")


operations = st.lists(st.one_of(
    st.tuples(st.just("up"), st.integers(1, 5000)),
    st.tuples(st.just("down"), st.integers(1, 5000)),
    st.tuples(st.just("pause"), st.just(0)),
    st.tuples(st.just("resume"), st.just(0)),
    st.tuples(st.just("advance"), st.integers(0, 3000)),
), max_size=30)


@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_any_interleaving_delivers_everything_and_ends_unpaused(ops: list[tuple[str, int]]) -> None:
    """
    Whatever mix of uploads, downloads, consumer pauses and clock steps: once the
    consumer is resumed and time passes, every byte arrives in order both ways,
    nobody waits on the bucket and neither producer is left paused.
    """
    limiter = RateLimiter(Clock(), 1)  # 1 KB/s: most sequences go into debt
    pair, far_proto, wrapper, inner = _limited_pair(limiter)
    producer = Producer()
    wrapper.registerProducer(producer, True)
    up = bytearray()
    down = bytearray()
    consumer_paused = False
    for i, (op, n) in enumerate(ops):
        tag = bytes([i % 251])
        if op == "up":
            inner.transport.write(tag * n)
            up += tag * n
        elif op == "down":
            far_proto.transport.write(tag * n)
            down += tag * n
        elif op == "pause":
            wrapper.pauseProducing()
            consumer_paused = True
        elif op == "resume":
            wrapper.resumeProducing()
            consumer_paused = False
        else:
            pair.clock.advance(n / 1000)
        pair.pump()
    if consumer_paused:
        wrapper.resumeProducing()
    for _ in range(200):
        pair.clock.advance(1.0)
        pair.pump()
        if len(inner.received) == len(down) and len(far_proto.received) == len(up) and not limiter.waiting:
            break
    assert bytes(inner.received) == bytes(down)
    assert bytes(far_proto.received) == bytes(up)
    assert limiter.waiting == 0
    assert not producer.paused
    assert not wrapper.stream._read_paused
