"""Home Assistant MQTT discovery of the bridge's own entities."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bridge.config.settings import parse_config
from bridge.ops.discovery import discovery_messages
from bridge.protocol.contract import Topics
from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client, body, bridge_settings
from tests.ops_helpers import OpsBridge

pytestmark = pytest.mark.integration

ENTITIES = {"status", "connections", "tokens_today", "last_error", "started"}


async def configs(client: Client, count: int, also: str = "") -> dict[str, dict[str, Any]]:
    """The next ``count`` discovery config messages by topic, and the next on ``also``."""
    found: dict[str, dict[str, Any]] = {}
    while len(found) < count + (1 if also else 0):
        message = await client.next()
        if message.topic.value == also and message.payload == b"online":
            found[also] = {}
        elif message.topic.value.endswith("/config") or message.topic.value == also:
            found[message.topic.value] = body(message)
    return found


async def test_discovery_announces_the_bridge_device_and_its_sensors(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """Retained configs for one device; sensors read P/bridge/info fields that exist."""
    settings = bridge_settings(
        broker, simulator, tmp_path, homeassistant={"discovery": True}, mqtt={"client_id": "b1"}
    )
    async with OpsBridge(settings), Client(broker) as client:
        await client.subscribe("homeassistant/#", "ai/bridge/info")
        found = await configs(client, len(ENTITIES), also="ai/bridge/info")
        info = found.pop("ai/bridge/info")
    assert {topic.split("/")[-2] for topic in found} == ENTITIES
    for topic, config in found.items():
        component, node, object_id = topic.split("/")[1:4]
        assert component in ("sensor", "binary_sensor")
        assert node == "b1"
        assert config["unique_id"] == f"b1_{object_id}"
        assert config["device"]["identifiers"] == ["b1"]
        assert config["device"]["name"] == "openai-mqtt-bridge (b1)"
        if object_id == "status":
            assert (config["state_topic"], config["payload_on"]) == ("ai/bridge/state", "online")
        else:
            assert config["availability_topic"] == "ai/bridge/state"
            assert config["state_topic"] == "ai/bridge/info"
            for field in re.findall(r"value_json\.(\w+)", config["value_template"]):
                assert field in info, (object_id, field)


async def test_discovery_is_announced_again_when_home_assistant_comes_online(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """HA's birth message (homeassistant/status: online) brings the configs and state again."""
    settings = bridge_settings(broker, simulator, tmp_path, homeassistant={"discovery": True})
    async with OpsBridge(settings), Client(broker) as client:
        await client.subscribe("homeassistant/+/+/+/config", "ai/bridge/state")
        await configs(client, len(ENTITIES))  # the retained ones
        await client.quiet(0.3)
        await client.mqtt.publish("homeassistant/status", b"offline", qos=1)
        assert not [m for m in await client.quiet(0.5) if m.topic.value.endswith("/config")]
        await client.mqtt.publish("homeassistant/status", b"online", qos=1)
        again = await configs(client, len(ENTITIES), also="ai/bridge/state")
        assert len(again) == len(ENTITIES) + 1  # `online` said again too


async def test_no_discovery_unless_asked(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """By default nothing is published under the discovery prefix."""
    async with OpsBridge(bridge_settings(broker, simulator, tmp_path)), Client(broker) as client:
        await client.subscribe("homeassistant/#")
        assert await client.quiet(1.0) == []


def test_discovery_payloads_follow_both_prefixes() -> None:
    """A custom discovery prefix and topic prefix flow into every topic and payload."""
    config = parse_config({"homeassistant": {"discovery": True, "prefix": "ha"}})
    messages = discovery_messages(config, Topics("home/ai"))
    assert all(topic.startswith("ha/") for topic, _ in messages)
    for _, payload in messages:
        document = json.loads(payload)
        assert document["state_topic"].startswith("home/ai/bridge/")
        assert document.get("availability_topic", "home/ai/bridge/state") == "home/ai/bridge/state"


def test_a_global_budget_gets_a_tokens_left_sensor() -> None:
    """With a global budget, a sensor reads what is left of it from P/bridge/usage."""
    from tests.ops.test_assistant_discovery import SENSOR

    plain = discovery_messages(parse_config({}), Topics("ai"))
    assert not any("tokens_left_today" in topic for topic, _ in plain)
    config = parse_config({"limits": {"budgets": {"global_tokens_per_day": 1000}}})
    (payload,) = [p for t, p in discovery_messages(config, Topics("ai")) if "tokens_left" in t]
    document = json.loads(payload)
    assert document["state_topic"] == "ai/bridge/usage"
    assert set(document) <= SENSOR | {"unique_id", "device", "origin"}
