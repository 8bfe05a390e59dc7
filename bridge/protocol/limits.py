"""Per connection id bookkeeping for hostile or repeated input, with no I/O.

Time is passed in (``now``, monotonic seconds), so the core stays pure and
tests never sleep. Both structures forget ids that have been quiet, so a
flood of random ids cannot grow them without bound.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

MAX_TRACKED_IDS: Final = 10_000  # beyond this the quietest ids are forgotten first


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per connection id: ``rate`` commands/s, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """How many ids are tracked."""
        return len(self._buckets)

    def allow(self, connection_id: str, now: float) -> bool:
        """Take one token for ``connection_id``; False if its bucket is empty."""
        bucket = self._buckets.get(connection_id)
        if bucket is None:
            bucket = self._buckets[connection_id] = _Bucket(float(self.burst), now)
            if len(self._buckets) > MAX_TRACKED_IDS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(connection_id)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True


class RecentCommands:
    """Commands seen in the last ``window`` seconds, to spot QoS 1 redeliveries.

    A command counts as seen again when it has the same connection id, the
    same ``request_id`` and the same bytes: a redelivered PUBLISH is
    byte-identical, while a client reusing a request_id for a new command is
    not. Commands without a request_id are never treated as repeats.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: OrderedDict[tuple[str, str, bytes], float] = OrderedDict()

    def __len__(self) -> int:
        """How many commands are remembered."""
        return len(self._seen)

    def seen_before(self, connection_id: str, request_id: str, payload: bytes, now: float) -> bool:
        """Record the command; True if the same one was recorded within the window."""
        self._expire(now)
        key = (connection_id, request_id, hashlib.blake2b(payload, digest_size=16).digest())
        if key in self._seen:
            return True
        self._seen[key] = now
        if len(self._seen) > MAX_TRACKED_IDS:
            self._seen.popitem(last=False)
        return False

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            oldest = next(iter(seen.values()))
            if now - oldest <= self.window:
                return
            seen.popitem(last=False)
