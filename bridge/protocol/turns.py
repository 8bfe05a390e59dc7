"""``ask`` turns in the core: a mixin of :class:`~bridge.protocol.core.BridgeCore`.

A turn is sent at once on an open connection, or waits for the connection it
opens; a socket near the server's age limit is replaced first. What a turn
sends, and what the conversation remembers, is :mod:`bridge.protocol.sessions`.
"""

from __future__ import annotations

from typing import Final

from bridge.protocol import contract
from bridge.protocol.actions import Action, CloseUpstream, SendUpstream
from bridge.protocol.backlogs import Backlogs
from bridge.protocol.connections import Connection, Phase
from bridge.protocol.contract import Ask, Command, Connect, Rejection, Send, rejection_of
from bridge.protocol.idle import IdleTracker
from bridge.protocol.messages import ReplyTo
from bridge.protocol.replies import Replies
from bridge.protocol.sessions import Conversations, response_of

RESPONSE_COMPLETED: Final = "response.completed"
REPLACED_CLOSE_CODE: Final = 1000
SOCKET_REPLACED_REASON: Final = "replaced before the server's 60-minute limit"


class AskTurns:
    """The ``ask`` part of the core. What it uses of the core is declared here."""

    _connections: dict[str, Connection]
    _backlogs: Backlogs
    _idle: IdleTracker
    _clock: float
    conversations: Conversations
    replies: Replies

    def _connect(
        self, command: Connect, reply_to: ReplyTo | None, *, on_behalf_of: Ask | Send | None = None
    ) -> list[Action]:
        raise NotImplementedError

    def _refuse(
        self, connection_id: str, rejection: Rejection, reply_to: ReplyTo | None
    ) -> list[Action]:
        raise NotImplementedError

    def _refuse_command(
        self, command: Command, code: str, message: str, reply_to: ReplyTo | None
    ) -> list[Action]:
        raise NotImplementedError

    def _ask(self, command: Ask, reply_to: ReplyTo | None) -> list[Action]:
        """A turn: sent at once on an open connection, else after opening one for it."""
        connection_id = command.connection_id
        connection = self._connections.get(connection_id)
        if connection is None:
            return self._open_for(command, reply_to)
        if self._clock - connection.opened_at >= self.conversations.sessions.max_socket_age:
            return self._replace_socket(command, reply_to)
        data = self.conversations.request(command, connection.profile, self._clock)
        if not self._backlogs.fits(len(data)):
            self.conversations.ended(connection_id)
            return self._refuse_command(
                command, contract.LIMIT_REACHED, self._backlogs.budget_problem(), reply_to
            )
        self._backlogs.hold(len(data))
        self._idle.request_sent(connection_id)
        actions = self.replies.asked(command, reply_to)
        actions.append(SendUpstream(connection_id, data))
        return actions

    def _open_for(self, command: Ask | Send, reply_to: ReplyTo | None) -> list[Action]:
        """Open the id for a command that needs a connection; the command waits for it."""
        connection_id = command.connection_id
        profile = command.profile if isinstance(command, Ask) else None
        opening = Connect(connection_id, command.request_id, profile)
        actions = self._connect(opening, reply_to, on_behalf_of=command)
        if connection_id in self._connections:  # opening: the command waits for it
            problem = self._backlogs.add(connection_id, command, reply_to)
            if problem is not None:
                rejection = rejection_of(command, contract.LIMIT_REACHED, problem)
                actions += self._refuse(connection_id, rejection, reply_to)
        return actions

    def _replace_socket(self, command: Ask, reply_to: ReplyTo | None) -> list[Action]:
        """Close a socket near the server's age limit; the turn then opens a new one.

        The client sees ``disconnected`` (1000), then the connect ack and the
        turn, continued by replaying the conversation (or by id when stored).
        """
        connection_id = command.connection_id
        problem = self._backlogs.add(connection_id, command, reply_to, first=True)
        if problem is not None:
            return self._refuse_command(command, contract.LIMIT_REACHED, problem, reply_to)
        connection = self._connections[connection_id]
        connection.phase = Phase.CLOSING
        connection.notice = (REPLACED_CLOSE_CODE, SOCKET_REPLACED_REASON)
        self.conversations.socket_ended(connection_id)
        return [CloseUpstream(connection_id, REPLACED_CLOSE_CODE, SOCKET_REPLACED_REASON)]

    def _turn_ended(self, connection_id: str, event_type: str, raw: bytes) -> None:
        if event_type == RESPONSE_COMPLETED:
            self.conversations.completed(connection_id, response_of(raw), self._clock)
        else:
            self.conversations.ended(connection_id)
