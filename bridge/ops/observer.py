"""What the supervisor tells the operations side: a few facts, as they happen.

:class:`~bridge.service.Service` calls one :class:`Observer`; this base class
ignores everything, and :class:`bridge.ops.Operations` turns the facts into
``STATUS=`` lines, ``P/bridge/info``, Home Assistant sensors and metrics. The
calls are cheap and never block: relaying stays the hot path.
"""

from __future__ import annotations

from typing import Final

from bridge.protocol.core import Publish

# OpenAI writes ``type`` first; the supervisor tells the observer about a
# completed response (it carries ``usage``) when a relayed event starts so.
COMPLETED_PREFIX: Final = b'{"type":"response.completed"'


class Observer:
    """The facts the supervisor reports; every method here does nothing."""

    def connections_changed(self, count: int) -> None:
        """The number of upstream connections (any phase) changed to ``count``."""

    def bridge_message(self, publish: Publish) -> None:
        """The bridge published one of its own messages: an ack, an error, a notice."""

    def response_completed(self, connection_id: str, raw: bytes) -> None:
        """A ``response.completed`` event was relayed for ``connection_id`` (``raw`` as sent)."""
