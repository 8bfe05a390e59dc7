"""Every timer the daemon arms, in one owner that cancels them all on stop.

The core and the cluster's rules ask for timers as values (``ArmTimer``,
``ToolDeadline``, ``Settle``); the membership beats its heartbeat. Each is
armed here, forgotten here when it fires, and cancelled by :meth:`Timers.close`
when the service stops, however it stops: no callback runs on a stopped
bridge, and a timer armed after the stop is never armed at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any


class Timers:
    """The daemon's pending timers: keyed ones (armed again, they replace the pending one)
    and one-shot ones."""

    def __init__(self) -> None:
        self._pending: dict[Hashable, asyncio.TimerHandle] = {}
        self.closed = False

    def __len__(self) -> int:
        """Timers armed that have neither fired nor been cancelled."""
        return len(self._pending)

    def later(
        self, delay: float, callback: Callable[..., Any], *args: Any, key: Hashable = None
    ) -> None:
        """Call ``callback(*args)`` in ``delay`` seconds, unless the timers are closed first.

        With a ``key``, a timer of that key still pending is cancelled and replaced.
        """
        if self.closed:
            return
        token: Hashable = object() if key is None else key
        self.cancel(token)
        loop = asyncio.get_running_loop()
        self._pending[token] = loop.call_later(delay, self._fire, token, callback, args)

    def cancel(self, key: Hashable) -> None:
        """Cancel the pending timer of ``key``, if there is one."""
        handle = self._pending.pop(key, None)
        if handle is not None:
            handle.cancel()

    def close(self) -> None:
        """Cancel every pending timer and arm none from now on (the service stops)."""
        self.closed = True
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()

    def _fire(self, token: Hashable, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        del self._pending[token]
        callback(*args)
