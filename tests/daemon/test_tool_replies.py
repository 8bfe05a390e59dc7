"""Wrong answers from outside, on a real Mosquitto: tool replies that must not match the
wrong call, and an upstream that calls tools as no real model would (issue 22)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client
from tests.daemon.scripted_upstream import (
    ScriptedUpstream,
    function_call,
    has_outputs,
    text_answer,
    user_text,
)
from tests.daemon.test_tools import answer_text, ask, tool_calls
from tests.helpers import SECOND

pytestmark = pytest.mark.integration

TOOLS = [
    {
        "name": "lock_door",
        "parameters": {"type": "object", "properties": {"state": {"enum": ["LOCK", "UNLOCK"]}}},
        "publish": {"topic": "dev/door/set"},
        "reply": {"topic": "dev/door/state", "timeout": 1},
    },
    {
        "name": "set_light",
        "parameters": {"type": "object", "properties": {"state": {"enum": ["ON", "OFF"]}}},
        "publish": {"topic": "dev/light/set"},
        "reply": {"topic": "dev/light/state", "timeout": 2},
    },
    {
        "name": "set_level",
        "parameters": {"type": "object", "properties": {"level": {"type": "number"}}},
        "publish": {"topic": "dev/level/set"},
    },
    {"name": "chime", "publish": {"topic": "house/chime", "qos": 0}},
]
PROFILE = {
    "request": {"model": "gpt-5.4-nano", "store": False},
    "mqtt_tools": ["lock_door", "set_light", "set_level", "chime"],
}


async def start(start_bridge: Any, broker: Broker, upstream: Any, **sections: Any) -> Any:
    return await start_bridge(
        broker, upstream, tools=TOOLS, profiles={"default": PROFILE}, **sections
    )


class Device:
    """An MQTT v5 client on the device side: what the bridge asked, and a way to answer."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.asked: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()

    async def next(self) -> aiomqtt.Message:
        return await asyncio.wait_for(self.asked.get(), 10 * SECOND)

    async def reply(self, topic: str, payload: str, correlation: bytes | None = None) -> None:
        properties = None
        if correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = correlation
        await self.client.publish(topic, payload, qos=1, properties=properties)


@contextlib.asynccontextmanager
async def device(broker: Broker, *topics: str) -> AsyncIterator[Device]:
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=10 * SECOND
    ) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        found = Device(client)

        async def read() -> None:
            async for message in client.messages:
                found.asked.put_nowait(message)

        task = asyncio.create_task(read())
        try:
            yield found
        finally:
            task.cancel()


def payload_of(message: aiomqtt.Message) -> Any:
    assert isinstance(message.payload, bytes)
    return json.loads(message.payload)


def correlation_of(message: aiomqtt.Message) -> bytes:
    data = getattr(message.properties, "CorrelationData", None)
    assert isinstance(data, bytes)
    return data


async def test_a_reply_counts_only_on_its_own_calls_reply_topic(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Item 1: the door call's correlation data on the light's reply topic is no reply."""
    await start(start_bridge, broker, simulator)
    async with device(broker, "dev/door/set") as door:
        asking = asyncio.create_task(ask(client, 'call lock_door with {"state":"UNLOCK"}'))
        request = await door.next()
        await door.reply("dev/light/state", '{"door":"forged"}', correlation_of(request))
        seen = await asking
    (call,) = tool_calls(seen)
    assert call["status"] == "timeout"
    assert "forged" not in answer_text(seen)


async def test_a_late_reply_of_a_timed_out_call_answers_no_newer_call(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Item 2: call A times out; B waits on the same topic; A's late reply (its correlation
    data) is dropped, and B takes its own reply."""
    await start(start_bridge, broker, simulator)
    async with device(broker, "dev/door/set") as door:
        asking = asyncio.create_task(ask(client, 'call lock_door with {"state":"LOCK"}'))
        first = await door.next()
        (timed_out,) = tool_calls(await asking)
        assert timed_out["status"] == "timeout"
        asking = asyncio.create_task(ask(client, 'call lock_door with {"state":"UNLOCK"}'))
        second = await door.next()
        await door.reply("dev/door/state", '{"state":"LOCKED"}', correlation_of(first))
        await door.reply("dev/door/state", '{"state":"UNLOCKED"}', correlation_of(second))
        seen = await asking
    (call,) = tool_calls(seen)
    assert (call["status"], call["output"]) == ("replied", '{"state":"UNLOCKED"}')


def quoting_script(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Calls as the user text says (twice with one id, without an id, or one proper
    call), and an answer quoting the outputs once they come."""
    if has_outputs(request):
        outputs = [item["output"] for item in request["input"] if "output" in item]
        return text_answer("The tools returned: " + " | ".join(outputs))
    text = user_text(request)
    if "twice" in text:
        return [function_call("call_same", "set_light", '{"state":"ON"}')] * 2
    if "without an id" in text:
        return [function_call(None, "set_light", '{"state":"ON"}')]
    return [function_call(f"call_{len(text)}", "set_light", '{"state":"OFF"}')]


async def test_duplicate_or_missing_call_ids_are_refused_and_replies_still_match(
    broker: Broker, start_bridge: Any, client: Client
) -> None:
    """Item 3: calls with one call_id (or none) are refused, each with an output, and
    never published; later replies without correlation data still find their call."""
    async with (
        ScriptedUpstream(quoting_script) as upstream,
        device(broker, "dev/light/set") as light,
    ):
        await start(start_bridge, broker, upstream)
        twice = await ask(client, "switch it on twice")
        assert [(c["call_id"], c["status"]) for c in tool_calls(twice)] == [
            ("call_same", "refused"),
            ("call_same", "refused"),
        ]
        assert "call_id 'call_same' is used by 2 calls" in tool_calls(twice)[0]["error"]
        assert answer_text(twice).count("refused") == 2
        missing = await ask(client, "switch it on without an id")
        assert [c["status"] for c in tool_calls(missing)] == ["refused"]
        assert "has no call_id" in answer_text(missing)
        asking = asyncio.create_task(ask(client, "switch it off"))
        request = await light.next()  # the first publish: nothing refused was published
        assert payload_of(request) == {"state": "OFF"}
        await light.reply("dev/light/state", '{"state":"OFF"}')  # zigbee2mqtt: no correlation
        seen = await asking
    (call,) = tool_calls(seen)
    assert (call["status"], call["output"]) == ("replied", '{"state":"OFF"}')


CALLS_AT_ONCE = 10_000


def many_calls_script(request: dict[str, Any]) -> list[dict[str, Any]]:
    if has_outputs(request):
        return text_answer("Chimed.")
    text = user_text(request)
    if "ten thousand" in text:
        return [
            function_call(f"call_{n}", "chime", json.dumps({"n": n})) for n in range(CALLS_AT_ONCE)
        ]
    if "once more" in text:
        return [function_call("call_last", "chime", '{"n":-1}')]
    return text_answer("Tulips are flowers.")


async def test_calls_past_max_tool_calls_are_refused_and_other_ids_stay_fast(
    broker: Broker, start_bridge: Any
) -> None:
    """Item 4: one response with 10,000 calls runs sessions.max_tool_calls (16) of them;
    the rest are answered "refused", and asks on other ids keep their latency."""
    async with (
        ScriptedUpstream(many_calls_script) as upstream,
        device(broker, "house/chime") as chime,
        Client(broker) as client,
        Client(broker) as other,
    ):
        await client.subscribe("ai/t1/events")
        await other.subscribe("ai/other/events")
        await start(start_bridge, broker, upstream)
        await ask(other, "Describe tulips.", "other")  # open: later asks measure no handshake
        busy = asyncio.create_task(ask(client, "chime ten thousand times"))
        latencies: list[float] = []
        while not busy.done() or not latencies:
            started = time.monotonic()
            await ask(other, "Describe tulips.", "other")
            latencies.append(time.monotonic() - started)
        seen = await busy
        said = tool_calls(seen)
        assert [c["status"] for c in said] == ["published"] * 16 + ["refused"]
        assert said[-1]["calls"] == CALLS_AT_ONCE - 16
        (continued,) = [r["input"] for r in upstream.requests if has_outputs(r)]
        outputs = [i["output"] for i in continued if i.get("type") == "function_call_output"]
        assert len(outputs) == CALLS_AT_ONCE
        assert "sessions.max_tool_calls" in outputs[16]
        await ask(client, "chime once more")
        chimed = [payload_of(await chime.next()) for _ in range(17)]
    assert [message["n"] for message in chimed] == [*range(16), -1]
    assert max(latencies) < 1.0 * SECOND, f"other id's asks took up to {max(latencies):.3f} s"


async def test_non_json_numbers_in_arguments_are_invalid_and_never_published(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Item 5: NaN, Infinity and 1e999 pass {type: number} in Python; they are refused."""
    await start(start_bridge, broker, simulator)
    async with device(broker, "dev/level/set") as level:
        seen = await ask(
            client,
            'call set_level with {"level": NaN} and call set_level with {"level": Infinity} '
            'and call set_level with {"level": 1e999} and call set_level with {"level": 5}',
        )
        first = await level.next()
    assert first.payload == b'{"level":5}'  # the only one published
    statuses = [call["status"] for call in tool_calls(seen)]
    assert statuses == ["invalid_arguments"] * 3 + ["published"]
    assert all("not JSON" in call["error"] for call in tool_calls(seen)[:3])


def always_calling(request: dict[str, Any]) -> list[dict[str, Any]]:
    """A model that keeps calling tools."""
    return [function_call(f"call_{len(request.get('input') or [])}", "chime")]


async def test_the_budget_is_checked_before_each_tool_round(
    broker: Broker, start_bridge: Any, client: Client
) -> None:
    """Item 6: 100 tokens a response against a 150-token budget: the second round is not
    run, the turn ends with budget_exceeded (it used to take all 6 responses)."""
    async with (
        ScriptedUpstream(always_calling, usage_tokens=100) as upstream,
        device(broker, "house/chime") as chime,
    ):
        await start(start_bridge, broker, upstream, limits={"budgets": {"tokens_per_day": 150}})
        seen = await ask(client, "chime for ever")
        assert seen[-1]["error"]["code"] == "budget_exceeded"
        assert seen[-1]["error"]["resets_at"]
        assert len(upstream.requests) == 2
        assert [c["status"] for c in tool_calls(seen)] == ["published"]
        assert payload_of(await chime.next()) == {}
        # The next ask is refused before anything goes upstream.
        refused = await ask(client, "chime again")
        assert refused[-1]["error"]["code"] == "budget_exceeded"
        assert len(upstream.requests) == 2
