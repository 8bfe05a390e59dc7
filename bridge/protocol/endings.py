"""Ends the bridge decides, and how an end is reported (:class:`Endings`).

A bug (1011), a full buffer (1013), an idle connection (1000), the bridge's
own stop (1001); and, when a socket is gone, the one message that says so:
the ``close`` ack, or a ``disconnected`` notice.
"""

from __future__ import annotations

from typing import Final

from bridge.protocol import contract
from bridge.protocol.actions import AbortUpstream, Action, CloseUpstream
from bridge.protocol.connections import Connection, Phase, State
from bridge.protocol.contract import Close, rejection_of
from bridge.protocol.idle import IdleTracker
from bridge.protocol.outputs import DeviceOutputs
from bridge.protocol.replies import Replies
from bridge.protocol.sessions import Conversations

IDLE_CLOSE_CODE: Final = 1000
IDLE_CLOSE_REASON: Final = "idle timeout"


class Endings:
    """Ending connections on the bridge's own account, and reporting ends."""

    def __init__(
        self,
        connections: dict[str, Connection],
        idle: IdleTracker,
        conversations: Conversations,
        replies: Replies,
        *,
        outputs: DeviceOutputs,
    ) -> None:
        self._connections = connections
        self._idle = idle
        self._conversations = conversations
        self._replies = replies
        self._outputs = outputs

    def reported(self, connection: Connection, code: int, reason: str) -> list[Action]:
        """What says that this connection's socket ended with ``code`` and ``reason``."""
        connection_id = connection.connect.connection_id
        if connection.notice is not None:
            return self._replies.disconnected(connection_id, *connection.notice)
        if connection.close is not None:
            return self._replies.closed(
                connection.close,
                connection.close_reply,
                answered_command=connection.state is not State.STOPPING,
            )
        return self._replies.disconnected(connection_id, code, reason)

    def failed(self, connection: Connection) -> list[Action]:
        """What drives this (forgotten) connection failed: a bug. A handshake in progress
        answers its ``connect`` with ``internal_error``; an open one is ``disconnected``
        with 1011."""
        connection_id = connection.connect.connection_id
        if connection.phase is Phase.OPENING:
            rejection = rejection_of(
                connection.connect,
                contract.INTERNAL_ERROR,
                "the bridge failed while opening this connection (logged)",
            )
            actions = self._replies.refuse(connection_id, rejection, connection.connect_reply)
        else:
            actions = self._replies.disconnected(
                connection_id, contract.INTERNAL_ERROR_CLOSE_CODE, contract.INTERNAL_ERROR_REASON
            )
        return actions + self._outputs.closed(
            connection_id, contract.INTERNAL_ERROR_CLOSE_CODE, contract.INTERNAL_ERROR_REASON
        )

    def end(self, connection_id: str, code: int, reason: str) -> list[Action]:
        """Drop an open connection at once; once gone, it is reported ``disconnected`` with
        ``code`` and ``reason``, even if a close was under way."""
        connection = self._connections.get(connection_id)
        if connection is None or connection.phase is Phase.OPENING or connection.notice:
            return []
        connection.notice = (code, reason)
        if connection.state is State.OPEN:
            connection.state = State.CLOSING
        return [AbortUpstream(connection_id)]

    def stop(self) -> list[Action]:
        """The bridge stops: abort every handshake, close every open connection (1001)."""
        code, reason = contract.SHUTDOWN_CLOSE_CODE, contract.SHUTDOWN_CLOSE_REASON
        actions: list[Action] = []
        for connection_id, connection in self._connections.items():
            if connection.phase is Phase.OPENING:
                actions.append(AbortUpstream(connection_id))
            elif connection.state is State.OPEN:
                connection.state = State.STOPPING
                connection.close = Close(connection_id, code, reason)
                actions.append(CloseUpstream(connection_id, code, reason))
        return actions

    def idle(self, now: float, timeout: float) -> list[Action]:
        """Close (1000) every open connection idle for ``timeout`` seconds at ``now``."""
        actions: list[Action] = []
        open_ids = [cid for cid, c in self._connections.items() if c.state is State.OPEN]
        for connection_id in self._idle.due(open_ids, now, timeout):
            connection = self._connections[connection_id]
            connection.state = State.CLOSING
            connection.notice = (IDLE_CLOSE_CODE, IDLE_CLOSE_REASON)
            actions.append(CloseUpstream(connection_id, IDLE_CLOSE_CODE, IDLE_CLOSE_REASON))
        return actions
