"""What travels with a published message: its MQTT v5 user properties; and what a
server frame is: the type of an event, read off its start after cheap checks (no
parse of the whole event), or the event's JSON object when it must be read (pure)."""

from __future__ import annotations

import codecs
import json
from typing import Any, Final

# Event types the bridge acts on ----------------------------------------------------

RESPONSE_CREATE: Final = "response.create"
RESPONSE_COMPLETED: Final = "response.completed"
# The server events that end a response; its `response` carries its status and usage.
RESPONSE_ENDINGS: Final = frozenset({RESPONSE_COMPLETED, "response.incomplete", "response.failed"})
ERROR: Final = "error"
# Server events that end a request (the Responses API's terminal events and `error`).
REQUEST_ENDING_EVENTS: Final = RESPONSE_ENDINGS | {ERROR}
# Server events that carry an error message: the only ones scrubbed of the
# bridge's secrets (a server could echo a credential it was sent); every other
# event is relayed byte for byte, unread.
SCRUBBED_EVENT_TYPES: Final = frozenset({ERROR, "response.failed"})
# Server events that carry part of an answer: once one is relayed, an `ask` turn is
# never sent again (an empty output item or content part announced is not yet an answer).
OUTPUT_EVENT_PREFIXES: Final = (
    "response.output_text.",
    "response.refusal.",
    "response.function_call_arguments.",
    "response.reasoning",
)

# MQTT v5 user properties, like the seed node's msg.openai ----------------------

TRANSPORT: Final = "responses.websocket"
DIRECTION_SERVER: Final = "server"
DIRECTION_BRIDGE: Final = "bridge"

# MQTT v5 user properties -----------------------------------------------------------


UserProperties = tuple[tuple[str, str], ...]


def user_properties(connection_id: str, direction: str, event_type: str) -> UserProperties:
    """The MQTT v5 user properties of one published message (the seed's msg.openai)."""
    return (
        ("transport", TRANSPORT),
        ("direction", direction),
        ("connection_id", connection_id),
        ("event_type", event_type),
    )


# Server events -------------------------------------------------------------------

_TYPE_PREFIX: Final = b'{"type":"'
_TYPE_START: Final = len(_TYPE_PREFIX)
_AFTER_TYPE: Final = (ord(","), ord("}"))
_CLOSING_BRACE: Final = ord("}")
# Larger frames are checked for UTF-8 in pieces of this size: never a whole copy as text.
_UTF8_PIECE: Final = 1 << 16


def server_event_type(raw: bytes) -> str | None:
    """The ``type`` of a server event, or None if it is not a JSON object with one.

    OpenAI writes ``type`` first, so the fast path reads it off the prefix
    without parsing the whole event (a ``response.completed`` can be
    megabytes), after checks that cost next to nothing: the frame is UTF-8
    (text frames and binary ones alike), the name is followed by ``,`` or
    ``}``, and the frame ends with ``}``. Anything else is parsed in full, and
    is an event only if it is a JSON object with a string ``type``.
    """
    if raw.startswith(_TYPE_PREFIX) and raw[-1] == _CLOSING_BRACE:
        end = raw.find(b'"', _TYPE_START)
        if end > 0 and raw[end + 1] in _AFTER_TYPE:
            name = raw[_TYPE_START:end]
            if b"\\" not in name and (raw.isascii() or is_utf8(raw)):
                return name.decode()
    document = event_document(raw)
    if document is not None and isinstance(document.get("type"), str):
        return str(document["type"])
    return None


def claimed_type(raw: bytes) -> str | None:
    """The ``type`` a frame that is not an event starts with, if it starts like one
    (an end of a request that is not JSON still ends the request)."""
    if not raw.startswith(_TYPE_PREFIX):
        return None
    end = raw.find(b'"', _TYPE_START, _TYPE_START + 64)
    return raw[_TYPE_START:end].decode("utf-8", "replace") if end > 0 else None


def is_utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8 (surrogates are not), decoded in pieces."""
    if len(data) <= _UTF8_PIECE:
        try:
            data.decode()
        except UnicodeDecodeError:
            return False
        return True
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    try:
        for start in range(0, len(data), _UTF8_PIECE):
            decoder.decode(view[start : start + _UTF8_PIECE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def event_document(raw: bytes) -> dict[str, Any] | None:
    """A server event as its JSON object; None when it is not one: not UTF-8 JSON,
    nested deeper than the parser goes, an integer of more than 4,300 digits, or
    not an object."""
    try:
        # json.loads would let UTF-8-encoded surrogates through ("surrogatepass").
        document = json.loads(raw.decode())
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None
