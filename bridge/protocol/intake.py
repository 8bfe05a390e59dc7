"""Command intake: what a command goes through before the state machine sees it.

Refusals that do not depend on a connection's state are decided here and
answered at once (rate limit, retained, invalid id, shutting down, response
topic); everything else is parsed into a command or a rejection that waits its
turn behind the id's earlier commands. QoS 1 redeliveries stop here.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.protocol import contract
from bridge.protocol.contract import Command, Rejection
from bridge.protocol.limits import LimitsConfig, RateLimiter, RecentCommands
from bridge.protocol.messages import ReplyTo
from bridge.protocol.response_topics import ResponseTopicPolicy


@dataclass(frozen=True, slots=True)
class Arrival:
    """A command taken in: parsed, or the rejection that answers it.

    ``at_once`` marks a rejection that does not depend on the connection's
    state: it is answered without waiting behind the id's earlier commands.
    ``reply_to`` is None when the command asked for a response topic it may
    not use.
    """

    parsed: Command | Rejection
    reply_to: ReplyTo | None
    at_once: bool = False


@dataclass(slots=True)
class CommandStats:
    duplicates: int = 0  # QoS 1 redeliveries dropped


class CommandIntake:
    """Takes commands in for the core, for every connection id."""

    def __init__(self, limits: LimitsConfig, response_topics: ResponseTopicPolicy) -> None:
        self.stats = CommandStats()
        self._rate = RateLimiter(limits.commands_per_second, limits.command_burst)
        self._recent: RecentCommands | None = None
        self.configure(limits, response_topics)

    def configure(self, limits: LimitsConfig, response_topics: ResponseTopicPolicy) -> None:
        """Hold commands to these limits from now on (a reloaded config); each id's rate
        bucket and the commands seen lately are kept."""
        self.limits = limits
        self.response_topics = response_topics
        self.allowed_event_types = frozenset(limits.allowed_event_types)
        self._rate.rate, self._rate.burst = limits.commands_per_second, limits.command_burst
        if not limits.dedupe_seconds:
            self._recent = None
        elif self._recent is None:
            self._recent = RecentCommands(limits.dedupe_seconds)
        else:
            self._recent.window = limits.dedupe_seconds

    def take(
        self,
        connection_id: str,
        payload: bytes,
        *,
        retained: bool,
        reply_to: ReplyTo | None,
        now: float,
        draining: bool,
    ) -> Arrival | None:
        """The command on ``P/<connection_id>/cmd``, or None if there is nothing to carry out
        (an empty payload, or a QoS 1 redelivery of a command already handled)."""
        if not payload:
            return None  # an empty payload deletes a retained message: not a command
        refused_topic: str | None = None
        if reply_to is not None:
            # Checked first: no reply at all, not even an error, may go there.
            refused_topic = self.response_topics.problem(reply_to.topic)
            if refused_topic is not None:
                reply_to = None
        refusal = self._refusal(connection_id, payload, retained, refused_topic, now, draining)
        if refusal is not None:
            return Arrival(refusal, reply_to, at_once=True)
        parsed = contract.parse_command(
            connection_id,
            payload,
            max_bytes=self.limits.max_command_bytes,
            allowed_event_types=self.allowed_event_types,
        )
        if (
            self._recent is not None
            and parsed.request_id is not None
            and self._recent.seen_before(connection_id, parsed.request_id, payload, now)
        ):
            self.stats.duplicates += 1
            return None  # a QoS 1 redelivery: it was carried out (or answered) already
        return Arrival(parsed, reply_to)

    def _refusal(
        self,
        connection_id: str,
        payload: bytes,
        retained: bool,
        refused_topic: str | None,
        now: float,
        draining: bool,
    ) -> Rejection | None:
        """A rejection answered at once, whatever the connection's state, or None."""
        if not self._rate.allow(connection_id, now):
            return self.peeked(
                payload,
                contract.RATE_LIMITED,
                f"more than {self.limits.commands_per_second:g} commands per second "
                "for this connection id; this one was not carried out",
            )
        if retained:
            return self.peeked(
                payload,
                contract.RETAINED_COMMAND,
                "retained commands are never carried out: publish with retain=false "
                "and clear the retained message with an empty retained payload",
            )
        problem = contract.connection_id_problem(connection_id)
        if problem is not None:
            return Rejection(contract.INVALID_CONNECTION_ID, problem)
        if draining:
            return Rejection(contract.SHUTTING_DOWN, "the bridge is shutting down")
        if refused_topic is not None:
            return self.peeked(
                payload,
                contract.RESPONSE_TOPIC_NOT_ALLOWED,
                f"{refused_topic}; the command was not carried out",
            )
        return None

    def peeked(self, payload: bytes, code: str, message: str) -> Rejection:
        """A rejection of a command that is not parsed, echoing what can be read of it."""
        action, request_id = contract.peek(payload, max_bytes=self.limits.max_command_bytes)
        return Rejection(code, message, action, request_id)
