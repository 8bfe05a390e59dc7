"""The tools of the house's MCP servers as the model is offered them (pure).

The MCP adapter (:mod:`bridge.mcp`) tells the core, as facts, what each server
lists (at start and whenever the server says its list changed) and when a
server is down. :class:`McpCatalog` keeps, per server, the tools its ``allow``
list lets through, each under the name the model sees, ``<server>__<tool>``
(OpenAI's function names are 1-64 of ``A-Z a-z 0-9 _ -``: other characters
become ``_``, a longer name is cut and ends in a hash of the whole), with a
validator of its input schema. A server that is down offers nothing to new
turns; a turn in flight keeps the tools it was offered. What a call's result
tells the model is :func:`result_output`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jsonschema
from jsonschema.protocols import Validator

from bridge.protocol.mcp_config import McpServerConfig
from bridge.protocol.tools import MAX_TOOL_OUTPUT_BYTES

SEPARATOR: Final = "__"
MAX_FUNCTION_NAME: Final = 64
_NOT_IN_A_NAME: Final = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class Listed:
    """One tool as its server listed it."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class McpTool:
    """An allowed tool of a server, ready to be offered and called."""

    server: str
    name: str  # the server's name for it
    function: str  # the model's: <server>__<tool>
    description: str
    parameters: Mapping[str, Any]
    validator: Validator
    timeout: float  # the server's call_timeout

    def where(self) -> dict[str, str]:
        """Which server a call went to, for its ``response.websocket.tool_call`` message."""
        return {"server": self.server, "tool": self.name}

    def definition(self) -> dict[str, Any]:
        """Its entry in a request's ``tools``."""
        return {
            "type": "function",
            "name": self.function,
            "description": self.description,
            "parameters": self.parameters,
        }


def function_name(server: str, tool: str) -> str:
    """The name the model calls a server's tool by: ``<server>__<tool>``, within OpenAI's
    function-name rules."""
    name = server + SEPARATOR + _NOT_IN_A_NAME.sub("_", tool)
    if len(name) <= MAX_FUNCTION_NAME:
        return name
    digest = hashlib.sha256(f"{server}\x00{tool}".encode()).hexdigest()[:8]
    return name[: MAX_FUNCTION_NAME - 9] + "_" + digest


def allowed(patterns: Sequence[str], tool: str) -> bool:
    """The ``allow`` list lets ``tool`` through (exact names, shell-style patterns)."""
    return any(fnmatch.fnmatchcase(tool, pattern) for pattern in patterns)


@dataclass(frozen=True, slots=True)
class Catalogued:
    """What a server's listing came to: the tools offered, and the ones left out and why."""

    offered: tuple[str, ...]  # the server's names of the tools offered
    refused: tuple[str, ...]  # "<tool>: why", for the log (listed and allowed, yet unusable)
    not_allowed: int  # listed tools the allow list leaves out


class McpCatalog:
    """The allowed tools of every MCP server that is up, as the adapter last listed them."""

    def __init__(self, servers: Mapping[str, McpServerConfig]) -> None:
        self.servers = dict(servers)
        self._tools: dict[str, dict[str, McpTool]] = {}  # server → function name → tool

    def configure(self, servers: Mapping[str, McpServerConfig]) -> None:
        """A reload: servers no longer configured offer nothing from now on."""
        self.servers = dict(servers)
        for gone in set(self._tools) - set(servers):
            del self._tools[gone]

    def listed(self, server: str, tools: Sequence[Listed]) -> Catalogued:
        """The server is up and lists ``tools``: its allowed ones are offered from now on."""
        config = self.servers.get(server)
        if config is None:
            return Catalogued((), (), len(tools))
        kept: dict[str, McpTool] = {}
        refused: list[str] = []
        permitted = [tool for tool in tools if allowed(config.allow, tool.name)]
        for tool in permitted:
            problem = _schema_problem(tool.input_schema)
            function = function_name(server, tool.name)
            if problem is None and function in kept:
                problem = f"its name as the model sees it, {function}, is another tool's"
            if problem is not None:
                refused.append(f"{tool.name}: {problem}")
                continue
            schema = dict(tool.input_schema)
            kept[function] = McpTool(
                server,
                tool.name,
                function,
                tool.description,
                schema,
                jsonschema.Draft202012Validator(schema),
                config.call_timeout,
            )
        self._tools[server] = kept
        names = tuple(tool.name for tool in kept.values())
        return Catalogued(names, tuple(refused), len(tools) - len(permitted))

    def down(self, server: str) -> None:
        """The server cannot be reached: its tools are left out of new turns."""
        self._tools.pop(server, None)

    def up(self, server: str) -> bool:
        return server in self._tools

    def count(self, server: str) -> int:
        """The tools of ``server`` offered now (0 while it is down)."""
        return len(self._tools.get(server, ()))

    def offered(self, servers: Sequence[str]) -> dict[str, McpTool]:
        """The tools a turn of a profile naming ``servers`` is offered, by function name."""
        return {
            function: tool
            for server in servers
            for function, tool in self._tools.get(server, {}).items()
        }


def _schema_problem(schema: Mapping[str, Any]) -> str | None:
    """Why a listed input schema cannot be offered and checked, or None."""
    if schema.get("type") != "object":
        return 'its input schema is not {"type": "object", ...}'
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"its input schema is not a valid JSON Schema ({exc.message[:200]})"
    return None


def result_output(text: str, is_error: bool) -> str:
    """What the model is told of a call's result: its text, bounded, marked when the server
    says the call failed (``isError``)."""
    data = text.encode("utf-8", "replace")
    bounded = data[:MAX_TOOL_OUTPUT_BYTES].decode("utf-8", "ignore")
    if len(data) > MAX_TOOL_OUTPUT_BYTES:
        bounded += " [cut]"
    return f"error: {bounded}" if is_error else bounded
