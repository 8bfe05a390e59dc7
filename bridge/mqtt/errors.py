"""The broker side's kinds of :class:`~bridge.errors.BrokerError`: the ones a retry may
fix (:mod:`bridge.mqtt.link` decides), raised by :mod:`bridge.mqtt.client`."""

from __future__ import annotations

from bridge.errors import BrokerError


class BrokerUnavailable(BrokerError):
    """The broker cannot be used now (lost, refused, not answering): reconnecting may help."""


class BrokerRefusedConnection(BrokerUnavailable):
    """The broker answered CONNECT with a failure reason code (``code``, v5 numbering)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the broker refused the connection: {reason} ({code})")
        self.code = code


class LinkLost(BrokerUnavailable):
    """The connection to the broker ended (``reason`` says how)."""
