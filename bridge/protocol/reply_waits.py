"""Tool calls waiting for their replies, and which waiting call a reply answers (pure).

Every wait gets a number of its own, never reused, so nothing a model or a device
sends (a call id used twice, a late reply, a deadline of an earlier round) can
reach a wait it does not belong to. The matching rules:

- a reply counts only on the reply topic of the call it answers;
- a reply with correlation data answers the call that correlation was published
  with, if that call still waits on this topic; otherwise it is dropped (a late
  reply to a timed-out call, a forgery, another bridge's call);
- a reply without correlation data answers the oldest call waiting on its topic.

A call to an MCP server waits too (its deadline names the wait), without a
topic: only its own result, told by number, answers it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Wait:
    """One call waiting for its reply."""

    number: int  # unique for the life of the bridge
    connection_id: str
    position: int  # the call's place among the calls of its round
    topic: str | None  # the reply topic; None: an MCP call (answered by number)
    correlation: bytes  # the MQTT 5 Correlation Data its request carries


class ReplyWaits:
    """The calls waiting for replies, across all connections."""

    def __init__(self) -> None:
        self._count = 0
        self._by_number: dict[int, Wait] = {}
        # Per topic, the numbers of its waits in publish order (a dict: ordered, O(1) removal).
        self._by_topic: dict[str, dict[int, None]] = {}
        self._by_correlation: dict[bytes, Wait] = {}

    def __len__(self) -> int:
        return len(self._by_number)

    def add(self, connection_id: str, position: int, topic: str | None) -> Wait:
        """A call now waits on ``topic`` (None: for its result, by number)."""
        self._count += 1
        number = self._count
        # The connection id keeps the correlation apart from other bridges' on the same
        # broker (an id is one instance's); the number from every other wait of this one.
        correlation = f"{connection_id}\x1f{number}".encode()
        wait = Wait(number, connection_id, position, topic, correlation)
        self._by_number[number] = wait
        if topic is not None:
            self._by_topic.setdefault(topic, {})[number] = None
            self._by_correlation[correlation] = wait
        return wait

    def get(self, number: int) -> Wait | None:
        return self._by_number.get(number)

    def match(self, topic: str, correlation: bytes | None) -> Wait | None:
        """The wait a reply on ``topic`` answers, or None (the reply is dropped)."""
        if correlation:
            wait = self._by_correlation.get(correlation)
            return wait if wait is not None and wait.topic == topic else None
        numbers = self._by_topic.get(topic)
        return self._by_number[next(iter(numbers))] if numbers else None

    def forget(self, number: int) -> None:
        """The wait is over (replied, timed out, its turn ended)."""
        wait = self._by_number.pop(number, None)
        if wait is None or wait.topic is None:
            return
        numbers = self._by_topic[wait.topic]
        del numbers[number]
        if not numbers:
            del self._by_topic[wait.topic]
        del self._by_correlation[wait.correlation]
