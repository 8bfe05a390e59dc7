"""The public MQTT contract: the commands, and a payload parsed into Command | Rejection.

Everything here is pure: no I/O, no clock, no asyncio. Raw JSON becomes typed
commands (or a :class:`Rejection` saying why not) here and nowhere else. With
:mod:`bridge.protocol.replies` (every object the bridge itself publishes),
:mod:`bridge.protocol.strict_json` (what JSON a command may be) and
:mod:`bridge.protocol.response_topics` (where a v5 reply may go) and
:mod:`bridge.protocol.topics` (every topic, what an id may be), this is the
README's contract section in code.

A new command action is a dataclass here, in :data:`Command`, and a parser in
:data:`_PARSERS`; the feature that carries it out names it in its ``handlers``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from bridge.errors import CommandError
from bridge.protocol.encoding import compact
from bridge.protocol.error_codes import (
    ALREADY_OPEN,
    CONNECTION_ID_MISMATCH,
    ERROR_CODES,
    EVENT_TYPE_NOT_ALLOWED,
    INTERNAL_ERROR,
    INVALID_COMMAND,
    INVALID_CONNECTION_ID,
    INVALID_JSON,
    INVALID_SERVER_EVENT,
    LIMIT_REACHED,
    NOT_OPEN,
    PAYLOAD_TOO_LARGE,
    RATE_LIMITED,
    RESPONSE_TOPIC_NOT_ALLOWED,
    RETAINED_COMMAND,
    SHUTTING_DOWN,
    UNKNOWN_ACTION,
    UNKNOWN_PROFILE,
    UPSTREAM_CONNECT_FAILED,
    UPSTREAM_LOST,
)
from bridge.protocol.output_options import output_override
from bridge.protocol.strict_json import elide, load_json
from bridge.protocol.tools import client_tools
from bridge.protocol.topics import (
    MAX_CONNECTION_ID_LENGTH,
    RESERVED_ID,
    Topics,
    check_connection_id,
    connection_id_problem,
)

# Limits ---------------------------------------------------------------

MAX_REQUEST_ID_LENGTH: Final = 256
MAX_CLOSE_REASON_BYTES: Final = 123  # RFC 6455 §5.5: a control frame payload is at most 125 bytes

# Actions and the `object` of everything the bridge itself says -----------------

CONNECT: Final = "connect"
SEND: Final = "send"
CLOSE: Final = "close"
ASK: Final = "ask"
STATUS: Final = "status"
DISCONNECTED: Final = "disconnected"
MAX_PROFILE_NAME_LENGTH: Final = 64

OBJECT_CONNECTION: Final = "response.websocket.connection"
OBJECT_CLIENT_EVENT: Final = "response.websocket.client_event"
OBJECT_ERROR: Final = "response.websocket.error"
OBJECT_STATUS: Final = "response.websocket.status"

DEFAULT_CLOSE_CODE: Final = 1000
DEFAULT_CLOSE_REASON: Final = "OK"
SHUTDOWN_CLOSE_CODE: Final = 1001
SHUTDOWN_CLOSE_REASON: Final = "bridge shutting down"
INTERNAL_ERROR_CLOSE_CODE: Final = 1011  # RFC 6455: the endpoint hit an unexpected condition
INTERNAL_ERROR_REASON: Final = "internal error of the bridge (logged); connect again"

# Stable error codes (error.code) live in bridge/protocol/error_codes.py, with their meaning.

# WebSocket close codes a client may send: RFC 6455 §7.4.1 and §7.4.2.
_CLIENT_CLOSE_CODES: Final = frozenset({1000, 1001})
_APPLICATION_CLOSE_CODES: Final = range(3000, 5000)


# Commands -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    action: ClassVar[str] = CONNECT
    connection_id: str
    request_id: str | None = None
    profile: str | None = None  # None: sessions.profile_by_id, else `default`
    output: Mapping[str, Any] | None = None  # options over the profile's `output`


@dataclass(frozen=True, slots=True)
class Send:
    action: ClassVar[str] = SEND
    connection_id: str
    event_type: str
    event: str  # the client event as compact JSON text, ready for the WebSocket
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Close:
    action: ClassVar[str] = CLOSE
    connection_id: str
    code: int = DEFAULT_CLOSE_CODE
    reason: str = DEFAULT_CLOSE_REASON
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Ask:
    """One turn of a conversation the bridge keeps: opens the connection if needed."""

    action: ClassVar[str] = ASK
    connection_id: str
    input: str | tuple[Any, ...]  # text, or Responses input items
    new_conversation: bool = False
    request_id: str | None = None
    size: int = 0  # bytes of the command: what the turn holds in memory
    profile: str | None = None  # the profile of a connection this ask opens
    retry: bool = False  # the bridge sends this turn again on a new socket (no second ack)
    output: Mapping[str, Any] | None = None  # `output` of a connection this ask opens
    # The client's own function tools for this turn: their calls are relayed, never run by
    # the bridge; the client answers them with `function_call_output` items in its next ask.
    tools: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Status:
    """What the bridge holds for this id: answered on ``P/<id>/events``, in order."""

    action: ClassVar[str] = STATUS
    connection_id: str
    request_id: str | None = None


Command = Connect | Send | Close | Ask | Status


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why something is not carried out, as its error event says it.

    ``code`` is the stable word of ``error.code``; ``action`` and
    ``request_id`` are the command's when they could be read (None
    otherwise), so the error event can echo them; ``status`` is the HTTP
    status of a refused upstream handshake.
    """

    code: str
    message: str
    action: str | None = None
    request_id: str | None = None
    status: int | None = None
    resets_at: str | None = None  # budget_exceeded: when the budget is there again

    def __post_init__(self) -> None:
        assert self.code in ERROR_CODES, f"{self.code!r} is not in bridge/protocol/error_codes.py"


def rejection_of(refused: Command | Rejection, code: str, message: str) -> Rejection:
    """A rejection of this command (or of the command ``refused`` already rejects),
    echoing its action and request_id."""
    return Rejection(code, message, refused.action, refused.request_id)


def parse_command(
    connection_id: str,
    payload: bytes,
    *,
    max_bytes: int,
    allowed_event_types: frozenset[str],
) -> Command | Rejection:
    """Turn the payload of ``P/<connection_id>/cmd`` into a command, or say why not.

    The rejection carries the stable code of the first problem found, and the
    command's ``action`` and ``request_id`` when they could be read.
    """
    if len(payload) > max_bytes:
        return Rejection(
            PAYLOAD_TOO_LARGE, f"command is {len(payload)} bytes, the limit is {max_bytes}"
        )
    try:
        document = load_json(payload)
    except ValueError as exc:  # UnicodeDecodeError is one
        return Rejection(INVALID_JSON, f"command is not UTF-8 JSON: {exc}")
    if not isinstance(document, dict):
        return Rejection(INVALID_COMMAND, "command must be a JSON object")

    request_id = document.get("request_id")
    if request_id is not None and not (
        isinstance(request_id, str) and len(request_id) <= MAX_REQUEST_ID_LENGTH
    ):
        return Rejection(
            INVALID_COMMAND,
            f"request_id must be a string of at most {MAX_REQUEST_ID_LENGTH} characters",
        )
    action = document.get("action")
    if not isinstance(action, str):
        return Rejection(
            INVALID_COMMAND, f"action must be a string: {_ACTION_NAMES}", None, request_id
        )
    if action not in _PARSERS:
        return Rejection(
            UNKNOWN_ACTION,
            f"unknown action {elide(action)!r}: expected {_ACTION_NAMES}",
            elide(action),
            request_id,
        )
    try:
        check_claimed_id(connection_id, document)
        fields = _Document(connection_id, document, request_id, len(payload), allowed_event_types)
        return _PARSERS[action](fields)
    except CommandError as exc:  # raised by the helpers below, handed out as a value
        return Rejection(exc.code, exc.message, action, request_id)


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
        action if isinstance(action, str) and action in _PARSERS else None,
        request_id
        if isinstance(request_id, str) and len(request_id) <= MAX_REQUEST_ID_LENGTH
        else None,
    )


def check_claimed_id(connection_id: str, document: dict[str, Any]) -> None:
    """The topic's id must be usable, and ``connection_id``, if given, must be it."""
    claimed = document.get("connection_id")
    if claimed is not None:
        if not isinstance(claimed, str):
            raise CommandError(INVALID_COMMAND, "connection_id must be a string")
        if claimed != connection_id:
            raise CommandError(
                CONNECTION_ID_MISMATCH,
                f"connection_id {elide(claimed)!r} does not match the topic's {connection_id!r}",
            )
    check_connection_id(connection_id)


def _profile_of(document: dict[str, Any]) -> str | None:
    profile = document.get("profile")
    if profile is not None and not (
        isinstance(profile, str) and 0 < len(profile) <= MAX_PROFILE_NAME_LENGTH
    ):
        raise CommandError(
            INVALID_COMMAND, f"profile must be a name of 1-{MAX_PROFILE_NAME_LENGTH} characters"
        )
    return profile


@dataclass(frozen=True, slots=True)
class _Document:
    """A command's JSON object, with what its parser may need besides."""

    connection_id: str
    fields: dict[str, Any]
    request_id: str | None
    size: int  # bytes of the payload
    allowed_event_types: frozenset[str] = frozenset()


def _parse_connect(document: _Document) -> Connect:
    fields = document.fields
    return Connect(
        document.connection_id, document.request_id, _profile_of(fields), output_override(fields)
    )


def _parse_ask(document: _Document) -> Ask:
    fields = document.fields
    text = fields.get("input")
    if isinstance(text, str) and text:
        turn_input: str | tuple[Any, ...] = text
    elif isinstance(text, list) and text and all(isinstance(item, dict) for item in text):
        turn_input = tuple(text)
    else:
        raise CommandError(
            INVALID_COMMAND, "ask needs an 'input': a non-empty string or array of input items"
        )
    new_conversation = fields.get("new_conversation", False)
    if not isinstance(new_conversation, bool):
        raise CommandError(INVALID_COMMAND, "new_conversation must be true or false")
    return Ask(
        document.connection_id,
        turn_input,
        new_conversation,
        document.request_id,
        document.size,
        _profile_of(fields),
        output=output_override(fields),
        tools=client_tools(fields.get("tools")),
    )


def _parse_send(document: _Document) -> Send:
    event = document.fields.get("event")
    if not isinstance(event, dict):
        raise CommandError(INVALID_COMMAND, "send needs an 'event' object")
    event_type = event.get("type")
    if not isinstance(event_type, str):
        raise CommandError(INVALID_COMMAND, "event.type must be a string")
    allowed_event_types = document.allowed_event_types
    if event_type not in allowed_event_types:
        allowed = ", ".join(sorted(allowed_event_types))
        raise CommandError(
            EVENT_TYPE_NOT_ALLOWED,
            f"event type {elide(event_type)!r} is not allowed (allowed: {allowed})",
        )
    return Send(document.connection_id, event_type, compact(event), document.request_id)


def _parse_close(document: _Document) -> Close:
    fields = document.fields
    code = fields.get("code", DEFAULT_CLOSE_CODE)
    if code is None:
        code = DEFAULT_CLOSE_CODE
    if (
        not isinstance(code, int)
        or isinstance(code, bool)
        or not (code in _CLIENT_CLOSE_CODES or code in _APPLICATION_CLOSE_CODES)
    ):
        raise CommandError(INVALID_COMMAND, "code must be 1000, 1001 or 3000-4999")
    reason = fields.get("reason", DEFAULT_CLOSE_REASON)
    if reason is None:
        reason = DEFAULT_CLOSE_REASON
    if not isinstance(reason, str) or len(reason.encode()) > MAX_CLOSE_REASON_BYTES:
        raise CommandError(
            INVALID_COMMAND, f"reason must be a string of at most {MAX_CLOSE_REASON_BYTES} bytes"
        )
    return Close(document.connection_id, code, reason, document.request_id)


def _parse_status(document: _Document) -> Status:
    return Status(document.connection_id, document.request_id)


# Every action and its parser, in the order the contract lists them.
_PARSERS: Final[Mapping[str, Callable[[_Document], Command]]] = {
    CONNECT: _parse_connect,
    SEND: _parse_send,
    CLOSE: _parse_close,
    ASK: _parse_ask,
    STATUS: _parse_status,
}
ACTIONS: Final = tuple(_PARSERS)
_ACTION_NAMES: Final = ", ".join(ACTIONS[:-1]) + " or " + ACTIONS[-1]

__all__ = [
    "ACTIONS",
    "ALREADY_OPEN",
    "ASK",
    "CLOSE",
    "CONNECT",
    "CONNECTION_ID_MISMATCH",
    "DISCONNECTED",
    "EVENT_TYPE_NOT_ALLOWED",
    "INTERNAL_ERROR",
    "INVALID_COMMAND",
    "INVALID_CONNECTION_ID",
    "INVALID_JSON",
    "INVALID_SERVER_EVENT",
    "LIMIT_REACHED",
    "MAX_CONNECTION_ID_LENGTH",
    "NOT_OPEN",
    "PAYLOAD_TOO_LARGE",
    "RATE_LIMITED",
    "RESERVED_ID",
    "RESPONSE_TOPIC_NOT_ALLOWED",
    "RETAINED_COMMAND",
    "SEND",
    "SHUTTING_DOWN",
    "STATUS",
    "UNKNOWN_ACTION",
    "UNKNOWN_PROFILE",
    "UPSTREAM_CONNECT_FAILED",
    "UPSTREAM_LOST",
    "Ask",
    "Close",
    "Command",
    "Connect",
    "Rejection",
    "Send",
    "Status",
    "Topics",
    "check_claimed_id",
    "check_connection_id",
    "connection_id_problem",
    "parse_command",
    "peek",
    "rejection_of",
]
