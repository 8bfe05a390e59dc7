"""A small MCP server built with the official SDK, for the bridge's tests: run as a process.

    python tests/daemon/mcp_house.py stdio CALLS_FILE
    python tests/daemon/mcp_house.py http CALLS_FILE PORT TOKEN

Each call is appended to CALLS_FILE as a JSON line (tool, arguments), so a test
sees what reached the server. Over HTTP every request must carry
``Authorization: Bearer TOKEN`` (else 401). Its tools: lights (``set_light``,
``get_light``), one that fails (``fail``: ``isError``), one that takes its time
(``slow``), one that adds a tool and says the list changed (``grow``: then
``extra`` exists), one that kills its own process mid-call (``crash``), and one
no test allows (``admin_reset``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("house", log_level="WARNING")
lights: dict[str, str] = {}
CALLS = sys.argv[2] if len(sys.argv) > 2 else os.devnull


def record(tool: str, **arguments: Any) -> None:
    with open(CALLS, "a", encoding="utf-8") as calls:
        calls.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")


@server.tool()
def set_light(entity: str, state: Literal["on", "off"]) -> str:
    """Switch a light on or off."""
    record("set_light", entity=entity, state=state)
    lights[entity] = state
    return f"{entity} is now {state}"


@server.tool()
def get_light(entity: str) -> str:
    """The state of a light."""
    record("get_light", entity=entity)
    return f"{entity} is {lights.get(entity, 'off')}"


@server.tool()
def fail() -> str:
    """Read the boiler (it is offline)."""
    record("fail")
    raise ToolError("the boiler is offline")


@server.tool()
async def slow(seconds: float) -> str:
    """Answer after a while."""
    record("slow", seconds=seconds)
    await asyncio.sleep(seconds)
    return f"slept {seconds} s"


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the tool `extra`, and say the list changed."""
    record("grow")

    def extra() -> str:
        """A tool added at run time."""
        record("extra")
        return "extra here"

    server.add_tool(extra, name="extra")
    await ctx.session.send_tool_list_changed()
    return "grown"


@server.tool()
def crash() -> str:
    """Die mid-call."""
    record("crash")
    os.kill(os.getpid(), signal.SIGKILL)
    return "never"


@server.tool()
def admin_reset() -> str:
    """Reset everything (no test allows it)."""
    record("admin_reset")
    return "reset"


def serve_http(port: int, token: str) -> None:
    import uvicorn

    app = server.streamable_http_app()

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if headers.get(b"authorization") != f"Bearer {token}".encode():
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"no token"})
                return
        await app(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        serve_http(int(sys.argv[3]), sys.argv[4])
