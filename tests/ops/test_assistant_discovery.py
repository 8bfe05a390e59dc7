"""Home Assistant discovery of the assistants (``homeassistant.assistants``).

The payloads are checked key by key against Home Assistant's own MQTT
schemas (copied below from its source), and the templates they carry are
rendered the way Home Assistant renders them. jinja2 is not in the venv,
so the few template forms the bridge announces are emulated here (and
only those: any other template fails the test); the emulation follows
Jinja 3.1's ``tojson`` filter and string-literal decoding line for line.
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from bridge.config.settings import Config, load_settings, parse_config
from bridge.ops.discovery import discovery_messages
from bridge.ops.info import Tally, info_document
from bridge.ops.operations import Operations
from bridge.protocol.contract import Ask, Topics, parse_command
from bridge.protocol.guardrails import Tokens
from bridge.protocol.messages import ResponseCompleted
from bridge.protocol.shared_usage import SharedUsage
from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client, body, bridge_settings
from tests.ops_helpers import OpsBridge

# Home Assistant's MQTT discovery schemas, key by key, from home-assistant/core,
# homeassistant/components/mqtt/ (the 2024.1-2024.3 line where there was a choice;
# the bridge is later checked against a running HA 2024.3.3):
# - mixins.py at 010269d0d89ea937a2c098f7f420839d72f09d8f (2024.1-2024.3: the setup
#   helper still async, MQTT_ENTITY_COMMON_SCHEMA not yet moved to schemas.py):
#   MQTT_AVAILABILITY_SCHEMA, MQTT_ENTITY_DEVICE_INFO_SCHEMA, MQTT_ENTITY_COMMON_SCHEMA;
# - text.py of the same line (it imports those from mixins.py): _PLATFORM_SCHEMA_BASE,
#   valid_text_size_configuration;
# - sensor.py: _PLATFORM_SCHEMA_BASE of 2023.8+ (name may be null,
#   suggested_display_precision); the newest adds only `options`;
# - config.py: MQTT_BASE_SCHEMA, MQTT_RO_SCHEMA, MQTT_RW_SCHEMA;
# - discovery.py: MQTT_ORIGIN_INFO_SCHEMA, TOPIC_MATCHER;
# - const.py and homeassistant/const.py: the key strings.
# Discovery payloads go through `extra=vol.REMOVE_EXTRA`: a key not listed is dropped
# without a word, which is why every key is checked here. Later releases add keys
# (entity_picture, options, serial_number, model_id, group, default_entity_id, ...)
# and deprecate object_id; the payloads use none of those.
MQTT_BASE = {"qos", "encoding"}
MQTT_RO = MQTT_BASE | {"state_topic", "value_template"}
MQTT_RW = MQTT_BASE | {"command_topic", "optimistic", "retain", "state_topic"}
AVAILABILITY = {
    "availability_topic",
    "availability_template",
    "payload_available",
    "payload_not_available",
    "availability_mode",
    "availability",
}
ENTITY_COMMON = AVAILABILITY | {
    "device",
    "origin",
    "enabled_by_default",
    "entity_category",
    "icon",
    "json_attributes_topic",
    "json_attributes_template",
    "object_id",
    "unique_id",
}
DEVICE = {
    "identifiers",
    "connections",
    "manufacturer",
    "model",
    "name",
    "hw_version",
    "sw_version",
    "via_device",
    "suggested_area",
    "configuration_url",
}
ORIGIN = {"name", "sw_version", "support_url"}
TEXT = (
    MQTT_RW
    | {"command_template", "name", "max", "min", "mode", "pattern", "value_template"}
    | ENTITY_COMMON
)
SENSOR = (
    MQTT_RO
    | {
        "device_class",
        "expire_after",
        "force_update",
        "last_reset_value_template",
        "name",
        "suggested_display_precision",
        "state_class",
        "unit_of_measurement",
    }
    | ENTITY_COMMON
)
REQUIRED = {"text": {"command_topic"}, "sensor": {"state_topic"}}
ALLOWED = {"text": TEXT, "sensor": SENSOR}
MAX_LENGTH_STATE_STATE = 255  # homeassistant/const.py
TOPIC_MATCHER = re.compile(  # discovery.py, applied to the topic after "<prefix>/"
    r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)"
    r"?(?P<object_id>[a-zA-Z0-9_-]+)/config"
)

ASSISTANT_ENTITIES = {
    ("text", "ask"),
    ("sensor", "answer"),
    ("sensor", "status"),
    ("sensor", "tokens_today"),
}
TRICKY_TEXTS = [
    "What is the weather like on Mars?",
    'He said "hi" and left',
    "back\\slash, 'single' quotes, <b>&amp;</b>",
    "two\nlines\tand a tab\r\n",
    "Küche, 日本語, emoji 🚀 and a zero-width\u200bspace",
    '{{ value }} {% raw %} }} "} ',
    '"',
]
TRICKY_IDS = ["kitchen", 'a"b', "x'y\\z", "küche", "k.che", "🚀rocket", "{{}}%}", "a_b"]


# Home Assistant's templates, emulated -----------------------------------------------


def ha_tojson(value: Any) -> str:
    """Jinja's ``tojson`` filter as Home Assistant has it: ``htmlsafe_json_dumps``
    (jinja2/utils.py, Jinja 3.1) under the default policy, ``json.dumps(sort_keys=True)``."""
    return (
        json.dumps(value, sort_keys=True)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("'", "\\u0027")
    )


def jinja_string(body: str) -> str:
    """What Jinja's lexer makes of the body of a string literal (jinja2/lexer.py, Jinja 3.1)."""
    return body.encode("ascii", "backslashreplace").decode("unicode-escape")


TOKENS_FORM = re.compile(
    r"\{\{ value_json\.assistants\[\"(?P<name>[^\"]*)\"\]\.tokens_today"
    r" if \"(?P=name)\" in \(value_json\.assistants \| default\(\{\}\)\) else 'None' \}\}"
)


def render(template: str, value: str) -> str:
    """``template`` rendered as HA's MQTT integration does: ``value`` is the payload
    (or the entered text), ``value_json`` the payload parsed if it is JSON, and the
    result stripped."""
    try:
        value_json: Any = json.loads(value)
    except ValueError:
        value_json = None
    if template == '{"action":"ask","input": {{ value | tojson }} }':
        result = f'{{"action":"ask","input": {ha_tojson(value)} }}'
    elif match := re.fullmatch(r"\{\{ value_json\.text\[:(?P<n>\d+)\] \}\}", template):
        result = value_json["text"][: int(match["n"])]
    elif template == "{{ value_json | tojson }}":
        result = ha_tojson(value_json)
    elif template == "{{ value if value else 'unknown' }}":
        result = value or "unknown"
    elif match := TOKENS_FORM.fullmatch(template):
        name = jinja_string(match["name"])
        assistants = value_json.get("assistants", {})
        result = str(assistants[name]["tokens_today"]) if name in assistants else "None"
    else:
        raise AssertionError(f"no emulation of the template {template!r}")
    return result.strip()


# The payloads ----------------------------------------------------------------------


def config_with(*assistants: str, **mqtt: Any) -> Config:
    return parse_config(
        {
            "mqtt": {"client_id": "b1", **mqtt},
            "homeassistant": {"discovery": True, "assistants": list(assistants)},
        }
    )


def announced(config: Config, prefix: str = "ai") -> dict[str, dict[str, Any]]:
    """Every discovery config by topic."""
    return {
        topic: json.loads(payload) for topic, payload in discovery_messages(config, Topics(prefix))
    }


def of_assistant(
    found: dict[str, dict[str, Any]], connection_id: str
) -> dict[tuple[str, str], dict[str, Any]]:
    """The configs of one assistant, by (component, object id)."""
    return {
        (topic.split("/")[1], topic.split("/")[-2]): document
        for topic, document in found.items()
        if document["device"]["name"] == f"Assistant {connection_id}"
    }


def entities_of(found: dict[str, dict[str, Any]], connection_id: str) -> dict[str, dict[str, Any]]:
    """The configs of one assistant, by object id."""
    return {
        object_id: document
        for (_, object_id), document in of_assistant(found, connection_id).items()
    }


def test_each_assistant_is_a_device_with_four_entities_behind_the_bridge() -> None:
    """Ask, Answer, Status, Tokens today on the id's own topics, via the bridge's device."""
    found = announced(config_with("kitchen", "garage"))
    bridge = [d for d in found.values() if d["device"]["name"] == "openai-mqtt-bridge (b1)"]
    assert len(bridge) == 5
    assert len(found) == 5 + 2 * 4
    for connection_id in ("kitchen", "garage"):
        assert set(of_assistant(found, connection_id)) == ASSISTANT_ENTITIES
        entities = entities_of(found, connection_id)
        devices = {json.dumps(d["device"], sort_keys=True) for d in entities.values()}
        assert len(devices) == 1  # one device, described the same way by each entity
        device = entities["ask"]["device"]
        assert device["identifiers"] == [f"b1_assistant_{connection_id}"]
        assert device["via_device"] == "b1" == bridge[0]["device"]["identifiers"][0]
        assert entities["ask"]["command_topic"] == f"ai/{connection_id}/cmd"
        assert entities["ask"]["retain"] is False
        assert entities["ask"]["max"] == MAX_LENGTH_STATE_STATE
        assert "state_topic" not in entities["ask"]  # optimistic: see assistant_discovery
        assert entities["answer"]["state_topic"] == f"ai/{connection_id}/answer"
        assert entities["answer"]["json_attributes_topic"] == f"ai/{connection_id}/answer"
        assert entities["status"]["state_topic"] == f"ai/{connection_id}/status"
        assert entities["tokens_today"]["state_topic"] == "ai/bridge/info"
        for document in entities.values():
            assert document["availability_topic"] == "ai/bridge/state"
            assert (document["payload_available"], document["payload_not_available"]) == (
                "online",
                "offline",
            )
    topics = [topic for topic in found if "_assistant_" in topic]
    assert "homeassistant/text/b1_assistant_kitchen/ask/config" in topics


def test_no_assistant_entities_without_discovery_or_assistants(tmp_path: Path) -> None:
    """Assistants without discovery announce nothing; discovery without assistants, the bridge."""
    path = tmp_path / "bridge.yaml"
    path.write_text(json.dumps({"homeassistant": {"assistants": ["kitchen"]}}))
    assert Operations(load_settings(path, {}), {}).discovery == []
    assert len(announced(config_with())) == 5


@pytest.mark.parametrize("assistants", [["kitchen"], TRICKY_IDS])
def test_every_key_is_one_home_assistant_reads(assistants: list[str]) -> None:
    """Each text and sensor payload (the bridge's sensors too) against HA's schemas."""
    found = announced(config_with(*assistants, qos=1))
    checked = 0
    identifiers = {i for d in found.values() for i in d["device"]["identifiers"]}
    for topic, document in found.items():
        prefix, _, rest = topic.partition("/")
        match = TOPIC_MATCHER.fullmatch(rest)
        assert prefix == "homeassistant"
        assert match is not None, topic
        component = match["component"]
        if component not in ALLOWED:
            assert component == "binary_sensor"  # the bridge's own Status
            continue
        checked += 1
        keys = set(document)
        assert keys <= ALLOWED[component], (topic, keys - ALLOWED[component])
        assert REQUIRED[component] <= keys, topic
        assert set(document["device"]) <= DEVICE
        assert document["device"]["identifiers"], "a device needs an identifier"
        if "via_device" in document["device"]:
            assert document["device"]["via_device"] in identifiers
        assert set(document["origin"]) <= ORIGIN
        assert document["origin"]["name"]
        assert "availability" not in keys  # exclusive with availability_topic
        assert document.get("qos", 0) in (0, 1, 2)
        assert ":" in document.get("icon", "mdi:x")  # cv.icon
        assert document.get("entity_category", "diagnostic") in ("config", "diagnostic")
        for name in keys & {"state_topic", "json_attributes_topic", "availability_topic"}:
            assert document[name]
            assert "\0" not in document[name]
        if component == "text":
            assert not set(document["command_topic"]) & set("+#")  # a publish topic
            # text.py: min < max (2024.3: min >= max is refused) and max <= 255
            assert 0 <= document["min"] < document["max"] <= MAX_LENGTH_STATE_STATE
            assert document["mode"] in ("text", "password")
        else:
            assert document.get("state_class", "measurement") in (
                "measurement",
                "total",
                "total_increasing",
            )
            assert "last_reset_value_template" not in keys  # only with state_class total
    assert checked == 4 + 4 * len(assistants)


def test_unique_ids_topics_and_devices_stay_distinct() -> None:
    """Ids that sanitize alike (küche, k.che, k_che) still get their own everything."""
    found = announced(config_with(*TRICKY_IDS, "k_che", "k-che"))
    unique_ids = [document["unique_id"] for document in found.values()]
    assert len(unique_ids) == len(set(unique_ids)) == 5 + 4 * (len(TRICKY_IDS) + 2)
    assert len(found) == len(unique_ids)  # no two configs on one topic
    devices = {d["device"]["identifiers"][0] for d in found.values()}
    assert len(devices) == 1 + len(TRICKY_IDS) + 2
    # Stable: the same config announces the same ids.
    assert announced(config_with(*TRICKY_IDS, "k_che", "k-che")) == found


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_the_ask_template_makes_an_ask_the_bridge_accepts(text: str) -> None:
    """Quotes, backslashes, newlines, unicode, braces: one valid ask with that input."""
    ask = entities_of(announced(config_with("kitchen")), "kitchen")["ask"]
    payload = render(ask["command_template"], text)
    command = parse_command(
        "kitchen",
        payload.encode(),
        max_bytes=1 << 20,
        allowed_event_types=frozenset({"response.create"}),
    )
    assert isinstance(command, Ask), command
    assert command.input == text
    assert command.new_conversation is False


def test_the_answer_sensor_holds_255_characters_and_the_whole_answer_as_attributes() -> None:
    """State: the text cut at 255 characters; attributes: every field of the answer."""
    answer = entities_of(announced(config_with("kitchen")), "kitchen")["answer"]
    text = "Mars:-63°C," * 40  # 440 characters, 480 UTF-8 bytes: cut by character
    document = {
        "object": "response.websocket.answer",
        "connection_id": "kitchen",
        "request_id": None,
        "response_id": "resp_1",
        "status": "completed",
        "text": text,
        "usage": {"input_tokens": 10, "output_tokens": 90, "total_tokens": 100},
    }
    payload = json.dumps(document, ensure_ascii=False)
    state = render(answer["value_template"], payload)
    assert len(text) > len(state) == MAX_LENGTH_STATE_STATE
    assert text.startswith(state)
    assert render(answer["value_template"], json.dumps({**document, "text": "Cold."})) == "Cold."
    attributes = json.loads(render(answer["json_attributes_template"], payload))
    assert attributes == document
    failed = {**document, "status": "error", "text": "", "error": {"code": "x", "message": "y"}}
    attributes = json.loads(render(answer["json_attributes_template"], json.dumps(failed)))
    assert attributes["error"] == {"code": "x", "message": "y"}


def test_the_status_sensor_reads_the_word_and_unknown_when_cleared() -> None:
    status = entities_of(announced(config_with("kitchen")), "kitchen")["status"]
    for word in ("ready", "thinking", "streaming", "closed"):
        assert render(status["value_template"], word) == word
    assert render(status["value_template"], "") == "unknown"  # the empty retained payload


@pytest.mark.parametrize("connection_id", TRICKY_IDS)
def test_the_tokens_sensor_reads_its_own_id_in_the_info(connection_id: str) -> None:
    """The id written into the template reads back exactly, whatever its characters."""
    found = entities_of(announced(config_with(connection_id)), connection_id)
    template = found["tokens_today"]["value_template"]
    info = {"assistants": {connection_id: {"tokens_today": 42}, "other": {"tokens_today": 7}}}
    assert render(template, json.dumps(info)) == "42"
    assert render(template, json.dumps(info, ensure_ascii=False)) == "42"
    # Not there (an older bridge, an id no longer configured): unknown, no template error.
    assert render(template, json.dumps({"assistants": {"other": {"tokens_today": 7}}})) == "None"
    assert render(template, json.dumps({"tokens_today": 9})) == "None"


# The info document ---------------------------------------------------------------


def test_info_counts_the_tokens_of_assistant_ids_only(tmp_path: Path) -> None:
    """assistants.<id>.tokens_today for the configured ids, from the day's usage (the budgets')."""
    path = tmp_path / "bridge.yaml"
    path.write_text(json.dumps({"homeassistant": {"assistants": ["kitchen", "garage"]}}))
    settings = load_settings(path, {})
    usage = SharedUsage()
    usage.roll(date(2026, 6, 1))

    def document() -> dict[str, Any]:
        return info_document(
            settings,
            Tally(),
            usage,
            started_at=0.0,
            uptime=1.0,
            connections=0,
            broker_connects=1,
            buffer_waits=0,
        )

    zero = {"kitchen": {"tokens_today": 0}, "garage": {"tokens_today": 0}}
    assert document()["assistants"] == zero
    usage.charge("kitchen", "default", Tokens(1, 99, 100))
    usage.charge("kitchen", "default", Tokens(1, 19, 20))
    usage.charge("living-room", "default", Tokens(1, 4, 5))  # not an assistant: the total only
    info = document()
    assert info["assistants"] == {"kitchen": {"tokens_today": 120}, "garage": {"tokens_today": 0}}
    assert info["tokens_today"] == 125
    assert info["tokens_day"] == "2026-06-01"
    assert "living-room" not in json.dumps(info)
    revision = usage.revision
    usage.roll(date(2026, 6, 2))  # the next local day
    assert usage.revision > revision
    assert document()["assistants"] == zero
    assert document()["tokens_today"] == 0


def test_info_has_no_assistants_when_none_are_configured() -> None:
    settings = load_settings(None, {})
    operations = Operations(settings, {})
    raw = b'{"type":"response.completed","response":{"usage":{"input_tokens":1,"output_tokens":2}}}'
    operations.observe(ResponseCompleted("kitchen", raw, Tokens(1, 2, 3)))
    usage = SharedUsage()
    usage.roll(date(2026, 6, 1))
    usage.charge("kitchen", "default", Tokens(1, 2, 3))
    info = info_document(
        settings,
        operations.tally,
        usage,
        started_at=0.0,
        uptime=1.0,
        connections=0,
        broker_connects=1,
        buffer_waits=0,
    )
    assert info["assistants"] == {}
    assert info["tokens_today"] == 3
    assert info["tokens_total"] == 3  # since this process started
    assert info["responses_completed"] == 1


# Against a broker ---------------------------------------------------------------


@pytest.mark.integration
async def test_asking_through_the_text_entity_answers_on_the_assistant_topics(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """What Home Assistant publishes for the Ask entity gets an answer, a status and tokens."""
    settings = bridge_settings(
        broker,
        simulator,
        tmp_path,
        homeassistant={"discovery": True, "assistants": ["kitchen"]},
        mqtt={"client_id": "b1"},
    )
    async with OpsBridge(settings), Client(broker) as client:
        await client.subscribe("homeassistant/+/+/+/config")
        configs: dict[str, dict[str, Any]] = {}
        while len(configs) < 5 + 4:
            message = await client.next()
            configs[message.topic.value] = body(message)
        kitchen = entities_of(configs, "kitchen")
        assert set(kitchen) == {"ask", "answer", "status", "tokens_today"}
        await client.subscribe("ai/kitchen/answer", "ai/kitchen/status", "ai/bridge/info")

        ask = kitchen["ask"]
        question = "What is the weather like on Mars?"
        payload = render(ask["command_template"], question).encode()
        await client.mqtt.publish(ask["command_topic"], payload, qos=ask["qos"], retain=False)

        # Until the answer, the status after it, and an info that counts its tokens.
        answer: dict[str, Any] = {}
        state = status_after_answer = tokens = ""
        info: dict[str, Any] = {}
        while not (answer and status_after_answer == "ready" and tokens):
            message = await client.next(20)
            assert isinstance(message.payload, bytes)
            raw = message.payload.decode()
            if message.topic.value == "ai/kitchen/answer":
                answer = body(message)
                state = render(kitchen["answer"]["value_template"], raw)
            elif message.topic.value == "ai/kitchen/status" and answer:
                status_after_answer = render(kitchen["status"]["value_template"], raw)
            elif message.topic.value == "ai/bridge/info":
                count = render(kitchen["tokens_today"]["value_template"], raw)
                if count not in ("0", "None"):
                    tokens, info = count, body(message)
    assert answer["status"] == "completed"
    assert answer["text"].strip()
    assert state == answer["text"][:255].strip()
    assert answer["usage"]["total_tokens"] > 0
    assert int(tokens) == answer["usage"]["total_tokens"]
    assert info["assistants"] == {"kitchen": {"tokens_today": answer["usage"]["total_tokens"]}}
    assert status_after_answer == "ready"


@pytest.mark.integration
async def test_assistant_configs_come_back_when_home_assistant_does(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """HA's birth message brings the assistant configs again with the bridge's."""
    settings = bridge_settings(
        broker, simulator, tmp_path, homeassistant={"discovery": True, "assistants": ["kitchen"]}
    )
    async with OpsBridge(settings), Client(broker) as client:
        await client.subscribe("homeassistant/+/+/+/config")
        first = {(await client.next()).topic.value for _ in range(9)}
        await client.quiet(0.3)
        await client.mqtt.publish("homeassistant/status", b"online", qos=1)
        again = {(await next_on_any(client, first)) for _ in range(9)}
    assert again == first
    assert sum("_assistant_kitchen/" in topic for topic in first) == 4


async def next_on_any(client: Client, topics: set[str]) -> str:
    while True:
        message = await client.next()
        if message.topic.value in topics:
            return message.topic.value
