"""The tool loop of ``ask`` turns: a mixin of :class:`~bridge.protocol.core.BridgeCore`.

When a response of an ``ask`` turn whose profile offers MQTT tools completes
with ``function_call`` items for them, the turn goes on: each call's arguments
are checked against its schema, valid calls are published to their fixed
topics, replies are awaited (each with its timeout), and once every call has
exactly one output the conversation continues with them. The loop ends with a
response that calls no bridge tool, or with ``tool_rounds_exceeded`` after
``sessions.max_tool_rounds`` rounds. Calls of tools the bridge does not run
(a profile's own request tools) are relayed, and answered "not available" when
they come with bridge calls, so no call is ever left without an output.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from bridge.protocol.actions import Action, SendUpstream, ToolDeadline
from bridge.protocol.backlogs import Backlogs
from bridge.protocol.connections import Connection
from bridge.protocol.contract import Rejection, Topics, rejection_of
from bridge.protocol.idle import IdleTracker
from bridge.protocol.messages import Publish, ReplyTo, ResponseCompleted, ToolCalled
from bridge.protocol.replies import encode
from bridge.protocol.server_events import DIRECTION_SERVER, RESPONSE_COMPLETED, user_properties
from bridge.protocol.sessions import Conversations
from bridge.protocol.tools import Call, Rendered, ToolBox, reply_text

TOOL_ROUNDS_EXCEEDED: Final = "tool_rounds_exceeded"
OBJECT_TOOL_CALL: Final = "response.websocket.tool_call"
NOT_AVAILABLE: Final = "this tool is not available: it was not called"


@dataclass(slots=True)
class ToolTurn:
    """The tool loop of one ``ask`` turn."""

    offered: tuple[str, ...]
    fields: Mapping[str, Any]  # the turn's request fields, tools included
    rounds: int = 0
    calls: list[Call] = field(default_factory=list)  # of the round in progress, in order
    outputs: dict[str, str] = field(default_factory=dict)  # call_id -> output
    waiting: dict[str, str] = field(default_factory=dict)  # call_id -> reply topic


class ToolRounds:
    """The tool part of the core. What it uses of the core is declared here."""

    _connections: dict[str, Connection]
    _backlogs: Backlogs
    _deferred: list[Action]
    _held_event: Publish | None
    _idle: IdleTracker
    conversations: Conversations
    toolbox: ToolBox
    topics: Topics
    qos: int
    v5: bool
    # Calls waiting for a reply, by reply topic in publish order, and by correlation data.
    _waits_by_topic: dict[str, list[tuple[str, str]]]
    _waits_by_correlation: dict[bytes, tuple[str, str]]

    if TYPE_CHECKING:  # the core's own

        def _refuse(
            self, connection_id: str, rejection: Rejection, reply_to: ReplyTo | None
        ) -> list[Action]: ...

    # Facts ---------------------------------------------------------------------------

    def tool_reply(
        self, topic: str, payload: bytes, retained: bool, correlation: bytes | None
    ) -> list[Action]:
        """A message arrived on a tool's reply topic (a retained one is old news)."""
        if retained:
            return []
        waiter = self._waits_by_correlation.get(correlation) if correlation else None
        if waiter is None:
            waiters = self._waits_by_topic.get(topic)
            waiter = waiters[0] if waiters else None
        if waiter is None:
            return []
        connection_id, call_id = waiter
        return self._call_done(connection_id, call_id, reply_text(payload), "replied")

    def tool_timed_out(self, connection_id: str, call_id: str) -> list[Action]:
        """A :class:`ToolDeadline` went off (nothing, if the call was answered since)."""
        turn = self._tool_turn(connection_id)
        if turn is None or call_id not in turn.waiting:
            return []
        timeout = self._timeout_of(turn, call_id)
        return self._call_done(
            connection_id, call_id, f"no reply within {timeout:g} s (timeout)", "timeout"
        )

    # The loop --------------------------------------------------------------------------

    def _tool_round(
        self, connection: Connection, response: Mapping[str, Any]
    ) -> list[Action] | None:
        """A response of a tool turn completed: the round's actions, or None if the turn
        ends here (no bridge tool was called)."""
        turn = connection.tool_turn
        assert turn is not None
        connection_id = connection.connect.connection_id
        calls = [_call(item) for item in response.get("output") or [] if _is_call(item)]
        if not any(call.name in turn.offered for call in calls):
            return None
        if turn.rounds >= self.conversations.sessions.max_tool_rounds:
            return self._tool_turn_failed(
                connection,
                TOOL_ROUNDS_EXCEEDED,
                f"the model still called tools after {turn.rounds} rounds "
                "(sessions.max_tool_rounds); the turn ends without an answer",
            )
        turn.rounds += 1
        turn.calls, turn.outputs, turn.waiting = calls, {}, {}
        response_id = response.get("id")
        self.conversations.tool_round(
            connection_id, response_id if isinstance(response_id, str) else None
        )
        actions: list[Action] = []
        for call in calls:
            actions += self._run(connection_id, turn, call)
        return actions + self._maybe_continue(connection_id, turn)

    def _run(self, connection_id: str, turn: ToolTurn, call: Call) -> list[Action]:
        if call.name not in turn.offered:
            turn.outputs[call.call_id] = NOT_AVAILABLE
            return []
        rendered = self.toolbox.render(call)
        tool = self.toolbox.tools[call.name]
        if not isinstance(rendered, Rendered):
            turn.outputs[call.call_id] = rendered
            return [
                self._said(
                    connection_id, call, tool.publish.topic, "invalid_arguments", error=rendered
                )
            ]
        publish = Publish(rendered.topic, rendered.payload, rendered.qos, retain=rendered.retain)
        if tool.reply is None:
            turn.outputs[call.call_id] = json.dumps(
                {"status": "published", "topic": rendered.topic}
            )
            return [publish, self._said(connection_id, call, rendered.topic, "published")]
        turn.waiting[call.call_id] = tool.reply.topic
        self._waits_by_topic.setdefault(tool.reply.topic, []).append((connection_id, call.call_id))
        if self.v5:
            correlation = f"{connection_id}\x1f{call.call_id}".encode()
            self._waits_by_correlation[correlation] = (connection_id, call.call_id)
            publish = dataclasses.replace(
                publish, response_topic=tool.reply.topic, correlation_data=correlation
            )
        called = ToolCalled(
            connection_id, call.name, call.call_id, rendered.topic, "published", call.arguments
        )
        publish = dataclasses.replace(publish, outcome=called)
        return [publish, ToolDeadline(connection_id, call.call_id, tool.reply.timeout)]

    def _call_done(
        self, connection_id: str, call_id: str, output: str, status: str
    ) -> list[Action]:
        turn = self._tool_turn(connection_id)
        if turn is None:
            return []
        topic = turn.waiting.pop(call_id, "")
        self._forget_wait(connection_id, call_id, topic)
        turn.outputs[call_id] = output
        call = next(call for call in turn.calls if call.call_id == call_id)
        said = self._said(
            connection_id,
            call,
            self.toolbox.tools[call.name].publish.topic,
            status,
            **({"output": output} if status == "replied" else {}),
        )
        return [said, *self._maybe_continue(connection_id, turn)]

    def _maybe_continue(self, connection_id: str, turn: ToolTurn) -> list[Action]:
        """Once every call of the round has its output, the turn goes on with them."""
        if turn.waiting:
            return []
        calls = [
            {
                "type": "function_call",
                "call_id": c.call_id,
                "name": c.name,
                "arguments": c.arguments,
            }
            for c in turn.calls
        ]
        outputs = [
            {
                "type": "function_call_output",
                "call_id": c.call_id,
                "output": turn.outputs[c.call_id],
            }
            for c in turn.calls
        ]
        data = self.conversations.continuation(connection_id, turn.fields, calls, outputs)
        if data is None:
            return []
        self._backlogs.hold(len(data))
        return [SendUpstream(connection_id, data)]

    def _tool_turn_failed(self, connection: Connection, code: str, message: str) -> list[Action]:
        """End the turn with an error the client sees; the conversation is as it was."""
        connection_id = connection.connect.connection_id
        turn, ask = connection.tool_turn, connection.turn
        self._tools_ended(connection)
        self.conversations.broken_off(connection_id)
        self._idle.request_ended(connection_id)
        connection.turn = None
        actions: list[Action] = []
        if connection.output is not None:
            actions += connection.output.request_error(code, message)
        if ask is not None and turn is not None:
            actions += self._refuse(
                connection_id, rejection_of(ask, code, message), connection.turn_reply
            )
        return actions

    def _tools_ended(self, connection: Connection) -> None:
        """The tool turn is over (answered, failed, socket gone): forget its waits."""
        turn, connection.tool_turn = connection.tool_turn, None
        if turn is None:
            return
        connection_id = connection.connect.connection_id
        for call_id, topic in turn.waiting.items():
            self._forget_wait(connection_id, call_id, topic)

    def _hold(
        self, connection: Connection, completed: ResponseCompleted, going_on: list[Action]
    ) -> None:
        """The response.completed that starts a tool round: published (not as a relayed
        event: it must not be refused for room) ahead of the round's actions, which
        :meth:`take_deferred` hands out. A device output sees it as no end of a request."""
        connection_id = connection.connect.connection_id
        properties = (
            user_properties(connection_id, DIRECTION_SERVER, RESPONSE_COMPLETED) if self.v5 else ()
        )
        held = Publish(
            connection.events_topic, completed.raw, self.qos, properties, outcome=completed
        )
        self._held_event = held
        self._deferred = [held, *going_on]

    # Internals -------------------------------------------------------------------------

    def _tool_turn(self, connection_id: str) -> ToolTurn | None:
        connection = self._connections.get(connection_id)
        return connection.tool_turn if connection is not None else None

    def _timeout_of(self, turn: ToolTurn, call_id: str) -> float:
        call = next(call for call in turn.calls if call.call_id == call_id)
        reply = self.toolbox.tools[call.name].reply
        return reply.timeout if reply is not None else 0.0

    def _forget_wait(self, connection_id: str, call_id: str, topic: str) -> None:
        waiters = self._waits_by_topic.get(topic)
        if waiters is not None and (connection_id, call_id) in waiters:
            waiters.remove((connection_id, call_id))
            if not waiters:
                del self._waits_by_topic[topic]
        self._waits_by_correlation.pop(f"{connection_id}\x1f{call_id}".encode(), None)

    def _said(
        self, connection_id: str, call: Call, topic: str, status: str, **extra: str
    ) -> Publish:
        """The bridge's message about one executed call, on the id's events topic."""
        message = {
            "object": OBJECT_TOOL_CALL,
            "connection_id": connection_id,
            "name": call.name,
            "call_id": call.call_id,
            "topic": topic,
            "status": status,
            **extra,
        }
        called = ToolCalled(connection_id, call.name, call.call_id, topic, status, call.arguments)
        return Publish(self.topics.events(connection_id), encode(message), self.qos, outcome=called)


def _is_call(item: object) -> bool:
    return isinstance(item, dict) and item.get("type") == "function_call"


def _call(item: dict[str, Any]) -> Call:
    arguments = item.get("arguments")
    return Call(
        str(item.get("call_id", "")),
        str(item.get("name", "")),
        arguments if isinstance(arguments, str) else json.dumps(arguments),
    )
