"""One MCP server: connected, listed, watched, reconnected with backoff, called.

:class:`ServerLink` runs one supervised task per server. It opens the
transport (streamable HTTP with the server's headers and token, or the stdio
command), initializes the session and lists the tools within
``connect_timeout``, and tells the core (``listed``). Then it waits: for the
server to say its tool list changed (it lists again), for a ping to fail, or
for a call to find the connection gone. A server that cannot be reached is
told ``down`` to the core (its tools leave new turns), logged with one WARNING
per outage, and tried again with the bridge's backoff. Nothing here waits for
another server or for any connection id: a call is its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import httpx2
from mcp import ClientSession, StdioServerParameters, stdio_client, types
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from bridge.backoff import backoff_delays
from bridge.config.mcp_servers import auth_headers
from bridge.config.secrets import Secret
from bridge.mcp.results import result_text
from bridge.protocol.mcp_config import McpServerConfig
from bridge.protocol.mcp_tools import Catalogued, Listed
from bridge.protocol.redaction import Redactor

logger = logging.getLogger(__name__)

PING_INTERVAL: Final = 15.0  # seconds between pings of an idle server (a dead one is noticed)
MAX_LIST_PAGES: Final = 20  # pages of tools/list read at most (a server that never ends)
CONNECTING: Final = "connecting"
UP: Final = "up"
DOWN: Final = "down"


class ServerLink:
    """The bridge's connection to one MCP server."""

    def __init__(
        self,
        name: str,
        config: McpServerConfig,
        token: Secret | None,
        redactor: Redactor,
        *,
        listed: Callable[[str, list[Listed]], Catalogued],
        down: Callable[[str], None],
        reconnect: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.name = name
        self.config = config
        self._token = token
        self._redactor = redactor
        self._listed = listed
        self._down = down
        self._reconnect = reconnect
        self.state = CONNECTING
        self.tools = 0  # tools offered now
        self._session: ClientSession | None = None
        self._changed = asyncio.Event()  # the server said its tool list changed
        self._lost = asyncio.Event()  # a call found the connection gone
        self._in_outage = False

    # The supervised task -------------------------------------------------------------

    async def run(self) -> None:
        """Connect, list, watch; on any failure, say so once and try again later."""
        delays = backoff_delays(*self._reconnect)
        while True:
            problem = await self._serve()
            self._session = None
            self.state, self.tools = DOWN, 0
            self._down(self.name)
            if not self._in_outage:  # a new outage: said once, a fresh backoff
                self._in_outage = True
                delays = backoff_delays(*self._reconnect)
                logger.warning(
                    "MCP server %s is unreachable (%s); its tools are left out of new turns "
                    "until it is back (tried again with backoff, said once per outage)",
                    self.name,
                    self._redactor.redact(problem),
                )
            else:
                logger.debug("MCP server %s: still down (%s)", self.name, problem)
            await asyncio.sleep(delays())

    async def _serve(self) -> str:
        """One connection, until it fails: why it ended."""
        self._changed.clear()
        self._lost.clear()
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout(self.config.connect_timeout):
                    session = await stack.enter_async_context(self._open())
                    await session.initialize()
                    self._session = session
                    await self._list(session)
                if self._in_outage:
                    logger.info("MCP server %s is back: %d tools offered", self.name, self.tools)
                self._in_outage = False
                return await self._watch(session)
        except TimeoutError:
            return f"no answer within {self.config.connect_timeout:g} s"
        except (Exception, ExceptionGroup) as exc:  # every failure of a server is its own
            return _described(exc)

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[ClientSession]:
        """The transport and the session on it."""
        config = self.config
        async with contextlib.AsyncExitStack() as stack:
            if config.url is not None:
                headers = auth_headers(config, self._token)
                client = await stack.enter_async_context(
                    httpx2.AsyncClient(headers=headers, timeout=config.connect_timeout)
                )
                streams = streamable_http_client(config.url, http_client=client)
            else:
                assert config.command is not None
                parameters = StdioServerParameters(
                    command=config.command,
                    args=list(config.args),
                    env=dict(config.env),
                    cwd=config.cwd,
                )
                streams = stdio_client(parameters, errlog=sys.__stderr__ or sys.stderr)
            read, write = await stack.enter_async_context(streams)
            session = ClientSession(read, write, message_handler=self._on_message)
            yield await stack.enter_async_context(session)

    async def _list(self, session: ClientSession) -> None:
        """Every page of the server's tools, told to the core."""
        listing: list[Listed] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            listing += [
                Listed(tool.name, tool.description or "", tool.input_schema) for tool in page.tools
            ]
            cursor = page.next_cursor
            if not cursor:
                break
        catalogued = self._listed(self.name, listing)
        self.state, self.tools = UP, len(catalogued.offered)
        for refusal in catalogued.refused:
            logger.warning("MCP server %s: tool %s; it is not offered", self.name, refusal)
        logger.info(
            "MCP server %s lists %d tools; %d offered (%s), %d not in its allow list",
            self.name,
            len(listing),
            self.tools,
            ", ".join(catalogued.offered) or "none",
            catalogued.not_allowed,
        )

    async def _watch(self, session: ClientSession) -> str:
        """List again whenever the server says its tools changed; ping it when idle."""
        while True:
            waits = {
                asyncio.ensure_future(self._changed.wait()),
                asyncio.ensure_future(self._lost.wait()),
            }
            try:
                await asyncio.wait(
                    waits, timeout=PING_INTERVAL, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for wait in waits:
                    wait.cancel()
            if self._lost.is_set():
                return "the connection was lost during a call"
            async with asyncio.timeout(self.config.connect_timeout):
                if self._changed.is_set():
                    self._changed.clear()
                    await self._list(session)
                else:
                    await session.send_ping()

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._changed.set()
        elif isinstance(message, Exception):
            logger.debug("MCP server %s: transport: %s", self.name, _described(message))

    # Calls ---------------------------------------------------------------------------

    async def call(
        self, tool: str, arguments: Mapping[str, Any], seconds: float
    ) -> tuple[str, bool]:
        """Call ``tool``: its result's text and whether it is an error (the server said so,
        or the call could not be made)."""
        session = self._session
        if session is None or self.state != UP:
            return f"the MCP server {self.name} is not connected; the tool was not called", True
        try:
            async with asyncio.timeout(seconds):
                result = await session.call_tool(
                    tool, dict(arguments), read_timeout_seconds=seconds
                )
        except TimeoutError:
            return f"no result from {self.name} within {seconds:g} s (timeout)", True
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED or "closed" in exc.error.message.lower():
                self._lost.set()
            return self._redactor.redact(f"the call failed: {exc.error.message}"), True
        except (Exception, ExceptionGroup) as exc:
            self._lost.set()
            return self._redactor.redact(f"the call failed: {_described(exc)}"), True
        return self._redactor.redact(result_text(result)), bool(result.is_error)


def _described(exc: BaseException) -> str:
    """A failure in a few words (the first of a group), never a traceback."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
