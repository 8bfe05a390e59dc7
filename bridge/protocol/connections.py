"""The state of one connection id's upstream connection, as the core keeps it.

One :class:`State` says where the connection is in its life and how it got
there; :class:`Phase` is the coarse view the adapters ask for (opening, open,
closing). Per id::

    (absent) --connect--> OPENING --opened--> OPEN --close--> CLOSING --closed--> (absent)
                 REOPENING --^                  |--stop------> STOPPING --^
                                                |--retry-----> RETRYING --^ (the turn again)
                                                +--too old---> REPLACING -^ (the next turn)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bridge.protocol.contract import Close, Connect
from bridge.protocol.messages import ReplyTo
from bridge.protocol.sessions import DEFAULT_PROFILE


class Phase(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


class State(enum.Enum):
    OPENING = "opening"  # the handshake; its connect is acknowledged once open
    REOPENING = "reopening"  # the handshake to send a turn again: the client has its acks
    OPEN = "open"
    CLOSING = "closing"  # a client's close, or an end the bridge decided (its notice)
    STOPPING = "stopping"  # the bridge's own stop: the close ack answers no command
    RETRYING = "retrying"  # closing to send its turn again: reported to nobody
    REPLACING = "replacing"  # closed before the server's age limit: the next turn reopens it

    @property
    def phase(self) -> Phase:
        return _PHASES[self]


_PHASES = {
    State.OPENING: Phase.OPENING,
    State.REOPENING: Phase.OPENING,
    State.OPEN: Phase.OPEN,
    State.CLOSING: Phase.CLOSING,
    State.STOPPING: Phase.CLOSING,
    State.RETRYING: Phase.CLOSING,
    State.REPLACING: Phase.CLOSING,
}


@dataclass(slots=True)
class Connection:
    """One id's upstream connection; what features keep about it, they keep themselves."""

    events_topic: str
    connect: Connect
    connect_reply: ReplyTo | None
    profile: str = DEFAULT_PROFILE
    ack_profile: str | None = None  # the profile the connect ack names (`ask`, or asked for)
    state: State = State.OPENING
    opened_at: float = 0.0  # the core's clock when the handshake succeeded
    close: Close | None = None
    close_reply: ReplyTo | None = None
    notice: tuple[int, str] | None = None  # a bridge-decided end: reported as `disconnected`

    @property
    def phase(self) -> Phase:
        return _PHASES[self.state]


class Clock:
    """The latest times the core was given: monotonic ``now``, wall-clock ``wall``
    (epoch seconds, for the budgets' days). Shared by the features that read time."""

    __slots__ = ("now", "wall")

    def __init__(self) -> None:
        self.now = 0.0
        self.wall = 0.0
