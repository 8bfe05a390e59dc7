"""``ask`` turns in the core: a mixin of :class:`~bridge.protocol.core.BridgeCore`.

A turn is sent at once on an open connection, or waits for the connection it
opens; a socket near the server's age limit is replaced first. What a turn
sends, and what the conversation remembers, is :mod:`bridge.protocol.sessions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from bridge.protocol import contract
from bridge.protocol.actions import Action, CloseUpstream, SendUpstream
from bridge.protocol.backlogs import Backlogs
from bridge.protocol.connections import Connection, Phase
from bridge.protocol.contract import Ask, Command, Connect, Rejection, Send, rejection_of
from bridge.protocol.guardrails import Checked
from bridge.protocol.idle import IdleTracker
from bridge.protocol.messages import ReplyTo
from bridge.protocol.replies import Replies
from bridge.protocol.server_events import RESPONSE_COMPLETED
from bridge.protocol.sessions import Conversations
from bridge.protocol.tool_rounds import ToolTurn
from bridge.protocol.tools import ToolBox

REPLACED_CLOSE_CODE: Final = 1000
SOCKET_REPLACED_REASON: Final = "replaced before the server's 60-minute limit"
RETRY_CLOSE_REASON: Final = "the turn is sent again on a new socket"
# Server errors after which a turn with no output yet is sent again on a new socket.
RETRYABLE_ERRORS: Final = frozenset(
    {"websocket_connection_limit_reached", "previous_response_not_found"}
)


class AskTurns:
    """The ``ask`` part of the core. What it uses of the core is declared here."""

    _connections: dict[str, Connection]
    _backlogs: Backlogs
    _idle: IdleTracker
    _clock: float
    _deferred: list[Action]
    conversations: Conversations
    replies: Replies
    toolbox: ToolBox

    def _refuse(
        self, connection_id: str, rejection: Rejection, reply_to: ReplyTo | None
    ) -> list[Action]:
        raise NotImplementedError

    def _refuse_command(
        self, command: Command, code: str, message: str, reply_to: ReplyTo | None
    ) -> list[Action]:
        raise NotImplementedError

    if TYPE_CHECKING:  # other mixins' (a stub here would hide them)

        def _connect(
            self,
            command: Connect,
            reply_to: ReplyTo | None,
            *,
            on_behalf_of: Ask | Send | None = None,
        ) -> list[Action]: ...

        def _guard_ask(
            self, command: Ask, profile: str, reply_to: ReplyTo | None
        ) -> Checked | list[Action]: ...

    def _ask(self, command: Ask, reply_to: ReplyTo | None) -> list[Action]:
        """A turn: sent at once on an open connection, else after opening one for it."""
        connection_id = command.connection_id
        connection = self._connections.get(connection_id)
        if connection is None:
            return self._open_for(command, reply_to)
        if self._clock - connection.opened_at >= self.conversations.sessions.max_socket_age:
            return self._replace_socket(command, reply_to)
        checked = self._guard_ask(command, connection.profile, reply_to)
        if isinstance(checked, list):
            return checked
        fields = checked.request
        offered = self._offered_tools(connection.profile)
        if offered:
            tools = [*fields.get("tools", []), *self.toolbox.definitions(offered)]
            fields = {**fields, "tools": tools}
            connection.tool_turn = ToolTurn(offered, fields)
        data = self.conversations.request(command, connection.profile, self._clock, fields)
        if not self._backlogs.fits(len(data)):
            self.conversations.ended(connection_id)
            return self._refuse_command(
                command, contract.LIMIT_REACHED, self._backlogs.budget_problem(), reply_to
            )
        self._backlogs.hold(len(data))
        self._idle.request_sent(connection_id)
        connection.turn, connection.turn_reply, connection.turn_output = command, reply_to, False
        actions = [] if command.retry else self.replies.asked(command, reply_to, checked.lowered_to)
        actions.append(SendUpstream(connection_id, data))
        if connection.output is not None and not command.retry:
            actions += connection.output.request_sent(command.request_id)
        return actions

    def _offered_tools(self, profile: str) -> tuple[str, ...]:
        known = self.conversations.profiles.get(profile)
        return known.mqtt_tools if known is not None else ()

    def take_deferred(self) -> list[Action]:
        """What the last :meth:`upstream_event` that returned None asks the driver to do."""
        deferred, self._deferred = self._deferred, []
        return deferred

    def _retried(self, connection: Connection, error: Mapping[str, Any]) -> bool:
        """An ``error`` event (parsed): True if it is held back and its turn, with no
        output yet, is sent again on a new socket."""
        turn = connection.turn
        if turn is None or turn.retry or connection.turn_output:
            return False
        details = error.get("error")
        code = details.get("code") if isinstance(details, dict) else None
        if code not in RETRYABLE_ERRORS:
            return False
        self._deferred.extend(self._retry(connection, turn))
        return True

    def _retry(self, connection: Connection, turn: Ask) -> list[Action]:
        """Close the socket quietly; the turn is then sent again, once, on a new one."""
        connection_id = turn.connection_id
        again = dataclasses.replace(turn, retry=True)
        if self._backlogs.add(connection_id, again, connection.turn_reply, first=True) is not None:
            return []  # no room to wait: the server's error stands (it was held back, though)
        connection.turn = None
        connection.phase = Phase.CLOSING
        connection.retrying = True
        self.conversations.socket_ended(connection_id)
        return [CloseUpstream(connection_id, REPLACED_CLOSE_CODE, RETRY_CLOSE_REASON)]

    def _turn_cut(self, connection: Connection, connection_id: str) -> list[Action]:
        """The socket ended with a turn in flight: send it again, or say it was lost."""
        turn = connection.turn
        if turn is None:
            return []
        if not connection.turn_output and not turn.retry:
            again = dataclasses.replace(turn, retry=True)
            if self._backlogs.add(connection_id, again, connection.turn_reply, first=True) is None:
                connection.retrying = True
                return []
        rejection = rejection_of(
            turn,
            contract.UPSTREAM_LOST,
            "the upstream connection ended during this turn, after part of its answer; ask again",
        )
        return self._refuse(connection_id, rejection, connection.turn_reply)

    def _open_for(self, command: Ask | Send, reply_to: ReplyTo | None) -> list[Action]:
        """Open the id for a command that needs a connection; the command waits for it."""
        connection_id = command.connection_id
        if isinstance(command, Ask):
            opening = Connect(connection_id, command.request_id, command.profile, command.output)
        else:
            opening = Connect(connection_id, command.request_id)
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
        connection.replacing = True
        connection.notice = (REPLACED_CLOSE_CODE, SOCKET_REPLACED_REASON)
        self.conversations.socket_ended(connection_id)
        return [CloseUpstream(connection_id, REPLACED_CLOSE_CODE, SOCKET_REPLACED_REASON)]

    def _turn_ended(self, connection_id: str, event_type: str, response: Mapping[str, Any]) -> None:
        if event_type == RESPONSE_COMPLETED:
            self.conversations.completed(connection_id, response, self._clock)
        else:
            self.conversations.ended(connection_id)
