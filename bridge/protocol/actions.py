"""What the core asks its drivers to do: publish, or open, send to, close or abort an upstream.

:class:`BridgeCore` returns a list of these for every fact it is given; the
supervisor performs them in order. :class:`~bridge.protocol.messages.Publish`
goes to the broker; the upstream actions go to the upstream connection of their
id; :class:`ArmTimer` and :class:`Observe` stay in the supervisor; :class:`CallMcpTool` goes
to the MCP adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.protocol.messages import Outcome, Publish


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    connection_id: str


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Send a client event; report :meth:`BridgeCore.upstream_written` with ``len(data)``
    once it is written or dropped (the waiting-bytes budget counts it until then)."""

    connection_id: str
    data: str


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    connection_id: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class AbortUpstream:
    """Give up a handshake in progress (it then fails), or drop an open connection at once."""

    connection_id: str


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Call :meth:`BridgeCore.output_due` for this id in ``delay`` seconds, replacing any
    timer armed for it before (device output: text coalescing, ``thinking`` heartbeats)."""

    connection_id: str
    delay: float


@dataclass(frozen=True, slots=True)
class Observe:
    """An outcome whose message is not published (a response.completed with events off)."""

    outcome: Outcome


@dataclass(frozen=True, slots=True)
class ToolDeadline:
    """Call :meth:`BridgeCore.tool_timed_out` with ``wait`` in ``delay`` seconds."""

    connection_id: str
    call_id: str
    delay: float
    wait: int  # the number of the call's wait (a call id may come again in a later round)


@dataclass(frozen=True, slots=True)
class CallMcpTool:
    """Call ``tool`` of the MCP server ``server`` with ``arguments`` (checked against its
    schema), then tell :meth:`BridgeCore.mcp_result` with ``wait``; a
    :class:`ToolDeadline` for the same wait is armed beside it."""

    connection_id: str
    server: str
    tool: str  # the server's name for it
    arguments: Mapping[str, Any]
    wait: int
    timeout: float


Action = (
    Publish
    | OpenUpstream
    | SendUpstream
    | CloseUpstream
    | AbortUpstream
    | ArmTimer
    | Observe
    | ToolDeadline
    | CallMcpTool
)
