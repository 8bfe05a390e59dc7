"""``ask`` turns: a feature of the core (:class:`AskTurns`).

A turn is sent at once on an open connection, or waits for the connection it
opens; a socket near the server's age limit is replaced first. A turn with no
output yet is sent again, once, on a new socket when the server says so
(a retryable error) or the socket ends. What a turn sends, and what the
conversation remembers, is :mod:`bridge.protocol.sessions`; its tool loop is
:mod:`bridge.protocol.tool_rounds`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

from bridge.protocol import contract
from bridge.protocol.actions import Action, CloseUpstream, SendUpstream
from bridge.protocol.backlogs import Backlogs
from bridge.protocol.commands import Handlers, SeedCommands
from bridge.protocol.connections import Clock, Connection, State
from bridge.protocol.contract import Ask, rejection_of
from bridge.protocol.facts import RequestEnd
from bridge.protocol.idle import IdleTracker
from bridge.protocol.messages import ReplyTo
from bridge.protocol.outputs import DeviceOutputs
from bridge.protocol.replies import Replies
from bridge.protocol.server_events import RESPONSE_COMPLETED
from bridge.protocol.sessions import Conversations
from bridge.protocol.spending import Spending
from bridge.protocol.tool_rounds import ToolRounds, TurnBroken

REPLACED_CLOSE_CODE: Final = 1000
SOCKET_REPLACED_REASON: Final = "replaced before the server's 60-minute limit"
RETRY_CLOSE_REASON: Final = "the turn is sent again on a new socket"
# Server errors after which a turn with no output yet is sent again on a new socket.
RETRYABLE_ERRORS: Final = frozenset(
    {"websocket_connection_limit_reached", "previous_response_not_found"}
)


@dataclass(slots=True)
class Turn:
    """The ``ask`` turn in flight on an id's socket, and whether its output has been
    relayed (before that, a failure sends it again on a new socket; after, it is lost)."""

    ask: Ask
    reply_to: ReplyTo | None
    output: bool = False


class AskTurns:
    """The ``ask`` turns of every id."""

    def __init__(
        self,
        connections: dict[str, Connection],
        backlogs: Backlogs,
        idle: IdleTracker,
        clock: Clock,
        conversations: Conversations,
        replies: Replies,
        *,
        seed: SeedCommands,
        spending: Spending,
        tools: ToolRounds,
        outputs: DeviceOutputs,
    ) -> None:
        self._connections = connections
        self._backlogs = backlogs
        self._idle = idle
        self._clock = clock
        self._conversations = conversations
        self._replies = replies
        self._seed = seed
        self._spending = spending
        self._tools = tools
        self._outputs = outputs
        self.turns: dict[str, Turn] = {}  # the turn in flight, per id (read on the hot path)

    def handlers(self) -> Handlers:
        return {Ask: self.ask}

    def ask(self, command: Ask, reply_to: ReplyTo | None) -> list[Action]:
        """A turn: sent at once on an open connection, else after opening one for it."""
        connection_id = command.connection_id
        connection = self._connections.get(connection_id)
        if connection is None:
            return self._seed.open_for(command, reply_to)
        if self._clock.now - connection.opened_at >= self._conversations.sessions.max_socket_age:
            return self._replace_socket(command, reply_to)
        clash = self._tools.clash(connection.profile, command.tools) if command.tools else None
        if clash is not None:
            problem = f"tools: {clash!r} is one of the profile's MQTT tools; name yours differently"
            return self._replies.refuse_command(
                command, contract.INVALID_COMMAND, problem, reply_to
            )
        checked = self._spending.guard_ask(command, connection.profile, reply_to)
        if isinstance(checked, list):
            return checked
        request = checked.request
        if command.tools:  # the client's own tools, offered beside the profile's
            request = {**request, "tools": [*request.get("tools", []), *command.tools]}
        fields = self._tools.offer(connection_id, connection.profile, request)
        data = self._conversations.request(command, connection.profile, self._clock.now, fields)
        if not self._backlogs.fits(len(data)):
            self._conversations.ended(connection_id)
            return self._replies.refuse_command(
                command, contract.LIMIT_REACHED, self._backlogs.budget_problem(), reply_to
            )
        self._backlogs.hold(len(data))
        self._idle.request_sent(connection_id)
        self.turns[connection_id] = Turn(command, reply_to)
        actions = (
            [] if command.retry else self._replies.asked(command, reply_to, checked.lowered_to)
        )
        actions.append(SendUpstream(connection_id, data))
        if not command.retry:
            actions += self._outputs.request_sent(connection_id, command.request_id)
        return actions

    def retried(self, connection_id: str, end: RequestEnd) -> list[Action] | None:
        """An ``error`` event: the actions when it is held back and its turn, with no
        output yet, is sent again on a new socket; None when it stands."""
        turn = self.turns.get(connection_id)
        if turn is None or turn.ask.retry or turn.output:
            return None
        if end.error_code not in RETRYABLE_ERRORS:
            return None
        return self._retry(self._connections[connection_id], turn)

    def _retry(self, connection: Connection, turn: Turn) -> list[Action]:
        """Close the socket quietly; the turn is then sent again, once, on a new one."""
        connection_id = turn.ask.connection_id
        again = dataclasses.replace(turn.ask, retry=True)
        if self._backlogs.add(connection_id, again, turn.reply_to, first=True) is not None:
            return []  # no room to wait: the server's error stands (it was held back, though)
        del self.turns[connection_id]
        connection.state = State.RETRYING
        self._conversations.socket_ended(connection_id)
        return [CloseUpstream(connection_id, REPLACED_CLOSE_CODE, RETRY_CLOSE_REASON)]

    def cut(self, connection_id: str) -> tuple[list[Action], bool]:
        """The socket ended with the id's turn in flight, if any: what to say that it was
        lost, or True when it waits to be sent again on a new socket."""
        turn = self.turns.pop(connection_id, None)
        if turn is None:
            return [], False
        if not turn.output and not turn.ask.retry:
            again = dataclasses.replace(turn.ask, retry=True)
            if self._backlogs.add(connection_id, again, turn.reply_to, first=True) is None:
                return [], True
        rejection = rejection_of(
            turn.ask,
            contract.UPSTREAM_LOST,
            "the upstream connection ended during this turn, after part of its answer; ask again",
        )
        return self._replies.refuse(connection_id, rejection, turn.reply_to), False

    def _replace_socket(self, command: Ask, reply_to: ReplyTo | None) -> list[Action]:
        """Close a socket near the server's age limit; the turn then opens a new one.

        The client sees ``disconnected`` (1000), then the connect ack and the
        turn, continued by replaying the conversation (or by id when stored).
        """
        connection_id = command.connection_id
        problem = self._backlogs.add(connection_id, command, reply_to, first=True)
        if problem is not None:
            return self._replies.refuse_command(command, contract.LIMIT_REACHED, problem, reply_to)
        connection = self._connections[connection_id]
        connection.state = State.REPLACING
        connection.notice = (REPLACED_CLOSE_CODE, SOCKET_REPLACED_REASON)
        self._conversations.socket_ended(connection_id)
        return [CloseUpstream(connection_id, REPLACED_CLOSE_CODE, SOCKET_REPLACED_REASON)]

    def over(self, connection_id: str, end: RequestEnd | None) -> None:
        """The request in flight ended (None: with an end that is not JSON): the memory
        of its turn."""
        self.turns.pop(connection_id, None)
        if connection_id not in self._conversations:  # not an `ask` session
            return
        if end is not None and end.type == RESPONSE_COMPLETED:
            self._conversations.completed(connection_id, end.response, self._clock.now)
        else:
            self._conversations.ended(connection_id)

    def broken(self, connection_id: str, broken: TurnBroken) -> list[Action]:
        """End the turn with an error the client sees; the conversation is as it was."""
        turn = self.turns.pop(connection_id, None)
        self._conversations.broken_off(connection_id)
        self._idle.request_ended(connection_id)
        actions = self._outputs.request_error(connection_id, broken.code, broken.message)
        if turn is not None:
            rejection = dataclasses.replace(
                rejection_of(turn.ask, broken.code, broken.message), resets_at=broken.resets_at
            )
            actions += self._replies.refuse(connection_id, rejection, turn.reply_to)
        return actions

    def forget(self, connection_id: str) -> None:
        """The id's socket is gone, its turn with it."""
        self.turns.pop(connection_id, None)
