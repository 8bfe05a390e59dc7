"""The errors the simulated server reports, as plain values (no I/O).

Every constructor returns a :class:`Rejection`; :func:`bridge.simulator.events.error_event`
turns one into a WebSocket ``error`` event. Codes, params and messages follow the
protocol reference (§6.8, §7); where OpenAI documents nothing the choice is noted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_NAMED_LANES = 32
STREAM_ID_MAX_LENGTH = 256
MIN_MAX_OUTPUT_TOKENS = 16  # the HTTP API's documented minimum


@dataclass(frozen=True, slots=True)
class Rejection:
    """One error as the server reports it (status plus the nested ``error`` object)."""

    status: int
    type: str
    message: str
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def invalid(message: str, *, code: str | None = None, param: str | None = None) -> Rejection:
    """A 400 ``invalid_request_error``."""
    return Rejection(400, "invalid_request_error", message, code=code, param=param)


def previous_response_not_found(response_id: str) -> Rejection:
    """The parent is neither in the connection cache nor in the persisted store."""
    return invalid(
        f"Previous response with id '{response_id}' not found.",
        code="previous_response_not_found",
        param="previous_response_id",
    )


def no_tool_output(call_id: str) -> Rejection:
    """A ``function_call`` (in the input or made by the parent) has no output in the input.

    The real API's wording; it sends no ``code``.
    """
    return invalid(f"No tool output found for function call {call_id}.", param="input")


def no_tool_call(call_id: str) -> Rejection:
    """A ``function_call_output`` answers no ``function_call`` of the conversation."""
    return invalid(
        f"No tool call found for function call output with call_id {call_id}.", param="input"
    )


def connection_limit_reached(max_age: float) -> Rejection:
    """The connection is older than its maximum age (60 minutes on the real server)."""
    minutes = max_age / 60
    limit = f"{minutes:g} minutes" if minutes >= 1 else f"{max_age:g} seconds"
    return invalid(
        f"Responses websocket connection limit reached ({limit}). "
        "Create a new websocket connection to continue.",
        code="websocket_connection_limit_reached",
    )


def stream_limit_reached(limit: int = MAX_NAMED_LANES) -> Rejection:
    """The connection already used its distinct named lanes."""
    return invalid(
        f"This websocket connection already uses {limit} distinct stream_id values, "
        "the maximum. Reuse an existing stream_id or open a new websocket connection.",
        code="websocket_stream_limit_reached",
        param="stream_id",
    )


def invalid_stream_id(stream_id: object) -> Rejection:
    """``stream_id`` is not 1-256 characters of ``[A-Za-z0-9_.-]``."""
    return invalid(
        f"Invalid 'stream_id': {stream_id!r}. Expected a string of 1 to "
        f"{STREAM_ID_MAX_LENGTH} characters matching ^[A-Za-z0-9_.-]+$.",
        code="invalid_stream_id",
        param="stream_id",
    )


def unknown_parameter(name: str) -> Rejection:
    """A field the server does not accept (used for ``stream_id`` in legacy mode)."""
    return invalid(f"Unknown parameter: '{name}'.", code="unknown_parameter", param=name)


def background_not_supported() -> Rejection:
    """``background: true`` over WebSocket; the exact code is undocumented [I]."""
    return invalid(
        "Background mode is not supported over WebSocket. Remove 'background' or use "
        "POST /v1/responses.",
        code="unsupported_parameter",
        param="background",
    )


def missing_parameter(name: str) -> Rejection:
    """A required field is absent."""
    return invalid(
        f"Missing required parameter: '{name}'.", code="missing_required_parameter", param=name
    )


def invalid_type(name: str, expected: str, value: object) -> Rejection:
    """A field has the wrong JSON type."""
    return invalid(
        f"Invalid type for '{name}': expected {expected}, but got {type(value).__name__}.",
        code="invalid_type",
        param=name,
    )


def below_minimum(name: str, minimum: int, value: int) -> Rejection:
    """An integer field is below its minimum."""
    return invalid(
        f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, "
        f"but got {value} instead.",
        code="integer_below_min_value",
        param=name,
    )


def invalid_json(detail: str) -> Rejection:
    """A text frame that is not JSON (code chosen here; OpenAI documents none)."""
    return invalid(
        f"We could not parse the JSON body of your message ({detail}). "
        "Send one JSON object per text frame.",
        code="invalid_json",
    )


def invalid_event(message: str) -> Rejection:
    """A frame that is JSON but not a client event (code chosen here)."""
    return invalid(message, code="invalid_event", param="type")


def binary_frame() -> Rejection:
    """A binary frame: the protocol only uses text frames."""
    return invalid(
        "Binary WebSocket frames are not supported. Send JSON text frames.",
        code="invalid_event",
    )


def bad_fault(detail: str, *, param: str) -> Rejection:
    """A simulator fault request the simulator does not understand."""
    return invalid(detail, code="invalid_simulator_fault", param=param)


def rate_limited(retry_after: int = 1) -> Rejection:
    """A 429 with rate-limit headers, the HTTP 429 body in the WS envelope [I shape]."""
    headers = {
        "retry-after": str(retry_after),
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": f"{retry_after}s",
        "x-ratelimit-limit-tokens": "200000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": f"{retry_after}s",
    }
    return Rejection(
        429,
        "requests",
        "Rate limit reached for requests per min (RPM): Limit 500, Used 500, Requested 1. "
        f"Please try again in {retry_after}s.",
        code="rate_limit_exceeded",
        headers=headers,
    )


def server_error() -> Rejection:
    """A 500 as the server reports it mid-stream."""
    return Rejection(
        500,
        "server_error",
        "The server had an error while processing your request. Sorry about that! "
        "You can retry your request.",
        code="server_error",
    )
