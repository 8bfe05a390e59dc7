"""The end of a request, read once: the typed fact every feature consumes.

An ordinary server event is never parsed: its type is read off its start
(:func:`~bridge.protocol.server_events.server_event_type`). The events that
end a request (``response.completed``, ``.incomplete``, ``.failed``,
``error``) are parsed here, once, into a :class:`RequestEnd`: its usage
(:func:`~bridge.protocol.guardrails.usage_of`, the one place usage is
read), its response, its error. The budgets, the conversation, the tool
loop, the retry of a turn and the device output all read this fact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.protocol.guardrails import ResponseUsage, usage_of
from bridge.protocol.server_events import RESPONSE_ENDINGS, event_document

_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class RequestEnd:
    """A response's end or an ``error`` event, parsed."""

    type: str
    raw: bytes
    response: Mapping[str, Any]  # the end's `response` object ({} for an error event)
    error: Mapping[str, Any] | None  # the error object, when the event carries one
    usage: ResponseUsage | None  # a response's end only: what it counts (None: nothing)

    @property
    def response_id(self) -> str | None:
        response_id = self.response.get("id")
        return response_id if isinstance(response_id, str) else None

    @property
    def error_code(self) -> object:
        return self.error.get("code") if self.error is not None else None

    @property
    def output(self) -> list[Any]:
        output = self.response.get("output")
        return output if isinstance(output, list) else []


def read_end(event_type: str, raw: bytes) -> RequestEnd | None:
    """The end of a request ``raw`` is; None when it is not a JSON object."""
    document = event_document(raw)
    if document is None:
        return None
    if event_type in RESPONSE_ENDINGS:
        response = document.get("response")
        response = response if isinstance(response, dict) else _EMPTY
        error = response.get("error")
        usage = usage_of(response)
    else:
        response, error, usage = _EMPTY, document.get("error"), None
    return RequestEnd(event_type, raw, response, error if isinstance(error, dict) else None, usage)
