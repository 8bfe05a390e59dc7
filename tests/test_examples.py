"""The shipped examples speak the contract: the Node-RED flow, the Home Assistant scripts,
the ESP32 sketch and the ESPHome device.

The sketch and the ESPHome file are read, not compiled: their topics and commands are
taken out of the source (string macros, YAML with substitutions) and checked here.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config.settings import parse_config
from bridge.ops.discovery import discovery_messages
from bridge.protocol.contract import (
    Ask,
    Close,
    Command,
    Connect,
    Rejection,
    Send,
    Topics,
    connection_id_problem,
    parse_command,
)
from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client
from tests.helpers import SECOND, missing

EXAMPLES = Path(__file__).parent.parent / "examples"
ALLOWED = frozenset({"response.create"})
TOPICS = Topics("ai")
SEED_TAB = "Responses WebSocket over MQTT"
ASK_TAB = "ask (text and answer)"
# What a device asks for: text chunks and the status word, no JSON events.
DEVICE_OUTPUT = {"text": True, "events": False, "status": True}
PUBSUBCLIENT_BUFFER = 256  # PubSubClient's default MQTT_MAX_PACKET_SIZE
TEXT_MAX_BYTES = 200  # the bridge's default output.text_max_bytes


def device_topic(connection_id: str, kind: str) -> str:
    """``ai/<id>/text``, ``ai/<id>/answer``, ``ai/<id>/status``."""
    return f"{TOPICS.prefix}/{connection_id}/{kind}"


def parse(connection_id: str, payload: str) -> Command | Rejection:
    return parse_command(
        connection_id, payload.encode(), max_bytes=1 << 20, allowed_event_types=ALLOWED
    )


def nodes_by_id() -> dict[str, dict[str, Any]]:
    flow = json.loads((EXAMPLES / "node-red" / "flow.json").read_text())
    assert isinstance(flow, list)
    by_id = {node["id"]: node for node in flow}
    assert len(by_id) == len(flow), "node ids must be unique"
    return by_id


def tab_id(nodes: dict[str, dict[str, Any]], label: str) -> str:
    (found,) = [node_id for node_id, node in nodes.items() if node.get("label") == label]
    assert nodes[found]["type"] == "tab"
    return found


def on_tab(nodes: dict[str, dict[str, Any]], label: str, kind: str) -> list[dict[str, Any]]:
    """The nodes of one type on one tab, top to bottom."""
    tab = tab_id(nodes, label)
    found = [node for node in nodes.values() if node.get("z") == tab and node["type"] == kind]
    return sorted(found, key=lambda node: node["y"])


def wired_to(nodes: dict[str, dict[str, Any]], node: dict[str, Any]) -> list[dict[str, Any]]:
    return [nodes[target] for output in node["wires"] for target in output]


def test_node_red_flow_is_importable_json() -> None:
    """Every node has a unique id and a type; every wire and broker reference resolves."""
    nodes = nodes_by_id()
    tabs = {node_id for node_id, node in nodes.items() if node["type"] == "tab"}
    assert {nodes[tab]["label"] for tab in tabs} == {SEED_TAB, ASK_TAB}
    for node in nodes.values():
        assert isinstance(node["type"], str)
        if node["type"] not in {"tab", "mqtt-broker"}:
            assert node["z"] in tabs
        for output in node.get("wires", []):
            assert all(target in nodes for target in output)
            assert all(nodes[target]["z"] == node["z"] for target in output)  # no cross-tab wire
        if "broker" in node and node["type"] != "mqtt-broker":
            assert nodes[node["broker"]]["type"] == "mqtt-broker"


def test_node_red_flows_share_one_broker_node() -> None:
    """Every example flow carries the same broker configuration node (same id, same
    settings): Node-RED keeps one on import, so the flows open one connection and the
    broker address is edited in one place. Apart from it, no id is in two flows."""
    flows = sorted((EXAMPLES / "node-red").glob("*.json"))
    assert {path.name for path in flows} >= {"flow.json", "tools-flow.json"}
    brokers: list[dict[str, Any]] = []
    ids_of_flows: list[set[str]] = []
    for path in flows:
        nodes = json.loads(path.read_text())
        (broker,) = [node for node in nodes if node["type"] == "mqtt-broker"]
        assert "z" not in broker  # global, as a config node must be to be shared
        users = [node for node in nodes if node["type"] in {"mqtt in", "mqtt out"}]
        assert users, path.name
        assert {node["broker"] for node in users} == {broker["id"]}, path.name
        brokers.append(broker)
        ids_of_flows.append({node["id"] for node in nodes} - {broker["id"]})
    assert all(broker == brokers[0] for broker in brokers)
    assert (brokers[0]["broker"], brokers[0]["port"]) == ("localhost", "1883")
    for index, ids in enumerate(ids_of_flows):
        for other in ids_of_flows[index + 1 :]:
            assert not ids & other


def test_node_red_injects_publish_the_seed_commands() -> None:
    """The inject nodes reach the mqtt out node on P/<id>/cmd with connect, send, close."""
    nodes = nodes_by_id()
    (mqtt_out,) = on_tab(nodes, SEED_TAB, "mqtt out")
    connection_id = Topics("ai").connection_id_of(mqtt_out["topic"])
    assert connection_id == "demo-connection-1"
    injects = on_tab(nodes, SEED_TAB, "inject")
    commands = []
    for inject in injects:
        assert inject["payloadType"] == "json"
        assert [mqtt_out["id"]] in inject["wires"]
        commands.append(
            parse_command(
                connection_id,
                inject["payload"].encode(),
                max_bytes=1 << 20,
                allowed_event_types=ALLOWED,
            )
        )
    assert [type(command) for command in commands] == [Connect, Send, Close]


def test_node_red_reads_the_events_topic_as_json() -> None:
    """An mqtt in node reads P/<id>/events as parsed JSON into a debug node."""
    nodes = nodes_by_id()
    (mqtt_in,) = on_tab(nodes, SEED_TAB, "mqtt in")
    assert mqtt_in["topic"] == Topics("ai").events("demo-connection-1")
    assert mqtt_in["datatype"] == "json"
    targets = {nodes[target]["type"] for output in mqtt_in["wires"] for target in output}
    assert "debug" in targets


# Home Assistant: examples/home-assistant/*.yaml (scripts.yaml form) ------------------
# scripts/check-homeassistant runs them in a real Home Assistant 2024.3; here, their shape.

HA_EXAMPLES = EXAMPLES / "home-assistant"
HA_ID = "home-assistant"


def ha_script(name: str) -> dict[str, Any]:
    document = yaml.safe_load((HA_EXAMPLES / f"{name}.yaml").read_text())
    assert list(document) == [name]  # scripts.yaml form: the script id at the top
    script: dict[str, Any] = document[name]
    return script


def ha_steps(sequence: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every step, those inside ``if``/``then``/``else`` too."""
    found = []
    for step in sequence:
        found.append(step)
        for key in ("then", "else"):
            found += ha_steps(step.get(key, []))
    return found


def ha_keys(value: Any) -> set[str]:
    """Every mapping key anywhere in a YAML value."""
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in ha_keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in ha_keys(item)}
    return set()


def slugify(text: str) -> str:
    """Home Assistant's entity id of a name, for the ASCII names discovery uses."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def discovered_entity_ids(connection_id: str) -> dict[str, str]:
    """The entity ids Home Assistant derives for an assistant's entities (device + entity name)."""
    config = parse_config({"homeassistant": {"discovery": True, "assistants": [connection_id]}})
    found = {}
    for topic, payload in discovery_messages(config, TOPICS):
        entity = json.loads(payload)
        if entity["device"]["name"] == f"Assistant {connection_id}":
            assert "object_id" not in entity  # else HA would take the entity id from it
            name = entity["name"]
            found[name] = f"{topic.split('/')[1]}.{slugify(entity['device']['name'] + ' ' + name)}"
    return found


def jinja_dict(template: str, variables: dict[str, str]) -> dict[str, Any]:
    """``{{ {"key": name, ...} | to_json }}`` as Home Assistant renders it (literals and names)."""
    match = re.fullmatch(r"\{\{\s*(\{.*\})\s*\|\s*to_json\s*\}\}", template.strip(), re.DOTALL)
    assert match, template
    tree = ast.parse(match[1], mode="eval").body
    assert isinstance(tree, ast.Dict)
    rendered: dict[str, Any] = {}
    for key, value in zip(tree.keys, tree.values, strict=True):
        assert isinstance(key, ast.Constant)
        assert isinstance(key.value, str)
        if isinstance(value, ast.Name):
            rendered[key.value] = variables[value.id]
        else:
            assert isinstance(value, ast.Constant)
            rendered[key.value] = value.value
    return rendered


def test_home_assistant_examples_run_on_2024_3_and_later() -> None:
    """``service:`` and no 2024.8+ ``action:`` or 2024.10+ ``trigger:``; queued; no
    wait_for_trigger (it would subscribe after the question went out)."""
    for name in ("ask_openai", "ask_openai_entity"):
        script = ha_script(name)
        keys = ha_keys(script["sequence"])
        assert "action" not in keys
        assert "trigger" not in keys
        assert "wait_for_trigger" not in keys
        assert script["mode"] == "queued"
        assert script["fields"]["question"]["required"] is True
        assert [step for step in ha_steps(script["sequence"]) if "wait_template" in step]


def test_home_assistant_ask_script_speaks_the_contract() -> None:
    """One ask with a fresh request_id on P/<id>/cmd, then a wait for that request_id on
    the assistant's Answer sensor, whose entity id is the one discovery makes."""
    script = ha_script("ask_openai")
    variables = script["variables"]
    connection_id = TOPICS.connection_id_of(variables["commands"])
    assert connection_id == HA_ID == variables["assistant"]
    entities = discovered_entity_ids(connection_id)
    assert variables["answer_sensor"] == entities["Answer"]
    assert "now()" in variables["request_id"]  # new for every run: no redelivery clash
    steps = ha_steps(script["sequence"])
    (publish,) = [step for step in steps if step.get("service") == "mqtt.publish"]
    assert publish["data"]["topic"] == "{{ commands }}"
    payload = jinja_dict(publish["data"]["payload"], {"request_id": "ha-1.5", "question": "Hi?"})
    command = parse(connection_id, json.dumps(payload))
    assert isinstance(command, Ask)
    assert (command.input, command.request_id) == ("Hi?", "ha-1.5")
    (wait,) = [step["wait_template"] for step in steps if "wait_template" in step]
    assert re.fullmatch(r"\{\{ state_attr\(answer_sensor, 'request_id'\) == request_id \}\}", wait)
    assert steps.index(publish) < next(i for i, step in enumerate(steps) if "wait_template" in step)


def test_home_assistant_entity_script_asks_through_the_ask_entity() -> None:
    """text.set_value on the Ask entity, then a wait for a newer state of the Answer sensor."""
    script = ha_script("ask_openai_entity")
    variables = script["variables"]
    assert variables["assistant"] == HA_ID
    entities = discovered_entity_ids(HA_ID)
    assert variables["ask_entity"] == entities["Ask"]
    assert variables["answer_sensor"] == entities["Answer"]
    steps = ha_steps(script["sequence"])
    (set_value,) = [step for step in steps if step.get("service") == "text.set_value"]
    (noted,) = [step["variables"] for step in steps if "variables" in step]
    assert "answer_sensor" in noted["before"]  # taken before asking
    assert (
        steps.index(set_value) == next(i for i, step in enumerate(steps) if "variables" in step) + 1
    )
    assert set_value["target"]["entity_id"] == "{{ ask_entity }}"
    assert set_value["data"]["value"] == "{{ question }}"
    (wait,) = [step["wait_template"] for step in steps if "wait_template" in step]
    assert "> before" in wait


def test_home_assistant_examples_notify_the_answer_or_its_absence() -> None:
    """Each ends with a persistent notification of the answer's text, one id per script,
    and stops with an error (after saying so) when no completed answer came."""
    for name in ("ask_openai", "ask_openai_entity"):
        steps = ha_steps(ha_script(name)["sequence"])
        notes = [step for step in steps if step.get("service") == "persistent_notification.create"]
        assert {step["data"]["notification_id"] for step in notes} == {name}
        assert notes[-1] is steps[-1]
        assert notes[-1]["data"]["message"] == "{{ state_attr(answer_sensor, 'text') }}"
        (failure,) = [step for step in steps if "not wait.completed" in step.get("if", "")]
        assert failure["then"][-1]["error"] is True


# The entity ids an example names, by its variable: those discovery makes for `assistant`.
_ASSISTANT_ENTITY_VARIABLES = {"answer_sensor": "Answer", "ask_entity": "Ask"}


def test_home_assistant_examples_say_which_assistant_is_missing_before_asking() -> None:
    """A script whose assistant's entities do not exist (the id is not in the bridge's
    homeassistant.assistants) asks nothing and waits for nothing: its first step notifies
    which entry is missing and stops with an error. scripts/check-homeassistant runs it."""
    for name in ("ask_openai", "ask_openai_entity"):
        script = ha_script(name)
        variables = script["variables"]
        entities = discovered_entity_ids(variables["assistant"])
        named = {var: variables[var] for var in _ASSISTANT_ENTITY_VARIABLES if var in variables}
        assert named == {var: entities[_ASSISTANT_ENTITY_VARIABLES[var]] for var in named}
        # Nothing before the check needs the entities: the script-level variables don't.
        assert "states" not in json.dumps(variables)
        check = script["sequence"][0]
        tested = re.findall(r"states\[(\w+)\] is none", check["if"])
        assert sorted(tested) == sorted(named), check["if"]
        notify, stop = check["then"]
        assert notify["service"] == "persistent_notification.create"
        assert notify["data"]["notification_id"] == name
        message = notify["data"]["message"]
        assert "homeassistant.assistants" in message
        assert "{{ assistant }} is not there" in message
        assert "assistants: [{{ assistant }}]" in " ".join(message.split())
        assert stop["error"] is True


# Node-RED: the "ask (text and answer)" tab --------------------------------------------

_ENV_REFERENCE = re.compile(r"\$\{([^}]+)\}")


def tab_env(tab: dict[str, Any]) -> dict[str, str]:
    """A tab's environment variables as Node-RED (3.1 and later) evaluates them.

    A ``str`` value is taken as it is; an ``env`` value has its ``${NAME}``
    references to other variables substituted (without any, it names one).
    """
    entries = {entry["name"]: entry for entry in tab["env"]}

    def value(name: str) -> str:
        entry = entries[name]
        if entry["type"] == "str":
            assert isinstance(entry["value"], str)
            return entry["value"]
        assert entry["type"] == "env", f"the test does not model env type {entry['type']}"
        if "${" not in entry["value"]:
            return value(entry["value"])
        return _ENV_REFERENCE.sub(lambda match: value(match[1]), entry["value"])

    return {name: value(name) for name in entries}


def runtime_value(value: str, env: dict[str, str]) -> str:
    """A node property as the runtime hands it to the node.

    Node-RED substitutes a property only when its whole value is ``${NAME}``
    (``mapEnvVarProperties``): ``ai/${CONNECTION_ID}/cmd`` would stay as it is.
    """
    match = re.fullmatch(r"\$\{(\S+)\}", value)
    return env[match[1]] if match else value


def strings(value: Any) -> list[str]:
    """Every string in a JSON-like value, keys excepted."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [found for item in value for found in strings(item)]
    if isinstance(value, dict):
        return [found for item in value.values() for found in strings(item)]
    return []


def _path(msg: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    *parents, last = path.split(".")
    for part in parents:
        msg = msg.setdefault(part, {})
    return msg, last


def apply_change_rules(rules: list[dict[str, Any]], msg: dict[str, Any]) -> None:
    """What a change node does to ``msg``, for the rules the examples use."""
    for rule in rules:
        assert rule["pt"] == "msg"
        holder, key = _path(msg, rule["p"])
        if rule["t"] == "set":
            if rule["tot"] == "json":
                holder[key] = json.loads(rule["to"])
            elif rule["tot"] == "str":
                holder[key] = rule["to"]
            else:
                assert rule["tot"] == "msg", f"the test does not model tot={rule['tot']}"
                source, source_key = _path(msg, rule["to"])
                holder[key] = source[source_key]
        elif rule["t"] == "move":
            assert rule["tot"] == "msg"
            value = holder.pop(key)
            target, target_key = _path(msg, rule["to"])
            target[target_key] = value
        else:
            assert rule["t"] == "delete", f"the test does not model rule {rule['t']}"
            holder.pop(key, None)


def test_node_red_ask_tab_names_its_connection_id_once() -> None:
    """The id is one tab variable; the mqtt topics are variables built from it."""
    nodes = nodes_by_id()
    tab = tab_id(nodes, ASK_TAB)
    env = tab_env(nodes[tab])
    connection_id = env["CONNECTION_ID"]
    assert connection_id_problem(connection_id) is None
    on_this_tab = [node for node in nodes.values() if node["id"] == tab or node.get("z") == tab]
    assert json.dumps(on_this_tab).count(connection_id) == 1
    for node in on_this_tab:
        if node["id"] == tab:
            continue
        for value in strings(node):  # the runtime would not substitute a partial reference
            if "${" in value:
                match = re.fullmatch(r"\$\{(\S+)\}", value)
                assert match is not None, f"{node['id']}: {value!r} is not a whole ${{NAME}}"
                assert match[1] in env
        if node["type"] in {"mqtt in", "mqtt out"}:
            assert re.fullmatch(r"\$\{\w+\}", node["topic"])


def test_node_red_ask_tab_publishes_an_ask_per_question() -> None:
    """inject (a question) -> change (the ask command) -> mqtt out on P/<id>/cmd."""
    nodes = nodes_by_id()
    env = tab_env(nodes[tab_id(nodes, ASK_TAB)])
    connection_id = env["CONNECTION_ID"]
    (change,) = on_tab(nodes, ASK_TAB, "change")
    (mqtt_out,) = on_tab(nodes, ASK_TAB, "mqtt out")
    assert runtime_value(mqtt_out["topic"], env) == TOPICS.command(connection_id)
    assert wired_to(nodes, change) == [mqtt_out]
    injects = on_tab(nodes, ASK_TAB, "inject")
    assert injects
    for inject in injects:
        assert inject["payloadType"] == "str"
        assert wired_to(nodes, inject) == [change]
        msg: dict[str, Any] = {"payload": inject["payload"]}
        apply_change_rules(change["rules"], msg)
        assert set(msg) == {"payload"}
        command = parse(connection_id, json.dumps(msg["payload"]))
        assert isinstance(command, Ask)
        assert command.input == inject["payload"]
        assert command.request_id is None  # a repeated question is a new turn, not a redelivery
        assert msg["payload"]["output"] == {"text": True, "answer": True, "events": False}


def test_node_red_ask_tab_reads_text_and_answer() -> None:
    """mqtt in on P/<id>/text (plain text) and P/<id>/answer (JSON, its text shown) -> debug."""
    nodes = nodes_by_id()
    env = tab_env(nodes[tab_id(nodes, ASK_TAB)])
    connection_id = env["CONNECTION_ID"]
    readers = {
        runtime_value(node["topic"], env): node for node in on_tab(nodes, ASK_TAB, "mqtt in")
    }
    text = readers.pop(device_topic(connection_id, "text"))
    answer = readers.pop(device_topic(connection_id, "answer"))
    assert readers == {}
    assert text["datatype"] == "utf8"
    assert [node["type"] for node in wired_to(nodes, text)] == ["debug"]
    assert answer["datatype"] == "json"
    (shown,) = wired_to(nodes, answer)
    assert shown["type"] == "debug"
    assert (shown["targetType"], shown["complete"]) == ("msg", "payload.text")
    (broker,) = [node for node in nodes.values() if node["type"] == "mqtt-broker"]
    for node in [*on_tab(nodes, ASK_TAB, "mqtt out"), text, answer]:
        assert node["broker"] == broker["id"]  # the seed tab's broker node


# The ESP32 sketch ---------------------------------------------------------------------

_C_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*.*?\*/|\w+|\S', re.DOTALL)
_C_STRING_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*.*?\*/', re.DOTALL)


def _c_unescape(literal: str) -> str:
    return re.sub(r"\\(.)", lambda match: {"n": "\n", "t": "\t"}.get(match[1], match[1]), literal)


def c_string_macros(source: str) -> dict[str, str]:
    """The ``#define`` macros whose body is string literals and such macros, by value.

    Adjacent literals concatenate, as in C; other macros (numbers, code) are left out.
    """
    macros: dict[str, str] = {}
    definitions = re.findall(r"^#define[ \t]+(\w+)[ \t]+((?:.*\\\n)*.*)$", source, re.MULTILINE)
    for name, body in definitions:
        parts = []
        for token in _C_TOKEN.findall(body.replace("\\\n", " ")):
            if token.startswith(("//", "/*")):
                continue
            if token.startswith('"'):
                parts.append(_c_unescape(token[1:-1]))
            elif token in macros:
                parts.append(macros[token])
            else:
                break
        else:
            if parts:
                macros[name] = "".join(parts)
    return macros


def c_code(source: str) -> str:
    """The source without its comments (string literals kept)."""
    return _C_STRING_OR_COMMENT.sub(
        lambda match: "" if match[0].startswith("/") else match[0], source
    )


def sketch() -> tuple[str, dict[str, str]]:
    source = (EXAMPLES / "esp32" / "ask_button" / "ask_button.ino").read_text()
    return source, c_string_macros(source)


def check_device_ask(connection_id: str, payload: str) -> None:
    """A device's one command: a short ask for text chunks and the status word."""
    assert len(payload.encode()) < 200
    command = parse(connection_id, payload)
    assert isinstance(command, Ask)
    document = json.loads(payload)
    assert document["output"] == DEVICE_OUTPUT
    # A fixed request_id would make a second press within 30 s a "redelivery", dropped.
    assert "request_id" not in document


def test_esp32_sketch_asks_and_prints_text_and_status() -> None:
    """One #define names the id; the sketch publishes the ask and reads text and status."""
    source, macros = sketch()
    connection_id = macros["CONNECTION_ID"]
    assert connection_id_problem(connection_id) is None
    assert source.count(f'"{connection_id}"') == 1
    assert macros["TOPIC_CMD"] == TOPICS.command(connection_id)
    assert macros["TOPIC_TEXT"] == device_topic(connection_id, "text")
    assert macros["TOPIC_STATUS"] == device_topic(connection_id, "status")
    check_device_ask(connection_id, macros["ASK_COMMAND"])
    code = c_code(source)
    assert re.search(r"\.publish\(\s*TOPIC_CMD\s*,\s*ASK_COMMAND\s*\)", code)
    assert set(re.findall(r"\.subscribe\(\s*(\w+)", code)) == {"TOPIC_TEXT", "TOPIC_STATUS"}
    assert re.search(r"Serial\.write\(\s*payload\s*,\s*length\s*\)", code)
    assert "setBufferSize" not in code
    # A full text chunk arrives whole in PubSubClient's default buffer: the QoS 1 PUBLISH
    # is 1 byte of header, 2 of remaining length, 2 + topic, 2 of packet id, the payload.
    packet = 1 + 2 + 2 + len(macros["TOPIC_TEXT"].encode()) + 2 + TEXT_MAX_BYTES
    assert packet <= PUBSUBCLIENT_BUFFER


# PubSubClient speaks MQTT 3.1.1 and keeps a whole packet in its buffer: the limit on
# the connection id is measured on the packets a 3.1.1 subscriber gets.
LONGEST_DEVICE_ID = 41  # what the sketch and the README promise


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes, int]:
    """One MQTT packet: its first byte, its body, and its size on the wire."""
    first = (await reader.readexactly(1))[0]
    length, shift, size = 0, 0, 1
    while True:
        digit = (await reader.readexactly(1))[0]
        size += 1
        length |= (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            return first, await reader.readexactly(length), size + length


def _packet(first: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([first, len(body)]) + body


def _string(text: str) -> bytes:
    return len(text.encode()).to_bytes(2, "big") + text.encode()


async def publish_sizes_as_pubsubclient_gets_them(
    broker: Broker, topic: str, wanted_bytes: int, asked: Any
) -> list[tuple[int, int]]:
    """(packet size, payload size) of each QoS 1 PUBLISH an MQTT 3.1.1 subscriber of
    ``topic`` receives, until ``wanted_bytes`` of payload came; ``asked`` is awaited once
    the subscription is in place."""
    reader, writer = await asyncio.open_connection(broker.host, broker.port)
    try:
        hello = _string("MQTT") + bytes([4, 0x02, 0, 60]) + _string("pubsubclient-like")
        writer.write(_packet(0x10, hello))  # CONNECT, 3.1.1, clean session
        assert (await _read_packet(reader))[:2] == (0x20, bytes([0, 0]))
        writer.write(_packet(0x82, (1).to_bytes(2, "big") + _string(topic) + bytes([1])))
        assert (await _read_packet(reader))[:2] == (0x90, bytes([0, 1, 1]))  # SUBACK, QoS 1
        await asyncio.wait_for(asked, 10 * SECOND)
        found: list[tuple[int, int]] = []
        async with asyncio.timeout(15 * SECOND):
            while sum(payload for _, payload in found) < wanted_bytes:
                first, body, size = await _read_packet(reader)
                assert first & 0xF0 == 0x30  # a PUBLISH
                assert (first >> 1) & 3 == 1  # at QoS 1
                topic_end = 2 + int.from_bytes(body[:2], "big")
                assert body[2:topic_end].decode() == topic
                writer.write(_packet(0x40, body[topic_end : topic_end + 2]))  # PUBACK
                found.append((size, len(body) - topic_end - 2))
        return found
    finally:
        writer.close()


@pytest.mark.integration
async def test_a_full_text_chunk_fits_pubsubclient_with_the_longest_id(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """At the default text_max_bytes (200) a chunk on ai/<id>/text, with an id of 41
    characters, is a 256-byte packet: exactly PubSubClient's default buffer, so 41 is
    the longest id a device with that buffer can use (one more character, 257 bytes,
    and PubSubClient drops the chunk)."""
    await start_bridge(broker, simulator)
    connection_id = "d" * LONGEST_DEVICE_ID
    word = "x" * 250  # one word longer than a chunk: cut at exactly 200 bytes
    ask = {"action": "ask", "input": f"say {word}", "output": {"text": True, "events": False}}
    sizes = await publish_sizes_as_pubsubclient_gets_them(
        broker,
        device_topic(connection_id, "text"),
        len(word),
        client.command(connection_id, ask),
    )
    assert sizes[0] == (PUBSUBCLIENT_BUFFER, TEXT_MAX_BYTES)
    assert max(size for size, _ in sizes) == PUBSUBCLIENT_BUFFER
    source, _ = sketch()
    assert f"At most {LONGEST_DEVICE_ID}\n// characters" in source
    manual = (EXAMPLES.parent / "docs/features/device-output.md").read_text()
    assert f"an id of at most {LONGEST_DEVICE_ID} characters" in manual


# Just enough of Arduino for the sketch's message handler to build and run on this host.
_ARDUINO_STUB = r"""
#include <cstdio>
#include <cstring>
typedef unsigned char byte;
struct {
  void write(const byte* data, unsigned int length) { fwrite(data, 1, length, stdout); }
  void print(const char* text) { fputs(text, stdout); }
  void println(const char* text = "") { printf("%s\n", text); }
} Serial;
"""
_FEED = r"""
int main(int argc, char** argv) {  // topic payload topic payload ...
  for (int i = 1; i + 1 < argc; i += 2) {
    onMessage(argv[i], (byte*)argv[i + 1], strlen(argv[i + 1]));
  }
  return 0;
}
"""


def run_message_handler(tmp_path: Path, messages: list[tuple[str, str]]) -> str:
    """What the sketch prints for ``messages``: its ``onMessage`` (and the state it
    keeps) built natively with a stand-in Serial, fed the messages in order."""
    source, macros = sketch()
    handler = re.search(r"^bool midLine\b.*?^void onMessage\(.*?^\}\n", source, re.S | re.M)
    assert handler, "the sketch's onMessage"
    defines = "".join(f"#define {name} {json.dumps(macros[name])}\n" for name in macros)
    program = tmp_path / "handler.cpp"
    program.write_text(_ARDUINO_STUB + defines + handler[0] + _FEED)
    compiler = shutil.which("c++") or shutil.which("g++")
    assert compiler, "a C++ compiler (g++) runs the sketch's handler"
    binary = tmp_path / "handler"
    subprocess.run([compiler, "-o", str(binary), str(program)], check=True)
    args = [part for message in messages for part in message]
    done = subprocess.run([str(binary), *args], check=True, capture_output=True, text=True)
    return done.stdout


def test_esp32_sketch_prints_statuses_and_skips_a_cleared_one(tmp_path: Path) -> None:
    """A status is printed once per change; an empty one (the bridge cleared the retained
    status when the conversation ended) prints nothing, and the next status is news."""
    _, macros = sketch()
    text, status = macros["TOPIC_TEXT"], macros["TOPIC_STATUS"]
    printed = run_message_handler(
        tmp_path,
        [
            (status, "ready"),
            (status, "thinking"),
            (status, "thinking"),  # the heartbeat: not printed again
            (text, "Octopuses have "),
            (text, "three hearts."),
            (status, "ready"),
            (status, ""),  # cleared
            (status, ""),
            (status, "ready"),
        ],
    )
    assert printed == (
        "[status] ready\n[status] thinking\nOctopuses have three hearts.\n"
        "[status] ready\n[status] ready\n"
    )


# The ESPHome device -------------------------------------------------------------------


@dataclass(frozen=True)
class Tagged:
    """A value under one of ESPHome's own YAML tags (!secret, !lambda, !include, ...)."""

    tag: str
    value: Any


class ESPHomeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, taking ESPHome's tags as :class:`Tagged` values."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    return Tagged("!" + suffix, value)


ESPHomeLoader.add_multi_constructor("!", _tagged)


def substitute(value: Any, variables: dict[str, str]) -> Any:
    """ESPHome's substitutions: ``${name}`` and ``$name`` in every string."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda match: variables[match[1] or match[2]], value)
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, variables) for key, item in value.items()}
    return value


def esphome() -> tuple[dict[str, str], dict[str, Any]]:
    """The substitutions and the device, substituted."""
    text = (EXAMPLES / "esphome" / "ask_button.yaml").read_text()
    document = yaml.load(text, Loader=ESPHomeLoader)  # noqa: S506 - a safe loader, plus tags
    assert isinstance(document, dict)
    variables = document.pop("substitutions")
    return variables, substitute(document, variables)


def test_esphome_device_asks_and_logs_text_and_status() -> None:
    """A gpio button publishes the ask; on_message logs the text; a text sensor has the status."""
    variables, device = esphome()
    connection_id = variables["connection_id"]
    assert connection_id_problem(connection_id) is None
    assert {"esphome", "esp32", "wifi", "mqtt", "logger"} <= set(device)
    for secret in (device["wifi"]["ssid"], device["wifi"]["password"], device["mqtt"]["broker"]):
        assert isinstance(secret, Tagged)
        assert secret.tag == "!secret"
    (button,) = [sensor for sensor in device["binary_sensor"] if sensor["platform"] == "gpio"]
    (publish,) = [action["mqtt.publish"] for action in button["on_press"]]
    assert publish["topic"] == TOPICS.command(connection_id)
    check_device_ask(connection_id, publish["payload"])
    (on_message,) = device["mqtt"]["on_message"]
    assert on_message["topic"] == device_topic(connection_id, "text")
    assert [next(iter(action)) for action in on_message["then"]] == ["logger.log"]
    (status,) = [
        sensor for sensor in device["text_sensor"] if sensor["platform"] == "mqtt_subscribe"
    ]
    assert status["topic"] == device_topic(connection_id, "status")
    assert {value for value in strings(device) if value.startswith(f"{TOPICS.prefix}/")} == {
        TOPICS.command(connection_id),
        device_topic(connection_id, "text"),
        device_topic(connection_id, "status"),
    }


def test_esphome_device_prints_only_the_answers_it_asked_for_after_a_reboot() -> None:
    """ESPHome's defaults would replay an old answer after a reboot: a kept session
    (clean_session false) has the broker queue the QoS 1 chunks sent while the device
    was away, and the log lines, chunks included, go out retained on <name>/debug.
    The example connects clean and logs over MQTT without retain."""
    _, device = esphome()
    mqtt = device["mqtt"]
    assert mqtt["clean_session"] is True
    log_topic = mqtt["log_topic"]
    assert log_topic is None or log_topic.get("retain") is False  # ESPHome's default: True
    (on_message,) = mqtt["on_message"]
    assert on_message["qos"] == 1  # in order, once per connection; nothing kept across one
    assert [sensor["qos"] for sensor in device["text_sensor"]] == [1]  # retained status


def test_each_example_asks_on_a_connection_of_its_own() -> None:
    """An ask's ``output`` applies when it opens the connection: examples sharing an id
    would get whichever output the first of them asked for."""
    nodes = nodes_by_id()
    ids = [
        tab_env(nodes[tab_id(nodes, ASK_TAB)])["CONNECTION_ID"],
        sketch()[1]["CONNECTION_ID"],
        esphome()[0]["connection_id"],
        TOPICS.connection_id_of(ha_script("ask_openai")["variables"]["commands"]),
    ]
    assert len(set(ids)) == len(ids)


def test_esphome_config_accepts_the_example() -> None:
    """ESPHome's own `esphome config` (scripts/check-esphome installs it once, cached)."""
    from bridge_tools import esphome_check
    from bridge_tools.cached_venv import cache_root

    program = cache_root() / f"esphome-{esphome_check.VERSION}" / "bin" / "esphome"
    if not program.exists():
        missing("ESPHome", "scripts/check-esphome installs it")
    assert esphome_check.check(program, sorted(EXAMPLES.glob("esphome/*.yaml"))) == []
