"""Simulator options and the records it keeps for test assertions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # inbound ceiling seen on the Codex backend


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    """How the simulated Responses WebSocket server behaves. Durations are in seconds.

    Attributes:
        api_key: When set, the upgrade must carry ``Authorization: Bearer <api_key>``;
            otherwise it gets HTTP 401 with an OpenAI-style JSON body.
        tokens_per_second: Pace of text deltas; None sends them as fast as possible.
        first_token_delay: Pause between ``response.in_progress`` and the first delta.
        max_connection_age: After this, ``response.create`` gets
            ``websocket_connection_limit_reached`` (the real limit is 60 minutes).
        seed: Varies ids and answer wording; equal seeds give equal output.
        legacy_single_lane: Mimic Azure / pre-August 2026 servers: one response at a
            time per connection and ``stream_id`` rejected as an unknown parameter.
        response_done: End responses with ``response.done`` (as the ChatGPT backend
            does) instead of ``response.completed``/``failed``/``incomplete``.
        flat_errors: Send ``error`` events in the legacy flat SSE shape.
        binary_frames: Answer a binary frame with an ``error`` event, or close 1003.
        fixed_reply: Answer every request with this text instead of generated text.
        max_message_size: Inbound messages above this many bytes close the
            connection with 1009; None for no limit.
        max_in_flight: Responses generated at once per connection; more are queued.
        max_named_lanes: Distinct ``stream_id`` values allowed per connection.
        push_limit_error: At ``max_connection_age``, also push the limit error on an
            idle connection (after any response in flight finishes), then close.
        limit_close_code: The close code used after pushing the limit error.
        handshake_status: Answer every upgrade with this HTTP error status.
        retry_after: ``Retry-After`` seconds on 429/503 answers and rate-limit errors.
        compression: Offer permessage-deflate.
        store_latency: Extra delay before a response hydrated from the persisted
            store (``store=true``, not in the connection cache) starts.
        ping_interval: Send keepalive pings this often; None (the default) sends none,
            as OpenAI documents no server pings.
        ping_timeout: Close with 1011 when a server ping gets no pong in this time.
        close_timeout: How long the server waits for the closing handshake.
        http_memory: What the HTTP endpoint (:mod:`.http_server`) does with a
            ``previous_response_id``: ``store`` continues from responses stored with
            ``store`` true (as OpenAI does), ``forget`` answers
            ``previous_response_not_found`` to every one, ``ignore`` drops it.
        http_refuse_store: The HTTP endpoint refuses ``store: true`` with a 400.
    """

    api_key: str | None = None
    tokens_per_second: float | None = None
    first_token_delay: float = 0.0
    max_connection_age: float = 3600.0
    seed: int = 0
    # Protocol variants
    legacy_single_lane: bool = False
    response_done: bool = False
    flat_errors: bool = False
    binary_frames: Literal["error", "close"] = "error"
    fixed_reply: str | None = None
    # Limits
    max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE
    max_in_flight: int = 16
    max_named_lanes: int = 32
    # Connection age
    push_limit_error: bool = False
    limit_close_code: int = 1000
    # Handshake
    handshake_status: int | None = None
    retry_after: int = 1
    compression: bool = True
    # Timing
    store_latency: float = 0.0
    ping_interval: float | None = None
    ping_timeout: float | None = 20.0
    close_timeout: float = 2.0
    # The HTTP endpoint (POST /v1/responses): a server that keeps less
    http_memory: Literal["store", "forget", "ignore"] = "store"
    http_refuse_store: bool = False


@dataclass(frozen=True, slots=True)
class Handshake:
    """One upgrade request and the status it got (101 when accepted)."""

    connection: int
    path: str
    query: dict[str, str]
    headers: tuple[tuple[str, str], ...]
    status: int

    def header(self, name: str) -> str | None:
        """The first value of a header, matched case-insensitively."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(frozen=True, slots=True)
class Received:
    """One client message: text (str) or binary (bytes), with its ``type`` if any."""

    connection: int
    data: str | bytes
    type: str | None

    def json(self) -> Any:
        """The message parsed as JSON (raises ValueError if it is not JSON)."""
        return json.loads(self.data)


@dataclass(frozen=True, slots=True)
class Closed:
    """How one accepted connection ended.

    Attributes:
        code: The close code the client sent; None if it sent no Close frame.
        reason: The reason the client sent; None if it sent no Close frame.
        server_initiated: Whether the server closed or dropped the connection first.
        server_code: The close code the server sent; None if it sent none.
    """

    connection: int
    code: int | None
    reason: str | None
    server_initiated: bool
    server_code: int | None
