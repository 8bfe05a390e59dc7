"""Every stable error code the bridge publishes, with what it means: one registry.

``error.code`` of a ``response.websocket.error`` (and of ``P/bridge/info``'s
``last_error``, of an answer's ``error``, and the ``result`` label of the
``commands_total`` metric) is one of these words. Code that refuses something
takes its code from here; :class:`~bridge.protocol.contract.Rejection` checks
that it does. The manual's error-code table is generated from
:data:`ERROR_CODES` (``bridge_tools/docs_reference.py``), so the two cannot
disagree. Pure: no imports from the bridge, so every module may use it.
"""

from __future__ import annotations

from typing import Final

ERROR_CODES: Final[dict[str, str]] = {}
"""Code → when the bridge answers with it (Markdown), in the order of the manual's table."""


def _code(code: str, when: str) -> str:
    assert code not in ERROR_CODES, code
    ERROR_CODES[code] = " ".join(when.split())
    return code


INVALID_JSON: Final = _code(
    "invalid_json",
    "the payload is not UTF-8 JSON, nests deeper than 64 levels, or holds `NaN`, `Infinity` "
    "or a number out of range",
)
INVALID_COMMAND: Final = _code(
    "invalid_command",
    "not a JSON object, or a field has the wrong type or value (missing `action`, `event` not "
    "an object, `event.type` missing, bad `code` or `reason`, bad `request_id`, an `output` "
    "that is not an object of known options with valid values: the message names the option)",
)
UNKNOWN_ACTION: Final = _code(
    "unknown_action", "`action` is not `connect`, `send`, `close`, `ask` or `status`"
)
INVALID_CONNECTION_ID: Final = _code(
    "invalid_connection_id", "the topic's id breaks the id rules or is `bridge`"
)
CONNECTION_ID_MISMATCH: Final = _code(
    "connection_id_mismatch", "`connection_id` differs from the topic's id"
)
ALREADY_OPEN: Final = _code("already_open", "`connect` for an id that is open")
NOT_OPEN: Final = _code("not_open", "`send` or `close` for an id that is not open")
EVENT_TYPE_NOT_ALLOWED: Final = _code(
    "event_type_not_allowed", "`event.type` is not in `limits.allowed_event_types`"
)
PAYLOAD_TOO_LARGE: Final = _code(
    "payload_too_large", "the command is over `limits.max_command_bytes`"
)
UPSTREAM_CONNECT_FAILED: Final = _code(
    "upstream_connect_failed",
    "the WebSocket handshake failed, or over HTTP the endpoint's check (`GET /models`); "
    "`error.status` holds the HTTP status (null for a network error)",
)
LIMIT_REACHED: Final = _code(
    "limit_reached",
    "`limits.max_connections` connections are open, 100 commands already wait for this id, or "
    "waiting commands hold `limits.max_waiting_bytes` across the bridge",
)
RATE_LIMITED: Final = _code(
    "rate_limited",
    "more than `limits.commands_per_second` commands for this id (after a burst of "
    "`limits.command_burst`); the command was not carried out",
)
SHUTTING_DOWN: Final = _code("shutting_down", "the bridge is stopping")
RETAINED_COMMAND: Final = _code(
    "retained_command",
    "the command was retained: it is never carried out (clear it with an empty retained payload)",
)
RESPONSE_TOPIC_NOT_ALLOWED: Final = _code(
    "response_topic_not_allowed",
    "the command's MQTT v5 Response Topic is not in `mqtt.response_topics`, or is under `P/`, "
    "the discovery prefix or `$`: the command was not carried out",
)
INTERNAL_ERROR: Final = _code(
    "internal_error",
    "handling the command failed in the bridge (a bug, logged with its traceback); it may not "
    "have been carried out",
)
UNKNOWN_PROFILE: Final = _code(
    "unknown_profile", "`connect` or `ask` names a profile the configuration does not have"
)
UPSTREAM_LOST: Final = _code(
    "upstream_lost",
    "(for an `ask`) the upstream connection ended after part of the turn's answer was "
    "relayed; the turn is not sent again. Also an answer's `error.code` when its socket ended "
    "under the request",
)
INSTANCE_BUSY: Final = _code(
    "instance_busy",
    "(several instances) too many commands wait for their id's instance to settle; publish it "
    "again",
)
TOOL_ROUNDS_EXCEEDED: Final = _code(
    "tool_rounds_exceeded",
    "(for an `ask`) the model still called tools after `sessions.max_tool_rounds` rounds; the "
    "turn ends without an answer and the conversation is as it was before it",
)
MODEL_NOT_ALLOWED: Final = _code(
    "model_not_allowed",
    "the request names a model `allowed_models` does not allow (of the bridge or of the "
    "profile), or no model; nothing was sent upstream",
)
BUDGET_EXCEEDED: Final = _code(
    "budget_exceeded",
    "a daily token budget that covers this request is used up (checked for every `send` and "
    "`ask`, and before each tool round of an `ask`); `error.resets_at` (ISO 8601) says when it "
    "starts again",
)
INVALID_SERVER_EVENT: Final = _code(
    "invalid_server_event",
    "the upstream sent a frame that is not a JSON object with a `type` (not a reply to a "
    "command); when the frame was the end of an `ask` turn's response or an `error`, the turn "
    "ends with it and it carries the ask's `request_id`",
)
INSTANCE_CONFLICT: Final = _code(
    "instance_conflict",
    "(only in `P/bridge/info`'s `last_error`, never a reply) another bridge serves the prefix "
    "and the two cannot share it; the one that does not serve exits 78",
)
