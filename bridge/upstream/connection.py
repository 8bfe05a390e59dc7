"""The upstream side: Responses WebSockets through the `websockets` library.

:class:`Upstream` opens connections to the configured endpoint (with its one
retry policy, :func:`upstream_error` and :func:`retryable`); :class:`UpstreamConnection` is one open
socket, with an ordered writer and a reader that hands each server event, as
the raw bytes of its text frame, to a callback. Nothing above this module sees
a websockets object, and no error leaving it contains a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from bridge.backoff import backoff_delays
from bridge.config.endpoint import Endpoint
from bridge.config.sections import OpenAIConfig
from bridge.errors import UpstreamError
from bridge.protocol.redaction import Redactor
from bridge.upstream.read_budget import FrameMeter, ReadBudget

logger = logging.getLogger(__name__)

RETRYABLE_STATUS: Final = frozenset({500, 502, 503, 504})
RETRY_DELAY: Final = 0.5  # doubled per attempt; short, a person is waiting for the ack
RETRY_MAX_DELAY: Final = 4.0
ABNORMAL_CLOSURE: Final = 1006
_BODY_EXCERPT: Final = 300


def upstream_error(exc: Exception, endpoint: Endpoint, redactor: Redactor) -> UpstreamError:
    """Turn a failed handshake into an UpstreamError with nothing secret in it.

    The server's words and the exception's text go through ``redactor``.
    """
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        detail = error_message(exc.response.body)
        retry_after = exc.response.headers.get("Retry-After")
        text = f"{endpoint.display_url} answered HTTP {status}"
        if detail:
            text += f": {detail}"
        if retry_after:
            text += f" (Retry-After: {retry_after})"
        return UpstreamError(redactor.redact(text), status=status)
    if isinstance(exc, InvalidURI):
        return UpstreamError(f"invalid upstream URL {endpoint.display_url}")
    return UpstreamError(redactor.redact(f"{endpoint.display_url}: {_describe(exc)}"))


def _describe(exc: BaseException) -> str:
    """A short, human reading of a network-level failure."""
    if isinstance(exc, TimeoutError):
        return "the handshake timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, InvalidHandshake) and isinstance(cause, ssl.SSLError | OSError):
        return _describe(cause)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def retryable(error: UpstreamError) -> bool:
    """Whether another attempt may succeed: network trouble and 5xx, not 4xx."""
    return error.status is None or error.status in RETRYABLE_STATUS


def error_message(body: bytes | None) -> str:
    """The ``error.message`` of an OpenAI-style JSON error body, or a short excerpt."""
    if not body:
        return ""
    try:
        document = json.loads(body)
        message = document["error"]["message"]
        if isinstance(message, str):
            return message[:_BODY_EXCERPT]
    except (ValueError, KeyError, TypeError):
        pass
    return body[:_BODY_EXCERPT].decode("utf-8", "replace")


class Upstream:
    """Opens Responses WebSockets to one endpoint."""

    def __init__(
        self, endpoint: Endpoint, config: OpenAIConfig, secrets: tuple[str, ...] = ()
    ) -> None:
        self.endpoint = endpoint
        self.config = config
        # The endpoint's redactor knows every secret of the config; ``secrets`` adds to it.
        self.redactor = endpoint.redactor.extended(secrets)
        # What every socket of this endpoint may hold at once (openai.max_bytes_in_flight).
        self.read_budget = ReadBudget(config.max_bytes_in_flight)
        self._connection_class = type(
            "BudgetedConnection", (MeteredConnection,), {"budget": self.read_budget}
        )

    async def open(self) -> UpstreamConnection:
        """Open one connection, retrying what may pass; raise UpstreamError otherwise."""
        attempts = self.config.connect_attempts
        next_delay = backoff_delays(RETRY_DELAY, RETRY_MAX_DELAY)
        for attempt in range(1, attempts + 1):
            try:
                websocket = await connect(
                    self.endpoint.url,
                    additional_headers=list(self.endpoint.headers),
                    user_agent_header="openai-mqtt-bridge",
                    open_timeout=self.config.open_timeout,
                    ping_interval=self.config.ping_interval,
                    ping_timeout=self.config.ping_timeout,
                    close_timeout=self.config.close_timeout,
                    max_size=self.config.max_message_bytes,
                    # Server events are read as they come; more queued frames
                    # only cost memory while the broker is slow (and the read
                    # budget bounds their bytes).
                    max_queue=64,
                    create_connection=self._connection_class,
                    compression="deflate" if self.config.compression else None,
                    logger=logging.getLogger("bridge.websockets"),
                )
            except Exception as exc:
                error = upstream_error(exc, self.endpoint, self.redactor)
                if attempt == attempts or not retryable(error):
                    raise error from None
                logger.warning("upstream attempt %d/%d failed: %s", attempt, attempts, error)
                await asyncio.sleep(next_delay())
            else:
                assert isinstance(websocket, MeteredConnection)
                return UpstreamConnection(websocket)
        raise AssertionError("unreachable")  # the loop returns or raises


class MeteredConnection(ClientConnection):
    """A client socket whose data frames reserve their size from the read budget before
    their payload is read (:mod:`bridge.upstream.read_budget`).

    Reading pauses while the budget or the library's queue of frames says so,
    and goes on only when neither does.
    """

    budget: ReadBudget  # set on the subclass each Upstream makes
    meter: FrameMeter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._held_by: set[str] = set()
        max_frame = self.protocol.max_size or sys.maxsize
        self.meter = FrameMeter(
            self.budget,
            functools.partial(self._hold, "budget"),
            functools.partial(self._let_go, "budget"),
            max_frame,
        )
        # The library's queue pauses reading through these (websockets 15's Assembler,
        # pinned in pyproject.toml); they now share the transport with the budget.
        self.recv_messages.pause = functools.partial(self._hold, "queue")
        self.recv_messages.resume = functools.partial(self._let_go, "queue")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.meter.received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.meter.close()
        super().connection_lost(exc)

    def _hold(self, reason: str) -> None:
        if not self._held_by:
            self.transport.pause_reading()
        self._held_by.add(reason)

    def _let_go(self, reason: str) -> None:
        self._held_by.discard(reason)
        if not self._held_by:
            self.transport.resume_reading()


class UpstreamConnection:
    """One open Responses WebSocket: ordered sends, and a reader of server events."""

    def __init__(self, websocket: MeteredConnection) -> None:
        self._websocket = websocket
        self._outgoing: asyncio.Queue[str | tuple[int, str]] = asyncio.Queue()
        self._closed: ConnectionClosed | None = None
        self._aborted = False

    def send(self, data: str) -> None:
        """Queue a client event; sends leave in the order queued."""
        self._outgoing.put_nowait(data)

    def close(self, code: int, reason: str) -> None:
        """Queue the close handshake, after every send queued before it."""
        self._outgoing.put_nowait((code, reason))

    async def run(
        self,
        deliver: Callable[[bytes], bool],
        room: Callable[[], Awaitable[None]],
        on_written: Callable[[int], None],
    ) -> tuple[int, str]:
        """Relay server events until the connection ends; return its close code and reason.

        ``deliver`` takes each event without waiting, or returns False when
        it cannot take more now; the reader then awaits ``room()`` and
        delivers the same event again, reading nothing meanwhile: that pushes
        back on the upstream. ``room`` decides how long that may take (it
        ends the connection with :meth:`abort` when it is too long).
        ``on_written(len(data))`` is called once for every :meth:`send`, when
        its data is written or, the connection having ended, dropped.
        """
        writer = asyncio.create_task(self._write(on_written), name="bridge.ws_out")
        try:
            await self._read(deliver, room)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            while not self._outgoing.empty():
                item = self._outgoing.get_nowait()
                if isinstance(item, str):
                    on_written(len(item))
        return self._outcome()

    def abort(self) -> None:
        """Drop the TCP connection at once, without a close handshake.

        No further event is handed on, not even one already received.
        """
        self._aborted = True
        transport = self._websocket.transport
        if transport is not None:
            transport.abort()

    async def _read(
        self, deliver: Callable[[bytes], bool], room: Callable[[], Awaitable[None]]
    ) -> None:
        websocket = self._websocket
        meter = websocket.meter
        try:
            while not self._aborted:
                raw = await websocket.recv(decode=False)
                if not isinstance(raw, bytes):  # decode=False gives bytes; keep mypy honest
                    raw = raw.encode()
                while not self._aborted and not deliver(raw):
                    await room()
                meter.delivered(len(raw))  # handed on: its frames leave the read budget
                # Not held while the next event is awaited: an idle socket would keep its
                # last event (a whole response.completed) for as long as it stays open.
                del raw
        except ConnectionClosed as exc:
            self._closed = exc

    async def _write(self, on_written: Callable[[int], None]) -> None:
        websocket = self._websocket
        with contextlib.suppress(ConnectionClosed):
            while True:
                item = await self._outgoing.get()
                if not isinstance(item, str):
                    code, reason = item
                    await websocket.close(code, reason)
                    return
                size = len(item)
                try:
                    await websocket.send(item)
                finally:
                    # Not held while the next send is awaited: an idle socket would keep
                    # its last request (an `ask` carries its whole transcript) till it closes.
                    del item
                    on_written(size)

    def _outcome(self) -> tuple[int, str]:
        """The close code and reason to report: the server's, else the one we failed with.

        When the server sent no close frame but we failed the connection
        ourselves (a ping timeout: 1011, an oversized event: 1009), our code
        says more than a bare 1006.
        """
        closed = self._closed
        if closed is not None and closed.rcvd is not None:
            return closed.rcvd.code, closed.rcvd.reason
        if closed is not None and closed.sent is not None and closed.sent.code != 1000:
            return closed.sent.code, closed.sent.reason
        code = self._websocket.close_code or ABNORMAL_CLOSURE
        reason = self._websocket.close_reason or ""
        if code == ABNORMAL_CLOSURE and not reason:
            reason = "connection lost without a close frame"
        return code, reason
