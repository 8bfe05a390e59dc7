"""Every configured MCP server, each on its own supervised task; calls as tasks of their own.

:class:`McpServers` is what the daemon holds: started with the service, closed
when it stops. It carries out the core's :class:`CallMcpTool` actions (a task
per call, so a slow server holds nobody but the turn that called it) and tells
the core each result; what ``P/bridge/info`` shows of each server is
:meth:`McpServers.report`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from bridge.config.secrets import Secret
from bridge.mcp.link import ServerLink
from bridge.protocol.actions import CallMcpTool
from bridge.protocol.mcp_config import McpServerConfig
from bridge.protocol.mcp_tools import Catalogued, Listed
from bridge.protocol.redaction import Redactor

logger = logging.getLogger(__name__)


class McpServers:
    """The links to the configured MCP servers, and the calls in flight."""

    def __init__(
        self,
        servers: Mapping[str, McpServerConfig],
        tokens: Mapping[str, Secret | None],
        redactor: Redactor,
        *,
        listed: Callable[[str, list[Listed]], Catalogued],
        down: Callable[[str], None],
        result: Callable[[int, str, bool], None],
        reconnect: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.links = {
            name: ServerLink(
                name,
                config,
                tokens.get(name),
                redactor,
                listed=listed,
                down=down,
                reconnect=reconnect,
            )
            for name, config in servers.items()
        }
        self._result = result
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Connect to every server (each on its own; none waits for another)."""
        for name, link in self.links.items():
            self._spawn(link.run(), f"bridge.mcp.{name}")

    def call(self, action: CallMcpTool) -> None:
        """Carry out a call; its result reaches the core when it comes."""
        link = self.links.get(action.server)
        if link is None:  # a reload removed the server during the turn
            text = (
                f"the MCP server {action.server} is no longer configured; the tool was not called"
            )
            self._result(action.wait, text, True)
            return
        self._spawn(self._call(link, action), f"bridge.mcp.{action.server}.call")

    async def _call(self, link: ServerLink, action: CallMcpTool) -> None:
        text, is_error = await link.call(action.tool, action.arguments, action.timeout)
        self._result(action.wait, text, is_error)

    def report(self) -> dict[str, dict[str, object]]:
        """Each server's state (``connecting``, ``up``, ``down``), transport and tools offered."""
        return {
            name: {"state": link.state, "transport": link.config.transport, "tools": link.tools}
            for name, link in self.links.items()
        }

    async def aclose(self) -> None:
        """Stop every link and call (the service stops)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("MCP task %s failed", task.get_name(), exc_info=task.exception())
