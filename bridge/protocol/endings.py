"""Ends the bridge decides: a bug, a full buffer, an idle connection, its own stop.

A mixin of :class:`~bridge.protocol.core.BridgeCore`; what it uses of the
core is declared here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from bridge.protocol import contract
from bridge.protocol.actions import AbortUpstream, Action, CloseUpstream
from bridge.protocol.backlogs import Backlogs
from bridge.protocol.connections import Connection, Phase
from bridge.protocol.contract import Close, Rejection, rejection_of
from bridge.protocol.device_output import DeviceOutput
from bridge.protocol.idle import IdleTracker
from bridge.protocol.messages import ReplyTo
from bridge.protocol.replies import Replies
from bridge.protocol.sessions import Conversations

IDLE_CLOSE_CODE: Final = 1000
IDLE_CLOSE_REASON: Final = "idle timeout"


class ConnectionEndings:
    """Ending connections on the bridge's own account."""

    _connections: dict[str, Connection]
    _backlogs: Backlogs
    _idle: IdleTracker
    _clock: float
    _wall: float
    conversations: Conversations
    replies: Replies
    draining: bool
    idle_timeout: float | None

    def _refuse(
        self, connection_id: str, rejection: Rejection, reply_to: ReplyTo | None
    ) -> list[Action]:
        raise NotImplementedError

    def _pump(self, connection_id: str) -> list[Action]:
        raise NotImplementedError

    if TYPE_CHECKING:  # another mixin's (a stub here would hide it)

        def _output_closed(
            self, connection_id: str, output: DeviceOutput | None, code: int, reason: str
        ) -> list[Action]: ...

        def _output_sweep(self) -> list[Action]: ...

    def connection_failed(self, connection_id: str) -> list[Action]:
        """What drives this connection failed unexpectedly (a bug): forget the connection.

        A handshake in progress answers its ``connect`` with ``internal_error``;
        a connection that was open is reported ``disconnected`` with code 1011.
        Either way the id can ``connect`` again. The driver drops the socket.
        """
        connection = self._connections.pop(connection_id, None)
        if connection is None:
            return []
        self._idle.forget(connection_id)
        if connection.phase is Phase.OPENING:
            rejection = rejection_of(
                connection.connect,
                contract.INTERNAL_ERROR,
                "the bridge failed while opening this connection (logged)",
            )
            actions = self._refuse(connection_id, rejection, connection.connect_reply)
        else:
            actions = self.replies.disconnected(
                connection_id, contract.INTERNAL_ERROR_CLOSE_CODE, contract.INTERNAL_ERROR_REASON
            )
        actions += self._output_closed(
            connection_id,
            connection.output,
            contract.INTERNAL_ERROR_CLOSE_CODE,
            contract.INTERNAL_ERROR_REASON,
        )
        return actions + self._pump(connection_id)

    def end_connection(self, connection_id: str, code: int, reason: str) -> list[Action]:
        """The bridge itself must end an open connection (its events cannot be kept).

        The connection is dropped at once and, once gone, reported with a
        ``disconnected`` notice carrying ``code`` and ``reason``, even if a
        close was under way.
        """
        connection = self._connections.get(connection_id)
        if connection is None or connection.phase is Phase.OPENING or connection.notice:
            return []
        connection.notice = (code, reason)
        connection.phase = Phase.CLOSING
        return [AbortUpstream(connection_id)]

    def begin_shutdown(self) -> list[Action]:
        """Stop taking commands and close every connection (code 1001)."""
        if self.draining:
            return []
        self.draining = True
        code, reason = contract.SHUTDOWN_CLOSE_CODE, contract.SHUTDOWN_CLOSE_REASON
        actions: list[Action] = []
        for connection_id, connection in self._connections.items():
            if connection.phase is Phase.OPENING:
                actions.append(AbortUpstream(connection_id))
            elif connection.phase is Phase.OPEN:
                connection.phase = Phase.CLOSING
                connection.close = Close(connection_id, code, reason)
                connection.closed_by_bridge = True
                actions.append(CloseUpstream(connection_id, code, reason))
        for connection_id in self._backlogs.ids():
            actions.extend(self._pump(connection_id))
        return actions

    def sweep(self, now: float, wall: float | None = None) -> list[Action]:
        """Close (code 1000) every open connection idle for ``idle_timeout`` at ``now``.

        Each is then reported ``disconnected`` with reason ``idle timeout``.
        """
        self._clock = now
        if wall is not None:
            self._wall = wall
        self.conversations.expire(now)
        actions = self._output_sweep()  # retained statuses of conversations that ended
        if self.idle_timeout is None or self.draining:
            return actions
        open_ids = [cid for cid, c in self._connections.items() if c.phase is Phase.OPEN]
        for connection_id in self._idle.due(open_ids, now, self.idle_timeout):
            connection = self._connections[connection_id]
            connection.phase = Phase.CLOSING
            connection.notice = (IDLE_CLOSE_CODE, IDLE_CLOSE_REASON)
            actions.append(CloseUpstream(connection_id, IDLE_CLOSE_CODE, IDLE_CLOSE_REASON))
        return actions
