"""The simulator's HTTP side: ``POST /v1/responses`` streamed as server-sent events.

The same requests, plans and events as the WebSocket side (:mod:`.plan`, :mod:`.events`),
served the way the Responses HTTP API serves them: a request that fails before its
response is created gets an HTTP status and an OpenAI error body (401, 404, 429, 5xx
and every 400), and a request that starts is answered ``200 text/event-stream``, one
``event:``/``data:`` pair per event, the stream ending after the terminal event. A
request with ``stream`` not true gets the finished response object as JSON.

What HTTP has not: no connection-local cache (a ``previous_response_id`` continues
only from the persisted store, so only from a response made with ``store`` left
true), no lanes (``stream_id`` is an unknown parameter) and no ``generate: false``.
``SimulatorOptions.http_memory`` simulates servers that keep less: ``forget`` answers
every ``previous_response_id`` with ``previous_response_not_found``, ``ignore``
drops it (the answer starts a new conversation, as some local servers do), and
``http_refuse_store`` refuses ``store: true``. ``GET /v1/models`` lists the model.

It runs on a port of its own (WebSocket upgrades there get 405, as on servers
without WebSocket mode); h11 does the HTTP/1.1 framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Final

import h11

from bridge_tools.simulator import events, rejections
from bridge_tools.simulator.connection import Shared
from bridge_tools.simulator.handshake import ENDPOINT_SUFFIX, check_api_key, decide, split_target
from bridge_tools.simulator.inbound import CREATE, BadFrame, CreateRequest, parse_create
from bridge_tools.simulator.options import Handshake, Received
from bridge_tools.simulator.plan import plan_request
from bridge_tools.simulator.rejections import Rejection
from bridge_tools.simulator.state import ConnectionState, Parent
from bridge_tools.simulator.steps import Abort, Close, Hang, Pause, Plan, Send, Settle

logger = logging.getLogger(__name__)

_READ_SIZE: Final = 64 * 1024
_MODELS_SUFFIX: Final = "/models"
_TERMINAL: Final = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "response.done"}
)
Headers = list[tuple[bytes, bytes]]


class _ClientGone(Exception):
    """The client closed its side while a stream was being written."""


class HttpFront:
    """Serves the HTTP API next to a simulator's WebSocket server (same plans, same store)."""

    def __init__(
        self,
        shared: Shared,
        record: Callable[[Handshake | Received], None],
        number: Callable[[], int],
        forced_status: Callable[[], int | None],
    ) -> None:
        self.shared = shared
        self.record = record
        self.number = number
        self.forced_status = forced_status
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await _Exchange(self, reader, writer).run()
        except (ConnectionError, _ClientGone, h11.ProtocolError):
            pass
        except asyncio.CancelledError:  # the simulator closes: this exchange is over
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _Exchange:
    """One TCP connection: requests one after the other (keep-alive), no pipelining."""

    def __init__(
        self, front: HttpFront, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._front = front
        self._shared = front.shared
        self._reader = reader
        self._writer = writer
        max_size = self._shared.options.max_message_size
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        self._max_body = max_size if max_size is not None else 1 << 40

    async def run(self) -> None:
        while True:
            request = await self._next(h11.Request)
            if not isinstance(request, h11.Request):
                return
            body = bytearray()
            while True:
                event = await self._next((h11.Data, h11.EndOfMessage))
                if event is None:
                    return
                if isinstance(event, h11.EndOfMessage):
                    break
                assert isinstance(event, h11.Data)
                body += event.data
                if len(body) > self._max_body:
                    await self._error(Rejection(413, "invalid_request_error", "Too large."), [])
                    return
            await self._answer(request, bytes(body))
            if self._h11.our_state is h11.MUST_CLOSE or self._h11.their_state is h11.MUST_CLOSE:
                return
            self._h11.start_next_cycle()

    async def _next(self, kinds: type | tuple[type, ...]) -> h11.Event | None:
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                data = await self._reader.read(_READ_SIZE)
                self._h11.receive_data(data)
                continue
            if isinstance(event, kinds) and isinstance(event, h11.Event):
                return event
            return None  # ConnectionClosed, PAUSED or anything unexpected ends the exchange

    # Routing

    async def _answer(self, request: h11.Request, body: bytes) -> None:
        front = self._front
        number = front.number()
        target = split_target(request.target.decode("latin-1"))
        headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers
        ]
        authorization = next((v for k, v in headers if k.lower() == "authorization"), None)
        method = request.method.decode("ascii").upper()
        path = target.path.rstrip("/")
        status = 200
        try:
            if method == "GET" and path.endswith(_MODELS_SUFFIX):
                status = await self._models(authorization)
            elif method == "POST" and path.endswith(ENDPOINT_SUFFIX):
                forced = front.forced_status()
                refusal, _ = decide(
                    target,
                    authorization,
                    api_key=self._shared.options.api_key,
                    forced_status=forced,
                    retry_after=self._shared.options.retry_after,
                )
                if refusal is not None:
                    status = refusal.rejection.status
                    await self._error(refusal.rejection, _pairs(refusal.headers))
                else:
                    status = await self._responses(number, body)
            else:
                allowed = "POST" if path.endswith(ENDPOINT_SUFFIX) else None
                status = 405 if allowed else 404
                message = f"Invalid URL ({method} {target.path})"
                rejection = Rejection(status, "invalid_request_error", message)
                await self._error(rejection, [(b"allow", b"POST")] if allowed else [])
        finally:
            self._front.record(Handshake(number, target.path, target.query, tuple(headers), status))

    async def _models(self, authorization: str | None) -> int:
        api_key = self._shared.options.api_key
        refusal = check_api_key(authorization, api_key) if api_key is not None else None
        if refusal is not None:
            await self._error(refusal.rejection, [])
            return refusal.rejection.status
        model = events.resolve_model("gpt-5")
        document = {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "sim"}]}
        await self._json(200, document, [])
        return 200

    async def _responses(self, number: int, body: bytes) -> int:
        shared = self._shared
        text = body.decode("utf-8", "replace")
        self._front.record(Received(number, text, CREATE))
        parsed, streamed = _parse(body)
        if isinstance(parsed, BadFrame):
            await self._error(parsed.rejection, [])
            return parsed.rejection.status
        if shared.options.http_refuse_store and parsed.body.get("store") is True:
            rejection = refuse_store_rejection()
            await self._error(rejection, [])
            return rejection.status
        parent = self._parent(parsed)
        if isinstance(parent, Parent) and shared.options.store_latency:
            await asyncio.sleep(shared.options.store_latency)
        plan = plan_request(
            parsed, parent, ids=shared.ids, now=int(time.time()), settings=shared.settings
        )
        first = next((step for step in plan.steps if isinstance(step, Send)), None)
        if first is not None and first.event.get("type") == "error":
            return await self._refused(plan, parsed, first.event)
        if streamed:
            await self._stream(plan, parsed)
        else:
            await self._whole(plan, parsed)
        return 200

    def _parent(self, request: CreateRequest) -> Parent | Rejection | None:
        options = self._shared.options
        previous = request.previous_response_id
        if previous is None or options.http_memory == "ignore":
            return None
        if options.http_memory == "forget":
            return rejections.previous_response_not_found(previous)
        state = ConnectionState()  # HTTP has no connection cache: the persisted store only
        return state.resolve(previous, store=request.store, persisted=self._shared.store)

    # Answers

    async def _refused(self, plan: Plan, request: CreateRequest, event: events.JSON) -> int:
        """A request that fails before it starts: HTTP status and error body."""
        self._settle(plan, request, succeeded=False)
        error = event.get("error")
        if not isinstance(error, dict):  # flat_errors: the legacy shape
            error = {key: event.get(key) for key in ("code", "message", "param")}
            error["type"] = "invalid_request_error"
        given = event.get("status")
        status = given if isinstance(given, int) else 400
        extra = error.pop("headers", None) or {}
        await self._json(status, {"error": error}, _pairs(extra))
        return status

    async def _stream(self, plan: Plan, request: CreateRequest) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-request-id", self._shared.ids.new("req")[:36].encode()),
        ]
        await self._send(h11.Response(status_code=200, headers=headers))
        watcher = asyncio.create_task(self._watch_client())
        try:
            for step in plan.steps:
                match step:
                    case Send(event):
                        data = events.encode(event).encode()
                        kind = str(event.get("type", "message")).encode()
                        await self._send(
                            h11.Data(data=b"event: " + kind + b"\ndata: " + data + b"\n\n")
                        )
                        if watcher.done():
                            raise _ClientGone
                    case Pause(seconds):
                        await asyncio.wait([watcher], timeout=seconds)
                        if watcher.done():
                            raise _ClientGone
                    case Settle(succeeded):
                        self._settle(plan, request, succeeded=succeeded)
                    case Abort():
                        self._writer.transport.abort()
                        raise _ClientGone
                    case Close():
                        raise _ClientGone  # the stream ends without its terminal event
                    case Hang():
                        await watcher
                        raise _ClientGone
            await self._send(h11.EndOfMessage())
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _whole(self, plan: Plan, request: CreateRequest) -> None:
        response: object = None
        for step in plan.steps:
            match step:
                case Send(event) if event.get("type") in _TERMINAL:
                    response = event.get("response")
                case Settle(succeeded):
                    self._settle(plan, request, succeeded=succeeded)
                case Abort() | Close() | Hang():
                    self._writer.transport.abort()
                    raise _ClientGone
        await self._json(200, response, [])

    def _settle(self, plan: Plan, request: CreateRequest, *, succeeded: bool) -> None:
        snapshot = plan.snapshot
        keeps = self._shared.options.http_memory == "store"
        if succeeded and keeps and snapshot is not None and snapshot.store:
            self._shared.store[snapshot.response_id] = snapshot

    async def _watch_client(self) -> None:
        """Return when the client closes its side (a cancelled stream)."""
        while True:
            data = await self._reader.read(_READ_SIZE)
            if not data:
                return
            self._h11.receive_data(data)

    # Writing

    async def _error(self, rejection: Rejection, headers: Headers) -> None:
        await self._json(rejection.status, events.http_error_body(rejection), headers)

    async def _json(self, status: int, document: object, headers: Headers) -> None:
        body = json.dumps(document).encode()
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", self._shared.ids.new("req")[:36].encode()),
            *headers,
        ]
        await self._send(h11.Response(status_code=status, headers=response_headers))
        await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def _send(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data:
            if self._writer.is_closing():
                raise _ClientGone
            self._writer.write(data)
            await self._writer.drain()


def _parse(body: bytes) -> tuple[CreateRequest | BadFrame, bool]:
    """The request as a ``response.create`` (HTTP has no lanes), and whether it streams."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return BadFrame(rejections.invalid_json(str(exc))), False
    if not isinstance(document, dict):
        return BadFrame(rejections.invalid_event("Expected a JSON object.")), False
    if "generate" in document:  # WebSocket mode only
        return BadFrame(rejections.unknown_parameter("generate")), False
    streamed = document.get("stream") is True
    return parse_create({**document, "type": CREATE}, lanes=False), streamed


def _pairs(headers: Mapping[str, object]) -> Headers:
    return [(str(name).encode(), str(value).encode()) for name, value in headers.items()]


def refuse_store_rejection() -> Rejection:
    """What a server without storage answers to ``store: true``."""
    return rejections.invalid(
        "Storing responses is not supported by this server; send store: false.",
        code="unsupported_parameter",
        param="store",
    )
