"""The core's features, built with what each needs: the one place they are wired.

:class:`Shared` is what the dispatcher owns and lends (the connection table,
the backlogs, the idle tracker, the clock, the conversations, the replies);
:meth:`Features.build` makes each feature from it and from the others it
needs, explicitly; no feature holds the core. :meth:`Features.handlers` is
every command's handler, checked complete.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import get_args

from bridge.protocol.backlogs import Backlogs
from bridge.protocol.commands import Handlers, SeedCommands
from bridge.protocol.connections import Clock, Connection
from bridge.protocol.contract import Command
from bridge.protocol.endings import Endings
from bridge.protocol.guardrails import Guardrails
from bridge.protocol.idle import IdleTracker
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.mcp_tools import McpCatalog
from bridge.protocol.outputs import DeviceOutputs
from bridge.protocol.redaction import Redactor
from bridge.protocol.replies import Replies
from bridge.protocol.sessions import Conversations
from bridge.protocol.spending import Spending
from bridge.protocol.tool_rounds import ToolRounds
from bridge.protocol.tools import ToolConfig
from bridge.protocol.topics import Topics
from bridge.protocol.turns import AskTurns
from bridge.protocol.upstream_events import ServerEvents


@dataclass(frozen=True, slots=True)
class Shared:
    """What the dispatcher owns and the features use."""

    connections: dict[str, Connection]
    backlogs: Backlogs
    idle: IdleTracker
    clock: Clock
    conversations: Conversations
    replies: Replies


@dataclass(frozen=True, slots=True)
class Features:
    spending: Spending
    outputs: DeviceOutputs
    tools: ToolRounds
    seed: SeedCommands
    ask: AskTurns
    events: ServerEvents
    endings: Endings

    @classmethod
    def build(
        cls,
        shared: Shared,
        topics: Topics,
        *,
        guardrails: Guardrails,
        limits: LimitsConfig,
        qos: int,
        v5: bool,
        redactor: Redactor,
        assistants: Collection[str],
        tools: Sequence[ToolConfig],
        mcp: McpCatalog,
    ) -> Features:
        table, conversations, replies = shared.connections, shared.conversations, shared.replies
        spending = Spending(
            guardrails, conversations, replies, shared.clock, limits.budgets.timezone
        )
        outputs = DeviceOutputs(conversations, topics, qos, assistants)
        rounds = ToolRounds(
            tools, conversations, spending, shared.backlogs, topics, qos=qos, v5=v5, mcp=mcp
        )
        seed = SeedCommands(
            table,
            shared.backlogs,
            shared.idle,
            conversations,
            replies,
            topics,
            max_connections=limits.max_connections,
            spending=spending,
            outputs=outputs,
        )
        ask = AskTurns(
            table,
            shared.backlogs,
            shared.idle,
            shared.clock,
            conversations,
            replies,
            seed=seed,
            spending=spending,
            tools=rounds,
            outputs=outputs,
        )
        events = ServerEvents(
            table,
            shared.idle,
            replies,
            redactor,
            qos=qos,
            v5=v5,
            ask=ask,
            spending=spending,
            tools=rounds,
            outputs=outputs,
        )
        endings = Endings(table, shared.idle, conversations, replies, outputs=outputs)
        return cls(spending, outputs, rounds, seed, ask, events, endings)

    def handlers(self) -> Handlers:
        """Every command's handler; a command that no feature carries out is a bug."""
        handlers: Handlers = {**self.seed.handlers(), **self.ask.handlers()}
        missing = set(get_args(Command)) - set(handlers)
        assert not missing, f"commands that no feature carries out: {missing}"
        return handlers
