"""The bridge's protocol logic, with no I/O.

:class:`BridgeCore` holds the state of every connection id. The supervisor
feeds it facts (a command arrived, an upstream opened, an event came in, an
upstream closed, shutdown began) and performs the actions each call returns,
in order. It never awaits, never reads the clock, never touches a socket.

Per connection id the life is::

    (absent) --connect--> OPENING --opened--> OPEN --close--> CLOSING --closed--> (absent)
                             |                  |
                             +--failed--> (absent)   +--dropped--> (absent, `disconnected`)

Commands for an id that is OPENING or CLOSING wait in that id's backlog and
run, in arrival order, once the transition ends. Ids never wait on each other.
What a command goes through first is :mod:`bridge.protocol.intake`; the
messages the bridge says are built by :mod:`bridge.protocol.replies`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from bridge.errors import InvalidState
from bridge.protocol import contract
from bridge.protocol.actions import AbortUpstream, Action, CloseUpstream, OpenUpstream, SendUpstream
from bridge.protocol.backlogs import Backlogs
from bridge.protocol.commands import SeedCommands
from bridge.protocol.connections import Connection, Phase
from bridge.protocol.contract import (
    Ask,
    Close,
    Command,
    Connect,
    Rejection,
    Send,
    Topics,
    rejection_of,
)
from bridge.protocol.device_output import DeviceOutput
from bridge.protocol.endings import ConnectionEndings
from bridge.protocol.guardrails import Guardrails
from bridge.protocol.idle import IdleTracker
from bridge.protocol.intake import CommandIntake
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.messages import Publish, ReplyTo
from bridge.protocol.outputs import DeviceOutputs
from bridge.protocol.redaction import Redactor
from bridge.protocol.replies import Replies
from bridge.protocol.reply_waits import ReplyWaits
from bridge.protocol.response_topics import ResponseTopicPolicy
from bridge.protocol.sessions import (
    Conversations,
    ProfileConfig,
    SessionsConfig,
    default_profiles,
)
from bridge.protocol.shared_usage import SharedUsage
from bridge.protocol.spending import Spending
from bridge.protocol.tool_rounds import ToolRounds
from bridge.protocol.tools import ToolBox, ToolConfig
from bridge.protocol.turns import AskTurns
from bridge.protocol.upstream_events import UpstreamEvents


class BridgeCore(
    SeedCommands,
    UpstreamEvents,
    AskTurns,
    ConnectionEndings,
    DeviceOutputs,
    Spending,
    ToolRounds,
):
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
    ) -> None:
        self.topics = topics
        sessions = sessions or SessionsConfig(idle_timeout=0)
        # Seconds; None: connections are never closed as idle.
        self.idle_timeout: float | None = sessions.idle_timeout or None
        self._idle = IdleTracker()
        self.conversations = Conversations(profiles or default_profiles(), sessions)
        self._clock = 0.0  # the latest `now` the core was given (for turns run from backlogs)
        self._deferred: list[Action] = []  # see take_deferred
        self.assistants = frozenset(assistants)  # ids with Home Assistant assistant entities
        self._reopening: dict[str, DeviceOutput] = {}
        self._kept: dict[str, DeviceOutput] = {}
        self.toolbox = ToolBox(tools)
        self._reply_waits = ReplyWaits()  # tool calls waiting for their replies
        self._held_event: Publish | None = None  # see ToolRounds._hold
        self.url = url
        self.qos = qos
        self.limits = limits or LimitsConfig()
        self.guardrails = Guardrails(
            self.limits.guardrails,
            {name: profile.limits for name, profile in self.conversations.profiles.items()},
            usage or SharedUsage(),
        )
        self.timezone = self.limits.budgets.timezone
        self._wall = 0.0
        self.v5 = v5
        self.intake = CommandIntake(
            self.limits, response_topics or ResponseTopicPolicy(refused=(f"{topics.prefix}/#",))
        )
        self.replies = Replies(topics, url=url, qos=qos, v5=v5)
        self.stats = self.intake.stats
        self.redactor = redactor or Redactor()
        self.draining = False
        self._connections: dict[str, Connection] = {}
        self._backlogs = Backlogs(self.limits.max_waiting_bytes)

    def reconfigure(
        self,
        *,
        limits: LimitsConfig,
        sessions: SessionsConfig,
        profiles: Mapping[str, ProfileConfig],
        tools: Sequence[ToolConfig],
        assistants: Collection[str],
        response_topics: ResponseTopicPolicy,
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
        self.assistants = frozenset(assistants)
        in_use = {
            name
            for connection in self._connections.values()
            if connection.tool_turn is not None
            for name in connection.tool_turn.offered
        }
        kept = [
            tool
            for name, tool in self.toolbox.tools.items()
            if name in in_use and name not in {new.name for new in tools}
        ]
        self.toolbox = ToolBox([*tools, *kept])
        self.guardrails.configure(
            limits.guardrails, {name: profile.limits for name, profile in profiles.items()}
        )
        self.timezone = limits.budgets.timezone
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

    # issue 26: the daemon opens the upstream of the connection's profile's endpoint.
    def profile_of(self, connection_id: str) -> str | None:
        """The profile of an open (or opening) connection."""
        connection = self._connections.get(connection_id)
        return connection.profile if connection is not None else None

    def phase(self, connection_id: str) -> Phase | None:
        connection = self._connections.get(connection_id)
        return connection.phase if connection else None

    # Inputs -----------------------------------------------------------------

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
            self._wall = wall
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
        self._clock = now
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
            return self._refuse(connection_id, rejection, reply_to)
        return []

    def internal_error(self, connection_id: str, payload: bytes) -> list[Action]:
        """Handling this command failed unexpectedly (a bug): answer it with ``internal_error``."""
        rejection = self.intake.peeked(
            payload,
            contract.INTERNAL_ERROR,
            "the bridge failed while handling this command (logged); "
            "it may not have been carried out",
        )
        return self._refuse(connection_id, rejection, None)

    def upstream_written(self, size: int) -> None:
        """A :class:`SendUpstream` of ``size`` characters was written upstream, or dropped."""
        self._backlogs.release(size)

    def upstream_opened(self, connection_id: str) -> list[Action]:
        """The handshake of an OPENING connection succeeded."""
        connection = self._expect(connection_id, Phase.OPENING)
        connection.phase = Phase.OPEN
        connection.opened_at = self._clock
        if connection.quiet:  # opened to send a turn again: the client already has its acks
            return self._pump(connection_id)
        profile = connection.profile if connection.announce_profile else None
        actions = self.replies.connected(connection.connect, connection.connect_reply, profile)
        if connection.output is not None:
            actions += connection.output.opened()
        return actions + self._pump(connection_id)

    def upstream_failed(
        self, connection_id: str, message: str, status: int | None = None
    ) -> list[Action]:
        """The handshake of an OPENING connection failed or was aborted."""
        connection = self._expect(connection_id, Phase.OPENING)
        del self._connections[connection_id]
        self._idle.forget(connection_id)
        if self.draining:
            code, message, status = contract.SHUTTING_DOWN, "the bridge is shutting down", None
        else:
            code = contract.UPSTREAM_CONNECT_FAILED
        request_id = connection.connect.request_id
        rejection = Rejection(code, message, contract.CONNECT, request_id, status)
        actions = self._refuse(connection_id, rejection, connection.connect_reply)
        actions += self._output_closed(connection_id, connection.output, 1006, message)
        return actions + self._pump(connection_id)

    def upstream_closed(self, connection_id: str, code: int, reason: str) -> list[Action]:
        """An OPEN or CLOSING connection ended: after our close, or not."""
        connection = self._connections.pop(connection_id, None)
        if connection is None or connection.phase is Phase.OPENING:
            raise InvalidState(f"close of a connection that is not open: {connection_id!r}")
        self._idle.forget(connection_id)
        self.conversations.socket_ended(connection_id)
        self._tools_ended(connection)
        lost = [] if connection.retrying else self._turn_cut(connection, connection_id)
        if connection.retrying or connection.replacing:
            self._output_reopens(connection, connection_id)
            ending = self._output_not_reopened
        else:
            lost += self._output_closed(connection_id, connection.output, code, reason)
            ending = _nothing_more
        if connection.retrying:  # the bridge closed it to send its turn again
            return self._pump(connection_id) + ending(connection_id, code, reason)
        if connection.notice is not None:
            actions = self.replies.disconnected(connection_id, *connection.notice)
        elif connection.close is not None:
            actions = self.replies.closed(
                connection.close,
                connection.close_reply,
                answered_command=not connection.closed_by_bridge,
            )
        else:
            actions = self.replies.disconnected(connection_id, code, reason)
        return lost + actions + self._pump(connection_id) + ending(connection_id, code, reason)

    # Internals --------------------------------------------------------------

    def _expect(self, connection_id: str, phase: Phase) -> Connection:
        connection = self._connections.get(connection_id)
        if connection is None or connection.phase is not phase:
            raise InvalidState(f"connection {connection_id!r} is not {phase.value}")
        return connection

    def _busy(self, connection_id: str) -> bool:
        connection = self._connections.get(connection_id)
        return connection is not None and connection.phase is not Phase.OPEN

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
        match parsed:
            case Rejection():
                return self._refuse(connection_id, parsed, reply_to)
            case Connect():
                return self._connect(parsed, reply_to)
            case Send():
                return self._send(parsed, reply_to)
            case Close():
                return self._close(parsed, reply_to)
            case Ask():
                return self._ask(parsed, reply_to)

    def _refuse_command(
        self, command: Command, code: str, message: str, reply_to: ReplyTo | None
    ) -> list[Action]:
        return self._refuse(command.connection_id, rejection_of(command, code, message), reply_to)

    def _refuse(
        self, connection_id: str, rejection: Rejection, reply_to: ReplyTo | None
    ) -> list[Action]:
        self.stats.rejected += 1
        return self.replies.refuse(connection_id, rejection, reply_to)


def _nothing_more(connection_id: str, code: int, reason: str) -> list[Action]:
    return []


__all__ = [
    "AbortUpstream",
    "Action",
    "BridgeCore",
    "CloseUpstream",
    "OpenUpstream",
    "Phase",
    "SendUpstream",
]
