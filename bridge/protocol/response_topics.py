"""Where an MQTT v5 command's Response Topic may send its acknowledgement.

The bridge publishes there under its own account, so only where the owner
allows (``mqtt.response_topics``) and never on the bridge's own topics, Home
Assistant's discovery prefix or a ``$`` topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MAX_TOPIC_BYTES: Final = 65535  # MQTT: a topic name is a UTF-8 string of at most 65,535 bytes


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the MQTT filter (``+`` one level, ``#`` the rest).

    As MQTT says, a filter starting with a wildcard does not match ``$`` topics.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for index, part in enumerate(wanted):
        if part == "#":
            return True
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(wanted) == len(levels)


def topic_name_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to, or None."""
    if not topic:
        return "is empty"
    if any(char in topic for char in "+#\x00"):
        return "contains a wildcard or NUL"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if size > MAX_TOPIC_BYTES:
        return f"is longer than {MAX_TOPIC_BYTES} bytes"
    return None


@dataclass(frozen=True, slots=True)
class ResponseTopicPolicy:
    """Where a command's MQTT v5 Response Topic may send its ack.

    ``allowed`` are the owner's filters (config ``mqtt.response_topics``);
    ``refused`` always win: the bridge's own topics (``P/#``), Home
    Assistant's discovery prefix, and every ``$`` topic. Without this, a client
    could make the bridge publish, under its own account, where the client
    itself may not.
    """

    allowed: tuple[str, ...] = ("#",)
    refused: tuple[str, ...] = ()

    def problem(self, topic: str) -> str | None:
        """Why an ack may not go to ``topic``, or None if it may."""
        problem = topic_name_problem(topic)
        if problem is not None:
            return f"the response topic {problem}"
        if topic.startswith("$"):
            return "the response topic is a $ topic"
        for refused in self.refused:
            if topic_matches(refused, topic):
                return f"the response topic is under {refused}, which the bridge keeps for itself"
        if not any(topic_matches(allowed, topic) for allowed in self.allowed):
            return "the response topic is not in mqtt.response_topics"
        return None
