"""Idle connections, found with no clock of their own: time comes in with each call.

A connection is idle when no request is in flight on it and no command came
for it. :meth:`IdleTracker.due` is asked now and then (the supervisor's
sweep) which open connections have been idle for the timeout: they are the
ones a flow forgot to close, which would hold a socket (and one of
``limits.max_connections``) until the server's own 60-minute limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class _Activity:
    last_active: float | None = None  # None: from the next sweep on
    in_flight: int = 0


class IdleTracker:
    """Requests in flight and the last activity, per open connection (no other id is kept)."""

    def __init__(self) -> None:
        self._activity: dict[str, _Activity] = {}

    def opened(self, connection_id: str) -> None:
        """A connection for this id is being opened: track it until :meth:`forget`."""
        self._activity[connection_id] = _Activity()

    def active(self, connection_id: str, now: float) -> None:
        """A command came for this id."""
        activity = self._activity.get(connection_id)
        if activity is not None:
            activity.last_active = now

    def request_sent(self, connection_id: str) -> None:
        activity = self._activity.get(connection_id)
        if activity is not None:
            activity.in_flight += 1

    def request_ended(self, connection_id: str) -> None:
        activity = self._activity.get(connection_id)
        if activity is not None and activity.in_flight:
            activity.in_flight -= 1

    def in_flight(self, connection_id: str) -> int:
        """Requests sent on the id's connection and not yet ended."""
        activity = self._activity.get(connection_id)
        return activity.in_flight if activity is not None else 0

    def forget(self, connection_id: str) -> None:
        self._activity.pop(connection_id, None)

    def due(self, connection_ids: Iterable[str], now: float, timeout: float) -> list[str]:
        """Which of ``connection_ids`` have been idle for ``timeout`` seconds at ``now``.

        A connection with a request in flight is never due; once its request
        ends, the idle time counts from the last sweep that saw it in flight
        (sweeps come every second or so).
        """
        due: list[str] = []
        for connection_id in connection_ids:
            activity = self._activity.setdefault(connection_id, _Activity())
            if activity.in_flight or activity.last_active is None:
                activity.last_active = now
            elif now - activity.last_active >= timeout:
                due.append(connection_id)
        return due
