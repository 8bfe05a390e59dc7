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

import json
import re
from typing import Any, Final

from bridge import __version__
from bridge.config.settings import Config
from bridge.ops.assistant_discovery import assistant_messages
from bridge.ops.usage import usage_topic
from bridge.protocol.contract import RESERVED_ID, Topics

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
    name = DEVICE_NAME
    if config.mqtt.client_id != DEFAULT_CLIENT_ID:
        name = f"{DEVICE_NAME} ({config.mqtt.client_id})"
    device = {
        "identifiers": [node],
        "name": name,
        "manufacturer": "openai-mqtt-bridge",
        "model": "OpenAI Responses WebSocket on MQTT",
        "sw_version": __version__,
    }
    origin = {"name": "openai-mqtt-bridge", "sw_version": __version__}
    available = {
        "availability_topic": topics.state,
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    info = info_topic(topics)
    entities: list[tuple[str, str, dict[str, Any]]] = [
        (
            "binary_sensor",
            "status",
            {
                "name": "Status",
                "device_class": "connectivity",
                "state_topic": topics.state,
                "payload_on": "online",
                "payload_off": "offline",
                "entity_category": "diagnostic",
            },
        ),
        (
            "sensor",
            "connections",
            {
                "name": "Open connections",
                "state_topic": info,
                "value_template": "{{ value_json.connections }}",
                "state_class": "measurement",
                "icon": "mdi:lan-connect",
                **available,
            },
        ),
        (
            "sensor",
            "tokens_today",
            {
                "name": "Tokens today",
                "state_topic": info,
                "value_template": "{{ value_json.tokens_today }}",
                "state_class": "total_increasing",
                "unit_of_measurement": "tokens",
                "icon": "mdi:counter",
                **available,
            },
        ),
        (
            "sensor",
            "last_error",
            {
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
            },
        ),
        (
            "sensor",
            "started",
            {
                "name": "Started",
                "state_topic": info,
                "value_template": "{{ value_json.started_at }}",
                "device_class": "timestamp",
                "entity_category": "diagnostic",
                **available,
            },
        ),
    ]
    if config.limits.budgets.global_tokens_per_day is not None:
        entities.append(
            (
                "sensor",
                "tokens_left_today",
                {
                    "name": "Tokens left today",
                    "state_topic": usage_topic(topics),
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
        )
    prefix = config.homeassistant.prefix
    messages = []
    for component, object_id, entity in entities:
        payload = {
            **entity,
            "unique_id": f"{node}_{object_id}",
            "device": device,
            "origin": origin,
        }
        topic = f"{prefix}/{component}/{node}/{object_id}/config"
        messages.append((topic, json.dumps(payload, separators=(",", ":")).encode()))
    common = {**available, "origin": origin}
    return messages + assistant_messages(config, topics, node=node, info=info, common=common)
