"""Server events in the core (:class:`ServerEvents`): the relay's hot path.

Every server event passes :meth:`ServerEvents.upstream_event`: its ``type``
is read off its start by
:func:`~bridge.protocol.server_events.server_event_type` (with the cheap checks
of a frame), and it is published as it came: one :class:`Publish`, nothing
allocated besides, nothing awaited. The events the bridge acts on, the ends
of requests (``response.completed``, ``.incomplete``, ``.failed``,
``error``), are parsed in full, once, into a
:class:`~bridge.protocol.facts.RequestEnd` that every feature reads: the
budgets, the tool loop, the conversation, the retry of an ``ask`` turn, the
device output. One that is not JSON is not relayed: the request it ends ends
with ``invalid_server_event`` (with the ``ask`` turn's request id), and a
response counts by its size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.errors import InvalidState
from bridge.protocol import server_events
from bridge.protocol.actions import Action
from bridge.protocol.connections import Connection
from bridge.protocol.contract import ASK, INVALID_SERVER_EVENT, Rejection
from bridge.protocol.facts import RequestEnd, read_end
from bridge.protocol.guardrails import unreadable_usage
from bridge.protocol.idle import IdleTracker
from bridge.protocol.messages import (
    Outcome,
    Publish,
    ResponseCompleted,
    UsageDoubted,
    relayed_event,
)
from bridge.protocol.outputs import DeviceOutputs
from bridge.protocol.redaction import Redactor
from bridge.protocol.replies import Replies, invalid_frame_message
from bridge.protocol.server_events import (
    DIRECTION_SERVER,
    OUTPUT_EVENT_PREFIXES,
    REQUEST_ENDING_EVENTS,
    RESPONSE_COMPLETED,
    RESPONSE_ENDINGS,
    SCRUBBED_EVENT_TYPES,
)
from bridge.protocol.spending import Spending
from bridge.protocol.tool_rounds import ToolRounds, TurnBroken
from bridge.protocol.turns import AskTurns


@dataclass(slots=True)
class _Ended:
    """What the end of a request leads to: the event as relayed (None: not relayed), and
    what follows it; ``goes_on``: the turn goes on (a tool round), the event is no end."""

    event: Publish | None
    actions: list[Action] = field(default_factory=list)
    goes_on: bool = False
    end: RequestEnd | None = None


class ServerEvents:
    """Server events of every connection: relayed, and the ends of requests acted on."""

    def __init__(
        self,
        connections: dict[str, Connection],
        idle: IdleTracker,
        replies: Replies,
        redactor: Redactor,
        *,
        qos: int,
        v5: bool,
        ask: AskTurns,
        spending: Spending,
        tools: ToolRounds,
        outputs: DeviceOutputs,
    ) -> None:
        self._connections = connections
        self._idle = idle
        self._replies = replies
        self.redactor = redactor
        self._qos = qos
        self._v5 = v5
        self._ask = ask
        self._spending = spending
        self._tools = tools
        self._outputs = outputs
        self._turns = ask.turns  # read on the hot path: whether a turn's output began

    def upstream_event(self, connection_id: str, raw: bytes) -> Publish | list[Action]:
        """A server event arrived: the hot path. A Publish: the one message to publish
        (a relayed event, or the error that stands for a frame that is not one); a list:
        every action the event leads to (an end held back, a tool round, a turn sent
        again, an end that is not JSON answered)."""
        connection = self._connections.get(connection_id)
        if connection is None:
            raise InvalidState(f"event for unknown connection {connection_id!r}")
        event_type = server_events.server_event_type(raw)
        if event_type is None:
            claimed = server_events.claimed_type(raw)
            if claimed in REQUEST_ENDING_EVENTS:
                return self._unreadable_end(connection, claimed, raw)
            return self._replies.invalid_server_event(connection_id, raw)
        if event_type in REQUEST_ENDING_EVENTS:
            ended = self._request_end(connection, event_type, raw)
            if ended.event is not None and not ended.goes_on:
                return ended.event
            return [ended.event, *ended.actions] if ended.event is not None else ended.actions
        turn = self._turns.get(connection_id)
        if turn is not None and not turn.output and event_type.startswith(OUTPUT_EVENT_PREFIXES):
            turn.output = True
        properties = (
            server_events.user_properties(connection_id, DIRECTION_SERVER, event_type)
            if self._v5
            else ()
        )
        return relayed_event(connection.events_topic, raw, self._qos, properties)

    def shaped_event(self, connection_id: str, raw: bytes) -> list[Action]:
        """A server event of a connection with device output: what to publish for it, text
        and all. The caller makes sure the buffer has room first: the relayed event in the
        list must not be refused (the output would have taken it already)."""
        connection = self._connections.get(connection_id)
        event_type = server_events.server_event_type(raw)
        if connection is None or event_type not in REQUEST_ENDING_EVENTS:
            result = self.upstream_event(connection_id, raw)
            if isinstance(result, list):
                return result
            if not result.relayed:
                return [result]
            return self._outputs.event(connection_id, result, event_type or "")
        ended = self._request_end(connection, event_type, raw)
        if ended.event is None:
            return ended.actions
        shaped = self._outputs.event(
            connection_id, ended.event, event_type, ended.end, goes_on=ended.goes_on
        )
        return shaped + ended.actions

    def _request_end(self, connection: Connection, event_type: str, raw: bytes) -> _Ended:
        """A response ended, or an error came: parsed once, here; the turn ends, or goes on
        (a tool round), or is sent again (a retryable error before any output)."""
        connection_id = connection.connect.connection_id
        end = read_end(event_type, raw)
        if end is None:
            return _Ended(None, self._unreadable_end(connection, event_type, raw))
        if event_type == "error":
            again = self._ask.retried(connection_id, end)
            if again is not None:
                self._idle.request_ended(connection_id)
                return _Ended(None, again)
        self._spending.charge(connection_id, connection.profile, end.usage)
        doubted = self._spending.doubted(connection_id, end.usage)
        outcome: Outcome | None = None
        if event_type == RESPONSE_COMPLETED:
            tokens = end.usage.tokens if end.usage is not None else None
            outcome = completed = ResponseCompleted(connection_id, raw, tokens, doubted)
            if self._tools.active(connection_id):
                going_on = self._tools.round(connection_id, end)
                if going_on is not None:  # a tool round: the turn goes on after it
                    return self._round(connection, completed, going_on, end)
        elif doubted is not None:
            outcome = UsageDoubted(connection_id, doubted)
        self._turn_over(connection_id, end)
        if event_type in SCRUBBED_EVENT_TYPES:
            raw = self.redactor.redact_bytes(raw)
        properties = (
            server_events.user_properties(connection_id, DIRECTION_SERVER, event_type)
            if self._v5
            else ()
        )
        event = Publish(
            connection.events_topic, raw, self._qos, properties, relayed=True, outcome=outcome
        )
        return _Ended(event, end=end)

    def _round(
        self,
        connection: Connection,
        completed: ResponseCompleted,
        going_on: list[Action] | TurnBroken,
        end: RequestEnd,
    ) -> _Ended:
        """The response.completed that starts a tool round (or ends the turn without an
        answer): published ahead of the round's actions, not as a relayed event (it must
        not be refused for room). A device output sees it as no end of a request."""
        connection_id = connection.connect.connection_id
        if isinstance(going_on, TurnBroken):
            self._tools.ended(connection_id)
            going_on = self._ask.broken(connection_id, going_on)
        properties = (
            server_events.user_properties(connection_id, DIRECTION_SERVER, RESPONSE_COMPLETED)
            if self._v5
            else ()
        )
        held = Publish(
            connection.events_topic, completed.raw, self._qos, properties, outcome=completed
        )
        return _Ended(held, going_on, goes_on=True, end=end)

    def _turn_over(self, connection_id: str, end: RequestEnd | None) -> None:
        """The request in flight ended: its tool waits, its turn, and the memory of it."""
        self._tools.ended(connection_id)
        self._idle.request_ended(connection_id)
        self._ask.over(connection_id, end)

    def _unreadable_end(self, connection: Connection, event_type: str, raw: bytes) -> list[Action]:
        """An end or error that is not JSON: not relayed; its request ends with
        ``invalid_server_event``, and a response counts by its size."""
        connection_id = connection.connect.connection_id
        if event_type in RESPONSE_ENDINGS:
            self._spending.charge(connection_id, connection.profile, unreadable_usage(raw))
        turn = self._ask.turns.get(connection_id)
        self._turn_over(connection_id, None)
        message = invalid_frame_message(raw)
        if turn is None:
            actions: list[Action] = [self._replies.invalid_server_event(connection_id, raw)]
        else:
            rejection = Rejection(INVALID_SERVER_EVENT, message, ASK, turn.ask.request_id)
            actions = self._replies.refuse(connection_id, rejection, turn.reply_to)
        return actions + self._outputs.request_error(connection_id, INVALID_SERVER_EVENT, message)
