"""The discovered entities in Home Assistant, and the Ask entity end to end.

What to expect comes from the bridge's own discovery code run on the check's
config (:func:`bridge.ops.discovery.discovery_messages`), not from a list
kept here; Home Assistant's entity registry maps each unique id to the
entity id Home Assistant derived (device name + entity name).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.config.settings import parse_config
from bridge.ops.discovery import discovery_messages
from bridge.protocol.contract import Topics
from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.homeassistant_check.client import HomeAssistant
from bridge_tools.homeassistant_check.processes import Child, NotYet, wait_until

DISCOVERY_TIMEOUT: Final = 60.0
ANSWER_TIMEOUT: Final = 60.0
STATE_MAX: Final = 255
# The entities of a device, by name and component: what the README and the examples rely on.
BRIDGE_ENTITIES: Final = {
    "Status": "binary_sensor",
    "Open connections": "sensor",
    "Tokens today": "sensor",
    "Last error": "sensor",
    "Started": "sensor",
}
ASSISTANT_ENTITIES: Final = {
    "Ask": "text",
    "Answer": "sensor",
    "Status": "sensor",
    "Tokens today": "sensor",
}
ASSISTANT_STATUSES: Final = {"unknown", "ready", "thinking", "streaming", "closed"}


@dataclass(frozen=True)
class Expected:
    """One entity the bridge announces."""

    component: str
    device: str  # the device's name
    name: str  # the entity's name
    config: dict[str, Any]

    @property
    def unique_id(self) -> str:
        return str(self.config["unique_id"])


@dataclass
class Discovered:
    """Entity ids by entity name: the bridge's device, and each assistant's by connection id."""

    bridge: dict[str, str] = field(default_factory=dict)
    assistants: dict[str, dict[str, str]] = field(default_factory=dict)


def expected_entities(bridge_config: dict[str, Any]) -> list[Expected]:
    """What the bridge announces with this config, checked for the devices' shape."""
    config = parse_config(bridge_config)
    found = []
    for topic, payload in discovery_messages(config, Topics(config.mqtt.topic_prefix)):
        entity = json.loads(payload)
        found.append(
            Expected(topic.split("/")[1], entity["device"]["name"], entity["name"], entity)
        )
    devices: dict[str, dict[str, str]] = {}
    for entity in found:
        devices.setdefault(entity.device, {})[entity.name] = entity.component
    bridge = [entity.device for entity in found if "via_device" not in entity.config["device"]]
    shapes = {bridge[0]: BRIDGE_ENTITIES} | {
        f"Assistant {connection_id}": ASSISTANT_ENTITIES
        for connection_id in config.homeassistant.assistants
    }
    if devices != shapes:
        raise CheckFailed(f"the bridge announces {devices}, the check expects {shapes}")
    return found


def check_discovery(ha: HomeAssistant, expected: list[Expected], watch: list[Child]) -> Discovered:
    """Every announced entity is in Home Assistant, on its device, with a sensible state."""
    by_unique_id = {entity.unique_id: entity for entity in expected}

    def registered() -> dict[str, dict[str, Any]]:
        entities, devices = ha.websocket(
            "config/entity_registry/list", "config/device_registry/list"
        )
        found = {e["unique_id"]: e for e in entities if e["platform"] == "mqtt"}
        missing = sorted(set(by_unique_id) - set(found))
        if missing:
            raise NotYet(f"not registered: {', '.join(missing)}")
        names = {device["id"]: device for device in devices}
        for unique_id, entity in by_unique_id.items():
            device = names.get(found[unique_id]["device_id"], {})
            if device.get("name") != entity.device:
                raise CheckFailed(f"{unique_id} is on device {device.get('name')!r}")
            via = entity.config["device"].get("via_device")
            if via is not None and names.get(device.get("via_device_id"), {}).get(
                "identifiers"
            ) != [["mqtt", via]]:
                raise CheckFailed(f"device {entity.device!r} is not linked to the bridge's device")
        return found

    registry = wait_until(
        "every discovered entity is registered", registered, DISCOVERY_TIMEOUT, watch=watch
    )

    def sensible() -> Discovered:
        states = ha.states()
        discovered = Discovered()
        for unique_id, entity in by_unique_id.items():
            entity_id = registry[unique_id]["entity_id"]
            problem = state_problem(entity, states.get(entity_id))
            if problem:
                raise NotYet(f"{entity_id}: {problem}")
            if "via_device" not in entity.config["device"]:
                discovered.bridge[entity.name] = entity_id
        for entity in by_unique_id.values():
            if entity.name == "Ask":
                topic = entity.config["command_topic"]
                connection_id = topic.split("/")[-2]
                discovered.assistants[connection_id] = {
                    other.name: registry[other_id]["entity_id"]
                    for other_id, other in by_unique_id.items()
                    if other.device == entity.device
                }
        return discovered

    return wait_until(
        "every discovered entity has a sensible state", sensible, DISCOVERY_TIMEOUT, watch=watch
    )


def state_problem(entity: Expected, state: dict[str, Any] | None) -> str | None:
    """What is wrong with an entity's state before any question, or None."""
    if state is None:
        return "no state"
    value, attributes = state["state"], state["attributes"]
    friendly = f"{entity.device} {entity.name}"
    if attributes.get("friendly_name") != friendly:
        return f"friendly name {attributes.get('friendly_name')!r}, not {friendly!r}"
    if value == "unavailable":
        return "unavailable"
    checks: dict[tuple[str, str], Callable[[str], bool]] = {
        ("binary_sensor", "Status"): lambda v: v == "on",
        ("sensor", "Open connections"): _count,
        ("sensor", "Tokens today"): _count,
        ("sensor", "Last error"): lambda v: v == "none",
        ("sensor", "Started"): _recent_timestamp,
        ("text", "Ask"): lambda v: v == "unknown" or len(v) <= STATE_MAX,
        ("sensor", "Answer"): lambda v: len(v) <= STATE_MAX,
    }
    if entity.device.startswith("Assistant "):
        checks[("sensor", "Status")] = lambda v: v in ASSISTANT_STATUSES
    check = checks.get((entity.component, entity.name))
    if check is None:
        return f"the check does not know what {entity.component} {entity.name!r} should show"
    return None if check(value) else f"state {value!r}"


def _count(value: str) -> bool:
    return value.isdigit()


def _recent_timestamp(value: str) -> bool:
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        return False
    age = datetime.datetime.now(datetime.UTC) - when
    return when.tzinfo is not None and datetime.timedelta(0) <= age < datetime.timedelta(hours=1)


def check_ask_entity(
    ha: HomeAssistant, discovered: Discovered, connection_id: str, question: str, watch: list[Child]
) -> dict[str, Any]:
    """text.set_value on the Ask entity: the Answer sensor gets the whole answer; its attributes."""
    entities = discovered.assistants[connection_id]
    answer_id = entities["Answer"]
    before = _attributes(ha, answer_id).get("response_id")
    ha.call_service("text", "set_value", {"entity_id": entities["Ask"], "value": question})

    def answered() -> dict[str, Any]:
        state = ha.state(answer_id) or {"attributes": {}}
        if state["attributes"].get("response_id") in {None, before}:
            raise NotYet(f"{answer_id} is {state.get('state')!r}")
        return state

    state = wait_until(f"{answer_id} shows the answer", answered, ANSWER_TIMEOUT, watch=watch)
    answer: dict[str, Any] = state["attributes"]
    text = answer.get("text")
    expected = {"object": "response.websocket.answer", "connection_id": connection_id}
    if {key: answer.get(key) for key in expected} != expected or "request_id" not in answer:
        raise CheckFailed(f"{answer_id}'s attributes are not the answer object: {answer}")
    if answer.get("status") != "completed" or not isinstance(text, str) or not text:
        raise CheckFailed(f"the answer did not complete with a text: {answer}")
    if state["state"] != text[:STATE_MAX]:
        raise CheckFailed(f"{answer_id}'s state {state['state']!r} is not the text cut to 255")
    asked = ha.state(entities["Ask"]) or {}
    if asked.get("state") != question:
        raise CheckFailed(f"{entities['Ask']} shows {asked.get('state')!r}, not the question")

    def settled() -> None:
        status = (ha.state(entities["Status"]) or {}).get("state")
        tokens = (ha.state(entities["Tokens today"]) or {}).get("state", "")
        total = (ha.state(discovered.bridge["Tokens today"]) or {}).get("state", "")
        if status != "ready":
            raise NotYet(f"{entities['Status']} is {status!r}")
        if not (tokens.isdigit() and total.isdigit() and 0 < int(tokens) <= int(total)):
            raise NotYet(f"tokens today: assistant {tokens!r}, bridge {total!r}")

    wait_until(
        "the status says ready and the tokens are counted", settled, ANSWER_TIMEOUT, watch=watch
    )
    return answer


def _attributes(ha: HomeAssistant, entity_id: str) -> dict[str, Any]:
    state = ha.state(entity_id)
    attributes: dict[str, Any] = state["attributes"] if state else {}
    return attributes
