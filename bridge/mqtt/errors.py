"""The broker side's kinds of :class:`~bridge.errors.BrokerError`: the ones a retry may
fix, raised by :mod:`bridge.mqtt.client`, and :func:`fatal_error`, the retry policy
:mod:`bridge.mqtt.link` follows."""

from __future__ import annotations

from typing import Final

from bridge.errors import BrokerError, BrokerRefused
from bridge.mqtt.tls import fatal_tls_problem

# CONNACK reason codes that a retry will not fix (paho gives 3.1.1's in v5 numbering).
_REFUSALS: Final = {134: "bad user name or password", 135: "not authorized"}


class BrokerUnavailable(BrokerError):
    """The broker cannot be used now (lost, refused, not answering): reconnecting may help."""


class BrokerRefusedConnection(BrokerUnavailable):
    """The broker answered CONNECT with a failure reason code (``code``, v5 numbering)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the broker refused the connection: {reason} ({code})")
        self.code = code


class LinkLost(BrokerUnavailable):
    """The connection to the broker ended (``reason`` says how)."""


def fatal_error(exc: BaseException, *, ever_connected: bool) -> BrokerError | None:
    """The broker retry policy: None if reconnecting may help, else the error to stop with.

    A refused login at the very first connect is a configuration mistake and
    stops the daemon; once we were connected, the broker may be restarting
    with its auth plugin not ready yet, so we keep trying.
    """
    if isinstance(exc, BrokerRefusedConnection) and not ever_connected:
        reason = _REFUSALS.get(exc.code)
        if reason is not None:
            return BrokerRefused(f"the broker refused the connection: {reason}")
    if not ever_connected:
        problem = fatal_tls_problem(exc)
        if problem is not None:
            return BrokerRefused(f"cannot connect to the broker: {problem}")
    if isinstance(exc, BrokerUnavailable | OSError | TimeoutError):
        return None
    if isinstance(exc, BrokerError):
        return exc
    return BrokerError(f"unexpected broker error: {exc!r}")
