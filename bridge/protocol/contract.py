"""The public MQTT contract: topics, connection ids, commands and what we publish.

Everything here is pure: no I/O, no clock, no asyncio. Raw JSON becomes typed
commands here and nowhere else, and every object the bridge itself publishes
is built here, so the README's contract section and this module describe the
same thing.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Final

from bridge.errors import CommandError

# Topic layout ---------------------------------------------------------------

RESERVED_ID: Final = "bridge"
MAX_CONNECTION_ID_LENGTH: Final = 128
MAX_REQUEST_ID_LENGTH: Final = 256
MAX_CLOSE_REASON_BYTES: Final = 123  # RFC 6455 §5.5: a control frame payload is at most 125 bytes
MAX_JSON_DEPTH: Final = 64  # nesting levels a command may have; Responses events need a handful
MAX_TOPIC_BYTES: Final = 65535  # MQTT: a topic name is a UTF-8 string of at most 65,535 bytes

# Actions and the `object` of everything the bridge itself says -----------------

CONNECT: Final = "connect"
SEND: Final = "send"
CLOSE: Final = "close"
DISCONNECTED: Final = "disconnected"
ACTIONS: Final = (CONNECT, SEND, CLOSE)

OBJECT_CONNECTION: Final = "response.websocket.connection"
OBJECT_CLIENT_EVENT: Final = "response.websocket.client_event"
OBJECT_ERROR: Final = "response.websocket.error"

DEFAULT_CLOSE_CODE: Final = 1000
DEFAULT_CLOSE_REASON: Final = "OK"
SHUTDOWN_CLOSE_CODE: Final = 1001
SHUTDOWN_CLOSE_REASON: Final = "bridge shutting down"

# Stable error codes (error.code); the README documents each one ----------------

INVALID_JSON: Final = "invalid_json"
INVALID_COMMAND: Final = "invalid_command"
UNKNOWN_ACTION: Final = "unknown_action"
INVALID_CONNECTION_ID: Final = "invalid_connection_id"
CONNECTION_ID_MISMATCH: Final = "connection_id_mismatch"
ALREADY_OPEN: Final = "already_open"
NOT_OPEN: Final = "not_open"
EVENT_TYPE_NOT_ALLOWED: Final = "event_type_not_allowed"
PAYLOAD_TOO_LARGE: Final = "payload_too_large"
UPSTREAM_CONNECT_FAILED: Final = "upstream_connect_failed"
LIMIT_REACHED: Final = "limit_reached"
RATE_LIMITED: Final = "rate_limited"
SHUTTING_DOWN: Final = "shutting_down"
RETAINED_COMMAND: Final = "retained_command"
RESPONSE_TOPIC_NOT_ALLOWED: Final = "response_topic_not_allowed"
INTERNAL_ERROR: Final = "internal_error"
INVALID_SERVER_EVENT: Final = "invalid_server_event"
EVENT_BUFFER_FULL: Final = "event_buffer_full"

# MQTT v5 user properties, like the seed node's msg.openai ----------------------

TRANSPORT: Final = "responses.websocket"
DIRECTION_SERVER: Final = "server"
DIRECTION_BRIDGE: Final = "bridge"

# WebSocket close codes a client may send: RFC 6455 §7.4.1 and §7.4.2.
_CLIENT_CLOSE_CODES: Final = frozenset({1000, 1001})
_APPLICATION_CLOSE_CODES: Final = range(3000, 5000)


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names under one prefix (config ``mqtt.topic_prefix``)."""

    prefix: str

    @property
    def command_filter(self) -> str:
        return f"{self.prefix}/+/cmd"

    @property
    def state(self) -> str:
        return f"{self.prefix}/{RESERVED_ID}/state"

    def events(self, connection_id: str) -> str:
        return f"{self.prefix}/{connection_id}/events"

    def command(self, connection_id: str) -> str:
        return f"{self.prefix}/{connection_id}/cmd"

    def connection_id_of(self, topic: str) -> str | None:
        """The ``<id>`` of a ``P/<id>/cmd`` topic, or None for any other topic.

        The id is returned as it stands, valid or not: see
        :func:`check_connection_id`.
        """
        head = self.prefix + "/"
        if not (topic.startswith(head) and topic.endswith("/cmd")):
            return None
        middle = topic[len(head) : -len("/cmd")]
        if "/" in middle:
            return None
        return middle


def check_connection_id(connection_id: str) -> None:
    """Raise ``CommandError(invalid_connection_id)`` unless the id is usable.

    An id is 1-128 characters with no ``/``, ``+``, ``#``, NUL, control
    characters or whitespace, and is not the reserved ``bridge``.
    """
    problem = _connection_id_problem(connection_id)
    if problem is not None:
        raise CommandError(INVALID_CONNECTION_ID, f"connection id {problem}")


def _connection_id_problem(connection_id: str) -> str | None:
    if not connection_id:
        return "is empty"
    if len(connection_id) > MAX_CONNECTION_ID_LENGTH:
        return f"is longer than {MAX_CONNECTION_ID_LENGTH} characters"
    if connection_id == RESERVED_ID:
        return f"'{RESERVED_ID}' is reserved"
    for char in connection_id:
        if char in "/+#" or char.isspace() or unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return f"contains the forbidden character {char!r}"
    return None


# Control, surrogate, and format characters (zero-width space, bidirectional
# overrides such as U+202E): the last make two ids look alike in logs and dashboards.
_FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cs", "Cf"})


# Client JSON ------------------------------------------------------------------


def load_json(payload: bytes) -> Any:
    """Parse a client's UTF-8 JSON, refusing what costs more than its size or is not JSON.

    Refused (``ValueError``): invalid UTF-8 or JSON; nesting deeper than
    :data:`MAX_JSON_DEPTH`; ``NaN``, ``Infinity`` and numbers too large for a
    float (Python would write them back as non-JSON tokens); integers of more
    than 4,300 digits (Python's own limit, which keeps parsing linear).
    """
    text = payload.decode("utf-8")
    try:
        document = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    # Fewer brackets than the limit cannot nest deeper: most commands stop here.
    if payload.count(b"[") + payload.count(b"{") > MAX_JSON_DEPTH and _too_deep(payload):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return document


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {_elide(text, 24)} is out of range")
    return value


def _too_deep(payload: bytes) -> bool:
    """Whether the containers of valid JSON nest deeper than MAX_JSON_DEPTH.

    Strings out, brackets of both kinds as ``[]``: each pass removes the
    innermost pairs, one level. Linear passes in C, for valid JSON only (the
    string pattern could backtrack on unterminated strings).
    """
    brackets = _JSON_STRING.sub(b"", payload).translate(_AS_SQUARE, _NOT_A_BRACKET)
    for _ in range(MAX_JSON_DEPTH):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_AS_SQUARE: Final = bytes.maketrans(b"{}", b"[]")
_NOT_A_BRACKET: Final = bytes(byte for byte in range(256) if byte not in b"[]{}")


# Response topics (MQTT v5) ---------------------------------------------------------


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the MQTT filter (``+`` one level, ``#`` the rest).

    As MQTT says, a filter starting with a wildcard does not match ``$`` topics.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for index, part in enumerate(wanted):
        if part == "#":
            return True
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(wanted) == len(levels)


def topic_name_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to, or None."""
    if not topic:
        return "is empty"
    if any(char in topic for char in "+#\x00"):
        return "contains a wildcard or NUL"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if size > MAX_TOPIC_BYTES:
        return f"is longer than {MAX_TOPIC_BYTES} bytes"
    return None


@dataclass(frozen=True, slots=True)
class ResponseTopicPolicy:
    """Where a command's MQTT v5 Response Topic may send its ack.

    ``allowed`` are the owner's filters (config ``mqtt.response_topics``);
    ``refused`` always win: the bridge's own topics (``P/#``), Home
    Assistant's discovery prefix, and every ``$`` topic. Without this, a client
    could make the bridge publish, under its own account, where the client
    itself may not.
    """

    allowed: tuple[str, ...] = ("#",)
    refused: tuple[str, ...] = ()

    def problem(self, topic: str) -> str | None:
        """Why an ack may not go to ``topic``, or None if it may."""
        problem = topic_name_problem(topic)
        if problem is not None:
            return f"the response topic {problem}"
        if topic.startswith("$"):
            return "the response topic is a $ topic"
        for refused in self.refused:
            if topic_matches(refused, topic):
                return f"the response topic is under {refused}, which the bridge keeps for itself"
        if not any(topic_matches(allowed, topic) for allowed in self.allowed):
            return "the response topic is not in mqtt.response_topics"
        return None


# Commands -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    connection_id: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Send:
    connection_id: str
    event_type: str
    event: str  # the client event as compact JSON text, ready for the WebSocket
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Close:
    connection_id: str
    code: int = DEFAULT_CLOSE_CODE
    reason: str = DEFAULT_CLOSE_REASON
    request_id: str | None = None


Command = Connect | Send | Close


def parse_command(
    connection_id: str,
    payload: bytes,
    *,
    max_bytes: int,
    allowed_event_types: frozenset[str],
) -> Command:
    """Turn the payload of ``P/<connection_id>/cmd`` into a command.

    Raises:
        CommandError: with the stable code of the first problem found, and the
            command's ``action`` and ``request_id`` when they could be read.
    """
    if len(payload) > max_bytes:
        raise CommandError(
            PAYLOAD_TOO_LARGE, f"command is {len(payload)} bytes, the limit is {max_bytes}"
        )
    try:
        document = load_json(payload)
    except ValueError as exc:  # UnicodeDecodeError is one
        raise CommandError(INVALID_JSON, f"command is not UTF-8 JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CommandError(INVALID_COMMAND, "command must be a JSON object")

    request_id = document.get("request_id")
    if request_id is not None and not (
        isinstance(request_id, str) and len(request_id) <= MAX_REQUEST_ID_LENGTH
    ):
        raise CommandError(
            INVALID_COMMAND,
            f"request_id must be a string of at most {MAX_REQUEST_ID_LENGTH} characters",
        )
    action = document.get("action")
    if not isinstance(action, str):
        raise CommandError(
            INVALID_COMMAND,
            "action must be a string: connect, send or close",
            request_id=request_id,
        )
    if action not in ACTIONS:
        raise CommandError(
            UNKNOWN_ACTION,
            f"unknown action {_elide(action)!r}: expected connect, send or close",
            action=_elide(action),
            request_id=request_id,
        )
    try:
        return _parse_action(connection_id, action, document, request_id, allowed_event_types)
    except CommandError as exc:
        exc.action, exc.request_id = action, request_id
        raise


def peek(payload: bytes, *, max_bytes: int) -> tuple[str | None, str | None]:
    """The ``action`` and ``request_id`` of a command that will not be carried out.

    For replies to commands refused before parsing (rate limit), so they can
    still echo what the client sent. Anything unreadable gives None.
    """
    if len(payload) > max_bytes:
        return None, None
    try:
        document = load_json(payload)
    except ValueError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    action, request_id = document.get("action"), document.get("request_id")
    return (
        action if isinstance(action, str) and action in ACTIONS else None,
        request_id
        if isinstance(request_id, str) and len(request_id) <= MAX_REQUEST_ID_LENGTH
        else None,
    )


def _parse_action(
    connection_id: str,
    action: str,
    document: dict[str, Any],
    request_id: str | None,
    allowed_event_types: frozenset[str],
) -> Command:
    claimed = document.get("connection_id")
    if claimed is not None:
        if not isinstance(claimed, str):
            raise CommandError(INVALID_COMMAND, "connection_id must be a string")
        if claimed != connection_id:
            raise CommandError(
                CONNECTION_ID_MISMATCH,
                f"connection_id {_elide(claimed)!r} does not match the topic's {connection_id!r}",
            )
    check_connection_id(connection_id)
    if action == CONNECT:
        return Connect(connection_id, request_id)
    if action == SEND:
        return _parse_send(connection_id, document, request_id, allowed_event_types)
    return _parse_close(connection_id, document, request_id)


def _parse_send(
    connection_id: str,
    document: dict[str, Any],
    request_id: str | None,
    allowed_event_types: frozenset[str],
) -> Send:
    event = document.get("event")
    if not isinstance(event, dict):
        raise CommandError(INVALID_COMMAND, "send needs an 'event' object")
    event_type = event.get("type")
    if not isinstance(event_type, str):
        raise CommandError(INVALID_COMMAND, "event.type must be a string")
    if event_type not in allowed_event_types:
        allowed = ", ".join(sorted(allowed_event_types))
        raise CommandError(
            EVENT_TYPE_NOT_ALLOWED,
            f"event type {_elide(event_type)!r} is not allowed (allowed: {allowed})",
        )
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return Send(connection_id, event_type, text, request_id)


def _parse_close(connection_id: str, document: dict[str, Any], request_id: str | None) -> Close:
    code = document.get("code", DEFAULT_CLOSE_CODE)
    if code is None:
        code = DEFAULT_CLOSE_CODE
    if (
        not isinstance(code, int)
        or isinstance(code, bool)
        or not (code in _CLIENT_CLOSE_CODES or code in _APPLICATION_CLOSE_CODES)
    ):
        raise CommandError(INVALID_COMMAND, "code must be 1000, 1001 or 3000-4999")
    reason = document.get("reason", DEFAULT_CLOSE_REASON)
    if reason is None:
        reason = DEFAULT_CLOSE_REASON
    if not isinstance(reason, str) or len(reason.encode()) > MAX_CLOSE_REASON_BYTES:
        raise CommandError(
            INVALID_COMMAND, f"reason must be a string of at most {MAX_CLOSE_REASON_BYTES} bytes"
        )
    return Close(connection_id, code, reason, request_id)


def _elide(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# What the bridge publishes ---------------------------------------------------------


def connect_ack(connection_id: str, url: str, request_id: str | None) -> dict[str, Any]:
    return _with_request_id(
        {
            "object": OBJECT_CONNECTION,
            "action": CONNECT,
            "connection_id": connection_id,
            "url": url,
        },
        request_id,
    )


def send_ack(connection_id: str, event_type: str, request_id: str | None) -> dict[str, Any]:
    return _with_request_id(
        {
            "object": OBJECT_CLIENT_EVENT,
            "action": SEND,
            "connection_id": connection_id,
            "event_type": event_type,
        },
        request_id,
    )


def close_ack(connection_id: str, code: int, reason: str, request_id: str | None) -> dict[str, Any]:
    return _with_request_id(
        {
            "object": OBJECT_CONNECTION,
            "action": CLOSE,
            "connection_id": connection_id,
            "code": code,
            "reason": reason,
        },
        request_id,
    )


def disconnected_notice(connection_id: str, code: int, reason: str) -> dict[str, Any]:
    return {
        "object": OBJECT_CONNECTION,
        "action": DISCONNECTED,
        "connection_id": connection_id,
        "code": code,
        "reason": reason,
    }


def error_event(
    connection_id: str,
    code: str,
    message: str,
    *,
    action: str | None,
    request_id: str | None = None,
    status: int | None = None,
) -> dict[str, Any]:
    """The error event answering one rejected command (``action`` null if unreadable)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if status is not None:
        error["status"] = status
    return _with_request_id(
        {"object": OBJECT_ERROR, "action": action, "connection_id": connection_id, "error": error},
        request_id,
    )


def _with_request_id(message: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    if request_id is not None:
        message["request_id"] = request_id
    return message


def encode(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, the form of every message the bridge publishes."""
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    # A lone surrogate (only from a caller's bug or a hostile id) becomes a JSON escape.
    return text.encode("utf-8", "backslashreplace")


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


def server_event_type(raw: bytes) -> str | None:
    """The ``type`` of a server event, or None if it is not a JSON object with one.

    OpenAI writes ``type`` first, so the fast path reads it off the prefix
    without decoding the whole event (a ``response.completed`` can be
    megabytes); anything else is parsed in full.
    """
    if raw.startswith(_TYPE_PREFIX):
        end = raw.find(b'"', len(_TYPE_PREFIX))
        if end > 0 and b"\\" not in raw[len(_TYPE_PREFIX) : end]:
            return raw[len(_TYPE_PREFIX) : end].decode("utf-8", "replace")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if isinstance(document, dict) and isinstance(document.get("type"), str):
        return str(document["type"])
    return None
