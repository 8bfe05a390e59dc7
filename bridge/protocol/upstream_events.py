"""Server events in the core: a mixin of :class:`~bridge.protocol.core.BridgeCore`.

Every server event passes :meth:`UpstreamEvents.upstream_event`, the relay's
hot path: its ``type`` is read off its start by
:func:`~bridge.protocol.server_events.server_event_type` (with the cheap checks
of a frame), and it is published as it came. The events the bridge acts on,
the ends of requests (``response.completed``, ``.incomplete``, ``.failed``,
``error``), are parsed in full, once, here: for the usage (read only by
:func:`~bridge.protocol.guardrails.usage_of`), the tool round, the
conversation and the retry of an ``ask`` turn. One that is not JSON is not
relayed: the request it ends ends with ``invalid_server_event`` (with the
``ask`` turn's request id), and a response counts by its size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bridge.errors import InvalidState
from bridge.protocol import server_events
from bridge.protocol.actions import Action
from bridge.protocol.connections import Connection
from bridge.protocol.contract import ASK, INVALID_SERVER_EVENT, Rejection
from bridge.protocol.guardrails import ResponseUsage, unreadable_usage, usage_of
from bridge.protocol.idle import REQUEST_ENDING_EVENTS, IdleTracker
from bridge.protocol.messages import Outcome, Publish, ResponseCompleted, UsageDoubted
from bridge.protocol.redaction import Redactor
from bridge.protocol.replies import Replies, invalid_frame_message
from bridge.protocol.server_events import RESPONSE_COMPLETED, RESPONSE_ENDINGS
from bridge.protocol.sessions import Conversations

# Server events that carry an error message: the only ones scrubbed of the
# bridge's secrets (a server could echo a credential it was sent); every other
# event is relayed byte for byte, unread.
_SCRUBBED_EVENT_TYPES = frozenset({"error", "response.failed"})
# Server events that carry part of an answer: once one is relayed, an `ask` turn is
# never sent again (an empty output item or content part announced is not yet an answer).
OUTPUT_EVENT_PREFIXES = (
    "response.output_text.",
    "response.refusal.",
    "response.function_call_arguments.",
    "response.reasoning",
)


class UpstreamEvents:
    """The server-event part of the core. What it uses of the core is declared here."""

    _connections: dict[str, Connection]
    _idle: IdleTracker
    _deferred: list[Action]
    conversations: Conversations
    replies: Replies
    redactor: Redactor
    qos: int
    v5: bool

    if TYPE_CHECKING:  # other mixins' (a stub here would hide them)

        def _retried(self, connection: Connection, error: Mapping[str, Any]) -> bool: ...

        def _turn_ended(
            self, connection_id: str, event_type: str, response: Mapping[str, Any]
        ) -> None: ...

        def _charge(self, connection: Connection, usage: ResponseUsage | None) -> None: ...

        def _tool_round(
            self, connection: Connection, response: Mapping[str, Any]
        ) -> list[Action] | None: ...

        def _tools_ended(self, connection: Connection) -> None: ...

        def _hold(
            self, connection: Connection, outcome: ResponseCompleted, going_on: list[Action]
        ) -> None: ...

    def upstream_event(self, connection_id: str, raw: bytes) -> Publish | None:
        """A server event arrived: the hot path. Returns the one message to publish.

        None: the event is held back (an ``ask`` turn is sent again, a tool
        round goes on, an end that is not JSON is answered); perform
        :meth:`take_deferred`.
        """
        connection = self._connections.get(connection_id)
        if connection is None:
            raise InvalidState(f"event for unknown connection {connection_id!r}")
        event_type = server_events.server_event_type(raw)
        if event_type is None:
            claimed = server_events.claimed_type(raw)
            if claimed in REQUEST_ENDING_EVENTS:
                self._deferred = self._unreadable_end(connection, claimed, raw)
                return None
            return self.replies.invalid_server_event(connection_id, raw)
        if event_type in REQUEST_ENDING_EVENTS:
            return self._request_end(connection, event_type, raw)
        if (
            connection.turn is not None
            and not connection.turn_output
            and event_type.startswith(OUTPUT_EVENT_PREFIXES)
        ):
            connection.turn_output = True
        properties = (
            server_events.user_properties(connection_id, server_events.DIRECTION_SERVER, event_type)
            if self.v5
            else ()
        )
        return Publish(connection.events_topic, raw, self.qos, properties, relayed=True)

    def _request_end(self, connection: Connection, event_type: str, raw: bytes) -> Publish | None:
        """A response ended, or an error came: parsed once, here; the turn ends, or goes on
        (a tool round), or is sent again (a retryable error before any output)."""
        connection_id = connection.connect.connection_id
        document = server_events.event_document(raw)
        if document is None:
            self._deferred = self._unreadable_end(connection, event_type, raw)
            return None
        if event_type == "error" and self._retried(connection, document):
            self._idle.request_ended(connection_id)
            return None
        response = _response(document) if event_type in RESPONSE_ENDINGS else {}
        usage = usage_of(response) if event_type in RESPONSE_ENDINGS else None
        self._charge(connection, usage)
        doubted = self._usage_doubted(connection, usage)
        outcome: Outcome | None = None
        if event_type == RESPONSE_COMPLETED:
            tokens = usage.tokens if usage is not None else None
            outcome = completed = ResponseCompleted(connection_id, raw, tokens, doubted)
            if connection.tool_turn is not None:
                going_on = self._tool_round(connection, response)
                if going_on is not None:  # a tool round: the turn goes on after it
                    self._hold(connection, completed, going_on)
                    return None
        elif doubted is not None:
            outcome = UsageDoubted(connection_id, doubted)
        self._turn_over(connection, event_type, response)
        if event_type in _SCRUBBED_EVENT_TYPES:
            raw = self.redactor.redact_bytes(raw)
        properties = (
            server_events.user_properties(connection_id, server_events.DIRECTION_SERVER, event_type)
            if self.v5
            else ()
        )
        return Publish(
            connection.events_topic, raw, self.qos, properties, relayed=True, outcome=outcome
        )

    def _turn_over(
        self, connection: Connection, event_type: str, response: Mapping[str, Any]
    ) -> None:
        """The request in flight ended: its tool waits, its turn, and the memory of it."""
        self._tools_ended(connection)
        connection_id = connection.connect.connection_id
        self._idle.request_ended(connection_id)
        connection.turn = None
        if connection_id in self.conversations:  # an `ask` session: its memory
            self._turn_ended(connection_id, event_type, response)

    def _unreadable_end(self, connection: Connection, event_type: str, raw: bytes) -> list[Action]:
        """An end or error that is not JSON: not relayed; its request ends with
        ``invalid_server_event``, and a response counts by its size."""
        connection_id = connection.connect.connection_id
        if event_type in RESPONSE_ENDINGS:
            self._charge(connection, unreadable_usage(raw))
        turn, reply_to = connection.turn, connection.turn_reply
        self._turn_over(connection, "error", {})
        message = invalid_frame_message(raw)
        if turn is None:
            actions: list[Action] = [self.replies.invalid_server_event(connection_id, raw)]
        else:
            rejection = Rejection(INVALID_SERVER_EVENT, message, ASK, turn.request_id)
            actions = self.replies.refuse(connection_id, rejection, reply_to)
        if connection.output is not None:
            actions += connection.output.request_error(INVALID_SERVER_EVENT, message)
        return actions

    @staticmethod
    def _usage_doubted(connection: Connection, usage: ResponseUsage | None) -> str | None:
        """The problem with a response's usage, the first time one comes on this connection."""
        if usage is None or usage.problem is None or connection.usage_doubted:
            return None
        connection.usage_doubted = True
        tokens = usage.tokens
        return f"{usage.problem}: counted as {tokens.input} input and {tokens.output} output tokens"


def _response(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``response`` object of a response's end ({} if it has none)."""
    response = document.get("response")
    return response if isinstance(response, dict) else {}
