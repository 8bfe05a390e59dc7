"""The tool loop of ``ask`` turns: a feature of the core (:class:`ToolRounds`).

When a response of an ``ask`` turn whose profile offers MQTT tools completes
with ``function_call`` items for them, the turn goes on: each call's arguments
are checked against its schema, valid calls are published to their fixed
topics, replies are awaited (each with its timeout), and once every call has
exactly one output the conversation continues with them. The loop ends with a
response that calls no bridge tool, with ``tool_rounds_exceeded`` after
``sessions.max_tool_rounds`` rounds, or with ``budget_exceeded`` when a budget
is used up before a round. Calls of tools the bridge does not run (a profile's
own request tools) are relayed, and answered "not available" when they come
with bridge calls; calls past ``sessions.max_tool_calls``, and calls whose id
is missing or shared, are answered "refused": no call is ever left without an
output. Which waiting call a reply answers is :mod:`bridge.protocol.reply_waits`.

Tools of MCP servers (:mod:`bridge.protocol.mcp_tools`) run in the same loop: a
profile naming servers is offered the allowed tools of those that are up; a
valid call becomes a :class:`CallMcpTool` with its deadline, and its result
comes back as a fact (:meth:`ToolRounds.mcp_result`), one output per call.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.protocol.actions import Action, CallMcpTool, SendUpstream, ToolDeadline
from bridge.protocol.backlogs import Backlogs
from bridge.protocol.encoding import encode
from bridge.protocol.error_codes import TOOL_ROUNDS_EXCEEDED
from bridge.protocol.facts import RequestEnd
from bridge.protocol.mcp_tools import McpCatalog, McpTool, result_output
from bridge.protocol.messages import Publish, ToolCalled
from bridge.protocol.reply_waits import ReplyWaits, Wait
from bridge.protocol.sessions import Conversations
from bridge.protocol.spending import Spending
from bridge.protocol.tools import (
    Call,
    Rendered,
    ToolBox,
    ToolConfig,
    call_id_refusals,
    calls_of,
    checked_arguments,
    reply_text,
)
from bridge.protocol.topics import Topics

OBJECT_TOOL_CALL: Final = "response.websocket.tool_call"
NOT_AVAILABLE: Final = "this tool is not available: it was not called"
# The statuses of a call in its response.websocket.tool_call message.
PUBLISHED: Final = "published"
REPLIED: Final = "replied"
TIMEOUT: Final = "timeout"
INVALID_ARGUMENTS: Final = "invalid_arguments"
REFUSED: Final = "refused"
ERROR: Final = "error"  # an MCP call the server answered with isError, or that failed


@dataclass(slots=True)
class ToolTurn:
    """The tool loop of one ``ask`` turn."""

    offered: tuple[str, ...]
    fields: Mapping[str, Any]  # the turn's request fields, tools included
    profile: str  # the connection's (the budgets that cover it)
    rounds: int = 0
    calls: list[Call] = field(default_factory=list)  # of the round in progress, in order
    outputs: list[str | None] = field(default_factory=list)  # by position; None: not yet
    waiting: set[int] = field(default_factory=set)  # the numbers of its replies' waits
    mcp: Mapping[str, McpTool] = field(default_factory=dict)  # offered MCP tools, by function


@dataclass(frozen=True, slots=True)
class TurnBroken:
    """A tool turn ends before another round, without an answer (the client sees why)."""

    code: str
    message: str
    resets_at: str | None = None


class ToolRounds:
    """The tool loop of every ``ask`` turn whose profile offers MQTT tools."""

    def __init__(
        self,
        tools: Sequence[ToolConfig],
        conversations: Conversations,
        spending: Spending,
        backlogs: Backlogs,
        topics: Topics,
        *,
        qos: int,
        v5: bool,
        mcp: McpCatalog | None = None,
    ) -> None:
        self.toolbox = ToolBox(tools)
        self.mcp = mcp or McpCatalog({})
        self._conversations = conversations
        self._spending = spending
        self._backlogs = backlogs
        self._topics = topics
        self._qos = qos
        self._v5 = v5
        self._turns: dict[str, ToolTurn] = {}  # the tool loop of each id's turn in flight
        self._reply_waits = ReplyWaits()  # tool calls waiting for their replies

    def reconfigure(self, tools: Sequence[ToolConfig]) -> None:
        """Offer these tools from the next turn on. A turn in flight goes on with the tools
        it was offered: a removed one stays known, never offered again, until a later
        reload."""
        in_use = {name for turn in self._turns.values() for name in turn.offered}
        kept = [
            tool
            for name, tool in self.toolbox.tools.items()
            if name in in_use and name not in {new.name for new in tools}
        ]
        self.toolbox = ToolBox([*tools, *kept])

    @property
    def waiting_replies(self) -> int:
        """Tool calls waiting for a reply, across every connection."""
        return len(self._reply_waits)

    # Facts ---------------------------------------------------------------------------

    def tool_reply(
        self, topic: str, payload: bytes, retained: bool, correlation: bytes | None
    ) -> list[Action]:
        """A message arrived on a tool's reply topic (a retained one is old news)."""
        if retained:
            return []
        wait = self._reply_waits.match(topic, correlation)
        if wait is None:
            return []
        output = reply_text(payload)
        return self._call_done(wait, output, REPLIED, output=output)

    def tool_timed_out(self, wait_number: int) -> list[Action]:
        """A :class:`ToolDeadline` went off (nothing, if its call was answered since)."""
        wait = self._reply_waits.get(wait_number)
        turn = self._tool_turn(wait.connection_id) if wait is not None else None
        if wait is None or turn is None:
            return []
        name = turn.calls[wait.position].name
        mcp = turn.mcp.get(name)
        if mcp is not None:
            silence = f"no result from {mcp.server} within {mcp.timeout:g} s (timeout)"
        else:
            reply = self.toolbox.tools[name].reply
            timeout = reply.timeout if reply is not None else 0.0
            silence = f"no reply on {wait.topic} within {timeout:g} s (timeout)"
        return self._call_done(wait, silence, TIMEOUT, error=silence)

    def mcp_result(self, wait_number: int, text: str, is_error: bool) -> list[Action]:
        """The result of a :class:`CallMcpTool` (nothing, if the call was answered since:
        timed out, or its turn is over)."""
        wait = self._reply_waits.get(wait_number)
        if wait is None or wait.topic is not None:
            return []
        output = result_output(text, is_error)
        if is_error:
            return self._call_done(wait, output, ERROR, error=output)
        return self._call_done(wait, output, REPLIED, output=output)

    def offer(
        self, connection_id: str, profile: str, fields: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """An ``ask`` turn begins: its request fields with the profile's MQTT tools and the
        allowed tools of its MCP servers that are up; a turn offered any has a tool loop
        from now until it ends."""
        known = self._conversations.profiles.get(profile)
        if known is None or not (known.mqtt_tools or known.mcp_servers):
            return fields
        offered = known.mqtt_tools
        mcp = {
            name: tool
            for name, tool in self.mcp.offered(known.mcp_servers).items()
            if name not in offered  # an MQTT tool of that name wins
        }
        if not offered and not mcp:
            return fields
        tools = [
            *fields.get("tools", []),
            *self.toolbox.definitions(offered),
            *(tool.definition() for tool in mcp.values()),
        ]
        fields = {**fields, "tools": tools}
        self._turns[connection_id] = ToolTurn((*offered, *mcp), fields, profile, mcp=mcp)
        return fields

    def clash(self, profile: str, tools: Sequence[Mapping[str, Any]]) -> str | None:
        """The first of a client's own tools (an ask's ``tools``) named like one of the
        profile's MQTT tools: the model could not tell them apart, and the bridge would run
        its own."""
        known = self._conversations.profiles.get(profile)
        offered = frozenset(known.mqtt_tools) if known is not None else frozenset()
        return next((tool["name"] for tool in tools if tool["name"] in offered), None)

    def active(self, connection_id: str) -> bool:
        """The id's turn in flight has a tool loop."""
        return connection_id in self._turns

    # The loop --------------------------------------------------------------------------

    def round(self, connection_id: str, end: RequestEnd) -> list[Action] | TurnBroken | None:
        """A response of a tool turn completed: the round's actions; the turn's end without
        an answer (out of rounds, a budget used up); or None if the turn ends here (no
        bridge tool was called)."""
        turn = self._turns[connection_id]
        calls = calls_of(end.output)
        if not any(call.name in turn.offered for call in calls):
            return None
        broken = self._round_refused(connection_id, turn)
        if broken is not None:
            return broken
        turn.rounds += 1
        turn.calls, turn.outputs, turn.waiting = calls, [None] * len(calls), set()
        self._conversations.tool_round(connection_id, end.response_id)
        limit = self._conversations.sessions.max_tool_calls
        actions: list[Action] = []
        refusals = call_id_refusals(calls)  # over all calls: an id past the limit counts
        for position, refusal in enumerate(refusals[:limit]):
            actions += self._run(connection_id, turn, position, refusal)
        if len(calls) > limit:
            actions.append(self._too_many(connection_id, turn, limit))
        return actions + self._maybe_continue(connection_id, turn)

    def _round_refused(self, connection_id: str, turn: ToolTurn) -> TurnBroken | None:
        """The turn's end before another round: out of rounds, or a budget used up."""
        if turn.rounds >= self._conversations.sessions.max_tool_rounds:
            return TurnBroken(
                TOOL_ROUNDS_EXCEEDED,
                f"the model still called tools after {turn.rounds} rounds "
                "(sessions.max_tool_rounds); the turn ends without an answer",
            )
        spent = self._spending.spent(connection_id, turn.profile)
        if spent is not None:
            message = f"{spent.message}; the turn ends without an answer, its tool calls not run"
            return TurnBroken(spent.code, message, spent.resets_at)
        return None

    def _run(
        self, connection_id: str, turn: ToolTurn, position: int, refusal: str | None
    ) -> list[Action]:
        """One call of the round: refused, invalid, published (and perhaps awaited)."""
        call = turn.calls[position]
        if call.name not in turn.offered:
            turn.outputs[position] = NOT_AVAILABLE
            return []
        mcp = turn.mcp.get(call.name)
        if mcp is not None:
            return self._run_mcp(connection_id, turn, position, refusal, mcp)
        tool = self.toolbox.tools[call.name]
        rendered = refusal if refusal is not None else self.toolbox.render(call)
        if not isinstance(rendered, Rendered):
            turn.outputs[position] = rendered
            status = REFUSED if refusal is not None else INVALID_ARGUMENTS
            where = {"topic": tool.publish.topic}
            return [self._said(connection_id, call, where, status, error=rendered)]
        publish = Publish(rendered.topic, rendered.payload, rendered.qos, retain=rendered.retain)
        if tool.reply is None:
            turn.outputs[position] = json.dumps({"status": PUBLISHED, "topic": rendered.topic})
            where = {"topic": rendered.topic}
            return [publish, self._said(connection_id, call, where, PUBLISHED)]
        wait = self._reply_waits.add(connection_id, position, tool.reply.topic)
        turn.waiting.add(wait.number)
        if self._v5:
            publish = dataclasses.replace(
                publish, response_topic=tool.reply.topic, correlation_data=wait.correlation
            )
        called = ToolCalled(
            connection_id, call.name, call.call_id, rendered.topic, PUBLISHED, call.arguments
        )
        publish = dataclasses.replace(publish, outcome=called)
        deadline = ToolDeadline(connection_id, call.call_id, tool.reply.timeout, wait.number)
        return [publish, deadline]

    def _run_mcp(
        self, connection_id: str, turn: ToolTurn, position: int, refusal: str | None, tool: McpTool
    ) -> list[Action]:
        """One call of an MCP tool: refused, invalid, or asked of its server with a deadline."""
        call = turn.calls[position]
        arguments, problem = (None, refusal)
        if refusal is None:
            arguments, problem = checked_arguments(tool.validator, call.arguments)
        if problem is not None:
            turn.outputs[position] = problem
            status = REFUSED if refusal is not None else INVALID_ARGUMENTS
            return [self._said(connection_id, call, tool.where(), status, error=problem)]
        assert isinstance(arguments, dict)  # its schema is {"type": "object", ...}
        wait = self._reply_waits.add(connection_id, position, None)
        turn.waiting.add(wait.number)
        return [
            CallMcpTool(
                connection_id, tool.server, tool.name, arguments, wait.number, tool.timeout
            ),
            ToolDeadline(connection_id, call.call_id, tool.timeout, wait.number),
        ]

    def _too_many(self, connection_id: str, turn: ToolTurn, limit: int) -> Publish:
        """Calls past ``sessions.max_tool_calls``: each is answered, none is run, and one
        message (not one per call) says so."""
        excess = len(turn.calls) - limit
        refused = (
            f"refused: more than {limit} tool calls in one response "
            "(sessions.max_tool_calls); this call was not run"
        )
        turn.outputs[limit:] = [refused] * excess
        message = {
            "object": OBJECT_TOOL_CALL,
            "connection_id": connection_id,
            "status": REFUSED,
            "calls": excess,
            "error": f"{excess} calls past the first {limit} of one response were refused "
            "(sessions.max_tool_calls); none of them was run",
        }
        return Publish(self._topics.events(connection_id), encode(message), self._qos)

    def _call_done(self, wait: Wait, result: str, status: str, **extra: str) -> list[Action]:
        """A waiting call has its output, ``result`` (a reply, or the timeout's message)."""
        self._reply_waits.forget(wait.number)
        turn = self._tool_turn(wait.connection_id)
        if turn is None or wait.number not in turn.waiting:
            return []
        turn.waiting.discard(wait.number)
        turn.outputs[wait.position] = result
        call = turn.calls[wait.position]
        mcp = turn.mcp.get(call.name)
        where = (
            mcp.where()
            if mcp is not None
            else {"topic": self.toolbox.tools[call.name].publish.topic}
        )
        said = self._said(wait.connection_id, call, where, status, **extra)
        return [said, *self._maybe_continue(wait.connection_id, turn)]

    def _maybe_continue(self, connection_id: str, turn: ToolTurn) -> list[Action]:
        """Once every call of the round has its output, the turn goes on with them."""
        if turn.waiting:
            return []
        calls = [
            {
                "type": "function_call",
                "call_id": c.call_id,
                "name": c.name,
                "arguments": c.arguments,
            }
            for c in turn.calls
        ]
        outputs = [
            {"type": "function_call_output", "call_id": c.call_id, "output": output}
            for c, output in zip(turn.calls, turn.outputs, strict=True)
        ]
        data = self._conversations.continuation(connection_id, turn.fields, calls, outputs)
        if data is None:
            return []
        self._backlogs.hold(len(data))
        return [SendUpstream(connection_id, data)]

    def ended(self, connection_id: str) -> None:
        """The tool turn is over (answered, failed, socket gone): forget its waits."""
        turn = self._turns.pop(connection_id, None)
        if turn is None:
            return
        for number in turn.waiting:
            self._reply_waits.forget(number)

    # Internals -------------------------------------------------------------------------

    def _tool_turn(self, connection_id: str) -> ToolTurn | None:
        return self._turns.get(connection_id)

    def _said(
        self,
        connection_id: str,
        call: Call,
        where: Mapping[str, str],
        status: str,
        **extra: str,
    ) -> Publish:
        """The bridge's message about one executed call, on the id's events topic; ``where``:
        its ``topic`` (MQTT), or its ``server`` and ``tool`` (MCP)."""
        message = {
            "object": OBJECT_TOOL_CALL,
            "connection_id": connection_id,
            "name": call.name,
            "call_id": call.call_id,
            **where,
            "status": status,
            **extra,
        }
        topic = where.get("topic") or f"MCP server {where['server']}"
        called = ToolCalled(connection_id, call.name, call.call_id, topic, status, call.arguments)
        return Publish(
            self._topics.events(connection_id), encode(message), self._qos, outcome=called
        )
