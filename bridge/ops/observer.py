"""What the supervisor tells the operations side: a few facts, as they happen.

:class:`~bridge.daemon.service.Service` is given one :class:`Observer`; this
base class ignores everything, and :class:`bridge.ops.operations.Operations`
turns the facts into ``STATUS=`` lines, ``P/bridge/info``, Home Assistant
sensors and metrics. The calls are cheap and never block: relaying stays the
hot path (an ordinary relayed event calls nothing here).
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.protocol.messages import Outcome


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
