"""Output for devices: text, answer and status topics of one connection (pure).

A :class:`DeviceOutput` exists only for a connection whose ``output`` options
ask for more (or less) than the relay of events; every other connection keeps
the plain hot path. It is told the connection's facts (opened, a request sent,
a server event relayed, the coalescing timer due, the socket gone) and
returns what to publish:

- ``P/<id>/text``: the text deltas (and refusal deltas) as plain UTF-8 chunks,
  cut by :class:`~bridge.protocol.text_chunks.TextChunker`;
- ``P/<id>/answer``: one compact JSON object per request that ends (a
  response, an error event, or the socket lost under it);
- ``P/<id>/status``: ``ready``, ``thinking`` (again every heartbeat while no
  text comes), ``streaming``, ``closed``, retained; cleared when the id's
  memory ends.

Only the event types it needs are parsed: the deltas, ``response.created``
when answers are on, and the events that end a request.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from bridge.protocol.actions import Action, ArmTimer, Observe
from bridge.protocol.encoding import compact
from bridge.protocol.facts import RequestEnd, read_end
from bridge.protocol.messages import Publish
from bridge.protocol.output_options import OutputConfig
from bridge.protocol.text_chunks import TextChunker
from bridge.protocol.topics import Topics

READY: Final = "ready"
THINKING: Final = "thinking"
STREAMING: Final = "streaming"
CLOSED: Final = "closed"
OBJECT_ANSWER: Final = "response.websocket.answer"
# The answer's text is kept up to this many bytes (then "truncated": true).
MAX_ANSWER_TEXT_BYTES: Final = 64 * 1024
TEXT_DELTAS: Final = frozenset({"response.output_text.delta", "response.refusal.delta"})
# What a request's end says in the answer's "status" when the response does not.
_ENDING_STATUS: Final = {
    "response.completed": "completed",
    "response.incomplete": "incomplete",
    "response.failed": "failed",
    "error": "error",
}
_RESPONSE_STATUSES: Final = frozenset({"completed", "incomplete", "failed", "cancelled"})


class DeviceOutput:
    """The text, answer and status of one connection id."""

    __slots__ = (
        "_answer_topic",
        "_chunker",
        "_connection_id",
        "_parts",
        "_qos",
        "_requests",
        "_response_id",
        "_status_topic",
        "_text_bytes",
        "_text_topic",
        "_timer",
        "options",
        "status",
    )

    def __init__(self, connection_id: str, topics: Topics, options: OutputConfig, qos: int) -> None:
        self.options = options
        self._connection_id = connection_id
        self._text_topic = topics.text(connection_id)
        self._answer_topic = topics.answer(connection_id)
        self._status_topic = topics.status(connection_id)
        self._qos = qos
        self._chunker = (
            TextChunker(options.text_max_bytes, options.text_split) if options.text else None
        )
        self._requests: deque[str | None] = deque()  # request ids of the requests in flight
        self._parts: list[str] = []  # the answer's text so far
        self._text_bytes = 0
        self._response_id: str | None = None
        self._timer: str | None = None  # what the armed timer is for: "flush" or "heartbeat"
        self.status: str | None = None

    # Facts ------------------------------------------------------------------------

    def opened(self) -> list[Action]:
        return self._set_status(READY)

    def request_sent(self, request_id: str | None) -> list[Action]:
        """A ``response.create`` went upstream for the command with ``request_id``."""
        self._requests.append(request_id)
        return [] if self.status == STREAMING else self._thinking()

    def event(
        self,
        message: Publish,
        event_type: str,
        end: RequestEnd | None = None,
        *,
        goes_on: bool = False,
    ) -> list[Action]:
        """A server event was relayed as ``message``: what to publish instead of it.

        ``end``: the event parsed, when it ends a request; ``goes_on``: a
        response.completed after which the request goes on (a tool round).
        """
        actions: list[Action] = []
        if self.options.events or event_type == "error":  # errors always reach the events
            actions.append(message)
        elif message.outcome is not None:
            actions.append(Observe(message.outcome))
        if event_type in TEXT_DELTAS:
            actions += self._delta(message.payload)
        elif event_type in _ENDING_STATUS and not goes_on:
            actions += self._request_ended(end or read_end(event_type, message.payload))
        elif event_type == "response.created" and self.options.answer:
            response = _document(message.payload).get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self._response_id = response["id"]
        return actions

    def due(self) -> list[Action]:
        """The armed timer is up: send what text is held, or say ``thinking`` again."""
        self._timer = None
        actions: list[Action] = []
        if self._chunker is not None and self._chunker.holding:
            actions += self._text(self._chunker.flush())
        if self.status == THINKING:
            actions += self._thinking()
        return actions

    def ended(self, code: str, message: str) -> list[Action]:
        """The socket is gone for good: every request in flight ends with this error."""
        actions = self._finish_text()
        while self._requests:
            actions += self._answer("error", None, {"code": code, "message": message})
        return actions + self._set_status(CLOSED)

    def request_error(self, code: str, message: str) -> list[Action]:
        """The request in flight ends with this error (the bridge ended it)."""
        if not self._requests:
            return []
        actions = self._finish_text()
        actions += self._answer("error", None, {"code": code, "message": message})
        return actions + (self._thinking() if self._requests else self._set_status(READY))

    def cleared(self) -> list[Action]:
        """The id's memory ended: no retained status is left behind."""
        if not self.options.status:
            return []
        return [Publish(self._status_topic, b"", self._qos, retain=True)]

    # Internals -------------------------------------------------------------------

    def _delta(self, raw: bytes) -> list[Action]:
        delta = _document(raw).get("delta")
        if not isinstance(delta, str) or not delta:
            return []
        actions = self._set_status(STREAMING) if self.status != STREAMING else []
        if self.options.answer and self._text_bytes < MAX_ANSWER_TEXT_BYTES:
            self._parts.append(delta)
            self._text_bytes += len(delta.encode())
        if self._chunker is not None:
            actions += self._text(self._chunker.add(delta))
            if self._chunker.holding and self._timer != "flush":
                if self.options.text_flush_ms == 0:
                    actions += self._text(self._chunker.flush())
                else:
                    self._timer = "flush"
                    actions.append(ArmTimer(self._connection_id, self.options.text_flush_ms / 1000))
        return actions

    def _request_ended(self, end: RequestEnd | None) -> list[Action]:
        if not self._requests or end is None:
            return []  # an error about no request of ours (a bad event a client sent)
        actions = self._finish_text()
        if end.type == "error":
            actions += self._answer("error", end, end.error)
        else:
            status = end.response.get("status")
            if status not in _RESPONSE_STATUSES:
                status = _ENDING_STATUS[end.type]
            actions += self._answer(status, end, end.error)
        return actions + (self._thinking() if self._requests else self._set_status(READY))

    def _answer(
        self, status: str, end: RequestEnd | None, error: Mapping[str, Any] | None
    ) -> list[Action]:
        """One request ended: its answer (when answers are on), and forget its text."""
        request_id = self._requests.popleft()
        text, self._parts, self._text_bytes = "".join(self._parts), [], 0
        response = end.response if end is not None else {}
        response_id = response.get("id", self._response_id)
        self._response_id = None
        if not self.options.answer:
            return []
        answer: dict[str, Any] = {
            "object": OBJECT_ANSWER,
            "connection_id": self._connection_id,
            "request_id": request_id,
            "response_id": response_id if isinstance(response_id, str) else None,
            "status": status,
            "text": text,
            "usage": _usage(end),
        }
        if len(text.encode()) >= MAX_ANSWER_TEXT_BYTES:
            answer["truncated"] = True
        if error is not None:
            answer["error"] = {"code": error.get("code"), "message": error.get("message")}
        return [Publish(self._answer_topic, compact(answer).encode(), self._qos)]

    def _finish_text(self) -> list[Action]:
        return self._text(self._chunker.finish()) if self._chunker is not None else []

    def _text(self, chunks: list[str]) -> list[Action]:
        return [Publish(self._text_topic, chunk.encode(), self._qos) for chunk in chunks]

    def _thinking(self) -> list[Action]:
        actions = self._set_status(THINKING, again=True)
        if self.options.status and self._timer is None:
            self._timer = "heartbeat"
            actions.append(ArmTimer(self._connection_id, self.options.status_heartbeat))
        return actions

    def _set_status(self, status: str, *, again: bool = False) -> list[Action]:
        if status == self.status and not again:
            return []
        self.status = status
        if not self.options.status:
            return []
        return [Publish(self._status_topic, status.encode(), self._qos, retain=True)]


def _document(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return document if isinstance(document, dict) else {}


def _usage(end: RequestEnd | None) -> dict[str, int] | None:
    """The answer's usage: as the budgets count it, when the response carried one."""
    usage = end.usage if end is not None else None
    return usage.as_json() if usage is not None and usage.carried else None
