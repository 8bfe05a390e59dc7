"""Readers waiting for room in the event buffer: how long they may, and what the log says.

When the broker takes events slower than upstreams send them, the buffer
fills and a reader waits for room before it reads on (TCP then pushes back
on the server). Under sustained load that happens all the time and resolves
in milliseconds: normal operation, counted but not logged. An *episode* runs
from the first reader waiting until none does; it is logged only when a
reader has waited a noticeable time (:data:`WARN_AFTER`, or its whole limit
when that is shorter, its connection then ending): one WARNING, at most one
every :data:`WARN_INTERVAL` seconds, and one INFO line when the episode is
over, with how long it lasted and how many connections it ended.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Final

WARN_AFTER: Final = 1.0  # seconds a reader waits before the wait is worth a warning
WARN_INTERVAL: Final = 10.0  # seconds between two warnings, at least


class BufferWaits:
    """The waits of every reader for room in one event buffer."""

    def __init__(
        self,
        room: Callable[[], Awaitable[None]],
        *,
        limit: float,
        buffered: Callable[[], int],
        log: logging.Logger,
    ) -> None:
        self._room = room  # returns once relayed events are taken again
        self.limit = limit  # seconds one wait may last (limits.event_buffer_wait)
        self._buffered = buffered  # messages in the buffer, for the warning
        self._log = log  # the supervisor's: these lines are about its relaying
        self._waiting = 0  # readers waiting now
        self._episode_started = 0.0
        self._warned = False  # the current episode was logged
        self._ended = 0  # connections ended in the current episode
        self._last_warning = -math.inf

    async def room(self, started: float) -> bool:
        """Wait for room for a reader that began waiting at ``started`` (loop time).

        True once there is room; False when the wait reached :attr:`limit`:
        the caller then ends the reader's connection.
        """
        loop = asyncio.get_running_loop()
        if not self._waiting:
            self._episode_started, self._warned, self._ended = loop.time(), False, 0
        self._waiting += 1
        try:
            deadline = started + self.limit
            while True:
                check = deadline
                if not self._warned:
                    check = min(
                        deadline, max(started + WARN_AFTER, self._last_warning + WARN_INTERVAL)
                    )
                try:
                    async with asyncio.timeout_at(check):
                        await self._room()
                    return True
                except TimeoutError:
                    now = loop.time()
                    self._maybe_warn(now, waited=now - started)
                    if now >= deadline:
                        self._ended += 1
                        return False
        finally:
            self._waiting -= 1
            if not self._waiting and self._warned:
                self._log.info(
                    "event buffer: no reader waits any more, after %.1fs (%d connections ended)",
                    loop.time() - self._episode_started,
                    self._ended,
                )

    def _maybe_warn(self, now: float, waited: float) -> None:
        if self._warned or now - self._last_warning < WARN_INTERVAL:
            return
        if waited < min(WARN_AFTER, self.limit):
            return
        self._warned, self._last_warning = True, now
        self._log.warning(
            "event buffer full (%d messages, a reader waited %.1fs): reading from upstream "
            "pauses until the broker takes more (up to %.0fs per connection)",
            self._buffered(),
            waited,
            self.limit,
        )
