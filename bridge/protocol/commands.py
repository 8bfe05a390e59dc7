"""The id's connection commands: a feature of the core (:class:`SeedCommands`).

``connect``, ``send`` and ``close`` with the Node-RED node's semantics, and
``status``, which says what the bridge holds for the id. An ``ask`` or an
auto-connecting ``send`` opens its connection through
:meth:`SeedCommands.open_for` as well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.protocol import contract
from bridge.protocol.actions import Action, CloseUpstream, OpenUpstream, SendUpstream
from bridge.protocol.backlogs import Backlogs
from bridge.protocol.connections import Connection, State
from bridge.protocol.contract import Ask, Close, Command, Connect, Send, Status
from bridge.protocol.idle import IdleTracker
from bridge.protocol.messages import Acknowledged, ReplyTo
from bridge.protocol.outputs import DeviceOutputs
from bridge.protocol.replies import Replies
from bridge.protocol.server_events import RESPONSE_CREATE
from bridge.protocol.sessions import Conversations
from bridge.protocol.spending import Spending
from bridge.protocol.topics import Topics

# What carries out each command: a feature names its commands' handlers.
Handlers = dict[type[Command], Callable[[Any, ReplyTo | None], list[Action]]]


class SeedCommands:
    """connect, send, close, status."""

    def __init__(
        self,
        connections: dict[str, Connection],
        backlogs: Backlogs,
        idle: IdleTracker,
        conversations: Conversations,
        replies: Replies,
        topics: Topics,
        *,
        max_connections: int,
        spending: Spending,
        outputs: DeviceOutputs,
    ) -> None:
        self._connections = connections
        self._backlogs = backlogs
        self._idle = idle
        self._conversations = conversations
        self._replies = replies
        self._topics = topics
        self.max_connections = max_connections  # limits.max_connections (a reload sets it)
        self._spending = spending
        self._outputs = outputs

    def handlers(self) -> Handlers:
        return {Connect: self.connect, Send: self.send, Close: self.close, Status: self.status}

    def connect(
        self, command: Connect, reply_to: ReplyTo | None, *, on_behalf_of: Ask | Send | None = None
    ) -> list[Action]:
        """Open a connection for ``command``, or on behalf of an ``ask`` or auto-connecting
        ``send`` (then refusals are that command's, and it is acknowledged instead)."""
        connection_id = command.connection_id
        refused: Command = on_behalf_of or command
        refuse = self._replies.refuse_command
        profile = self._conversations.profile_for(connection_id, command.profile)
        if profile is None:
            message = f"no profile named {command.profile!r} in the configuration"
            return refuse(refused, contract.UNKNOWN_PROFILE, message, reply_to)
        if connection_id in self._connections:
            return refuse(
                refused, contract.ALREADY_OPEN, "the connection is already open", reply_to
            )
        if len(self._connections) >= self.max_connections:
            message = f"the bridge holds its limit of {self.max_connections} connections"
            return refuse(refused, contract.LIMIT_REACHED, message, reply_to)
        announced = on_behalf_of is not None or command.profile is not None
        again = isinstance(on_behalf_of, Ask) and on_behalf_of.retry
        self._outputs.opening(command, profile)
        self._connections[connection_id] = Connection(
            self._topics.events(connection_id),
            command,
            None if on_behalf_of else reply_to,
            profile=profile,
            ack_profile=profile if announced else None,
            state=State.REOPENING if again else State.OPENING,
        )
        self._idle.opened(connection_id)
        return [OpenUpstream(connection_id)]

    def open_for(self, command: Ask | Send, reply_to: ReplyTo | None) -> list[Action]:
        """Open the id for a command that needs a connection; the command waits for it."""
        connection_id = command.connection_id
        if isinstance(command, Ask):
            opening = Connect(connection_id, command.request_id, command.profile, command.output)
        else:
            opening = Connect(connection_id, command.request_id)
        actions = self.connect(opening, reply_to, on_behalf_of=command)
        if connection_id in self._connections:  # opening: the command waits for it
            problem = self._backlogs.add(connection_id, command, reply_to)
            if problem is not None:
                actions += self._replies.refuse_command(
                    command, contract.LIMIT_REACHED, problem, reply_to
                )
        return actions

    def send(self, command: Send, reply_to: ReplyTo | None) -> list[Action]:
        connection_id = command.connection_id
        connection = self._connections.get(connection_id)
        if connection is None and self._conversations.sessions.auto_connect:
            return self.open_for(command, reply_to)
        if connection is None:
            return self._replies.refuse_command(
                command,
                contract.NOT_OPEN,
                "the connection is not open; publish a connect command first",
                reply_to,
            )
        if not self._backlogs.fits(len(command.event)):
            return self._replies.refuse_command(
                command, contract.LIMIT_REACHED, self._backlogs.budget_problem(), reply_to
            )
        guarded = self._spending.guard_send(command, connection.profile, reply_to)
        if isinstance(guarded, list):
            return guarded
        command, lowered_to = guarded
        self._backlogs.hold(len(command.event))
        self._idle.request_sent(connection_id)
        # The acknowledgement is queued before the event goes upstream, so it
        # always comes before the server events the event causes.
        actions = self._replies.sent(command, reply_to, lowered_to)
        actions.append(SendUpstream(connection_id, command.event))
        if command.event_type == RESPONSE_CREATE:
            actions += self._outputs.request_sent(connection_id, command.request_id)
        return actions

    def close(self, command: Close, reply_to: ReplyTo | None) -> list[Action]:
        connection = self._connections.get(command.connection_id)
        if connection is None:
            return self._replies.refuse_command(
                command, contract.NOT_OPEN, "the connection is not open", reply_to
            )
        connection.state = State.CLOSING
        connection.close, connection.close_reply = command, reply_to
        self._conversations.forget(command.connection_id)  # an explicit close ends the memory
        return [CloseUpstream(command.connection_id, command.code, command.reason)]

    def status(self, command: Status, reply_to: ReplyTo | None) -> list[Action]:
        """What the bridge holds for the id, on its events topic (no secrets, no text)."""
        connection_id = command.connection_id
        connection = self._connections.get(connection_id)
        conversation = self._conversations.get(connection_id)
        output = self._outputs.of(connection_id)
        message: dict[str, Any] = {
            "object": contract.OBJECT_STATUS,
            "action": contract.STATUS,
            "connection_id": connection_id,
            "state": connection.phase.value if connection is not None else "closed",
            "profile": connection.profile if connection is not None else None,
            "requests_in_flight": self._idle.in_flight(connection_id),
            "conversation": None
            if conversation is None
            else {"profile": conversation.profile, "turns": len(conversation.transcript)},
            "output_status": output.status if output is not None else None,
        }
        if command.request_id is not None:
            message["request_id"] = command.request_id
        outcome = Acknowledged(connection_id, contract.STATUS)
        return self._replies.say(connection_id, message, contract.STATUS, outcome, reply_to)
