"""Device output: a feature of the core (:class:`DeviceOutputs`).

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
from typing import Final

from bridge.protocol import contract
from bridge.protocol.actions import Action
from bridge.protocol.contract import Connect
from bridge.protocol.device_output import DeviceOutput
from bridge.protocol.facts import RequestEnd
from bridge.protocol.messages import Publish
from bridge.protocol.output_options import OutputConfig
from bridge.protocol.sessions import Conversations
from bridge.protocol.topics import Topics

# What Home Assistant's assistant entities need, whatever the id's profile says.
ASSISTANT_OUTPUT: Final = {"answer": True, "status": True}


class DeviceOutputs:
    """The device output of every connection that has one."""

    def __init__(
        self, conversations: Conversations, topics: Topics, qos: int, assistants: Collection[str]
    ) -> None:
        self._conversations = conversations
        self._topics = topics
        self._qos = qos
        self.assistants = frozenset(assistants)  # ids with Home Assistant assistant entities
        self._outputs: dict[str, DeviceOutput] = {}  # of the ids' current sockets
        # Outputs waiting for the connection that replaces their socket, and the outputs of
        # ids whose socket is gone but whose conversation (and retained status) lives on.
        self._reopening: dict[str, DeviceOutput] = {}
        self._kept: dict[str, DeviceOutput] = {}

    def of(self, connection_id: str) -> DeviceOutput | None:
        return self._outputs.get(connection_id)

    def shaped(self, connection_id: str) -> bool:
        """The connection's events take the shaping path, not the plain one."""
        return connection_id in self._outputs

    # Facts ---------------------------------------------------------------------------

    def opening(self, command: Connect, profile: str) -> None:
        """A connection is being opened: its output (the one it replaces, if any)."""
        connection_id = command.connection_id
        kept = self._kept.pop(connection_id, None)
        carried = self._reopening.pop(connection_id, None) or kept
        if carried is not None and (command.output is None or carried is not kept):
            self._outputs[connection_id] = carried
            return
        known = self._conversations.profiles.get(profile)
        options = known.output if known is not None else OutputConfig()
        if connection_id in self.assistants:
            options = options.merged(ASSISTANT_OUTPUT)
        options = options.merged(command.output)
        if options.shaped:
            self._outputs[connection_id] = DeviceOutput(
                connection_id, self._topics, options, self._qos
            )

    def opened(self, connection_id: str) -> list[Action]:
        output = self._outputs.get(connection_id)
        return output.opened() if output is not None else []

    def request_sent(self, connection_id: str, request_id: str | None) -> list[Action]:
        output = self._outputs.get(connection_id)
        return output.request_sent(request_id) if output is not None else []

    def request_error(self, connection_id: str, code: str, message: str) -> list[Action]:
        output = self._outputs.get(connection_id)
        return output.request_error(code, message) if output is not None else []

    def event(
        self,
        connection_id: str,
        message: Publish,
        event_type: str,
        end: RequestEnd | None = None,
        *,
        goes_on: bool = False,
    ) -> list[Action]:
        """A server event was relayed as ``message``: what to publish instead of it."""
        output = self._outputs.get(connection_id)
        if output is None:
            return [message]
        return output.event(message, event_type, end, goes_on=goes_on)

    def due(self, connection_id: str) -> list[Action]:
        """An :class:`~bridge.protocol.actions.ArmTimer` for this id went off."""
        output = self._outputs.get(connection_id)
        if output is None:
            return []  # the connection ended since: nothing is held
        return output.due()

    def closed(self, connection_id: str, code: int, reason: str) -> list[Action]:
        """The socket of a connection ended, and no new one is coming for it."""
        return self._ended(connection_id, self._outputs.pop(connection_id, None), code, reason)

    def reopens(self, connection_id: str) -> None:
        """The socket ended, and a new one is opened for the same conversation."""
        output = self._outputs.pop(connection_id, None)
        if output is not None:
            self._reopening[connection_id] = output

    def not_reopened(self, connection_id: str, code: int, reason: str) -> list[Action]:
        """A socket was to be replaced but no connection was opened (refused, shutdown)."""
        return self._ended(connection_id, self._reopening.pop(connection_id, None), code, reason)

    def sweep(self) -> list[Action]:
        """Forget the outputs of ids whose conversation has ended; clear their status."""
        gone = [cid for cid in self._kept if cid not in self._conversations]
        actions: list[Action] = []
        for connection_id in gone:
            actions += self._kept.pop(connection_id).cleared()
        return actions

    def _ended(
        self, connection_id: str, output: DeviceOutput | None, code: int, reason: str
    ) -> list[Action]:
        if output is None:
            return []
        actions = output.ended(
            contract.UPSTREAM_LOST, f"the upstream connection ended: {code} {reason}".strip()
        )
        if connection_id in self._conversations:
            self._kept[connection_id] = output
            return actions
        return actions + output.cleared()
