"""The simulator's WebSocket server: handshake, connection registry, recording.

:class:`Simulator` is what tests and ``openai-mqtt-bridge simulate`` use; :func:`serve`
runs one until cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import http
import itertools
import json
import logging
import weakref
from collections.abc import Callable
from typing import Self

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from bridge_tools.simulator import events
from bridge_tools.simulator.connection import Connection, Shared
from bridge_tools.simulator.events import IdFactory
from bridge_tools.simulator.faults import HandshakeFault
from bridge_tools.simulator.handshake import ENDPOINT_SUFFIX, Refusal, decide, split_target
from bridge_tools.simulator.http_server import HttpFront
from bridge_tools.simulator.options import Closed, Handshake, Received, SimulatorOptions
from bridge_tools.simulator.steps import Settings

logger = logging.getLogger(__name__)

SWITCHING_PROTOCOLS = 101
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # noqa: S104 -- recognised, never bound here


class Simulator:
    """A local stand-in for ``wss://api.openai.com/v1/responses``.

    Use it as an async context manager (127.0.0.1, a free port) or call
    :meth:`start` and :meth:`close`. It records every handshake, client message and
    connection end in :attr:`handshakes`, :attr:`received` and :attr:`closes`.
    """

    def __init__(self, options: SimulatorOptions = SimulatorOptions()) -> None:  # noqa: B008 -- frozen, so sharing the default is safe
        self.options = options
        self.handshakes: list[Handshake] = []
        self.received: list[Received] = []
        self.closes: list[Closed] = []
        self._server: Server | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._numbers = itertools.count(1)
        # Weak, so an upgrade abandoned mid-handshake leaves nothing behind.
        self._upgrades: weakref.WeakKeyDictionary[ServerConnection, tuple[int, HandshakeFault]]
        self._upgrades = weakref.WeakKeyDictionary()
        self._live: dict[int, Connection] = {}
        self._forced_statuses: collections.deque[int] = collections.deque()
        self._request_ids = IdFactory(options.seed)
        self._changed = asyncio.Event()
        self._shared = Shared(
            options=options,
            settings=Settings(
                seed=options.seed,
                tokens_per_second=options.tokens_per_second,
                first_token_delay=options.first_token_delay,
                response_done=options.response_done,
                flat_errors=options.flat_errors,
                fixed_reply=options.fixed_reply,
            ),
            ids=IdFactory(options.seed),
            store={},
            record=self._record,
        )
        # POST /v1/responses (server-sent events) on a port of its own: same plans, same store.
        self._http = HttpFront(
            self._shared, self._record, lambda: next(self._numbers), self._next_forced_status
        )

    # Lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0, http_port: int = 0) -> None:
        """Listen on host:port, and for HTTP on host:http_port (port 0 picks a free one)."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        options = self.options
        self._server = await ws_serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            process_response=self._process_response,
            compression="deflate" if options.compression else None,
            max_size=options.max_message_size,
            ping_interval=options.ping_interval,
            ping_timeout=options.ping_timeout,
            close_timeout=options.close_timeout,
            server_header=None,
        )
        self._host = "127.0.0.1" if host in _WILDCARD_HOSTS else host
        self._port = int(next(iter(self._server.sockets)).getsockname()[1])
        await self._http.start(host, http_port)
        logger.debug("simulator listening on %s", self.url)

    async def close(self) -> None:
        """Stop listening and close every open connection with 1001. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
        await self._http.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Addresses

    @property
    def port(self) -> int:
        """The TCP port (valid after :meth:`start`)."""
        return self._port

    @property
    def base_url(self) -> str:
        """What a client configures as its API base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self._netloc()}/v1"

    @property
    def url(self) -> str:
        """The WebSocket endpoint, e.g. ``ws://127.0.0.1:PORT/v1/responses``."""
        return f"ws://{self._netloc()}/v1{ENDPOINT_SUFFIX}"

    @property
    def http_base_url(self) -> str:
        """The API base URL of the HTTP endpoint (``POST .../responses`` streamed as
        server-sent events), e.g. ``http://127.0.0.1:PORT2/v1``; a port of its own."""
        return f"http://{self._netloc(self._http.port)}/v1"

    def _netloc(self, port: int | None = None) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port if port is None else port}"

    # Inspection and control

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet ended."""
        return len(self._live)

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float,  # noqa: ASYNC109 -- a test helper: a deadline argument reads best
    ) -> None:
        """Wait until predicate() is true; it is re-checked after every recorded change.

        Raises:
            TimeoutError: if it is still false after timeout seconds.
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                changed = self._changed
                await changed.wait()

    def reject_next_handshakes(self, status: int, count: int = 1) -> None:
        """Answer the next count upgrades (or HTTP requests) on the endpoint with this status."""
        self._forced_statuses.extend([status] * count)

    def _next_forced_status(self) -> int | None:
        if self._forced_statuses:
            return self._forced_statuses.popleft()
        return self.options.handshake_status

    async def disconnect_all(self, code: int | None = 1012, reason: str = "") -> None:
        """End every open connection: close with code, or drop TCP when code is None."""
        for connection in list(self._live.values()):
            if code is None:
                connection.abort()
            else:
                await connection.close(code, reason)

    def _record(self, item: Received | Handshake | Closed) -> None:
        match item:
            case Received():
                self.received.append(item)
            case Handshake():
                self.handshakes.append(item)
            case Closed():
                self.closes.append(item)
        self._notify()

    def _notify(self) -> None:
        """Wake up every :meth:`wait_for`."""
        self._changed.set()
        self._changed = asyncio.Event()

    # websockets callbacks

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        number = next(self._numbers)
        target = split_target(request.path)
        forced = self.options.handshake_status
        if target.path.rstrip("/").endswith(ENDPOINT_SUFFIX) and self._forced_statuses:
            forced = self._forced_statuses.popleft()
        refusal, fault = decide(
            target,
            request.headers.get("Authorization"),
            api_key=self.options.api_key,
            forced_status=forced,
            retry_after=self.options.retry_after,
        )
        self._upgrades[connection] = (number, fault)
        return None if refusal is None else self._http_error(refusal)

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        """Record the upgrade with the status it really got (websockets may refuse too)."""
        number, _ = self._upgrades[connection]
        target = split_target(request.path)
        headers = tuple(request.headers.raw_items())
        status = response.status_code
        self._record(Handshake(number, target.path, target.query, headers, status))
        if status != SWITCHING_PROTOCOLS:
            del self._upgrades[connection]
            logger.info("simulator refused connection %d with HTTP %d", number, status)

    def _http_error(self, refusal: Refusal) -> Response:
        status = refusal.rejection.status
        body = json.dumps(events.http_error_body(refusal.rejection), indent=2).encode()
        headers = Headers(
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
                ("x-request-id", self._request_ids.new("req")[:36]),
                *refusal.headers.items(),
            ]
        )
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return Response(status, phrase, headers, body)

    async def _handle(self, ws: ServerConnection) -> None:
        number, fault = self._upgrades.pop(ws)
        connection = Connection(ws, number, self._shared)
        self._live[number] = connection
        logger.info("simulator connection %d opened", number)
        self._notify()
        try:
            await connection.run(close_code=fault.close_code)
        finally:
            await ws.wait_closed()
            del self._live[number]
            record = connection.closed_record()
            logger.info(
                "simulator connection %d closed (client code %s, server code %s)",
                number,
                record.code,
                record.server_code,
            )
            self._record(record)


async def serve(host: str, port: int, options: SimulatorOptions, http_port: int = 0) -> None:
    """Run a simulator until cancelled, logging its URL at INFO.

    This is what ``openai-mqtt-bridge simulate`` runs.
    """
    simulator = Simulator(options)
    await simulator.start(host, port, http_port)
    logger.info(
        "simulator listening on %s (clients use base URL %s; HTTP streaming: %s)",
        simulator.url,
        simulator.base_url,
        simulator.http_base_url,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.close()
        logger.info("simulator stopped")
