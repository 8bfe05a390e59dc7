"""Scripted faults: their vocabulary and parsing (no I/O).

A request asks for a fault in one of two ways:

- ``"metadata": {"simulator_fault": "close_1011"}`` in its ``response.create``;
- a trigger phrase anywhere in its input text: ``"Tell me a joke [[fault:close_1011]]"``,
  so that someone typing into a Node-RED flow can trigger one.

A connection asks for handshake-level faults with query parameters on the upgrade URL
(``?simulator_status=429``, ``?simulator_close=1008``); see :func:`parse_handshake_query`.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

METADATA_KEY = "simulator_fault"
TRIGGER_RE = re.compile(r"\[\[\s*fault\s*:\s*([^\[\]]*?)\s*\]\]", re.IGNORECASE)
STATUS_QUERY = "simulator_status"
RETRY_AFTER_QUERY = "simulator_retry_after"
CLOSE_QUERY = "simulator_close"

MAX_GAP = 3600.0  # a longer gap is surely a typo
# Codes a server may put in a Close frame (RFC 6455 7.4.1 and the IANA registry);
# 1005/1006/1015 must never be sent, 1004 is reserved.
SENDABLE_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)
CLOSE_REASONS = {
    1000: "normal closure",
    1001: "going away",
    1008: "policy violation",
    1011: "internal server error",
    1012: "service restart",
    1013: "try again later",
}


class FaultKind(enum.StrEnum):
    """What goes wrong; the value is the name used in metadata and trigger phrases."""

    DROP_BEFORE_CREATED = "drop_before_created"
    DROP_AFTER_CREATED = "drop_after_created"
    DROP_MID_STREAM = "drop_mid_stream"
    CLOSE = "close"
    FAILED = "failed"
    INCOMPLETE = "incomplete"
    ERROR_MID_STREAM = "error_mid_stream"
    RATE_LIMIT = "rate_limit"
    GAP = "gap"
    NO_PONG = "no_pong"
    HANG = "hang"
    HUGE_COMPLETED = "huge_completed"


# One line per name, for error messages and the README.
FAULT_HELP: dict[str, str] = {
    "drop_before_created": "abort the TCP connection before any event (client sees 1006)",
    "drop_after_created": "abort the TCP connection right after response.created",
    "drop_mid_stream": "abort the TCP connection halfway through the text deltas",
    "close_<code>": "close with <code> halfway through the deltas (1001, 1011, 1012, 4000…)",
    "failed": "end with response.failed (error.code server_error)",
    "incomplete": "end with response.incomplete (reason max_output_tokens), text cut in half",
    "incomplete_content_filter": "end with response.incomplete (reason content_filter)",
    "error_mid_stream": "send an error event (500 server_error) with a sequence_number mid-stream",
    "rate_limit": "send a 429 rate_limit_exceeded error event instead of response.created",
    "gap_<seconds>": "stay silent for <seconds> halfway through the deltas (pings answered)",
    "no_pong": "stop answering pings on this connection (the client's ping timeout fires)",
    "hang": "stop answering pings and send nothing more after response.created",
    "huge_completed": "make response.completed larger than 1 MiB (other frames stay below)",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted fault for one request."""

    kind: FaultKind
    close_code: int | None = None  # CLOSE
    seconds: float | None = None  # GAP
    incomplete_reason: str = "max_output_tokens"  # INCOMPLETE


class FaultError(ValueError):
    """A fault name that is not in the vocabulary."""


def parse_fault(name: str) -> Fault:
    """Parse a fault name such as ``close_1011``, ``gap_2.5`` or ``failed``.

    Raises:
        FaultError: if the name is unknown or its argument is out of range.
    """
    text = name.strip().lower().replace("-", "_")
    if text == "drop_mid_delta":
        return Fault(FaultKind.DROP_MID_STREAM)
    if text == "incomplete_content_filter":
        return Fault(FaultKind.INCOMPLETE, incomplete_reason="content_filter")
    if text.startswith("close_"):
        return Fault(FaultKind.CLOSE, close_code=_close_code(text.removeprefix("close_")))
    if text.startswith("gap_"):
        return Fault(FaultKind.GAP, seconds=_seconds(text.removeprefix("gap_")))
    try:
        kind = FaultKind(text)
    except ValueError:
        raise FaultError(f"unknown simulator fault {name!r}; known: {known_faults()}") from None
    if kind in (FaultKind.CLOSE, FaultKind.GAP):
        raise FaultError(f"simulator fault {name!r} needs an argument, e.g. close_1011, gap_5")
    return Fault(kind)


def known_faults() -> str:
    """The fault names, comma-separated."""
    return ", ".join(FAULT_HELP)


def _close_code(text: str) -> int:
    if not text.isdigit() or not is_sendable_close_code(int(text)):
        raise FaultError(f"bad close code {text!r}: use 1000-1003, 1007-1014 or 3000-4999")
    return int(text)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise FaultError(f"bad gap {text!r}: use seconds, e.g. gap_2.5") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_GAP:
        raise FaultError(f"bad gap {text!r}: use 0 to {MAX_GAP:g} seconds")
    return seconds


def is_sendable_close_code(code: int) -> bool:
    """Whether a server may send code in a Close frame."""
    return code in SENDABLE_CLOSE_CODES or 3000 <= code <= 4999


def find_fault(metadata: Mapping[str, object], texts: Iterable[str]) -> Fault | None:
    """The fault a request asks for, from its metadata first, then its input text.

    Raises:
        FaultError: if the requested fault is not in the vocabulary.
    """
    value = metadata.get(METADATA_KEY)
    if isinstance(value, str) and value.strip():
        return parse_fault(value)
    for text in texts:
        match = TRIGGER_RE.search(text)
        if match:
            return parse_fault(match.group(1))
    return None


@dataclass(frozen=True, slots=True)
class HandshakeFault:
    """What the query string of an upgrade request asks the server to do."""

    status: int | None = None  # answer the upgrade with this HTTP status
    retry_after: int | None = None  # Retry-After seconds for 429/503
    close_code: int | None = None  # accept, then close at once with this code


def parse_handshake_query(query: Mapping[str, str]) -> HandshakeFault:
    """Read the ``simulator_*`` query parameters of an upgrade request.

    Raises:
        FaultError: if a value is malformed (the caller answers HTTP 400).
    """
    status = _int_param(query, STATUS_QUERY)
    if status is not None and not 400 <= status <= 599:
        raise FaultError(f"{STATUS_QUERY} must be an HTTP error status (400-599), not {status}")
    retry_after = _int_param(query, RETRY_AFTER_QUERY)
    if retry_after is not None and retry_after < 0:
        raise FaultError(f"{RETRY_AFTER_QUERY} must not be negative")
    close_code = _int_param(query, CLOSE_QUERY)
    if close_code is not None and not is_sendable_close_code(close_code):
        raise FaultError(f"{CLOSE_QUERY}={close_code} is not a close code a server may send")
    return HandshakeFault(status=status, retry_after=retry_after, close_code=close_code)


def _int_param(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise FaultError(f"{name} must be an integer, not {value!r}") from None


def close_reason(code: int) -> str:
    """A short reason phrase for a simulated close."""
    return CLOSE_REASONS.get(code, "simulated close")
