"""Device output in the core: a mixin of :class:`~bridge.protocol.core.BridgeCore`.

Which connections get a :class:`~bridge.protocol.device_output.DeviceOutput`
(those whose ``output`` options ask for more than events), and the facts it is
told. A connection without one never reaches this code: its events take the
plain hot path. The output of a connection outlives a socket the bridge
replaces (a retried turn, the 60-minute limit), so a turn has one answer and
the status goes on. It outlives any socket while the id's conversation lives:
the next ``ask`` after a drop or an idle close publishes as the first one did
(unless it brings ``output`` options of its own). A retained status is
cleared when the id's memory ends (its connection ends with no conversation
kept, an explicit ``close``, or the conversation expires).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Final

from bridge.protocol import contract, server_events
from bridge.protocol.actions import Action
from bridge.protocol.connections import Connection
from bridge.protocol.contract import Connect
from bridge.protocol.device_output import DeviceOutput
from bridge.protocol.messages import Publish
from bridge.protocol.output_options import OutputConfig
from bridge.protocol.server_events import RESPONSE_COMPLETED
from bridge.protocol.sessions import Conversations

# What Home Assistant's assistant entities need, whatever the id's profile says.
ASSISTANT_OUTPUT: Final = {"answer": True, "status": True}


class DeviceOutputs:
    """The device-output part of the core. What it uses of the core is declared here."""

    _connections: dict[str, Connection]
    conversations: Conversations
    qos: int
    topics: contract.Topics
    assistants: Collection[str]
    # Outputs waiting for the connection that replaces their socket, and the outputs of
    # ids whose socket is gone but whose conversation (and retained status) lives on.
    _reopening: dict[str, DeviceOutput]
    _kept: dict[str, DeviceOutput]
    _held_event: Publish | None  # a response.completed a tool round holds (ToolRounds)

    def _output_of(self, command: Connect, profile: str) -> DeviceOutput | None:
        """The output of a connection being opened (the one it replaces, if any)."""
        connection_id = command.connection_id
        kept = self._kept.pop(connection_id, None)
        carried = self._reopening.pop(connection_id, None) or kept
        if carried is not None and (command.output is None or carried is not kept):
            return carried
        known = self.conversations.profiles.get(profile)
        options = known.output if known is not None else OutputConfig()
        if connection_id in self.assistants:
            options = options.merged(ASSISTANT_OUTPUT)
        options = options.merged(command.output)
        if not options.shaped:
            return None
        return DeviceOutput(connection_id, self.topics.prefix, options, self.qos)

    def upstream_event(self, connection_id: str, raw: bytes) -> Publish | None:
        raise NotImplementedError

    if TYPE_CHECKING:  # another mixin's (a stub here would hide it)

        def take_deferred(self) -> list[Action]: ...

    def shaped_event(self, connection_id: str, raw: bytes) -> list[Action]:
        """A server event of a shaped connection: what to publish for it, text and all.

        The caller makes sure the buffer has room first: the relayed event in the
        list must not be refused (the output would have taken it already).
        """
        message = self.upstream_event(connection_id, raw)
        output = self._connections[connection_id].output
        if message is None:
            actions, held = self.take_deferred(), self._held_event
            self._held_event = None
            if held is None or output is None or not actions or actions[0] is not held:
                return actions
            return output.event(held, RESPONSE_COMPLETED, goes_on=True) + actions[1:]
        if output is None or not message.relayed:
            return [message]
        event_type = server_events.server_event_type(message.payload) or ""
        return output.event(message, event_type)

    def shaped(self, connection_id: str) -> bool:
        """The connection's events take :meth:`shaped_event`, not ``upstream_event``."""
        connection = self._connections.get(connection_id)
        return connection is not None and connection.output is not None

    def output_due(self, connection_id: str) -> list[Action]:
        """An :class:`~bridge.protocol.actions.ArmTimer` for this id went off."""
        connection = self._connections.get(connection_id)
        if connection is None or connection.output is None:
            return []  # the connection ended since: nothing is held
        return connection.output.due()

    def _output_closed(
        self, connection_id: str, output: DeviceOutput | None, code: int, reason: str
    ) -> list[Action]:
        """The socket of a connection ended, and no new one is coming for it."""
        if output is None:
            return []
        actions = output.ended(
            contract.UPSTREAM_LOST, f"the upstream connection ended: {code} {reason}".strip()
        )
        if connection_id in self.conversations:
            self._kept[connection_id] = output
            return actions
        return actions + output.cleared()

    def _output_reopens(self, connection: Connection, connection_id: str) -> None:
        """The socket ended, and a new one is opened for the same conversation."""
        if connection.output is not None:
            self._reopening[connection_id] = connection.output

    def _output_not_reopened(self, connection_id: str, code: int, reason: str) -> list[Action]:
        """A socket was to be replaced but no connection was opened (refused, shutdown)."""
        output = self._reopening.pop(connection_id, None)
        return self._output_closed(connection_id, output, code, reason)

    def _output_sweep(self) -> list[Action]:
        """Forget the outputs of ids whose conversation has ended; clear their status."""
        gone = [cid for cid in self._kept if cid not in self.conversations]
        actions: list[Action] = []
        for connection_id in gone:
            actions += self._kept.pop(connection_id).cleared()
        return actions
