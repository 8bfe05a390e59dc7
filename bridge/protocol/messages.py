"""The messages the core hands to the adapters, and what each one means.

:class:`Publish` is one MQTT message to send, :class:`ReplyTo` where an MQTT v5
command asked for its answer to go as well. A Publish the bridge says
something with (an ack, an error, a notice) and a relayed
``response.completed`` carry an :data:`Outcome`: what happened, in typed form,
for the operations side (metrics, ``P/bridge/info``), which never parses the
payload. Ordinary relayed events, and the copies sent to response topics,
carry none.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.protocol.contract import Rejection
from bridge.protocol.guardrails import Tokens
from bridge.protocol.server_events import UserProperties


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where an MQTT v5 command asked for its acknowledgement to go as well."""

    topic: str
    correlation_data: bytes | None = None


# What a message means ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """A ``connect`` or ``send`` was carried out and acknowledged (``close``: UpstreamClosed)."""

    connection_id: str
    action: str


@dataclass(frozen=True, slots=True)
class Refused:
    """An error event was published: a command refused, or (``action`` None,
    ``invalid_server_event``) a server frame that could not be relayed."""

    connection_id: str
    rejection: Rejection


@dataclass(frozen=True, slots=True)
class UpstreamClosed:
    """An upstream connection ended, and the message saying so was published.

    That is the ``close`` ack when a close was asked for (``answered_command``
    when a client's ``close`` asked, not the bridge's stop), else a
    ``disconnected`` notice (``disconnected``).
    """

    connection_id: str
    code: int
    reason: str
    answered_command: bool = False
    disconnected: bool = False


@dataclass(frozen=True, slots=True)
class ResponseCompleted:
    """A ``response.completed`` server event was relayed (``raw`` as sent); ``tokens``:
    its usage as the budgets count it (None: it had none and no output);
    ``usage_problem``: why that usage was not taken as sent, the first time on its
    connection (for the log)."""

    connection_id: str
    raw: bytes
    tokens: Tokens | None
    usage_problem: str | None = None


@dataclass(frozen=True, slots=True)
class UsageDoubted:
    """A response ended (incomplete, failed) with a usage not taken as sent: the first
    time on its connection (for the log)."""

    connection_id: str
    problem: str


@dataclass(frozen=True, slots=True)
class ToolCalled:
    """The bridge carried out (or refused) one tool call the model made; ``arguments``
    are the model's, for DEBUG logs only."""

    connection_id: str
    name: str
    call_id: str
    topic: str
    status: str
    arguments: str = ""


Outcome = Acknowledged | Refused | UpstreamClosed | ResponseCompleted | ToolCalled | UsageDoubted


# The message -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish one message. ``relayed`` marks a server event (the hot path);
    ``retain`` is for the adapter's own announcements (the core never retains);
    ``outcome`` says what the message means, for the operations side."""

    topic: str
    payload: bytes
    qos: int
    properties: UserProperties = ()
    correlation_data: bytes | None = None
    relayed: bool = False
    retain: bool = False
    outcome: Outcome | None = None
    response_topic: str | None = None  # MQTT v5: where a tool's reply should go


# What relayed_event() sets, in Publish's field order (tests/protocol/test_messages.py
# holds the two together).
RELAYED_FIELDS = (
    "topic",
    "payload",
    "qos",
    "properties",
    "correlation_data",
    "relayed",
    "retain",
    "outcome",
    "response_topic",
)
_new = object.__new__
(
    _set_topic,
    _set_payload,
    _set_qos,
    _set_properties,
    _set_correlation_data,
    _set_relayed,
    _set_retain,
    _set_outcome,
    _set_response_topic,
) = (getattr(Publish, name).__set__ for name in RELAYED_FIELDS)


def relayed_event(topic: str, payload: bytes, qos: int, properties: UserProperties) -> Publish:
    """``Publish(topic, payload, qos, properties, relayed=True)``, built faster.

    One per relayed event: a frozen dataclass's ``__init__`` sets each of its
    nine fields through ``object.__setattr__`` (1.8 us here); storing them
    through the slots' own descriptors takes a third of that. Same class, same
    value, still frozen.
    """
    publish = _new(Publish)
    _set_topic(publish, topic)
    _set_payload(publish, payload)
    _set_qos(publish, qos)
    _set_properties(publish, properties)
    _set_correlation_data(publish, None)
    _set_relayed(publish, True)
    _set_retain(publish, False)
    _set_outcome(publish, None)
    _set_response_topic(publish, None)
    return publish


__all__ = [
    "Acknowledged",
    "Outcome",
    "Publish",
    "Refused",
    "ReplyTo",
    "ResponseCompleted",
    "ToolCalled",
    "UpstreamClosed",
    "UsageDoubted",
    "UserProperties",
    "relayed_event",
]
