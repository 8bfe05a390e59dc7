"""Deciding how to answer an upgrade request (no I/O).

Checks run in this order: the path (404), the ``simulator_*`` query parameters (400
when malformed), the API key (401), then a forced status from the query or the
options. ``None`` means "accept with 101".
"""

from __future__ import annotations

import http
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from bridge_tools.simulator import rejections
from bridge_tools.simulator.faults import FaultError, HandshakeFault, parse_handshake_query
from bridge_tools.simulator.rejections import Rejection

ENDPOINT_SUFFIX = "/responses"
_KEY_HINT = "You can find your API key at https://platform.openai.com/account/api-keys."


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP error answer to the upgrade."""

    rejection: Rejection
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Target:
    """The parts of the request line the simulator looks at."""

    path: str
    query: dict[str, str]


def split_target(target: str) -> Target:
    """Split a request target such as ``/v1/responses?a=b`` (the last value wins)."""
    parts = urlsplit(target)
    return Target(parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)))


def decide(
    target: Target,
    authorization: str | None,
    *,
    api_key: str | None,
    forced_status: int | None,
    retry_after: int,
) -> tuple[Refusal | None, HandshakeFault]:
    """How to answer an upgrade, and the connection-level faults it asks for."""
    if not target.path.rstrip("/").endswith(ENDPOINT_SUFFIX):
        message = f"Invalid URL (GET {target.path})"
        return Refusal(Rejection(404, "invalid_request_error", message)), HandshakeFault()
    try:
        fault = parse_handshake_query(target.query)
    except FaultError as exc:
        return Refusal(rejections.invalid(str(exc))), HandshakeFault()
    if api_key is not None:
        refusal = check_api_key(authorization, api_key)
        if refusal is not None:
            return refusal, fault
    status = fault.status if fault.status is not None else forced_status
    if status is not None:
        wait = fault.retry_after if fault.retry_after is not None else retry_after
        return status_refusal(status, wait), fault
    return None, fault


def check_api_key(authorization: str | None, api_key: str) -> Refusal | None:
    """401 unless the header is exactly ``Bearer <api_key>``."""
    if not authorization:
        return Refusal(
            Rejection(
                401,
                "invalid_request_error",
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). "
                + _KEY_HINT,
            )
        )
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() == "bearer" and key.strip() == api_key:
        return None
    return Refusal(
        Rejection(
            401,
            "invalid_request_error",
            f"Incorrect API key provided: {mask_key(key.strip())}. {_KEY_HINT}",
            code="invalid_api_key",
        )
    )


def mask_key(key: str) -> str:
    """Show only the ends of a key, as OpenAI's 401 message does."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * min(len(key) - 7, 20)}{key[-4:]}"


def status_refusal(status: int, retry_after: int) -> Refusal:
    """An OpenAI-style error answer for a forced HTTP status."""
    wait = {"retry-after": str(retry_after)}
    match status:
        case 401:
            message = f"Incorrect API key provided. {_KEY_HINT}"
            return Refusal(Rejection(401, "invalid_request_error", message, code="invalid_api_key"))
        case 403:
            rejection = Rejection(
                403,
                "invalid_request_error",
                "Your organization or project does not have access to WebSocket mode.",
                code="permission_denied",
            )
            return Refusal(rejection)
        case 426:
            rejection = Rejection(
                426, "invalid_request_error", "WebSocket mode is not available; use HTTP."
            )
            return Refusal(rejection, {"upgrade": "websocket"})
        case 429:
            limited = rejections.rate_limited(retry_after)
            return Refusal(limited, {**limited.headers})
        case 500:
            return Refusal(rejections.server_error())
        case 503:
            rejection = Rejection(
                503,
                "server_error",
                "The server is overloaded or not ready yet.",
                code="server_is_overloaded",
            )
            return Refusal(rejection, wait)
        case _:
            phrase = _phrase(status)
            kind = "server_error" if status >= 500 else "invalid_request_error"
            return Refusal(Rejection(status, kind, f"{phrase} (simulated)."))


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
