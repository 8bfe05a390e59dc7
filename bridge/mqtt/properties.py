"""The MQTT 5 properties of what the bridge publishes, packed once and cached where safe;
what the properties of a message it receives ask for (a reply topic, correlation data)."""

from __future__ import annotations

import functools
from typing import Final

from paho.mqtt.client import MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.protocol.messages import ReplyTo
from bridge.protocol.server_events import UserProperties

# paho's tables of every MQTT property, which it builds anew for each Properties (6.6 KB).
_TABLES: Final = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho


class _PackedOnce(Properties):
    """Properties that encode themselves once: paho packs them again for every publish,
    and relayed events share them (the cache below), so this saves most of the cost.
    They share paho's tables (read-only) instead of a copy each: a cache entry with
    its key costs about 1 KB, not 7."""

    types = _TABLES.types
    names = _TABLES.names
    properties = _TABLES.properties

    def __init__(self) -> None:  # what paho's __init__ sets besides its tables
        self.packetType = PacketTypes.PUBLISH

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = bytes(super().pack())  # type: ignore[no-untyped-call]  # paho
            # paho's __setattr__ only admits MQTT property names
            object.__setattr__(self, "_packed", packed)
        return packed


def properties_of(
    user: UserProperties, correlation: bytes | None, response_topic: str | None = None
) -> Properties | None:
    """paho properties for a publish.

    Only those without Correlation Data are cached: relayed events repeat
    them, while correlation data is a client's choice, and a cache keyed by
    it would let clients pin memory (up to 64 KiB an entry).
    """
    if correlation is None and response_topic is None:
        return cached_properties(user) if user else None  # the bridge's own: none to cache
    properties = _PackedOnce()
    _fill(properties, user)
    if correlation is not None:
        properties.CorrelationData = correlation
    if response_topic is not None:
        properties.ResponseTopic = response_topic
    return properties


@functools.lru_cache(maxsize=4096)
def cached_properties(user: UserProperties) -> Properties | None:
    """The properties of messages without correlation data, one object per distinct set."""
    if not user:
        return None
    properties = _PackedOnce()
    _fill(properties, user)
    return properties


def _fill(properties: Properties, user: UserProperties) -> None:
    if user:
        properties.UserProperty = list(user)
        properties.ContentType = "application/json"


def correlation_of(message: MQTTMessage) -> bytes | None:
    correlation = getattr(message.properties, "CorrelationData", None)
    return bytes(correlation) if correlation is not None else None


def reply_to_of(message: MQTTMessage) -> ReplyTo | None:
    properties = message.properties
    topic = getattr(properties, "ResponseTopic", None) if properties else None
    if not topic:
        return None
    correlation = getattr(properties, "CorrelationData", None)
    return ReplyTo(str(topic), bytes(correlation) if correlation is not None else None)
