"""The state of one connection id's upstream connection, as the core keeps it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.protocol.contract import Ask, Close, Connect
from bridge.protocol.device_output import DeviceOutput

if TYPE_CHECKING:
    from bridge.protocol.tool_rounds import ToolTurn
from bridge.protocol.messages import ReplyTo
from bridge.protocol.sessions import DEFAULT_PROFILE


class Phase(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


@dataclass(slots=True)
class Connection:
    events_topic: str
    connect: Connect
    connect_reply: ReplyTo | None
    phase: Phase = Phase.OPENING
    close: Close | None = None
    close_reply: ReplyTo | None = None
    closed_by_bridge: bool = False  # the close is the bridge's stop: it answers no command
    notice: tuple[int, str] | None = None  # a bridge-decided end: reported as `disconnected`
    profile: str = DEFAULT_PROFILE
    announce_profile: bool = False  # opened by `ask`, or a connect that named its profile
    opened_at: float = 0.0  # the core's clock when the handshake succeeded
    # The `ask` turn in flight on this socket, and whether its output has been relayed
    # (before that, a failure sends it again on a new socket; after, it is upstream_lost).
    turn: Ask | None = None
    turn_reply: ReplyTo | None = None
    turn_output: bool = False
    retrying: bool = False  # closing to send its turn again: reported to nobody
    quiet: bool = False  # opened to send a turn again: no connect ack
    replacing: bool = False  # closed before the server's age limit: the next turn reopens it
    output: DeviceOutput | None = None  # text, answer, status topics (None: events only)
    tool_turn: ToolTurn | None = None  # the tool loop of the `ask` turn in flight
    usage_doubted: bool = False  # a response's usage was not taken as sent (logged once)
