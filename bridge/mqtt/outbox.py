"""The ordered, bounded buffer of messages on their way to the broker.

A message stays here until the broker has acknowledged it (QoS 1 and 2) or
it was written (QoS 0). Messages handed to the broker but not yet
acknowledged when the link drops go back to the front, in their order, and
are published again after reconnecting: at least once, in order.

The bound applies to relayed server events only (``relayed=True``): when it
is reached, :meth:`Outbox.put` refuses them and the caller decides to wait
or give up. The bridge's own messages (acknowledgements, errors, notices)
are few, one per command, and always accepted, so a reply is never lost.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from bridge.protocol.messages import Publish


@dataclass(slots=True, eq=False)
class Entry:
    publish: Publish
    acked: bool = field(default=False)


LOW_WATER: Final = 0.9  # fraction of the bounds at which waiting readers go on


class Outbox:
    """FIFO of publishes, split into not yet sent and sent-but-unacknowledged."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._pending: deque[Entry] = deque()
        self._inflight: deque[Entry] = deque()
        self._count = 0
        self._bytes = 0
        self.peak = 0  # the most messages held at once, for tests and benchmarks
        self._has_pending = asyncio.Event()
        self._has_space = asyncio.Event()
        self._has_space.set()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def drained(self) -> bool:
        """Below the low-water mark: waiting readers may go on.

        Readers that found the buffer full wake here, not at the first freed
        slot: with thousands of connections waiting, waking them all for each
        message the broker acknowledges would cost more than the relay itself.
        """
        return (
            self._count <= self.max_messages * LOW_WATER
            and self._bytes <= self.max_bytes * LOW_WATER
        )

    @property
    def full(self) -> bool:
        return self._count >= self.max_messages or self._bytes >= self.max_bytes

    def put(self, publish: Publish) -> bool:
        """Queue a publish; False (and nothing queued) if it is relayed and the buffer is full."""
        if publish.relayed and self.full:
            return False
        self._pending.append(Entry(publish))
        self._count += 1
        self._bytes += len(publish.payload)
        self.peak = max(self.peak, self._count)
        self._has_pending.set()
        self._empty.clear()
        if self.full:
            self._has_space.clear()
        return True

    def put_first(self, publish: Publish) -> None:
        """Queue a message of the bridge's own ahead of everything waiting (``online``)."""
        self._pending.appendleft(Entry(publish))
        self._count += 1
        self._bytes += len(publish.payload)
        self._has_pending.set()
        self._empty.clear()
        if self.full:
            self._has_space.clear()

    async def wait_for_space(self) -> None:
        """Wait until relayed events are accepted again."""
        await self._has_space.wait()

    async def wait_empty(self) -> None:
        """Wait until every queued message has been acknowledged."""
        await self._empty.wait()

    def take_nowait(self) -> Entry | None:
        """The next message to hand to the broker, or None if nothing waits to be sent.

        The message moves to the unacknowledged list.
        """
        if not self._pending:
            return None
        entry = self._pending.popleft()
        self._inflight.append(entry)
        return entry

    async def wait_pending(self) -> None:
        """Wait until a message waits to be sent, or :meth:`wake` is called (check again)."""
        if not self._pending:
            self._has_pending.clear()
            await self._has_pending.wait()

    def wake(self) -> None:
        """Make :meth:`wait_pending` return now (the link it publishes on is gone)."""
        self._has_pending.set()

    def done(self, *entries: Entry) -> None:
        """The broker acknowledged ``entries``: forget them, and any acknowledged run before."""
        for entry in entries:
            entry.acked = True
        inflight = self._inflight
        count, size = self._count, self._bytes
        while inflight and inflight[0].acked:
            count -= 1
            size -= len(inflight.popleft().publish.payload)
        self._count, self._bytes = count, size
        if self.drained:
            self._has_space.set()
        if self._count == 0:
            self._empty.set()

    def requeue_unacknowledged(self) -> int:
        """The link dropped: put every unacknowledged message back in front, in order."""
        unacked = [entry for entry in self._inflight if not entry.acked]
        for entry in self._inflight:
            if entry.acked:
                self._count -= 1
                self._bytes -= len(entry.publish.payload)
        self._inflight.clear()
        self._pending.extendleft(reversed(unacked))
        if self._pending:
            self._has_pending.set()
        if self.drained:
            self._has_space.set()
        if self._count == 0:
            self._empty.set()
        return len(unacked)
