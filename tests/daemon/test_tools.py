"""Tools over MQTT on a real Mosquitto and the simulator: the bridge runs the tool loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client
from tests.helpers import SECOND

pytestmark = pytest.mark.integration

TOOLS = [
    {
        "name": "set_light",
        "description": "Switch the kitchen light on or off",
        "parameters": {
            "type": "object",
            "properties": {"state": {"enum": ["ON", "OFF"]}},
            "required": ["state"],
            "additionalProperties": False,
        },
        "publish": {"topic": "zigbee2mqtt/kitchen/set", "payload": {"state": "{{state}}"}},
        "reply": {"topic": "zigbee2mqtt/kitchen", "timeout": 3},
    },
    {
        "name": "read_sensor",
        "description": "Read a temperature sensor",
        "parameters": {
            "type": "object",
            "properties": {"sensor": {"type": "string"}},
            "required": ["sensor"],
        },
        "publish": {"topic": "house/tools/read_sensor"},
        "reply": {"topic": "house/tools/read_sensor/reply", "timeout": 1},
    },
    {"name": "chime", "description": "Ring the door chime", "publish": {"topic": "house/chime"}},
]
PROFILE = {
    "request": {"model": "gpt-5.4-nano", "store": False},
    "mqtt_tools": ["set_light", "read_sensor", "chime"],
}


async def start(start_bridge: Any, broker: Broker, simulator: Simulator, **sections: Any) -> Any:
    sections.setdefault("sessions", {}).setdefault("max_tool_rounds", 2)
    return await start_bridge(
        broker, simulator, tools=TOOLS, profiles={"default": PROFILE}, **sections
    )


@contextlib.asynccontextmanager
async def device(broker: Broker, *, v5: bool = True) -> AsyncIterator[list[tuple[str, Any]]]:
    """A light (zigbee2mqtt-style: it publishes its new state, no correlation) and a
    sensor that answers MQTT v5 requests on their Response Topic with their Correlation
    Data. Yields what they were asked, as (topic, payload)."""
    asked: list[tuple[str, Any]] = []
    protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=protocol, timeout=10 * SECOND
    ) as client:
        await client.subscribe("zigbee2mqtt/kitchen/set", qos=1)
        await client.subscribe("house/tools/read_sensor", qos=1)
        await client.subscribe("house/chime", qos=1)

        async def serve() -> None:
            async for message in client.messages:
                payload = json.loads(message.payload)
                asked.append((str(message.topic), payload))
                if message.topic.matches("zigbee2mqtt/kitchen/set"):
                    state = json.dumps({"state": payload["state"], "brightness": 254})
                    await client.publish("zigbee2mqtt/kitchen", state, qos=1)
                elif message.topic.matches("house/tools/read_sensor"):
                    props: Any = message.properties
                    reply = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    topic = "house/tools/read_sensor/reply"
                    if props is not None and getattr(props, "ResponseTopic", None):
                        topic = props.ResponseTopic
                        reply.CorrelationData = props.CorrelationData
                    text = json.dumps({"sensor": payload["sensor"], "celsius": 21.5})
                    await client.publish(topic, text, qos=1, properties=reply if v5 else None)

        task = asyncio.create_task(serve())
        try:
            yield asked
        finally:
            task.cancel()


async def ask(client: Client, text: str, connection_id: str = "t1") -> list[dict[str, Any]]:
    """Every message on the id's events topic until its answer (or its error)."""
    await client.command(connection_id, {"action": "ask", "input": text})
    return await client.until(
        lambda m: (
            (
                m.get("type") == "response.completed"
                and not any(o.get("type") == "function_call" for o in m["response"]["output"])
            )
            or m.get("object") == "response.websocket.error"
        ),
        wait=15,
    )


def tool_calls(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in seen if m.get("object") == "response.websocket.tool_call"]


def answer_text(seen: list[dict[str, Any]]) -> str:
    (message,) = [o for o in seen[-1]["response"]["output"] if o["type"] == "message"]
    return "".join(part["text"] for part in message["content"])


def requests(simulator: Simulator) -> list[dict[str, Any]]:
    return [received.json() for received in simulator.received]


async def test_a_call_is_published_and_the_answer_quotes_the_reply(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start(start_bridge, broker, simulator)
    async with device(broker) as asked:
        seen = await ask(client, 'Please call set_light with {"state":"OFF"}')
    assert asked == [("zigbee2mqtt/kitchen/set", {"state": "OFF"})]
    (call,) = tool_calls(seen)
    assert (call["name"], call["status"], call["topic"]) == (
        "set_light",
        "replied",
        "zigbee2mqtt/kitchen/set",
    )
    assert '"brightness": 254' in answer_text(seen)
    first, second = requests(simulator)
    assert [tool["name"] for tool in first["tools"]] == ["set_light", "read_sensor", "chime"]
    assert second["input"][0]["type"] == "function_call_output"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_reply_by_correlation_and_without(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client, protocol: str
) -> None:
    await start(start_bridge, broker, simulator, mqtt={"protocol": protocol})
    async with device(broker, v5=protocol == "5") as asked:
        seen = await ask(client, 'call read_sensor with {"sensor":"hall"}')
    assert asked == [("house/tools/read_sensor", {"sensor": "hall"})]
    (call,) = tool_calls(seen)
    assert call["status"] == "replied"
    assert '"celsius": 21.5' in answer_text(seen)


async def test_a_timeout_tells_the_model(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start(start_bridge, broker, simulator)
    seen = await ask(client, 'call read_sensor with {"sensor":"attic"}')  # nobody answers
    (call,) = tool_calls(seen)
    assert call["status"] == "timeout"
    # Which reply topic stayed silent, on P/<id>/events and to the model (issue 30).
    silent = "no reply on house/tools/read_sensor/reply within 1 s"
    assert call["error"].startswith(silent)
    assert silent in answer_text(seen)


async def test_invalid_arguments_are_never_published(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start(start_bridge, broker, simulator)
    async with device(broker) as asked:
        seen = await ask(client, 'call set_light with {"state":"DIM"}')
        await asyncio.sleep(0.2 * SECOND)  # a negative check: nothing reaches the device
    assert asked == []
    (call,) = tool_calls(seen)
    assert call["status"] == "invalid_arguments"
    assert "'DIM' is not one of" in call["error"]
    assert "invalid arguments" in answer_text(seen)


async def test_two_calls_in_one_response(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start(start_bridge, broker, simulator)
    async with device(broker) as asked:
        seen = await ask(
            client, 'call set_light with {"state":"ON"} and call read_sensor with {"sensor":"k"}'
        )
    assert sorted(topic for topic, _ in asked) == [
        "house/tools/read_sensor",
        "zigbee2mqtt/kitchen/set",
    ]
    assert [call["name"] for call in tool_calls(seen)] == ["set_light", "read_sensor"]
    (_, continued) = requests(simulator)
    assert [item["call_id"] for item in continued["input"]] == [
        call["call_id"] for call in tool_calls(seen)
    ]


async def test_the_round_limit_ends_the_turn(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start(start_bridge, broker, simulator)
    seen = await ask(client, "call chime with {} repeatedly")
    assert seen[-1]["error"]["code"] == "tool_rounds_exceeded"
    assert [call["status"] for call in tool_calls(seen)] == ["published", "published"]
    # The conversation still works: every call it keeps had its output.
    assert (await ask(client, "Describe tulips."))[-1]["type"] == "response.completed"


async def test_a_client_tool_is_relayed_not_run(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start(start_bridge, broker, simulator)
    async with device(broker) as asked:
        await client.command("c1", {"action": "connect"})
        own = {"type": "function", "name": "set_light", "parameters": {"type": "object"}}
        event = {
            "type": "response.create",
            "model": "gpt-5.4-nano",
            "tools": [own],
            "input": 'call set_light with {"state":"OFF"}',
        }
        await client.command("c1", {"action": "send", "event": event})
        seen = await client.until(lambda m: m.get("type") == "response.completed")
        await asyncio.sleep(0.3 * SECOND)  # a negative check: nothing reaches the device
    assert asked == []  # the client's own tool: relayed, never executed
    assert tool_calls(seen) == []
    (item,) = seen[-1]["response"]["output"]
    assert (item["type"], item["name"]) == ("function_call", "set_light")


async def test_the_conversation_goes_on_after_tools_even_replayed(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """store:false, and the socket replaced before the next turn: the replay carries each
    call with its output (the simulator refuses a call without one)."""
    await start(start_bridge, broker, simulator, sessions={"max_socket_age": 0.5 * SECOND})
    async with device(broker):
        await ask(client, 'call set_light with {"state":"OFF"}')
    await asyncio.sleep(0.6 * SECOND)  # the socket is now past its (tiny) age limit
    seen = await ask(client, "Describe tulips.")
    assert seen[-1]["type"] == "response.completed"
    replayed = requests(simulator)[-1]
    kinds = [item.get("type", "message") for item in replayed["input"]]
    assert kinds == ["message", "function_call", "function_call_output", "message", "message"]
    assert "previous_response_id" not in replayed
