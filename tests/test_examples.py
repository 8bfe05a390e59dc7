"""The shipped examples speak the contract: the Node-RED flow and the Home Assistant script."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bridge.protocol.contract import Close, Connect, Send, Topics, parse_command

EXAMPLES = Path(__file__).parent.parent / "examples"
ALLOWED = frozenset({"response.create"})


def nodes_by_id() -> dict[str, dict[str, Any]]:
    flow = json.loads((EXAMPLES / "node-red" / "flow.json").read_text())
    assert isinstance(flow, list)
    return {node["id"]: node for node in flow}


def test_node_red_flow_is_importable_json() -> None:
    """Every node has a unique id and a type; every wire and broker reference resolves."""
    nodes = nodes_by_id()
    tabs = {node_id for node_id, node in nodes.items() if node["type"] == "tab"}
    assert len(tabs) == 1
    for node in nodes.values():
        assert isinstance(node["type"], str)
        if node["type"] not in {"tab", "mqtt-broker"}:
            assert node["z"] in tabs
        for output in node.get("wires", []):
            assert all(target in nodes for target in output)
        if "broker" in node and node["type"] != "mqtt-broker":
            assert nodes[node["broker"]]["type"] == "mqtt-broker"


def test_node_red_injects_publish_the_seed_commands() -> None:
    """The inject nodes reach the mqtt out node on P/<id>/cmd with connect, send, close."""
    nodes = nodes_by_id()
    (mqtt_out,) = [node for node in nodes.values() if node["type"] == "mqtt out"]
    connection_id = Topics("ai").connection_id_of(mqtt_out["topic"])
    assert connection_id == "demo-connection-1"
    injects = sorted(
        (node for node in nodes.values() if node["type"] == "inject"), key=lambda node: node["y"]
    )
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
    (mqtt_in,) = [node for node in nodes.values() if node["type"] == "mqtt in"]
    assert mqtt_in["topic"] == Topics("ai").events("demo-connection-1")
    assert mqtt_in["datatype"] == "json"
    targets = {nodes[target]["type"] for output in mqtt_in["wires"] for target in output}
    assert "debug" in targets


def test_home_assistant_script_speaks_the_contract() -> None:
    """The HA script publishes valid commands and waits on the connection's events topic."""
    document = yaml.safe_load((EXAMPLES / "home-assistant" / "ask_openai.yaml").read_text())
    script = document["script"]["ask_openai"]
    commands, events = script["variables"]["commands"], script["variables"]["events"]
    topics = Topics("ai")
    connection_id = topics.connection_id_of(commands)
    assert connection_id is not None
    assert events == topics.events(connection_id)
    published = [
        step["data"]["payload"]
        for step in script["sequence"]
        if step.get("action") == "mqtt.publish"
    ]
    static = [
        parse_command(
            connection_id, payload.encode(), max_bytes=1 << 20, allowed_event_types=ALLOWED
        )
        for payload in published
        if not payload.lstrip().startswith("{{")
    ]
    assert static == []  # one command, built from the question
    templated = [payload for payload in published if payload.lstrip().startswith("{{")]
    assert len(templated) == 1
    assert '"action": "ask"' in templated[0]
    assert '"input": question' in templated[0]
    assert '"request_id": run' in templated[0]
    waits = [trigger for step in script["sequence"] for trigger in step.get("wait_for_trigger", [])]
    assert waits
    assert {trigger["topic"] for trigger in waits} == {events}
