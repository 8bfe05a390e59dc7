"""The bridge's protocol logic, with no I/O: a dispatcher of facts to features.

:class:`BridgeCore` holds the connection table and the backlogs, and hands
each fact (a command, an upstream opened, failed or closed, a server event, a
tool reply, a timer, the clock) to the features that act on it, each one
object with its own state, built here with what it needs:

- :class:`~bridge.protocol.commands.SeedCommands`: connect, send, close, status
- :class:`~bridge.protocol.turns.AskTurns`: ``ask`` turns, retries, old sockets
- :class:`~bridge.protocol.upstream_events.ServerEvents`: the relay's hot path
- :class:`~bridge.protocol.outputs.DeviceOutputs`: text, answer, status topics
- :class:`~bridge.protocol.spending.Spending`: guardrails and the day's usage
- :class:`~bridge.protocol.tool_rounds.ToolRounds`: the tool loop of ``ask`` turns, MQTT
  tools and the tools of MCP servers (:class:`~bridge.protocol.mcp_tools.McpCatalog`)

Every input returns the actions to perform, in order; nothing leaves by
another way. The core never awaits, never reads the clock, never touches a
socket. Commands for an id that is opening or closing wait in that id's
backlog and run, in arrival order, once the transition ends (the life of a
connection: :mod:`bridge.protocol.connections`). Ids never wait on each other.
What a command goes through first is :mod:`bridge.protocol.intake`; the
messages the bridge says are built by :mod:`bridge.protocol.replies`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from bridge.errors import InvalidState
from bridge.protocol import contract
from bridge.protocol.actions import AbortUpstream, Action, CloseUpstream, OpenUpstream, SendUpstream
from bridge.protocol.backlogs import Backlogs
from bridge.protocol.commands import Handlers
from bridge.protocol.connections import Clock, Connection, Phase, State
from bridge.protocol.contract import Command, Rejection, rejection_of
from bridge.protocol.features import Features, Shared
from bridge.protocol.guardrails import Guardrails
from bridge.protocol.idle import IdleTracker
from bridge.protocol.intake import CommandIntake
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.mcp_config import McpServerConfig
from bridge.protocol.mcp_tools import Catalogued, Listed, McpCatalog
from bridge.protocol.messages import Publish, ReplyTo
from bridge.protocol.redaction import Redactor
from bridge.protocol.replies import Replies
from bridge.protocol.response_topics import ResponseTopicPolicy
from bridge.protocol.sessions import Conversations, ProfileConfig, SessionsConfig, default_profiles
from bridge.protocol.shared_usage import SharedUsage
from bridge.protocol.tools import ToolConfig
from bridge.protocol.topics import Topics


class BridgeCore:
    """Protocol logic of the whole bridge, for every connection id, with no I/O.

    Every input method returns the actions to perform, in order. Perform
    ``Publish`` actions in the order given (they carry the contract's
    ordering guarantees); run upstream actions for one id in the order given.
    """

    def __init__(
        self,
        topics: Topics,
        *,
        url: str,
        qos: int = 1,
        limits: LimitsConfig | None = None,
        v5: bool = True,
        response_topics: ResponseTopicPolicy | None = None,
        redactor: Redactor | None = None,
        sessions: SessionsConfig | None = None,
        profiles: Mapping[str, ProfileConfig] | None = None,
        assistants: Collection[str] = (),
        usage: SharedUsage | None = None,
        tools: Sequence[ToolConfig] = (),
        profile_urls: Mapping[str, str] | None = None,
        mcp_servers: Mapping[str, McpServerConfig] | None = None,
    ) -> None:
        self.topics = topics
        self.limits = limits = limits or LimitsConfig()
        sessions = sessions or SessionsConfig(idle_timeout=0)
        self.clock = clock = Clock()
        self.conversations = conversations = Conversations(profiles or default_profiles(), sessions)
        self.guardrails = Guardrails(
            limits.guardrails, conversations.profile_limits(), usage or SharedUsage()
        )
        refused = ResponseTopicPolicy(refused=(f"{topics.prefix}/#",))
        self.intake = CommandIntake(limits, response_topics or refused)
        self.stats = self.intake.stats
        self.replies = replies = Replies(topics, url=url, qos=qos, v5=v5, profile_urls=profile_urls)
        self._connections: dict[str, Connection] = {}
        self._backlogs = Backlogs(limits.max_waiting_bytes)
        self._idle = IdleTracker()
        features = Features.build(
            Shared(self._connections, self._backlogs, self._idle, clock, conversations, replies),
            topics,
            guardrails=self.guardrails,
            limits=limits,
            qos=qos,
            v5=v5,
            redactor=redactor or Redactor(),
            assistants=assistants,
            tools=tools,
            mcp=McpCatalog(mcp_servers or {}),
        )
        self.spending, self.outputs, self.tools = (
            features.spending,
            features.outputs,
            features.tools,
        )
        self.seed, self.ask, self.events = features.seed, features.ask, features.events
        self.endings = features.endings
        # The hot path: the relay binds this once per connection (no call in between).
        self.upstream_event: Callable[[str, bytes], Publish | list[Action]] = (
            self.events.upstream_event
        )
        self.idle_timeout: float | None = sessions.idle_timeout or None  # None: never idle
        self.draining = False
        self._handlers: Handlers = features.handlers()

    def reconfigure(
        self,
        *,
        limits: LimitsConfig,
        sessions: SessionsConfig,
        profiles: Mapping[str, ProfileConfig],
        tools: Sequence[ToolConfig],
        assistants: Collection[str],
        response_topics: ResponseTopicPolicy,
        mcp_servers: Mapping[str, McpServerConfig] | None = None,
    ) -> None:
        """Apply a reloaded config from the next command on; nothing in flight is dropped.

        Open connections keep their socket, their output options and the profile
        they opened with; conversations keep their memory; today's usage stays. A
        tool turn in flight goes on with the tools it was offered, removed or not
        (a removed tool stays known, never offered again, until a later reload).
        """
        self.limits = limits
        self.idle_timeout = sessions.idle_timeout or None
        self.conversations.profiles = profiles
        self.conversations.sessions = sessions
        self.outputs.assistants = frozenset(assistants)
        self.tools.reconfigure(tools)
        if mcp_servers is not None:
            self.tools.mcp.configure(mcp_servers)
        self.guardrails.configure(limits.guardrails, self.conversations.profile_limits())
        self.spending.timezone = limits.budgets.timezone
        self.seed.max_connections = limits.max_connections
        self.intake.configure(limits, response_topics)
        self._backlogs.max_waiting_bytes = limits.max_waiting_bytes

    # Introspection ----------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def waiting_bytes(self) -> int:
        """What waiting commands and unwritten sends hold (``limits.max_waiting_bytes``)."""
        return self._backlogs.waiting_bytes

    @property
    def idle(self) -> bool:
        """No upstream connection exists in any phase: safe to stop."""
        return not self._connections

    def profile_of(self, connection_id: str) -> str | None:
        """The profile of an open (or opening) connection."""
        connection = self._connections.get(connection_id)
        return connection.profile if connection is not None else None

    def phase(self, connection_id: str) -> Phase | None:
        connection = self._connections.get(connection_id)
        return connection.phase if connection else None

    def in_use(self, connection_id: str) -> bool:
        """The id has a connection in any phase, or an ``ask`` conversation kept."""
        return connection_id in self._connections or connection_id in self.conversations

    # For the daemon's adapters (the cluster, the membership) ---------------------

    def hand_over(self, connection_id: str, code: int, reason: str) -> list[Action]:
        """The id is another instance's now: its conversation is forgotten, an open
        connection ended with ``code`` and ``reason``."""
        self.conversations.forget(connection_id)
        return self.end_connection(connection_id, code, reason)

    def disconnected(self, connection_id: str, code: int, reason: str) -> list[Action]:
        """The ``disconnected`` notice of an id whose connection ended elsewhere."""
        return self.replies.disconnected(connection_id, code, reason)

    def refuse(self, connection_id: str, rejection: Rejection) -> list[Action]:
        """The error event that refuses a command before the core ever saw it."""
        return self.replies.refuse(connection_id, rejection, None)

    # Inputs: commands -------------------------------------------------------

    def receive_command(
        self,
        connection_id: str,
        payload: bytes,
        *,
        retained: bool = False,
        reply_to: ReplyTo | None = None,
        now: float = 0.0,
        wall: float | None = None,
    ) -> list[Action]:
        """A message arrived on ``P/<connection_id>/cmd`` at monotonic time ``now``
        (and wall-clock time ``wall``, epoch seconds, for the budgets' days)."""
        if wall is not None:
            self.clock.wall = wall
        arrival = self.intake.take(
            connection_id,
            payload,
            retained=retained,
            reply_to=reply_to,
            now=now,
            draining=self.draining,
        )
        if arrival is None:
            return []
        self.clock.now = now
        parsed, reply_to = arrival.parsed, arrival.reply_to
        if arrival.at_once or (
            connection_id not in self._backlogs and not self._busy(connection_id)
        ):
            actions = self._execute(connection_id, parsed, reply_to)
            self._idle.active(connection_id, now)
            return actions
        self._idle.active(connection_id, now)
        problem = self._backlogs.add(connection_id, parsed, reply_to)
        if problem is not None:
            rejection = rejection_of(parsed, contract.LIMIT_REACHED, problem)
            return self.replies.refuse(connection_id, rejection, reply_to)
        return []

    def internal_error(self, connection_id: str, payload: bytes) -> list[Action]:
        """Handling this command failed unexpectedly (a bug): answer it with ``internal_error``."""
        rejection = self.intake.peeked(
            payload,
            contract.INTERNAL_ERROR,
            "the bridge failed while handling this command (logged); "
            "it may not have been carried out",
        )
        return self.replies.refuse(connection_id, rejection, None)

    # Inputs: the upstream ---------------------------------------------------

    def upstream_written(self, size: int) -> None:
        """A :class:`SendUpstream` of ``size`` characters was written upstream, or dropped."""
        self._backlogs.release(size)

    def upstream_opened(self, connection_id: str) -> list[Action]:
        """The handshake of an opening connection succeeded."""
        connection = self._connections.get(connection_id)
        if connection is None or connection.phase is not Phase.OPENING:
            raise InvalidState(f"connection {connection_id!r} is not {Phase.OPENING.value}")
        quiet = connection.state is State.REOPENING  # the client already has its acks
        connection.state = State.OPEN
        connection.opened_at = self.clock.now
        if quiet:
            return self._pump(connection_id)
        actions = self.replies.connected(
            connection.connect,
            connection.connect_reply,
            connection.ack_profile,
            opened_with=connection.profile,
        )
        return actions + self.outputs.opened(connection_id) + self._pump(connection_id)

    def upstream_failed(
        self, connection_id: str, message: str, status: int | None = None
    ) -> list[Action]:
        """The handshake of an opening connection failed or was aborted."""
        connection = self._connections.get(connection_id)
        if connection is None or connection.phase is not Phase.OPENING:
            raise InvalidState(f"connection {connection_id!r} is not {Phase.OPENING.value}")
        self._forget(connection_id)
        if self.draining:
            code, message, status = contract.SHUTTING_DOWN, "the bridge is shutting down", None
        else:
            code = contract.UPSTREAM_CONNECT_FAILED
        request_id = connection.connect.request_id
        rejection = Rejection(code, message, contract.CONNECT, request_id, status)
        actions = self.replies.refuse(connection_id, rejection, connection.connect_reply)
        actions += self.outputs.closed(connection_id, 1006, message)
        return actions + self._pump(connection_id)

    def upstream_closed(self, connection_id: str, code: int, reason: str) -> list[Action]:
        """An open or closing connection ended: after our close, or not."""
        connection = self._connections.get(connection_id)
        if connection is None or connection.phase is Phase.OPENING:
            raise InvalidState(f"close of a connection that is not open: {connection_id!r}")
        self.conversations.socket_ended(connection_id)
        self.tools.ended(connection_id)
        retrying = connection.state is State.RETRYING
        lost: list[Action] = []
        if not retrying:
            lost, retrying = self.ask.cut(connection_id)
        self._forget(connection_id)
        if retrying or connection.state is State.REPLACING:
            self.outputs.reopens(connection_id)
            if retrying:  # the bridge closed it to send its turn again
                return self._pump(connection_id) + self.outputs.not_reopened(
                    connection_id, code, reason
                )
            actions = lost + self.endings.reported(connection, code, reason)
            actions += self._pump(connection_id)
            return actions + self.outputs.not_reopened(connection_id, code, reason)
        lost += self.outputs.closed(connection_id, code, reason)
        return lost + self.endings.reported(connection, code, reason) + self._pump(connection_id)

    def shaped_event(self, connection_id: str, raw: bytes) -> list[Action]:
        """A server event of a connection with device output (:meth:`shaped`)."""
        return self.events.shaped_event(connection_id, raw)

    def shaped(self, connection_id: str) -> bool:
        """The connection's events take :meth:`shaped_event`, not ``upstream_event``."""
        return self.outputs.shaped(connection_id)

    # Inputs: tools, timers, the clock, failures and the stop ----------------

    def tool_reply(
        self, topic: str, payload: bytes, retained: bool, correlation: bytes | None
    ) -> list[Action]:
        """A message arrived on a tool's reply topic (a retained one is old news)."""
        return self.tools.tool_reply(topic, payload, retained, correlation)

    def tool_timed_out(self, wait_number: int) -> list[Action]:
        """A :class:`~bridge.protocol.actions.ToolDeadline` went off."""
        return self.tools.tool_timed_out(wait_number)

    def mcp_listed(self, server: str, tools: Sequence[Listed]) -> Catalogued:
        """The MCP server is up and lists ``tools`` (at start, after it said its list
        changed): its allowed ones are offered to new turns."""
        return self.tools.mcp.listed(server, tools)

    def mcp_down(self, server: str) -> None:
        """The MCP server cannot be reached: its tools are left out of new turns."""
        self.tools.mcp.down(server)

    def mcp_result(self, wait: int, text: str, is_error: bool) -> list[Action]:
        """The result of a :class:`~bridge.protocol.actions.CallMcpTool` (``is_error``: the
        server said the call failed, or the call could not be made)."""
        return self.tools.mcp_result(wait, text, is_error)

    def output_due(self, connection_id: str) -> list[Action]:
        """An :class:`~bridge.protocol.actions.ArmTimer` for this id went off."""
        return self.outputs.due(connection_id)

    def connection_failed(self, connection_id: str) -> list[Action]:
        """What drives this connection failed unexpectedly (a bug): forget the connection.

        A handshake in progress answers its ``connect`` with ``internal_error``;
        a connection that was open is reported ``disconnected`` with code 1011.
        Either way the id can ``connect`` again. The driver drops the socket.
        """
        connection = self._connections.get(connection_id)
        if connection is None:
            return []
        self.tools.ended(connection_id)
        self._forget(connection_id)
        return self.endings.failed(connection) + self._pump(connection_id)

    def end_connection(self, connection_id: str, code: int, reason: str) -> list[Action]:
        """The bridge itself must end an open connection (its events cannot be kept).

        The connection is dropped at once and, once gone, reported with a
        ``disconnected`` notice carrying ``code`` and ``reason``, even if a
        close was under way.
        """
        return self.endings.end(connection_id, code, reason)

    def begin_shutdown(self) -> list[Action]:
        """Stop taking commands and close every connection (code 1001)."""
        if self.draining:
            return []
        self.draining = True
        actions = self.endings.stop()
        for connection_id in self._backlogs.ids():
            actions.extend(self._pump(connection_id))
        return actions

    def sweep(self, now: float, wall: float | None = None) -> list[Action]:
        """Close (code 1000) every open connection idle for ``idle_timeout`` at ``now``.

        Each is then reported ``disconnected`` with reason ``idle timeout``.
        """
        self.clock.now = now
        if wall is not None:
            self.clock.wall = wall
        self.conversations.expire(now)
        actions = self.outputs.sweep()  # retained statuses of conversations that ended
        if self.idle_timeout is None or self.draining:
            return actions
        return actions + self.endings.idle(now, self.idle_timeout)

    # Internals --------------------------------------------------------------

    def _forget(self, connection_id: str) -> None:
        """The id's connection is gone: the table, its activity, what features keep of it."""
        del self._connections[connection_id]
        self._idle.forget(connection_id)
        self.ask.forget(connection_id)
        self.spending.forget(connection_id)

    def _busy(self, connection_id: str) -> bool:
        connection = self._connections.get(connection_id)
        return connection is not None and connection.state is not State.OPEN

    def _pump(self, connection_id: str) -> list[Action]:
        """Run waiting commands of one id until it is busy again or none wait."""
        actions: list[Action] = []
        while self.draining or not self._busy(connection_id):
            waiting = self._backlogs.pop(connection_id)
            if waiting is None:
                break
            parsed, reply_to = waiting
            if self.draining and not isinstance(parsed, Rejection):
                parsed = rejection_of(parsed, contract.SHUTTING_DOWN, "the bridge is shutting down")
            actions.extend(self._execute(connection_id, parsed, reply_to))
        return actions

    def _execute(
        self, connection_id: str, parsed: Command | Rejection, reply_to: ReplyTo | None
    ) -> list[Action]:
        if isinstance(parsed, Rejection):
            return self.replies.refuse(connection_id, parsed, reply_to)
        return self._handlers[type(parsed)](parsed, reply_to)


__all__ = [
    "AbortUpstream",
    "Action",
    "BridgeCore",
    "CloseUpstream",
    "OpenUpstream",
    "Phase",
    "SendUpstream",
]
