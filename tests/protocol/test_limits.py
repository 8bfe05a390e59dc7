"""Unit tests of the rate limiter and the redelivery window."""

from __future__ import annotations

from bridge.protocol import limits
from bridge.protocol.limits import RateLimiter, RecentCommands


def test_bucket_refills_at_the_rate() -> None:
    """A bucket allows `burst` at once, then one more per 1/rate seconds."""
    limiter = RateLimiter(rate=4.0, burst=2)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("a", 0.25)
    assert not limiter.allow("a", 0.25)
    assert [limiter.allow("a", 100.0) for _ in range(3)] == [True, True, False]


def test_tracking_is_bounded() -> None:
    """A flood of new ids does not grow memory past the cap."""
    limiter = RateLimiter(rate=1.0, burst=1)
    recent = RecentCommands(window=60.0)
    for n in range(limits.MAX_TRACKED_IDS + 500):
        limiter.allow(f"id{n}", 0.0)
        recent.seen_before(f"id{n}", "r", b"x", 0.0)
    assert len(limiter) == limits.MAX_TRACKED_IDS
    assert len(recent) == limits.MAX_TRACKED_IDS


def test_window_expires() -> None:
    """A command is a repeat only within the window."""
    recent = RecentCommands(window=5.0)
    assert not recent.seen_before("a", "r", b"{}", 0.0)
    assert recent.seen_before("a", "r", b"{}", 4.0)
    assert not recent.seen_before("a", "r", b"{}", 10.0)
    assert not recent.seen_before("b", "r", b"{}", 10.0)
