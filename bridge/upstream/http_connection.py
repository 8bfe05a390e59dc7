"""The upstream over HTTP: streamed ``POST /v1/responses``, behind the WebSocket's interface.

For endpoints without WebSocket mode (local models, gateways). :class:`HttpUpstream`
and :class:`HttpUpstreamConnection` have the methods the daemon uses of
:class:`~bridge.upstream.connection.Upstream` and
:class:`~bridge.upstream.connection.UpstreamConnection`, so nothing above this
module knows which transport it drives:

- :meth:`HttpUpstream.open` opens a *logical* session. It checks the endpoint
  once, as cheaply as it allows: ``GET <base>/models`` with the key (one small
  request that proves the server is there and takes the key; 404 or 405 there
  counts as reachable, for servers that list no models), with the WebSocket
  handshake's retries and errors (so a 401 is ``upstream_connect_failed`` with
  ``error.status`` 401, as over WebSocket).
- Each written ``response.create`` is one streamed POST. Requests of one session
  run one after the other, in the order written (WebSocket's default lane); the
  ``data:`` payload of each server-sent event goes, as its raw bytes, in order, to
  the same reader callback as WebSocket text frames.
- An HTTP error answer to a POST (400, 401, 403, 404, 429, 5xx) is handed on as
  the ``error`` event WebSocket mode sends (``{"type": "error", "status": ...,
  "error": {...}}``), the server's message scrubbed of the bridge's secrets.
- ``response.cancel`` ends the running stream at once; the request ends with an
  ``error`` event of code ``response_cancelled`` (status 499) made by the bridge.
  Other client events have no HTTP form: each gets an ``error`` event of code
  ``unsupported_over_http``.
- :meth:`HttpUpstreamConnection.close` ends the running stream and the session
  (its close code and reason are what the session reports); a stream cut before
  its response ended ends the session (1006), as a lost socket does.
- Memory: the endpoint's :class:`~bridge.upstream.http_memory.ReplayBook`.

The upstream is untrusted: an event larger than ``max_message_bytes`` ends the
session (1009), and events read and not yet handed on reserve their bytes from
the same :class:`~bridge.upstream.read_budget.ReadBudget` kind of pool as the
WebSocket reader (a stream waits for room, in turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx2

from bridge.backoff import backoff_delays
from bridge.config.endpoint import Endpoint
from bridge.errors import UpstreamError
from bridge.protocol.encoding import compact
from bridge.protocol.server_events import REQUEST_ENDING_EVENTS, server_event_type
from bridge.upstream.connection import RETRY_DELAY, RETRY_MAX_DELAY, error_message, retryable
from bridge.upstream.http_memory import NOT_FOUND, Memory, Prepared, ReplayBook
from bridge.upstream.read_budget import FrameMeter, ReadBudget
from bridge.upstream.sse import complete_events, error_code, error_document, error_event, event_type

logger = logging.getLogger(__name__)

ABNORMAL_CLOSURE: Final = 1006
MESSAGE_TOO_BIG: Final = 1009
CANCELLED_STATUS: Final = 499  # nginx's "client closed request": the bridge ended the stream
_ERROR_BODY_MAX: Final = 64 * 1024
_SCHEMES: Final = {"wss": "https", "ws": "http"}


class HttpSettings(Protocol):
    """What the HTTP transport reads of its endpoint's settings (``openai`` has them all)."""

    @property
    def open_timeout(self) -> float: ...
    @property
    def connect_attempts(self) -> int: ...
    @property
    def max_message_bytes(self) -> int: ...
    @property
    def max_bytes_in_flight(self) -> int: ...


@dataclass(frozen=True, slots=True)
class HttpUrls:
    """Where the transport posts and checks, and what logs show."""

    responses: str
    models: str
    display: str


def http_urls(endpoint: Endpoint) -> HttpUrls:
    """The HTTP URLs of an endpoint built for WebSocket mode (``wss`` → ``https``, the
    same path, query and credentials)."""

    def swap(url: str, path_end: str | None = None) -> str:
        parts = urlsplit(url)
        path = parts.path
        if path_end is not None and path.endswith("/responses"):
            path = path[: -len("/responses")] + path_end
        return urlunsplit(
            parts._replace(scheme=_SCHEMES.get(parts.scheme, parts.scheme), path=path)
        )

    return HttpUrls(swap(endpoint.url), swap(endpoint.url, "/models"), swap(endpoint.display_url))


class HttpUpstream:
    """Opens logical sessions on one endpoint over HTTP (see the module docstring)."""

    def __init__(
        self,
        endpoint: Endpoint,
        config: HttpSettings,
        secrets: tuple[str, ...] = (),
        *,
        memory: Memory = "auto",
        replay_bytes: int = 4 * 1024 * 1024,
        read_timeout: float = 300.0,
        check: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.config = config
        self.urls = http_urls(endpoint)
        self.redactor = endpoint.redactor.extended(secrets)
        self.read_budget = ReadBudget(config.max_bytes_in_flight)
        self.book = ReplayBook(memory, replay_bytes)
        self.check = check
        timeout = httpx2.Timeout(
            config.open_timeout, read=read_timeout, pool=None, connect=config.open_timeout
        )
        self.client = httpx2.AsyncClient(
            headers=[*endpoint.headers, ("User-Agent", "openai-mqtt-bridge")],
            timeout=timeout,
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=32),
            follow_redirects=False,
        )

    async def open(self) -> HttpUpstreamConnection:
        """Check the endpoint (unless ``check`` is off), retrying what may pass; raise
        UpstreamError otherwise."""
        if self.check:
            await self._check()
        return HttpUpstreamConnection(self)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _check(self) -> None:
        attempts = self.config.connect_attempts
        next_delay = backoff_delays(RETRY_DELAY, RETRY_MAX_DELAY)
        for attempt in range(1, attempts + 1):
            try:
                response = await self.client.get(self.urls.models)
                if response.status_code < 400 or response.status_code in (404, 405):
                    return
                raise self.status_error(response.status_code, response.content, response.headers)
            except UpstreamError as exc:
                error = exc
            except (httpx2.HTTPError, OSError) as exc:
                error = UpstreamError(
                    self.redactor.redact(f"{self.urls.display}: {_describe(exc)}")
                )
            if attempt == attempts or not retryable(error):
                raise error
            logger.warning("upstream attempt %d/%d failed: %s", attempt, attempts, error)
            await asyncio.sleep(next_delay())

    def status_error(self, status: int, body: bytes, headers: httpx2.Headers) -> UpstreamError:
        """An HTTP error answer as an UpstreamError, as the WebSocket handshake words it."""
        text = f"{self.urls.display} answered HTTP {status}"
        detail = error_message(body)
        if detail:
            text += f": {detail}"
        retry_after = headers.get("Retry-After")
        if retry_after:
            text += f" (Retry-After: {retry_after})"
        return UpstreamError(self.redactor.redact(text), status=status)


class _StreamMeter(FrameMeter):
    """The read budget's account of one session's streams: each event's bytes are reserved
    before it is handed on (waiting, in turn, when the pool is full) and given back after."""

    def __init__(self, budget: ReadBudget, max_event: int) -> None:
        self._room = asyncio.Event()
        self._room.set()
        super().__init__(budget, self._room.clear, self._room.set, max_event)

    async def reserve(self, size: int) -> None:
        if self._budget.ask(self, size):
            self.held += size
            return
        self.wanted = size
        self._pause()
        await self._room.wait()


class _Ended(Exception):
    """The session ends with this close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class HttpUpstreamConnection:
    """One logical session over HTTP: ordered requests, and a reader of their events."""

    def __init__(self, upstream: HttpUpstream) -> None:
        self._upstream = upstream
        self._outgoing: asyncio.Queue[str | tuple[int, str] | None] = asyncio.Queue()
        self._stream: asyncio.Task[bool] | None = None
        self._cancelled = False  # the running stream was ended by response.cancel
        self._closing: tuple[int, str] | None = None
        self._aborted = False
        self._meter = _StreamMeter(upstream.read_budget, upstream.config.max_message_bytes)

    def send(self, data: str) -> None:
        """Queue a client event; ``response.cancel`` also ends the running stream now."""
        if event_type(data) == "response.cancel" and self._stream is not None:
            self._cancelled = True
            self._stream.cancel()
        self._outgoing.put_nowait(data)

    def close(self, code: int, reason: str) -> None:
        """End the session after the events queued before it (the running stream ends now)."""
        self._closing = (code, reason)
        if self._stream is not None:
            self._stream.cancel()
        self._outgoing.put_nowait((code, reason))

    def abort(self) -> None:
        """End the session at once; no further event is handed on."""
        self._aborted = True
        if self._stream is not None:
            self._stream.cancel()
        self._outgoing.put_nowait(None)

    async def run(
        self,
        deliver: Callable[[bytes], bool],
        room: Callable[[], Awaitable[None]],
        on_written: Callable[[int], None],
    ) -> tuple[int, str]:
        """Post each written request and relay its events until the session ends; return
        its close code and reason (the contract of UpstreamConnection.run)."""
        try:
            return await self._run(deliver, room, on_written)
        finally:
            self._meter.close()
            while not self._outgoing.empty():
                item = self._outgoing.get_nowait()
                if isinstance(item, str):
                    on_written(len(item))

    async def _run(
        self,
        deliver: Callable[[bytes], bool],
        room: Callable[[], Awaitable[None]],
        on_written: Callable[[int], None],
    ) -> tuple[int, str]:
        async def hand_on(raw: bytes) -> None:
            while not self._aborted and not deliver(raw):
                await room()

        while True:
            item = await self._outgoing.get()
            if self._aborted or item is None:
                return ABNORMAL_CLOSURE, "the bridge dropped the session"
            if isinstance(item, tuple):
                return item
            size = len(item)
            if self._closing is not None:  # written after a close: dropped, as on a socket
                on_written(size)
                continue
            kind = event_type(item)
            try:
                if kind == "response.create":
                    event = json.loads(item)
                    del item
                    on_written(size)
                    await self._request(event, hand_on)
                elif kind == "response.cancel":
                    on_written(size)  # the stream it ended (if any) answered already
                else:
                    on_written(size)
                    message = f"{kind!r} has no HTTP form: only response.create is sent over HTTP"
                    await hand_on(error_event(400, "unsupported_over_http", message))
            except _Ended as ended:
                return ended.code, ended.reason

    async def _request(
        self, event: dict[str, Any], hand_on: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """One POST, streamed; retried replayed once when ``auto`` learns the server forgets."""
        book = self._upstream.book
        prepared = book.prepare(event)
        for _ in range(2):
            self._cancelled = False
            self._stream = asyncio.create_task(self._post(prepared, hand_on))
            try:
                again = await asyncio.shield(self._stream)
            except asyncio.CancelledError:
                if self._stream.cancelled() and not self._aborted:
                    if self._closing is not None:
                        raise _Ended(*self._closing) from None
                    if self._cancelled:
                        message = "response.cancel: the bridge ended the stream"
                        await hand_on(error_event(CANCELLED_STATUS, "response_cancelled", message))
                        return
                if self._aborted:
                    raise _Ended(ABNORMAL_CLOSURE, "the bridge dropped the session") from None
                self._stream.cancel()
                raise
            finally:
                self._stream = None
            if not again:
                return
            logger.info(
                "%s does not keep responses (previous_response_not_found): conversations "
                "are replayed from now on",
                self._upstream.urls.display,
            )
            prepared = book.prepare(event, replay=True)

    async def _post(
        self, prepared: Prepared, hand_on: Callable[[bytes], Awaitable[None]]
    ) -> bool:  # True: send it again, replayed
        upstream = self._upstream
        try:
            async with upstream.client.stream(
                "POST",
                upstream.urls.responses,
                json=prepared.body,
                headers={"Accept": "text/event-stream"},
            ) as response:
                if response.status_code >= 400:
                    body = await _read_some(response)
                    if error_code(body) == NOT_FOUND and upstream.book.learned_not_found(prepared):
                        return True
                    await hand_on(self._status_event(response.status_code, body, response.headers))
                    return False
                await self._relay(response, prepared, hand_on)
        except (httpx2.HTTPError, OSError) as exc:
            text = upstream.redactor.redact(_describe(exc))
            raise _Ended(ABNORMAL_CLOSURE, f"the stream broke: {text}") from None
        return False

    async def _relay(
        self,
        response: httpx2.Response,
        prepared: Prepared,
        hand_on: Callable[[bytes], Awaitable[None]],
    ) -> None:
        limit = self._upstream.config.max_message_bytes
        meter = self._meter
        pending = bytearray()
        ended = False
        async for chunk in response.aiter_raw():
            pending += chunk
            for raw in complete_events(pending):
                if len(raw) > limit:
                    raise _Ended(MESSAGE_TOO_BIG, "a server event is larger than max_message_bytes")
                kind = server_event_type(raw)
                if kind in REQUEST_ENDING_EVENTS:
                    ended = True
                    if kind == "response.completed":
                        self._remember(prepared, raw)
                await meter.reserve(len(raw))
                await hand_on(raw)
                meter.delivered(len(raw))
            if len(pending) > limit + 2:
                raise _Ended(MESSAGE_TOO_BIG, "a server event is larger than max_message_bytes")
        if not ended:
            raise _Ended(ABNORMAL_CLOSURE, "the stream ended before its response did")

    def _remember(self, prepared: Prepared, raw: bytes) -> None:
        with contextlib.suppress(ValueError):
            document = json.loads(raw)
            response = document.get("response") if isinstance(document, dict) else None
            if isinstance(response, dict):
                self._upstream.book.completed(prepared, response)

    def _status_event(self, status: int, body: bytes, headers: httpx2.Headers) -> bytes:
        """An HTTP error answer as WebSocket mode's ``error`` event, scrubbed."""
        raw = compact(error_document(status, body, headers.get("Retry-After")))
        return self._upstream.redactor.redact(raw).encode()


async def _read_some(response: httpx2.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) >= _ERROR_BODY_MAX:
            break
    return bytes(body[:_ERROR_BODY_MAX])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx2.TimeoutException):
        return "the request timed out"
    if isinstance(exc, httpx2.ConnectError):
        return f"cannot connect ({exc})" if str(exc) else "cannot connect"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
