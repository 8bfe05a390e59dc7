"""Named endpoints over HTTP on a real Mosquitto and the simulator's HTTP endpoint (issue 26).

The MQTT contract is the WebSocket one: the same acks, the same events on
``P/<id>/events``, the same error codes.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge_tools.simulator import Simulator, SimulatorOptions
from tests.conftest import KEY, Broker, Client
from tests.daemon.test_tools import TOOLS, device, tool_calls
from tests.daemon.test_tools import ask as ask_with_tools

pytestmark = pytest.mark.integration

LOCAL = {"transport": "http", "api_key_env": "OPENAI_API_KEY"}


async def start_http(
    start_bridge: Any, broker: Broker, simulator: Simulator, **sections: Any
) -> Any:
    """A bridge whose `default` profile is on the simulator's HTTP endpoint (`local`);
    the `big` profile stays on `openai` (WebSocket)."""
    local = {**LOCAL, "base_url": simulator.http_base_url, **sections.pop("local", {})}
    profiles = sections.pop("profiles", {})
    default = {"request": {"model": "gpt-5.4-nano", "store": False}, "endpoint": "local"}
    return await start_bridge(
        broker,
        simulator,
        endpoints={"local": local},
        profiles={"default": default, "big": {"request": {"model": "gpt-5"}}, **profiles},
        **sections,
    )


async def ask(client: Client, connection_id: str, text: str, **fields: Any) -> list[dict[str, Any]]:
    await client.command(connection_id, {"action": "ask", "input": text, **fields})
    return await client.until(
        lambda m: (
            m.get("type") in ("response.completed", "error")
            or m.get("object") == "response.websocket.error"
        )
    )


def posted(simulator: Simulator) -> list[dict[str, Any]]:
    return [r.json() for r in simulator.received if "type" not in r.json()]


async def test_ask_twice_replays_and_a_mixed_house(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_http(start_bridge, broker, simulator)
    first = await ask(client, "kitchen", "Describe tulips.")
    assert first[0]["action"] == "connect"
    # The connect ack names the endpoint the profile opened: the local one, over HTTP.
    assert first[0]["url"].startswith(simulator.http_base_url.rstrip("/"))
    assert first[-1]["type"] == "response.completed"
    second = await ask(client, "kitchen", "And roses?")
    assert second[-1]["type"] == "response.completed"
    requests = posted(simulator)
    assert [r["stream"] for r in requests] == [True, True]
    # store false and no connection cache over HTTP: the bridge replays the conversation.
    assert "previous_response_id" not in requests[1]
    assert [item["role"] for item in requests[1]["input"]] == ["user", "assistant", "user"]
    assert simulator.open_connections == 0  # no WebSocket for the default profile
    # The `big` profile is on the WebSocket endpoint.
    big = await ask(client, "office", "Describe MQTT.", profile="big")
    assert big[-1]["type"] == "response.completed"
    assert big[0]["url"].startswith("ws")  # `openai`'s WebSocket URL, not the local one
    assert [r.json().get("type") for r in simulator.received][-1] == "response.create"


async def test_connect_send_cancel_close(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_http(
        start_bridge,
        broker,
        simulator,
        limits={"allowed_event_types": ["response.create", "response.cancel"]},
    )
    await client.command("c1", {"action": "connect"})
    await client.until(lambda m: m.get("action") == "connect")
    event = {"type": "response.create", "model": "gpt-5.4-nano", "input": "Hello", "store": False}
    await client.command("c1", {"action": "send", "event": event})
    seen = await client.until(lambda m: m.get("type") == "response.completed")
    assert seen[0]["action"] == "send"
    assert seen[1]["type"] == "response.created"
    slow = {**event, "input": "Write a long story", "metadata": {"simulator_fault": "gap_30"}}
    await client.command("c1", {"action": "send", "event": slow})
    await client.until(lambda m: m.get("type") == "response.output_text.delta")
    await client.command("c1", {"action": "send", "event": {"type": "response.cancel"}})
    cancelled = await client.until(lambda m: m.get("type") == "error")
    assert cancelled[-1]["error"]["code"] == "response_cancelled"
    await client.command("c1", {"action": "close"})
    closed = await client.until(lambda m: m.get("action") == "close")
    assert closed[-1]["action"] == "close"


async def test_errors_map_to_the_same_codes(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_http(start_bridge, broker, simulator, local={"api_key_env": "NO_SUCH_KEY"})
    await client.command("c401", {"action": "connect"})
    refused = await client.until(lambda m: m.get("object") == "response.websocket.error")
    assert refused[-1]["error"]["code"] == "upstream_connect_failed"
    assert refused[-1]["error"]["status"] == 401


async def test_a_rate_limit_is_an_error_event(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_http(start_bridge, broker, simulator)
    await ask(client, "c429", "Hello")
    simulator.reject_next_handshakes(429)
    seen = await ask(client, "c429", "Again")
    error = next(m for m in seen if m.get("type") == "error")
    assert error["status"] == 429
    assert error["error"]["code"] == "rate_limit_exceeded"


async def test_device_output(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_http(start_bridge, broker, simulator)
    await client.subscribe("ai/tx/answer")
    await client.command("tx", {"action": "ask", "input": "Hello", "output": {"answer": True}})
    seen = await client.until(lambda m: "text" in m and m.get("status") == "completed")
    deltas = "".join(m["delta"] for m in seen if m.get("type") == "response.output_text.delta")
    assert seen[-1]["text"] == deltas


async def test_a_tool_round(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    default = {
        "request": {"model": "gpt-5.4-nano", "store": False},
        "endpoint": "local",
        "mqtt_tools": ["set_light", "read_sensor", "chime"],
    }
    await start_http(start_bridge, broker, simulator, tools=TOOLS, profiles={"default": default})
    async with device(broker) as asked:
        seen = await ask_with_tools(client, 'Please call set_light with {"state":"OFF"}')
    assert asked == [("zigbee2mqtt/kitchen/set", {"state": "OFF"})]
    (call,) = tool_calls(seen)
    assert call["status"] == "replied"
    assert seen[-1]["type"] == "response.completed"
    assert len(posted(simulator)) == 2


async def test_auto_picks_http_once_and_logs_it(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="bridge.daemon.endpoints")
    await start_http(start_bridge, broker, simulator, local={"transport": "auto"})
    await ask(client, "a1", "Hello")
    seen = await ask(client, "a2", "Hello")
    assert seen[-1]["type"] == "response.completed"
    decided = [r.message for r in caplog.records if "transport http" in r.message]
    assert len(decided) == 1
    assert "HTTP 405" in decided[0]
    assert simulator.open_connections == 0


async def test_a_server_that_keeps_nothing_gets_the_conversation_replayed(
    broker: Broker, start_bridge: Any, client: Client
) -> None:
    """A stored profile on a server that forgets: `auto` learns it, `ask` still remembers."""
    async with Simulator(SimulatorOptions(api_key=KEY, http_memory="forget")) as forgetful:
        stored = {"request": {"model": "gpt-5.4-nano", "store": True}, "endpoint": "local"}
        await start_http(start_bridge, broker, forgetful, profiles={"default": stored})
        await ask(client, "m1", "My name is Ada.")
        seen = await ask(client, "m1", "What is my name?")
        assert seen[-1]["type"] == "response.completed"
        last = posted(forgetful)[-1]
        assert "previous_response_id" not in last
        assert last["input"][0] == {"role": "user", "content": "My name is Ada."}
