"""Home Assistant MQTT discovery for the bridge's own entities (pure).

One device, "openai-mqtt-bridge", with a connectivity sensor on
``P/bridge/state`` and sensors read from the retained ``P/bridge/info``:
open connections, tokens today, last error, started. Every entity but the
connectivity sensor is unavailable while ``P/bridge/state`` says
``offline``. The config payloads are retained under
``<prefix>/<component>/<node_id>/<object_id>/config`` and published again
when Home Assistant announces ``online`` on ``<prefix>/status``. The ids in
``homeassistant.assistants`` get a device each, announced with the bridge's
(:mod:`bridge.ops.assistant_discovery`).
"""

from __future__ import annotations

import re
from typing import Any, Final

from bridge import __version__
from bridge.config.settings import Config
from bridge.ops.assistant_discovery import assistant_messages
from bridge.ops.usage import usage_topic
from bridge.protocol.contract import RESERVED_ID, Topics
from bridge.protocol.encoding import encode

DEVICE_NAME: Final = "openai-mqtt-bridge"
DEFAULT_CLIENT_ID: Final = "openai-mqtt-bridge"


def info_topic(topics: Topics) -> str:
    """``P/bridge/info``: reserved by the contract, so no connection id can clash with it."""
    return f"{topics.prefix}/{RESERVED_ID}/info"


def status_topic(config: Config) -> str:
    """Where Home Assistant says ``online`` when it (re)starts (its birth message)."""
    return f"{config.homeassistant.prefix}/status"


def node_id(client_id: str) -> str:
    """A discovery node id from the MQTT client id (HA allows ``[a-zA-Z0-9_-]``)."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", client_id)


def discovery_messages(config: Config, topics: Topics) -> list[tuple[str, bytes]]:
    """Every (topic, retained payload) that announces the bridge to Home Assistant."""
    node = node_id(config.mqtt.client_id)
    origin = {"name": "openai-mqtt-bridge", "sw_version": __version__}
    available = {
        "availability_topic": topics.state,
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    info = info_topic(topics)
    entities = _bridge_entities(topics.state, info, available)
    if config.limits.budgets.global_tokens_per_day is not None:
        entities.append(_tokens_left(usage_topic(topics), available))
    prefix = config.homeassistant.prefix
    device = _device(config, node)
    messages = []
    for component, object_id, entity in entities:
        payload = {**entity, "unique_id": f"{node}_{object_id}", "device": device, "origin": origin}
        messages.append((f"{prefix}/{component}/{node}/{object_id}/config", encode(payload)))
    common = {**available, "origin": origin}
    return messages + assistant_messages(config, topics, node=node, info=info, common=common)


def _device(config: Config, node: str) -> dict[str, Any]:
    name = DEVICE_NAME
    if config.mqtt.client_id != DEFAULT_CLIENT_ID:
        name = f"{DEVICE_NAME} ({config.mqtt.client_id})"
    return {
        "identifiers": [node],
        "name": name,
        "manufacturer": "openai-mqtt-bridge",
        "model": "OpenAI Responses WebSocket on MQTT",
        "sw_version": __version__,
    }


_Entity = tuple[str, str, dict[str, Any]]  # component, object id, its config


def _bridge_entities(state: str, info: str, available: dict[str, str]) -> list[_Entity]:
    """The bridge's own entities: its connectivity, and sensors read from ``P/bridge/info``."""
    status = {
        "name": "Status",
        "device_class": "connectivity",
        "state_topic": state,
        "payload_on": "online",
        "payload_off": "offline",
        "entity_category": "diagnostic",
    }
    connections = {
        "name": "Open connections",
        "state_topic": info,
        "value_template": "{{ value_json.connections }}",
        "state_class": "measurement",
        "icon": "mdi:lan-connect",
        **available,
    }
    tokens_today = {
        "name": "Tokens today",
        "state_topic": info,
        "value_template": "{{ value_json.tokens_today }}",
        "state_class": "total_increasing",
        "unit_of_measurement": "tokens",
        "icon": "mdi:counter",
        **available,
    }
    last_error = {
        "name": "Last error",
        "state_topic": info,
        "value_template": (
            "{{ value_json.last_error.code ~ ': ' ~ value_json.last_error.message"
            " if value_json.last_error else 'none' }}"
        ),
        "json_attributes_topic": info,
        "json_attributes_template": "{{ (value_json.last_error or {}) | tojson }}",
        "entity_category": "diagnostic",
        "icon": "mdi:alert-circle-outline",
        **available,
    }
    started = {
        "name": "Started",
        "state_topic": info,
        "value_template": "{{ value_json.started_at }}",
        "device_class": "timestamp",
        "entity_category": "diagnostic",
        **available,
    }
    return [
        ("binary_sensor", "status", status),
        ("sensor", "connections", connections),
        ("sensor", "tokens_today", tokens_today),
        ("sensor", "last_error", last_error),
        ("sensor", "started", started),
    ]


def _tokens_left(usage: str, available: dict[str, str]) -> _Entity:
    """What is left of the bridge's daily budget (with ``limits.budgets.global_tokens_per_day``)."""
    return (
        "sensor",
        "tokens_left_today",
        {
            "name": "Tokens left today",
            "state_topic": usage,
            "value_template": (
                "{% set b = value_json.budgets | selectattr('scope', 'eq', 'bridge')"
                " | selectattr('left', 'defined') | list %}"
                "{{ b[0].left if b else None }}"
            ),
            "state_class": "measurement",
            "unit_of_measurement": "tokens",
            "icon": "mdi:cash-lock",
            **available,
        },
    )
