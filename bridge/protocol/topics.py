"""Every topic the bridge names under its prefix, and what makes a connection id usable.

``P`` is ``mqtt.topic_prefix``. Per connection id: ``P/<id>/cmd`` (commands
in), ``P/<id>/events`` (server events and the bridge's own messages), and the
device output's ``P/<id>/text``, ``P/<id>/answer`` and ``P/<id>/status``. The
id ``bridge`` is reserved for the bridge's own topics (``P/bridge/state``,
``P/bridge/info``, ``P/bridge/usage``, ``P/bridge/instances/<name>/...``).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Final

from bridge.errors import CommandError
from bridge.protocol.error_codes import INVALID_CONNECTION_ID

RESERVED_ID: Final = "bridge"
MAX_CONNECTION_ID_LENGTH: Final = 128


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names under one prefix (config ``mqtt.topic_prefix``)."""

    prefix: str

    @property
    def command_filter(self) -> str:
        return f"{self.prefix}/+/cmd"

    @property
    def state(self) -> str:
        return f"{self.prefix}/{RESERVED_ID}/state"

    @property
    def info(self) -> str:
        return f"{self.prefix}/{RESERVED_ID}/info"

    @property
    def usage(self) -> str:
        return f"{self.prefix}/{RESERVED_ID}/usage"

    def instance(self, name: str, document: str) -> str:
        """``P/bridge/instances/<name>/<document>`` (``info``, ``usage``, ...)."""
        return f"{self.prefix}/{RESERVED_ID}/instances/{name}/{document}"

    def events(self, connection_id: str) -> str:
        return f"{self.prefix}/{connection_id}/events"

    def command(self, connection_id: str) -> str:
        return f"{self.prefix}/{connection_id}/cmd"

    def text(self, connection_id: str) -> str:
        return f"{self.prefix}/{connection_id}/text"

    def answer(self, connection_id: str) -> str:
        return f"{self.prefix}/{connection_id}/answer"

    def status(self, connection_id: str) -> str:
        return f"{self.prefix}/{connection_id}/status"

    def connection_id_of(self, topic: str) -> str | None:
        """The ``<id>`` of a ``P/<id>/cmd`` topic, or None for any other topic.

        The id is returned as it stands, valid or not: see
        :func:`check_connection_id`.
        """
        head = self.prefix + "/"
        if not (topic.startswith(head) and topic.endswith("/cmd")):
            return None
        middle = topic[len(head) : -len("/cmd")]
        if "/" in middle:
            return None
        return middle


def check_connection_id(connection_id: str) -> None:
    """Raise ``CommandError(invalid_connection_id)`` unless the id is usable."""
    problem = connection_id_problem(connection_id)
    if problem is not None:
        raise CommandError(INVALID_CONNECTION_ID, problem)


def connection_id_problem(connection_id: str) -> str | None:
    """Why the id is not usable, or None.

    An id is 1-128 characters with no ``/``, ``+``, ``#``, NUL, control
    characters or whitespace, and is not the reserved ``bridge``.
    """
    if not connection_id:
        return "connection id is empty"
    if len(connection_id) > MAX_CONNECTION_ID_LENGTH:
        return f"connection id is longer than {MAX_CONNECTION_ID_LENGTH} characters"
    if connection_id == RESERVED_ID:
        return f"connection id '{RESERVED_ID}' is reserved"
    for char in connection_id:
        if char in "/+#" or char.isspace() or unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return f"connection id contains the forbidden character {char!r}"
    return None


# Control, surrogate, and format characters (zero-width space, bidirectional
# overrides such as U+202E): the last make two ids look alike in logs and dashboards.
_FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cs", "Cf"})
