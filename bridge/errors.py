"""The bridge's exceptions: one root, a few meaningful kinds.

::

    BridgeError
    ├── ConfigError        bad configuration or a missing secret: fatal at startup (exit 78)
    ├── CommandError       a bad MQTT command, while it is parsed: handed out as a Rejection value
    ├── UpstreamError      the Responses WebSocket could not be opened or failed
    ├── BrokerError        the MQTT broker could not be reached or dropped us
    │   └── BrokerRefused  ...or refused us for good at the first connect (exit 77)
    └── InvalidState       the core was misused: a bug, never caught

This module imports no library, so the pure core can use it.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error the bridge raises."""


class ConfigError(BridgeError):
    """The configuration is invalid, or a secret it names cannot be read.

    ``path`` is the dotted config key (``mqtt.port``), empty when the error is
    about the file as a whole.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InstanceConflict(BridgeError):
    """Another bridge serves this prefix and the two cannot share it: this one stops."""


class CommandError(BridgeError):
    """A command on ``P/<id>/cmd`` cannot be carried out.

    ``code`` is the stable, documented word published in ``error.code``.
    Raised only inside command parsing (:mod:`bridge.protocol.contract`),
    which hands the rejection out as a value,
    :class:`~bridge.protocol.contract.Rejection`; it is never stored.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class UpstreamError(BridgeError):
    """Opening or using the upstream Responses WebSocket failed.

    ``status`` is the HTTP status of a refused handshake, when there was one.
    The message never contains the API key or an unredacted URL.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message, status)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


class BrokerError(BridgeError):
    """The MQTT broker could not be reached, refused us, or dropped the link."""


class BrokerRefused(BrokerError):
    """The first connect failed in a way no retry fixes: bad login, or a TLS certificate.

    Raised only before the bridge was ever connected; later the broker may be
    restarting, and the bridge keeps trying.
    """


class InvalidState(BridgeError, AssertionError):
    """The core was driven in a way its contract forbids: a bug in the caller."""
