"""Server-sent events as the Responses API streams them over HTTP, and its error answers.

The transport (:mod:`bridge.upstream.http_connection`) hands each event's ``data:``
payload on as raw bytes, exactly as a WebSocket text frame; an HTTP error answer
becomes WebSocket mode's ``error`` event. Everything here reads what an untrusted
server sent: nothing raises on any input.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from bridge.protocol.encoding import compact
from bridge.upstream.connection import error_message


def complete_events(pending: bytearray) -> list[bytes]:
    """Take the complete events off the front of ``pending``: their ``data:`` payloads."""
    found: list[bytes] = []
    while True:
        end, skip = _event_end(pending)
        if end < 0:
            return found
        block = bytes(pending[:end])
        del pending[: end + skip]
        data = [
            line[5:].removeprefix(b" ")
            for line in block.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data:")
        ]
        if data and data != [b"[DONE]"]:
            found.append(b"\n".join(data))


def _event_end(pending: bytearray) -> tuple[int, int]:
    lf = pending.find(b"\n\n")
    crlf = pending.find(b"\r\n\r\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return lf, 2 if lf >= 0 else 0


def error_event(status: int, code: str, message: str) -> bytes:
    error = {"type": "invalid_request_error", "code": code, "message": message, "param": None}
    event = {"type": "error", "status": status, "error": error}
    return compact(event).encode()


def event_type(data: str) -> str | None:
    try:
        kind = json.loads(data).get("type")
    except (ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def error_code(body: bytes) -> object:
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def error_document(status: int, body: bytes, retry_after: str | None) -> dict[str, Any]:
    """An HTTP error answer (``status``, its ``body``) as WebSocket mode's ``error`` event."""
    error: dict[str, Any] = {"type": "invalid_request_error" if status < 500 else "server_error"}
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        given = json.loads(body)["error"]
        if isinstance(given, dict):
            error = {key: given.get(key) for key in ("type", "code", "message", "param")} | {
                "type": given.get("type") or error["type"]
            }
    if not error.get("message"):
        error["message"] = error_message(body) or f"HTTP {status}"
    if retry_after:
        error["headers"] = {"retry-after": retry_after}
    return {"type": "error", "status": status, "error": error}
