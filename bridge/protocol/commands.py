"""The seed's commands in the core: a mixin of :class:`~bridge.protocol.core.BridgeCore`.

``connect``, ``send`` and ``close`` with the Node-RED node's semantics; an
``ask`` or an auto-connecting ``send`` opens its connection through
:meth:`SeedCommands._connect` as well. What it uses of the core is declared here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.protocol import contract
from bridge.protocol.actions import Action, CloseUpstream, OpenUpstream, SendUpstream
from bridge.protocol.backlogs import Backlogs
from bridge.protocol.connections import Connection, Phase
from bridge.protocol.contract import Ask, Close, Command, Connect, Send, Topics
from bridge.protocol.device_output import DeviceOutput
from bridge.protocol.idle import IdleTracker
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.messages import ReplyTo
from bridge.protocol.replies import Replies
from bridge.protocol.server_events import RESPONSE_CREATE
from bridge.protocol.sessions import Conversations


class SeedCommands:
    """connect, send, close."""

    _connections: dict[str, Connection]
    _backlogs: Backlogs
    _idle: IdleTracker
    conversations: Conversations
    limits: LimitsConfig
    replies: Replies
    topics: Topics

    if TYPE_CHECKING:  # the core's and the other mixins'

        def _refuse_command(
            self, command: Command, code: str, message: str, reply_to: ReplyTo | None
        ) -> list[Action]: ...

        def _output_of(self, command: Connect, profile: str) -> DeviceOutput | None: ...

        def _open_for(self, command: Ask | Send, reply_to: ReplyTo | None) -> list[Action]: ...

        def _guard_send(
            self, command: Send, reply_to: ReplyTo | None
        ) -> tuple[Send, int | None] | list[Action]: ...

    def _connect(
        self, command: Connect, reply_to: ReplyTo | None, *, on_behalf_of: Ask | Send | None = None
    ) -> list[Action]:
        """Open a connection for ``command``, or on behalf of an ``ask`` or auto-connecting
        ``send`` (then refusals are that command's, and it is acknowledged instead)."""
        connection_id = command.connection_id
        refused: Command = on_behalf_of or command
        profile = self.conversations.profile_for(connection_id, command.profile)
        if profile is None:
            message = f"no profile named {command.profile!r} in the configuration"
            return self._refuse_command(refused, contract.UNKNOWN_PROFILE, message, reply_to)
        if connection_id in self._connections:
            return self._refuse_command(
                refused, contract.ALREADY_OPEN, "the connection is already open", reply_to
            )
        if len(self._connections) >= self.limits.max_connections:
            return self._refuse_command(
                refused,
                contract.LIMIT_REACHED,
                f"the bridge holds its limit of {self.limits.max_connections} connections",
                reply_to,
            )
        self._connections[connection_id] = Connection(
            self.topics.events(connection_id),
            command,
            None if on_behalf_of else reply_to,
            profile=profile,
            announce_profile=on_behalf_of is not None or command.profile is not None,
            quiet=isinstance(on_behalf_of, Ask) and on_behalf_of.retry,
            output=self._output_of(command, profile),
        )
        self._idle.opened(connection_id)
        return [OpenUpstream(connection_id)]

    def _send(self, command: Send, reply_to: ReplyTo | None) -> list[Action]:
        connection_id = command.connection_id
        if connection_id not in self._connections and self.conversations.sessions.auto_connect:
            return self._open_for(command, reply_to)
        if connection_id not in self._connections:
            return self._refuse_command(
                command,
                contract.NOT_OPEN,
                "the connection is not open; publish a connect command first",
                reply_to,
            )
        if not self._backlogs.fits(len(command.event)):
            return self._refuse_command(
                command, contract.LIMIT_REACHED, self._backlogs.budget_problem(), reply_to
            )
        guarded = self._guard_send(command, reply_to)
        if isinstance(guarded, list):
            return guarded
        command, lowered_to = guarded
        self._backlogs.hold(len(command.event))
        self._idle.request_sent(connection_id)
        # The acknowledgement is queued before the event goes upstream, so it
        # always comes before the server events the event causes.
        actions = self.replies.sent(command, reply_to, lowered_to)
        actions.append(SendUpstream(connection_id, command.event))
        output = self._connections[connection_id].output
        if output is not None and command.event_type == RESPONSE_CREATE:
            actions += output.request_sent(command.request_id)
        return actions

    def _close(self, command: Close, reply_to: ReplyTo | None) -> list[Action]:
        connection = self._connections.get(command.connection_id)
        if connection is None:
            return self._refuse_command(
                command, contract.NOT_OPEN, "the connection is not open", reply_to
            )
        connection.phase = Phase.CLOSING
        connection.close, connection.close_reply = command, reply_to
        self.conversations.forget(command.connection_id)  # an explicit close ends the memory
        return [CloseUpstream(command.connection_id, command.code, command.reason)]
