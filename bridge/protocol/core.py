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
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from bridge.errors import CommandError, InvalidState
from bridge.protocol import contract
from bridge.protocol.contract import (
    Close,
    Command,
    Connect,
    ResponseTopicPolicy,
    Send,
    Topics,
    UserProperties,
)
from bridge.protocol.limits import RateLimiter, RecentCommands
from bridge.protocol.redaction import Redactor

MAX_BACKLOG: Final = 100  # commands waiting behind one connect/close; more are refused
# What a waiting command that is not a `send` is counted as (its fields are small).
_SMALL_ENTRY_BYTES: Final = 256

# Server events that carry an error message: the only ones scrubbed of the
# bridge's secrets (a server could echo a credential it was sent); every other
# event is relayed byte for byte, unread.
_SCRUBBED_EVENT_TYPES: Final = frozenset({"error", "response.failed"})

# Rejections that do not depend on a connection's state, answered without
# waiting in its backlog.
_ANSWERED_AT_ONCE: Final = frozenset(
    {
        contract.RETAINED_COMMAND,
        contract.INVALID_CONNECTION_ID,
        contract.SHUTTING_DOWN,
        contract.RATE_LIMITED,
        contract.RESPONSE_TOPIC_NOT_ALLOWED,
    }
)


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where an MQTT v5 command asked for its acknowledgement to go as well."""

    topic: str
    correlation_data: bytes | None = None


# Actions: what the driver must do, in the order returned -----------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish one message. ``relayed`` marks a server event (the hot path);
    ``retain`` is for the adapter's own announcements (the core never retains)."""

    topic: str
    payload: bytes
    qos: int
    properties: UserProperties = ()
    correlation_data: bytes | None = None
    relayed: bool = False
    retain: bool = False


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


Action = Publish | OpenUpstream | SendUpstream | CloseUpstream | AbortUpstream


@dataclass(frozen=True, slots=True)
class Limits:
    """What clients may ask; None switches a limit off (the core's unit-test default)."""

    max_connections: int = 100
    max_command_bytes: int = 1024 * 1024
    allowed_event_types: frozenset[str] = frozenset({"response.create"})
    commands_per_second: float | None = None
    command_burst: int = 20
    dedupe_seconds: float | None = None
    # Characters of commands waiting across the bridge: in backlogs, and sends
    # not yet written upstream. Past it commands get `limit_reached`.
    max_waiting_bytes: int = 16 * 1024 * 1024


class Phase(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


@dataclass(slots=True)
class _Connection:
    events_topic: str
    connect: Connect
    connect_reply: ReplyTo | None
    phase: Phase = Phase.OPENING
    close: Close | None = None
    close_reply: ReplyTo | None = None
    notice: tuple[int, str] | None = None  # a bridge-decided end: reported as `disconnected`


_Entry = tuple[Command | CommandError, ReplyTo | None, int]  # ..., its size in the budget


@dataclass(slots=True)
class _Stats:
    commands: int = 0
    rejected: int = 0
    duplicates: int = 0


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
        limits: Limits = Limits(),
        v5: bool = True,
        response_topics: ResponseTopicPolicy | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.topics = topics
        self.url = url
        self.qos = qos
        self.limits = limits
        self.v5 = v5
        self.response_topics = response_topics or ResponseTopicPolicy(
            refused=(f"{topics.prefix}/#",)
        )
        self.waiting_bytes = 0  # see Limits.max_waiting_bytes
        self.redactor = redactor or Redactor()
        self.draining = False
        self.stats = _Stats()
        self._connections: dict[str, _Connection] = {}
        self._backlogs: dict[str, deque[_Entry]] = {}
        self._rate = (
            RateLimiter(limits.commands_per_second, limits.command_burst)
            if limits.commands_per_second
            else None
        )
        self._recent = RecentCommands(limits.dedupe_seconds) if limits.dedupe_seconds else None

    # Introspection ----------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def idle(self) -> bool:
        """No upstream connection exists in any phase: safe to stop."""
        return not self._connections

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
    ) -> list[Action]:
        """A message arrived on ``P/<connection_id>/cmd`` at monotonic time ``now``."""
        if not payload:
            return []  # an empty payload deletes a retained message: not a command
        self.stats.commands += 1
        refused_topic: str | None = None
        if reply_to is not None:
            # Checked first: no reply at all, not even an error, may go there.
            refused_topic = self.response_topics.problem(reply_to.topic)
            if refused_topic is not None:
                reply_to = None
        try:
            if self._rate is not None and not self._rate.allow(connection_id, now):
                action, request_id = contract.peek(payload, max_bytes=self.limits.max_command_bytes)
                raise CommandError(
                    contract.RATE_LIMITED,
                    f"more than {self.limits.commands_per_second:g} commands per second "
                    "for this connection id; this one was not carried out",
                    action=action,
                    request_id=request_id,
                )
            if retained:
                action, request_id = contract.peek(payload, max_bytes=self.limits.max_command_bytes)
                raise CommandError(
                    contract.RETAINED_COMMAND,
                    "retained commands are never carried out: publish with retain=false "
                    "and clear the retained message with an empty retained payload",
                    action=action,
                    request_id=request_id,
                )
            contract.check_connection_id(connection_id)
            if self.draining:
                raise CommandError(contract.SHUTTING_DOWN, "the bridge is shutting down")
            if refused_topic is not None:
                action, request_id = contract.peek(payload, max_bytes=self.limits.max_command_bytes)
                raise CommandError(
                    contract.RESPONSE_TOPIC_NOT_ALLOWED,
                    f"{refused_topic}; the command was not carried out",
                    action=action,
                    request_id=request_id,
                )
            parsed: Command | CommandError = contract.parse_command(
                connection_id,
                payload,
                max_bytes=self.limits.max_command_bytes,
                allowed_event_types=self.limits.allowed_event_types,
            )
        except CommandError as exc:
            if exc.code in _ANSWERED_AT_ONCE:
                return self._reject(connection_id, exc, reply_to)
            parsed = exc
        if (
            self._recent is not None
            and parsed.request_id is not None
            and (self._recent.seen_before(connection_id, parsed.request_id, payload, now))
        ):
            self.stats.duplicates += 1
            return []  # a QoS 1 redelivery: it was carried out (or answered) already

        backlog = self._backlogs.get(connection_id)
        if backlog is None and not self._busy(connection_id):
            return self._execute(connection_id, parsed, reply_to)
        if backlog is None:
            backlog = self._backlogs[connection_id] = deque()
        size = _entry_size(parsed, reply_to)
        problem = None
        if len(backlog) >= MAX_BACKLOG:
            problem = f"more than {MAX_BACKLOG} commands are waiting for this connection"
        elif self._over_budget(size):
            problem = self._budget_problem()
        if problem is not None:
            if not backlog:
                del self._backlogs[connection_id]
            error = CommandError(contract.LIMIT_REACHED, problem)
            if isinstance(parsed, CommandError):
                error.action, error.request_id = parsed.action, parsed.request_id
            else:
                error.action = _action_of(parsed)
                error.request_id = parsed.request_id
            return self._reject(connection_id, error, reply_to)
        backlog.append((parsed, reply_to, size))
        self.waiting_bytes += size
        return []

    def internal_error(self, connection_id: str, payload: bytes) -> list[Action]:
        """Handling this command failed unexpectedly (a bug): answer it with ``internal_error``."""
        action, request_id = contract.peek(payload, max_bytes=self.limits.max_command_bytes)
        error = CommandError(
            contract.INTERNAL_ERROR,
            "the bridge failed while handling this command (logged); "
            "it may not have been carried out",
            action=action,
            request_id=request_id,
        )
        return self._reject(connection_id, error, None)

    def upstream_written(self, size: int) -> None:
        """A :class:`SendUpstream` of ``size`` characters was written upstream, or dropped."""
        self.waiting_bytes -= size

    def upstream_opened(self, connection_id: str) -> list[Action]:
        """The handshake of an OPENING connection succeeded."""
        connection = self._expect(connection_id, Phase.OPENING)
        connection.phase = Phase.OPEN
        ack = contract.connect_ack(connection_id, self.url, connection.connect.request_id)
        actions = self._reply(connection_id, ack, connection.connect_reply, contract.CONNECT)
        return actions + self._pump(connection_id)

    def upstream_failed(
        self, connection_id: str, message: str, status: int | None = None
    ) -> list[Action]:
        """The handshake of an OPENING connection failed or was aborted."""
        connection = self._expect(connection_id, Phase.OPENING)
        del self._connections[connection_id]
        if self.draining:
            code, message, status = contract.SHUTTING_DOWN, "the bridge is shutting down", None
        else:
            code = contract.UPSTREAM_CONNECT_FAILED
        error = contract.error_event(
            connection_id,
            code,
            message,
            action=contract.CONNECT,
            request_id=connection.connect.request_id,
            status=status,
        )
        self.stats.rejected += 1
        actions = self._reply(connection_id, error, connection.connect_reply, "error")
        return actions + self._pump(connection_id)

    def upstream_event(self, connection_id: str, raw: bytes) -> Publish:
        """A server event arrived: the hot path. Returns the one message to publish."""
        connection = self._connections.get(connection_id)
        if connection is None:
            raise InvalidState(f"event for unknown connection {connection_id!r}")
        event_type = contract.server_event_type(raw)
        if event_type is None:
            error = contract.error_event(
                connection_id,
                contract.INVALID_SERVER_EVENT,
                f"the upstream sent a frame that is not a JSON object with a type: {raw[:120]!r}",
                action=None,
            )
            return self._publish(connection.events_topic, error, connection_id, "error")
        if event_type in _SCRUBBED_EVENT_TYPES:
            raw = self.redactor.redact_bytes(raw)
        properties = (
            contract.user_properties(connection_id, contract.DIRECTION_SERVER, event_type)
            if self.v5
            else ()
        )
        return Publish(connection.events_topic, raw, self.qos, properties, relayed=True)

    def upstream_closed(self, connection_id: str, code: int, reason: str) -> list[Action]:
        """An OPEN or CLOSING connection ended: after our close, or not."""
        connection = self._connections.pop(connection_id, None)
        if connection is None or connection.phase is Phase.OPENING:
            raise InvalidState(f"close of a connection that is not open: {connection_id!r}")
        if connection.notice is not None:
            code, reason = connection.notice
            message = contract.disconnected_notice(connection_id, code, reason)
            actions = self._reply(connection_id, message, None, contract.DISCONNECTED)
        elif connection.close is not None:
            close = connection.close
            message = contract.close_ack(connection_id, close.code, close.reason, close.request_id)
            actions = self._reply(connection_id, message, connection.close_reply, contract.CLOSE)
        else:
            message = contract.disconnected_notice(connection_id, code, reason)
            actions = self._reply(connection_id, message, None, contract.DISCONNECTED)
        return actions + self._pump(connection_id)

    def end_connection(self, connection_id: str, code: int, reason: str) -> list[Action]:
        """The bridge itself must end an open connection (its events cannot be kept).

        The connection is dropped at once and, once gone, reported with a
        ``disconnected`` notice carrying ``code`` and ``reason``, even if a
        close was under way.
        """
        connection = self._connections.get(connection_id)
        if connection is None or connection.phase is Phase.OPENING or connection.notice:
            return []
        connection.notice = (code, reason)
        connection.phase = Phase.CLOSING
        return [AbortUpstream(connection_id)]

    def begin_shutdown(self) -> list[Action]:
        """Stop taking commands and close every connection (code 1001)."""
        if self.draining:
            return []
        self.draining = True
        actions: list[Action] = []
        for connection_id, connection in self._connections.items():
            if connection.phase is Phase.OPENING:
                actions.append(AbortUpstream(connection_id))
            elif connection.phase is Phase.OPEN:
                connection.phase = Phase.CLOSING
                connection.close = Close(
                    connection_id, contract.SHUTDOWN_CLOSE_CODE, contract.SHUTDOWN_CLOSE_REASON
                )
                actions.append(
                    CloseUpstream(
                        connection_id, contract.SHUTDOWN_CLOSE_CODE, contract.SHUTDOWN_CLOSE_REASON
                    )
                )
        for connection_id in list(self._backlogs):
            actions.extend(self._pump(connection_id))
        return actions

    # Internals --------------------------------------------------------------

    def _expect(self, connection_id: str, phase: Phase) -> _Connection:
        connection = self._connections.get(connection_id)
        if connection is None or connection.phase is not phase:
            raise InvalidState(f"connection {connection_id!r} is not {phase.value}")
        return connection

    def _busy(self, connection_id: str) -> bool:
        connection = self._connections.get(connection_id)
        return connection is not None and connection.phase is not Phase.OPEN

    def _pump(self, connection_id: str) -> list[Action]:
        """Run waiting commands of one id until it is busy again or none wait."""
        backlog = self._backlogs.get(connection_id)
        actions: list[Action] = []
        while backlog and (self.draining or not self._busy(connection_id)):
            parsed, reply_to, size = backlog.popleft()
            self.waiting_bytes -= size
            if self.draining:
                parsed = _shutting_down(parsed)
            actions.extend(self._execute(connection_id, parsed, reply_to))
        if not backlog:
            self._backlogs.pop(connection_id, None)
        return actions

    def _execute(
        self, connection_id: str, parsed: Command | CommandError, reply_to: ReplyTo | None
    ) -> list[Action]:
        match parsed:
            case CommandError():
                return self._reject(connection_id, parsed, reply_to)
            case Connect():
                return self._connect(parsed, reply_to)
            case Send():
                return self._send(parsed, reply_to)
            case Close():
                return self._close(parsed, reply_to)

    def _connect(self, command: Connect, reply_to: ReplyTo | None) -> list[Action]:
        connection_id = command.connection_id
        if connection_id in self._connections:
            return self._refuse(
                command, contract.ALREADY_OPEN, "the connection is already open", reply_to
            )
        if len(self._connections) >= self.limits.max_connections:
            return self._refuse(
                command,
                contract.LIMIT_REACHED,
                f"the bridge holds its limit of {self.limits.max_connections} connections",
                reply_to,
            )
        self._connections[connection_id] = _Connection(
            self.topics.events(connection_id), command, reply_to
        )
        return [OpenUpstream(connection_id)]

    def _send(self, command: Send, reply_to: ReplyTo | None) -> list[Action]:
        if command.connection_id not in self._connections:
            return self._refuse(
                command,
                contract.NOT_OPEN,
                "the connection is not open; publish a connect command first",
                reply_to,
            )
        if self._over_budget(len(command.event)):
            return self._refuse(command, contract.LIMIT_REACHED, self._budget_problem(), reply_to)
        self.waiting_bytes += len(command.event)
        ack = contract.send_ack(command.connection_id, command.event_type, command.request_id)
        # The acknowledgement is queued before the event goes upstream, so it
        # always comes before the server events the event causes.
        actions = self._reply(command.connection_id, ack, reply_to, contract.SEND)
        actions.append(SendUpstream(command.connection_id, command.event))
        return actions

    def _close(self, command: Close, reply_to: ReplyTo | None) -> list[Action]:
        connection = self._connections.get(command.connection_id)
        if connection is None:
            return self._refuse(command, contract.NOT_OPEN, "the connection is not open", reply_to)
        connection.phase = Phase.CLOSING
        connection.close, connection.close_reply = command, reply_to
        return [CloseUpstream(command.connection_id, command.code, command.reason)]

    def _over_budget(self, size: int) -> bool:
        return self.waiting_bytes + size > self.limits.max_waiting_bytes

    def _budget_problem(self) -> str:
        return (
            f"commands waiting across the bridge already hold {self.waiting_bytes} of "
            f"{self.limits.max_waiting_bytes} bytes (limits.max_waiting_bytes)"
        )

    def _refuse(
        self, command: Command, code: str, message: str, reply_to: ReplyTo | None
    ) -> list[Action]:
        error = CommandError(
            code, message, action=_action_of(command), request_id=command.request_id
        )
        return self._reject(command.connection_id, error, reply_to)

    def _reject(
        self, connection_id: str, error: CommandError, reply_to: ReplyTo | None
    ) -> list[Action]:
        self.stats.rejected += 1
        message = contract.error_event(
            connection_id,
            error.code,
            error.message,
            action=error.action,
            request_id=error.request_id,
        )
        return self._reply(connection_id, message, reply_to, "error")

    def _reply(
        self,
        connection_id: str,
        message: dict[str, Any],
        reply_to: ReplyTo | None,
        event_type: str,
    ) -> list[Action]:
        """The bridge's own message on the events topic, and on the v5 response topic."""
        connection = self._connections.get(connection_id)
        topic = connection.events_topic if connection else self.topics.events(connection_id)
        publish = self._publish(topic, message, connection_id, event_type)
        if reply_to is None:
            return [publish]
        copy = Publish(
            reply_to.topic,
            publish.payload,
            publish.qos,
            publish.properties,
            reply_to.correlation_data,
        )
        return [publish, copy]

    def _publish(
        self, topic: str, message: dict[str, Any], connection_id: str, event_type: str
    ) -> Publish:
        properties = (
            contract.user_properties(connection_id, contract.DIRECTION_BRIDGE, event_type)
            if self.v5
            else ()
        )
        return Publish(topic, contract.encode(message), self.qos, properties)


def _entry_size(parsed: Command | CommandError, reply_to: ReplyTo | None) -> int:
    """What a waiting command holds in memory, as counted against the budget."""
    size = len(parsed.event) if isinstance(parsed, Send) else _SMALL_ENTRY_BYTES
    if reply_to is not None:
        size += len(reply_to.topic) + len(reply_to.correlation_data or b"")
    return size


def _action_of(command: Command) -> str:
    match command:
        case Connect():
            return contract.CONNECT
        case Send():
            return contract.SEND
        case Close():
            return contract.CLOSE


def _shutting_down(parsed: Command | CommandError) -> CommandError:
    if isinstance(parsed, CommandError):
        return parsed
    return CommandError(
        contract.SHUTTING_DOWN,
        "the bridge is shutting down",
        action=_action_of(parsed),
        request_id=parsed.request_id,
    )


def publishes(actions: Iterable[Action]) -> list[Publish]:
    """The Publish actions among ``actions``, in order (a convenience for callers)."""
    return [action for action in actions if isinstance(action, Publish)]


__all__ = [
    "AbortUpstream",
    "Action",
    "BridgeCore",
    "CloseUpstream",
    "Limits",
    "OpenUpstream",
    "Phase",
    "Publish",
    "ReplyTo",
    "SendUpstream",
    "publishes",
]
