"""What the operations side knows of the daemon: the facts it is told, and what it reads.

The daemon's :class:`~bridge.daemon.service.Service` is given one
:class:`Observer`; this base class ignores everything, and
:class:`bridge.ops.operations.Operations` turns the facts into ``STATUS=``
lines, ``P/bridge/info``, Home Assistant sensors and metrics. The calls are
cheap and never block: relaying stays the hot path (an ordinary relayed event
calls nothing here). What the reporters read of the running bridge is
:class:`RunningBridge`, which the service satisfies: the operations side never
imports the daemon (``[tool.importlinter]`` in pyproject.toml).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from bridge.protocol.messages import Outcome

if TYPE_CHECKING:
    from bridge.mqtt.link import MqttLink
    from bridge.protocol.shared_usage import SharedUsage


class Observer:
    """The facts the supervisor reports; every method here does nothing."""

    @property
    def publish_latency(self) -> Callable[[float], None] | None:
        """Called with the seconds from handing each message to the broker link to the
        broker's acknowledgement; None (this default) when publishes are not timed."""
        return None

    def connections_changed(self, count: int) -> None:
        """The number of upstream connections (any phase) changed to ``count``."""

    def observe(self, outcome: Outcome) -> None:
        """A message that says ``outcome`` was published: an ack, an error, a notice that
        an upstream closed, or a relayed ``response.completed``."""

    def error(self, code: str, message: str) -> None:
        """The bridge as a whole met a problem its owner must see (``P/bridge/info``'s
        ``last_error``), e.g. ``instance_conflict``; already logged."""


class RunningBridge(Protocol):
    """What the operations side reads of the running bridge (the daemon's service)."""

    @property
    def link(self) -> MqttLink:
        """The broker link: connected or not, connects so far, where to announce."""

    @property
    def ready(self) -> asyncio.Event:
        """Set while the bridge serves its prefix."""

    @property
    def connection_count(self) -> int:
        """Upstream connections in any phase."""

    @property
    def events_relayed(self) -> int:
        """Server events the link took."""

    @property
    def buffer_waits(self) -> int:
        """Times a reader had to wait for room in the buffer."""

    @property
    def usage(self) -> SharedUsage:
        """The day's token usage, every instance's (``tokens_today``)."""

    @property
    def mcp_servers(self) -> Mapping[str, Mapping[str, object]]:
        """Each MCP server's state (connecting, up, down), transport and tools offered."""

    @property
    def usage_problem(self) -> str | None:
        """Why today's usage cannot be kept on disk, or None."""

    @property
    def usage_settled(self) -> bool:
        """Our retained usage document has been read back (or there was none)."""
