"""Commands waiting their turn, and the memory budget of everything waiting.

A command for an id whose connection is opening or closing waits in that
id's backlog, in arrival order, until the transition ends. At most
:data:`MAX_BACKLOG` wait per id, and across the bridge the waiting commands
and the sends not yet written upstream hold at most ``max_waiting_bytes``
(config ``limits.max_waiting_bytes``): past either, a command is refused.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from bridge.protocol.contract import Ask, Command, Rejection, Send
from bridge.protocol.messages import ReplyTo

MAX_BACKLOG: Final = 100  # commands waiting behind one connect/close; more are refused
# What a waiting command that is not a `send` is counted as (its fields are small).
_SMALL_ENTRY_BYTES: Final = 256

Waiting = tuple[Command | Rejection, ReplyTo | None]
_Entry = tuple[Command | Rejection, ReplyTo | None, int]  # ..., its size in the budget


class Backlogs:
    """Every id's waiting commands, and the bytes held by all that waits."""

    def __init__(self, max_waiting_bytes: int) -> None:
        self.max_waiting_bytes = max_waiting_bytes
        self.waiting_bytes = 0
        self._queues: dict[str, deque[_Entry]] = {}

    def __contains__(self, connection_id: str) -> bool:
        """Whether commands wait for ``connection_id``."""
        return connection_id in self._queues

    def ids(self) -> list[str]:
        """The ids with waiting commands."""
        return list(self._queues)

    def add(
        self,
        connection_id: str,
        parsed: Command | Rejection,
        reply_to: ReplyTo | None,
        *,
        first: bool = False,
    ) -> str | None:
        """Queue a command behind the id's others (``first``: ahead of them); or say why
        it cannot wait."""
        queue = self._queues.get(connection_id)
        if queue is not None and len(queue) >= MAX_BACKLOG:
            return f"more than {MAX_BACKLOG} commands are waiting for this connection"
        size = _entry_size(parsed, reply_to)
        if not self.fits(size):
            return self.budget_problem()
        if queue is None:
            queue = self._queues[connection_id] = deque()
        if first:
            queue.appendleft((parsed, reply_to, size))
        else:
            queue.append((parsed, reply_to, size))
        self.waiting_bytes += size
        return None

    def pop(self, connection_id: str) -> Waiting | None:
        """The id's first waiting command, or None if none waits."""
        queue = self._queues.get(connection_id)
        if not queue:
            return None
        parsed, reply_to, size = queue.popleft()
        self.waiting_bytes -= size
        if not queue:
            del self._queues[connection_id]
        return parsed, reply_to

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes stay within the budget."""
        return self.waiting_bytes + size <= self.max_waiting_bytes

    def hold(self, size: int) -> None:
        """Count a send on its way upstream (until :meth:`release`)."""
        self.waiting_bytes += size

    def release(self, size: int) -> None:
        """A send of ``size`` characters was written upstream, or dropped."""
        self.waiting_bytes -= size

    def budget_problem(self) -> str:
        return (
            f"commands waiting across the bridge already hold {self.waiting_bytes} of "
            f"{self.max_waiting_bytes} bytes (limits.max_waiting_bytes)"
        )


def _entry_size(parsed: Command | Rejection, reply_to: ReplyTo | None) -> int:
    """What a waiting command holds in memory, as counted against the budget."""
    if isinstance(parsed, Send):
        size = len(parsed.event)
    elif isinstance(parsed, Ask):
        size = parsed.size
    else:
        size = _SMALL_ENTRY_BYTES
    if reply_to is not None:
        size += len(reply_to.topic) + len(reply_to.correlation_data or b"")
    return size
