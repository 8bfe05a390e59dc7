"""The tool examples fit together and work: examples/tools/bridge-config.yaml (the tools and
the profile), examples/home-assistant/tools.yaml (the automation that answers
read_temperature, the script that asks) and examples/node-red/tools-flow.json (a flow that
asks and answers read_temperature).

Static tests read the three files and check that their topics, ids and commands are the
config's and the contract's. The integration tests start a bridge with the example config
on a real Mosquitto and the simulator, play Home Assistant's automation and zigbee2mqtt
with MQTT clients that do what those do, and send each example's `ask` as the example
builds it.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from bridge.config.settings import Config, parse_config
from bridge.protocol.contract import Ask, Command, Rejection, Topics, parse_command
from bridge.protocol.sessions import profile_for
from bridge.protocol.tools import Call, Rendered, ToolBox, ToolConfig
from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client
from tests.helpers import SECOND, require

EXAMPLES = Path(__file__).parent.parent / "examples"
CONFIG_FILE = EXAMPLES / "tools" / "bridge-config.yaml"
HA_FILE = EXAMPLES / "home-assistant" / "tools.yaml"
FLOW_FILE = EXAMPLES / "node-red" / "tools-flow.json"
OTHER_FLOW_FILE = EXAMPLES / "node-red" / "flow.json"
TOPICS = Topics("ai")
HA_ID = "home-assistant"
NODERED_ID = "nodered-tools"
PROFILE = "house"
LIGHT = "set_kitchen_light"
THERMOMETER = "read_temperature"
# What the simulator needs to call a tool (README, "The simulator").
LIGHT_OFF = 'call set_kitchen_light with {"state":"OFF"}'
HALL = 'call read_temperature with {"room":"hall"}'
# The Home Assistant states the automation reads in these tests.
SENSOR_STATES = {"sensor.hall_temperature": "21.5", "sensor.attic_temperature": "unavailable"}


def parse(connection_id: str, payload: str) -> Command | Rejection:
    return parse_command(
        connection_id,
        payload.encode(),
        max_bytes=1 << 20,
        allowed_event_types=frozenset({"response.create"}),
    )


# The bridge config fragment ----------------------------------------------------------


def fragment() -> dict[str, Any]:
    document = yaml.safe_load(CONFIG_FILE.read_text())
    assert isinstance(document, dict)
    return document


def example_config() -> Config:
    """The fragment as the bridge loads it, merged with the least mqtt/openai sections."""
    return parse_config(
        {
            **fragment(),
            "mqtt": {"host": "127.0.0.1", "port": 1883},
            "openai": {"base_url": "https://api.openai.com/v1"},
        }
    )


def tools() -> dict[str, ToolConfig]:
    return {tool.name: tool for tool in example_config().tools}


def reply_topic(tool: ToolConfig) -> str:
    assert tool.reply is not None
    return tool.reply.topic


def test_the_config_fragment_loads_and_offers_both_tools_to_both_ids() -> None:
    assert set(fragment()) == {"tools", "profiles", "sessions"}  # a fragment: nothing else
    config = example_config()
    assert list(tools()) == [LIGHT, THERMOMETER]
    house = config.profiles[PROFILE]
    assert house.mqtt_tools == (LIGHT, THERMOMETER)
    assert house.request["store"] is False
    for connection_id in (HA_ID, NODERED_ID):
        assert profile_for(config.profiles, config.sessions, connection_id, None) == PROFILE
    # Another id keeps the default profile: the built-in one (the fragment does not
    # restate it), with no tools.
    assert "default" not in fragment()["profiles"]
    assert profile_for(config.profiles, config.sessions, "kitchen", None) == "default"
    assert config.profiles["default"] == parse_config(None).profiles["default"]
    assert config.profiles["default"].mqtt_tools == ()


def test_the_light_is_zigbee2mqtt_style() -> None:
    light = tools()[LIGHT]
    assert light.publish.topic == "zigbee2mqtt/kitchen_light/set"
    assert (light.publish.qos, light.publish.retain) == (1, False)
    assert reply_topic(light) == "zigbee2mqtt/kitchen_light"  # where zigbee2mqtt reports
    # Strings, not YAML 1.1 booleans (bare ON/OFF would load as true/false).
    assert light.parameters["properties"]["state"]["enum"] == ["ON", "OFF"]
    box = ToolBox(example_config().tools)
    rendered = box.render(Call("call_1", LIGHT, '{"state":"OFF"}'))
    assert rendered == Rendered("zigbee2mqtt/kitchen_light/set", b'{"state":"OFF"}', 1, False)
    assert isinstance(box.render(Call("call_2", LIGHT, '{"state":"DIM"}')), str)
    assert isinstance(box.render(Call("call_3", LIGHT, '{"state":"ON","color":"red"}')), str)


def test_read_temperature_takes_a_room_slug() -> None:
    thermometer = tools()[THERMOMETER]
    assert thermometer.publish.topic == "house/tools/read_temperature"
    assert reply_topic(thermometer) == "house/tools/read_temperature/reply"
    box = ToolBox(example_config().tools)
    rendered = box.render(Call("call_1", THERMOMETER, '{"room":"living_room"}'))
    assert isinstance(rendered, Rendered)
    assert (rendered.topic, rendered.payload) == (
        "house/tools/read_temperature",
        b'{"room":"living_room"}',
    )
    # Home Assistant builds an entity id from the room: only a slug gets through.
    for room in ("Hall", "hall.temperature", "x' ~ states('lock.front') ~ '", ""):
        assert isinstance(box.render(Call("c", THERMOMETER, json.dumps({"room": room}))), str)


# Home Assistant: examples/home-assistant/tools.yaml (a package) -----------------------


class HomeAssistantLoader(yaml.SafeLoader):
    """Home Assistant's YAML: its tags (!secret, !input, !include...) read as plain text."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return f"!{suffix} {loader.construct_scalar(node)}"
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    assert isinstance(node, yaml.MappingNode)
    return loader.construct_mapping(node)


HomeAssistantLoader.add_multi_constructor("!", _tagged)


def ha_package() -> dict[str, Any]:
    document = yaml.load(HA_FILE.read_text(), Loader=HomeAssistantLoader)  # noqa: S506 - safe, plus tags
    assert isinstance(document, dict)
    return document


def ha_automation() -> dict[str, Any]:
    (automation,) = ha_package()["automation"]
    assert isinstance(automation, dict)
    return automation


def ha_keys(value: Any) -> set[str]:
    """Every mapping key anywhere in a YAML value."""
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in ha_keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in ha_keys(item)}
    return set()


def publish_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [step for step in steps if step.get("service") == "mqtt.publish"]


def template_keys(template: str) -> list[str]:
    """The keys of the JSON object literal a ``{{ {...} | to_json }}`` template builds."""
    match = re.fullmatch(r"\{\{\s*(\{.*\})\s*\|\s*to_json\s*\}\}", template.strip(), re.DOTALL)
    assert match, template
    return re.findall(r'"(\w+)"\s*:', match[1])


def test_home_assistant_file_is_a_package_for_2024_3_and_later() -> None:
    """An automation and a script; `service:` and `platform: mqtt`, not the 2024.8+
    `action:` steps or the 2024.10+ `trigger:`/`triggers:`/`actions:` spellings."""
    package = ha_package()
    assert set(package) == {"automation", "script"}
    automation = ha_automation()
    assert {"trigger", "action"} <= set(automation)
    assert not {"triggers", "actions", "conditions"} & set(automation)
    (trigger,) = automation["trigger"]
    assert "trigger" not in trigger
    assert "action" not in ha_keys(automation["action"])
    for script in package["script"].values():
        assert "action" not in ha_keys(script["sequence"])
        assert "wait_for_trigger" not in ha_keys(script["sequence"])


def test_home_assistant_automation_answers_read_temperature() -> None:
    """Triggered by the tool's publish topic; answers on its reply topic, not retained, in
    the order of the calls (queued: replies without correlation answer the oldest call),
    with {"room", "celsius"} from sensor.<room>_temperature."""
    thermometer = tools()[THERMOMETER]
    automation = ha_automation()
    assert automation["mode"] == "queued"
    (trigger,) = automation["trigger"]
    assert trigger == {"platform": "mqtt", "topic": thermometer.publish.topic}
    steps = automation["action"]
    (publish,) = publish_steps(steps)
    assert publish["data"]["topic"] == reply_topic(thermometer)
    assert publish["data"]["retain"] is False
    assert template_keys(publish["data"]["payload"]) == ["room", "celsius"]
    assert "states('sensor.' ~ room ~ '_temperature') | float(none)" in publish["data"]["payload"]
    (variables,) = [step["variables"] for step in steps if "variables" in step]
    assert "trigger.payload_json.room" in variables["room"]
    assert steps.index(publish) > next(i for i, step in enumerate(steps) if "variables" in step)


def test_home_assistant_needs_no_automation_for_the_light() -> None:
    """zigbee2mqtt answers the light's tool itself; the file says so instead."""
    light = tools()[LIGHT]
    (automation,) = ha_package()["automation"]
    assert light.publish.topic not in json.dumps(automation)
    text = HA_FILE.read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert light.publish.topic in comments
    assert reply_topic(light) in comments


def test_home_assistant_script_asks_on_the_house_id() -> None:
    """ask_house publishes one ask with a fresh request_id on ai/home-assistant/cmd."""
    script = ha_package()["script"]["ask_house"]
    assert script["fields"]["question"]["required"] is True
    variables = script["variables"]
    assert TOPICS.connection_id_of(variables["commands"]) == HA_ID
    assert "now()" in variables["request_id"]  # new for every run: no redelivery clash
    (publish,) = publish_steps(script["sequence"])
    assert publish["data"]["topic"] == "{{ commands }}"
    command = parse(HA_ID, ha_ask_payload(publish, question="Hi?", request_id="ha-house-1.5"))
    assert isinstance(command, Ask)
    assert (command.input, command.request_id, command.profile) == ("Hi?", "ha-house-1.5", None)


def ha_ask_payload(publish: dict[str, Any], **variables: str) -> str:
    """The script's ``{{ {"key": name, ...} | to_json }}`` payload as Home Assistant renders
    it, for the literals and variable names the script uses."""
    template = publish["data"]["payload"].strip()
    match = re.fullmatch(r"\{\{\s*(\{.*\})\s*\|\s*to_json\s*\}\}", template, re.DOTALL)
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
    return json.dumps(rendered)


def ha_answer(request: dict[str, Any], states: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """What the automation publishes for a call (topic, payload): the room, and
    ``states('sensor.' ~ room ~ '_temperature') | float(none)``."""
    automation = ha_automation()
    (publish,) = publish_steps(automation["action"])
    room = str(request.get("room", ""))
    state = states.get(f"sensor.{room}_temperature", "unknown")  # states() of no entity
    try:
        celsius: float | None = float(state)
    except ValueError:
        celsius = None
    keys = template_keys(publish["data"]["payload"])
    return publish["data"]["topic"], dict(zip(keys, (room, celsius), strict=True))


# Node-RED: examples/node-red/tools-flow.json --------------------------------------------


def flow_nodes(path: Path = FLOW_FILE) -> dict[str, dict[str, Any]]:
    flow = json.loads(path.read_text())
    assert isinstance(flow, list)
    by_id = {node["id"]: node for node in flow}
    assert len(by_id) == len(flow), "node ids must be unique"
    return by_id


def of_type(nodes: dict[str, dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The nodes of one type, top to bottom."""
    return sorted((n for n in nodes.values() if n["type"] == kind), key=lambda n: n.get("y", 0))


def wired_to(
    nodes: dict[str, dict[str, Any]], node: dict[str, Any], output: int | None = None
) -> list[dict[str, Any]]:
    outputs = node["wires"] if output is None else [node["wires"][output]]
    return [nodes[target] for wires in outputs for target in wires]


def by_topic(nodes: dict[str, dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    found = {node["topic"]: node for node in of_type(nodes, kind)}
    assert len(found) == len(of_type(nodes, kind))
    return found


def apply_change_rules(rules: list[dict[str, Any]], msg: dict[str, Any]) -> None:
    """What a change node does to ``msg``, for the rules the example uses."""

    def at(path: str) -> tuple[dict[str, Any], str]:
        holder = msg
        *parents, last = path.split(".")
        for part in parents:
            holder = holder.setdefault(part, {})
        return holder, last

    for rule in rules:
        assert rule["pt"] == "msg"
        holder, key = at(rule["p"])
        if rule["t"] == "set":
            assert rule["tot"] == "json", f"the test does not model tot={rule['tot']}"
            holder[key] = json.loads(rule["to"])
        else:
            assert (rule["t"], rule["tot"]) == ("move", "msg"), f"the test does not model {rule}"
            target, target_key = at(rule["to"])
            target[target_key] = holder.pop(key)


def nodered_asks() -> dict[str, dict[str, Any]]:
    """The command each inject's question becomes, by question."""
    nodes = flow_nodes()
    (change,) = of_type(nodes, "change")
    commands = {}
    for inject in of_type(nodes, "inject"):
        assert inject["payloadType"] == "str"
        assert wired_to(nodes, inject) == [change]
        msg: dict[str, Any] = {"payload": inject["payload"]}
        apply_change_rules(change["rules"], msg)
        assert set(msg) == {"payload"}
        commands[inject["payload"]] = msg["payload"]
    return commands


def switch_output(switch: dict[str, Any], payload: dict[str, Any]) -> int | None:
    """Which output of the switch a message from the events topic leaves by (None: none),
    for the JSONata property the example uses (first matching rule: checkall false)."""
    assert switch["propertyType"] == "jsonata"
    assert switch["property"] == "$exists(payload.object) ? payload.object : payload.type"
    value = payload["object"] if "object" in payload else payload.get("type")
    assert switch["checkall"] == "false"
    for index, rule in enumerate(switch["rules"]):
        assert (rule["t"], rule["vt"]) == ("eq", "str")
        if value == rule["v"]:
            return index
    return None


def test_node_red_flow_is_importable_json() -> None:
    """One tab and flow.json's broker node; other ids unique, also next to flow.json's;
    wires resolve."""
    nodes = flow_nodes()
    (tab,) = of_type(nodes, "tab")
    assert tab["label"] == "tools"
    (broker,) = of_type(nodes, "mqtt-broker")
    other = flow_nodes(OTHER_FLOW_FILE)
    assert set(nodes) & set(other) == {broker["id"]}  # the shared broker node, nothing else
    assert other[broker["id"]] == broker
    for node in nodes.values():
        assert isinstance(node["type"], str)
        if node["type"] not in {"tab", "mqtt-broker"}:
            assert node["z"] == tab["id"]
        for output in node.get("wires", []):
            assert all(target in nodes for target in output)
        if node["type"] in {"mqtt in", "mqtt out"}:
            assert node["broker"] == broker["id"]
        if node["type"] in {"switch", "function"}:
            assert len(node["wires"]) == node["outputs"]


def test_node_red_flow_topics_are_the_configs() -> None:
    nodes = flow_nodes()
    thermometer = tools()[THERMOMETER]
    assert set(by_topic(nodes, "mqtt out")) == {
        TOPICS.command(NODERED_ID),
        reply_topic(thermometer),
    }
    assert set(by_topic(nodes, "mqtt in")) == {
        thermometer.publish.topic,
        TOPICS.events(NODERED_ID),
    }
    config = example_config()
    assert profile_for(config.profiles, config.sessions, NODERED_ID, None) == PROFILE


def test_node_red_injects_ask_on_the_tools_id() -> None:
    """inject (a question) -> change (the ask) -> mqtt out on ai/nodered-tools/cmd."""
    nodes = flow_nodes()
    (change,) = of_type(nodes, "change")
    assert wired_to(nodes, change) == [by_topic(nodes, "mqtt out")[TOPICS.command(NODERED_ID)]]
    commands = nodered_asks()
    assert list(commands) == ["Is it warm in the hall?", HALL]  # the second for the simulator
    for question, payload in commands.items():
        assert payload == {"action": "ask", "input": question}
        command = parse(NODERED_ID, json.dumps(payload))
        assert isinstance(command, Ask)
        assert command.input == question


def test_node_red_answers_read_temperature() -> None:
    """mqtt in (JSON) on the tool's topic -> function -> mqtt out on its reply topic."""
    nodes = flow_nodes()
    thermometer = tools()[THERMOMETER]
    calls = by_topic(nodes, "mqtt in")[thermometer.publish.topic]
    assert calls["datatype"] == "json"
    (function,) = wired_to(nodes, calls)
    assert function["type"] == "function"
    assert wired_to(nodes, function) == [by_topic(nodes, "mqtt out")[reply_topic(thermometer)]]
    assert by_topic(nodes, "mqtt out")[reply_topic(thermometer)]["retain"] == "false"


def test_node_red_shows_tool_calls_and_responses() -> None:
    """mqtt in (JSON) on the events -> a switch: tool_call messages to one debug node,
    response.completed to the answer's text; nothing else passes."""
    nodes = flow_nodes()
    events = by_topic(nodes, "mqtt in")[TOPICS.events(NODERED_ID)]
    assert events["datatype"] == "json"
    (switch,) = wired_to(nodes, events)
    assert switch["type"] == "switch"
    tool_call = {"object": "response.websocket.tool_call", "status": "replied"}
    completed = {"type": "response.completed", "response": {"output": []}}
    assert switch_output(switch, tool_call) == 0
    assert switch_output(switch, completed) == 1
    for other in (
        {"type": "response.output_text.delta", "delta": "Hi"},
        {"type": "response.created"},
        {"object": "response.websocket.client_event", "action": "ask"},
        {"object": "response.websocket.error", "error": {"code": "x"}},
    ):
        assert switch_output(switch, other) is None
    assert [node["type"] for node in wired_to(nodes, switch, 0)] == ["debug"]
    (answer_text,) = wired_to(nodes, switch, 1)
    assert answer_text["type"] == "function"
    assert [node["type"] for node in wired_to(nodes, answer_text)] == ["debug"]


NODE_HARNESS = """
const code = process.argv[1];
const input = JSON.parse(process.argv[2]);
const context = JSON.parse(process.argv[3]);
const flow = { get: name => context[name], set: (name, value) => { context[name] = value; } };
if (input.correlationData !== undefined) {
    input.correlationData = Buffer.from(input.correlationData);
}
const result = new Function("msg", "flow", "node", code)(input, flow, {});
if (result && result.correlationData) {
    result.correlationData = result.correlationData.toString();
}
process.stdout.write(JSON.stringify(result === undefined ? null : result));
"""


def run_function(node: dict[str, Any], msg: dict[str, Any], context: dict[str, Any]) -> Any:
    """A function node's code run by Node.js, as Node-RED runs it (msg, flow, node)."""
    node_js = require("node", "apt-get install nodejs (it runs the function nodes)")
    done = subprocess.run(
        [node_js, "-e", NODE_HARNESS, node["func"], json.dumps(msg), json.dumps(context)],
        capture_output=True,
        text=True,
        timeout=30 * SECOND,
        check=True,
    )
    return json.loads(done.stdout)


def test_node_red_functions_run() -> None:
    """The read_temperature answer has the automation's shape and keeps the MQTT 5
    correlation data; the answer text comes only from a response with a message."""
    nodes = flow_nodes()
    (answer_tool,) = wired_to(nodes, by_topic(nodes, "mqtt in")[tools()[THERMOMETER].publish.topic])
    call = {"payload": {"room": "hall"}, "topic": "house/tools/read_temperature"}
    reply = run_function(answer_tool, {**call, "correlationData": "c-1"}, {})
    assert reply == {"payload": {"room": "hall", "celsius": 21.5}, "correlationData": "c-1"}
    _, automation_reply = ha_answer({"room": "hall"}, {"sensor.hall_temperature": "21.5"})
    assert reply["payload"] == automation_reply  # same shape as Home Assistant's answer
    kept = run_function(answer_tool, call, {"temperatures": {"hall": 19, "attic": "warm"}})
    assert kept == {"payload": {"room": "hall", "celsius": 19}}
    fixed = run_function(answer_tool, {**call, "payload": {"room": "attic"}}, {"temperatures": {}})
    assert fixed == {"payload": {"room": "attic", "celsius": 21.5}}

    (switch,) = wired_to(nodes, by_topic(nodes, "mqtt in")[TOPICS.events(NODERED_ID)])
    (answer_text,) = wired_to(nodes, switch, 1)
    message = {"type": "message", "content": [{"type": "output_text", "text": "Warm: 21.5."}]}
    final = {"type": "response.completed", "response": {"output": [message]}}
    assert run_function(answer_text, {"payload": final, "topic": "t"}, {}) == {
        "payload": "Warm: 21.5.",
        "topic": "t",
    }
    calling = {"type": "response.completed", "response": {"output": [{"type": "function_call"}]}}
    assert run_function(answer_text, {"payload": calling, "topic": "t"}, {}) is None


# Integration: the example config in a bridge, the house played by MQTT clients ---------


@dataclass
class House:
    """What zigbee2mqtt and Home Assistant's automation were asked, as (topic, payload)."""

    light: list[tuple[str, Any]] = field(default_factory=list)
    automation: list[tuple[str, Any]] = field(default_factory=list)
    light_state: list[dict[str, Any]] = field(default_factory=list)  # what the light reported


@contextlib.asynccontextmanager
async def house(broker: Broker) -> AsyncIterator[House]:
    """zigbee2mqtt with the kitchen light (it takes `.../set` and publishes the new state on
    its state topic) and Home Assistant running the example's automation (it answers on the
    reply topic, as the automation renders it). Both are MQTT 3.1.1 clients without
    correlation data, as zigbee2mqtt and Home Assistant are."""
    light = tools()[LIGHT]
    (trigger,) = ha_automation()["trigger"]
    seen = House()
    async with contextlib.AsyncExitStack() as stack:
        zigbee2mqtt = await stack.enter_async_context(
            aiomqtt.Client(
                broker.host,
                broker.port,
                identifier="zigbee2mqtt",
                protocol=aiomqtt.ProtocolVersion.V311,
                timeout=10 * SECOND,
            )
        )
        homeassistant = await stack.enter_async_context(
            aiomqtt.Client(
                broker.host,
                broker.port,
                identifier="homeassistant",
                protocol=aiomqtt.ProtocolVersion.V311,
                timeout=10 * SECOND,
            )
        )
        await zigbee2mqtt.subscribe(light.publish.topic, qos=1)
        await homeassistant.subscribe(trigger["topic"], qos=1)

        async def zigbee2mqtt_light() -> None:
            async for message in zigbee2mqtt.messages:
                assert isinstance(message.payload, bytes)
                command = json.loads(message.payload)
                seen.light.append((str(message.topic), command))
                state = {"state": command["state"], "brightness": 254, "linkquality": 120}
                seen.light_state.append(state)
                await zigbee2mqtt.publish(reply_topic(light), json.dumps(state), qos=1)

        async def automation() -> None:
            async for message in homeassistant.messages:
                assert isinstance(message.payload, bytes)
                request = json.loads(message.payload)
                seen.automation.append((str(message.topic), request))
                topic, reply = ha_answer(request, SENSOR_STATES)
                text = json.dumps(reply, separators=(",", ":"))  # to_json: compact
                await homeassistant.publish(topic, text, qos=1, retain=False)

        tasks = [asyncio.create_task(zigbee2mqtt_light()), asyncio.create_task(automation())]
        try:
            yield seen
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def start_example_bridge(start_bridge: Any, broker: Broker, simulator: Simulator) -> Any:
    """A bridge with the example's tools, profiles and sessions (mqtt/openai: the test's)."""
    document = fragment()
    return await start_bridge(
        broker,
        simulator,
        tools=document["tools"],
        profiles=document["profiles"],
        sessions=document["sessions"],
    )


def is_final(message: dict[str, Any]) -> bool:
    """The end of an ask: a response that calls no tool, or an error."""
    return (
        message.get("type") == "response.completed"
        and not any(o["type"] == "function_call" for o in message["response"]["output"])
    ) or message.get("object") == "response.websocket.error"


async def answer_of(client: Client) -> list[dict[str, Any]]:
    """Every message on the events topics until an ask's end."""
    return await client.until(is_final, wait=20)


def tool_calls(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in seen if m.get("object") == "response.websocket.tool_call"]


def answer_text(seen: list[dict[str, Any]]) -> str:
    (message,) = [o for o in seen[-1]["response"]["output"] if o["type"] == "message"]
    return "".join(part["text"] for part in message["content"])


@pytest.mark.integration
async def test_home_assistant_asks_and_zigbee2mqtt_switches_the_light(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """script.ask_house with the simulator's call phrase: the light gets {"state":"OFF"},
    its reported state is the tool's output, and the answer quotes it."""
    await start_example_bridge(start_bridge, broker, simulator)
    (publish,) = publish_steps(ha_package()["script"]["ask_house"]["sequence"])
    payload = ha_ask_payload(publish, question=LIGHT_OFF, request_id="ha-house-1714.25")
    async with house(broker) as seen:
        await client.mqtt.publish(TOPICS.command(HA_ID), payload, qos=1)
        events = await answer_of(client)
    assert seen.light == [("zigbee2mqtt/kitchen_light/set", {"state": "OFF"})]
    assert seen.automation == []
    ack = next(m for m in events if m.get("action") == "ask")
    assert (ack["object"], ack["request_id"]) == (
        "response.websocket.client_event",
        "ha-house-1714.25",
    )
    (call,) = tool_calls(events)
    assert (call["connection_id"], call["name"], call["status"], call["topic"]) == (
        HA_ID,
        LIGHT,
        "replied",
        "zigbee2mqtt/kitchen_light/set",
    )
    (state,) = seen.light_state
    assert json.loads(call["output"]) == state
    assert answer_text(events) == f"The tool {LIGHT} returned: {call['output']}."


@pytest.mark.integration
async def test_node_red_asks_and_the_automation_reads_the_temperature(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """The Node-RED flow's simulator inject: the call reaches the automation as
    {"room":"hall"}, its reply is the tool's output, and the answer quotes it."""
    await start_example_bridge(start_bridge, broker, simulator)
    nodes = flow_nodes()
    (mqtt_out,) = wired_to(nodes, of_type(nodes, "change")[0])
    command = nodered_asks()[HALL]
    async with house(broker) as seen:
        await client.mqtt.publish(mqtt_out["topic"], json.dumps(command), qos=1)
        events = await answer_of(client)
    assert seen.automation == [("house/tools/read_temperature", {"room": "hall"})]
    assert seen.light == []
    (call,) = tool_calls(events)
    assert (call["connection_id"], call["name"], call["status"], call["topic"]) == (
        NODERED_ID,
        THERMOMETER,
        "replied",
        "house/tools/read_temperature",
    )
    assert call["output"] == '{"room":"hall","celsius":21.5}'  # as Home Assistant's to_json
    assert answer_text(events) == f"The tool {THERMOMETER} returned: {call['output']}."


@pytest.mark.integration
async def test_both_examples_at_once_and_an_unknown_sensor(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Home Assistant and Node-RED ask at the same time on their own ids; a room without a
    sensor is answered with celsius null, which the model is told."""
    await start_example_bridge(start_bridge, broker, simulator)
    (publish,) = publish_steps(ha_package()["script"]["ask_house"]["sequence"])
    attic = 'call read_temperature with {"room":"attic"}'
    async with house(broker) as seen:
        await client.mqtt.publish(
            TOPICS.command(HA_ID),
            ha_ask_payload(publish, question=attic, request_id="ha-house-2"),
            qos=1,
        )
        await client.mqtt.publish(
            TOPICS.command(NODERED_ID), json.dumps(nodered_asks()[HALL]), qos=1
        )
        events = await answer_of(client)
        events += await answer_of(client)
    assert sorted(request["room"] for _, request in seen.automation) == ["attic", "hall"]
    outputs = {call["connection_id"]: json.loads(call["output"]) for call in tool_calls(events)}
    assert outputs == {
        HA_ID: {"room": "attic", "celsius": None},
        NODERED_ID: {"room": "hall", "celsius": 21.5},
    }
    assert {call["status"] for call in tool_calls(events)} == {"replied"}
