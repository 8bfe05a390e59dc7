"""Hostile input, property-based: arbitrary bytes, JSON values and near-valid commands.

The properties: nothing crashes, every non-empty command gets exactly one answer
from the bridge, and no other connection is touched.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.daemon.service import Service
from bridge.protocol.contract import Topics
from bridge.protocol.core import (
    AbortUpstream,
    BridgeCore,
    CloseUpstream,
    OpenUpstream,
    SendUpstream,
)
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.messages import Publish
from bridge.protocol.sessions import ProfileConfig, SessionsConfig
from bridge.protocol.strict_json import load_json
from bridge.protocol.tools import Call, Rendered, ToolBox, ToolConfig
from bridge_tools.simulator import Simulator, SimulatorOptions
from tests.conftest import KEY, Broker, Client, body, bridge_settings
from tests.helpers import SECOND

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(["connect", "send", "close", "ask", "open", "", "CONNECT"])
        | json_values,
        "connection_id": st.sampled_from(["c1", "c2", "x"]) | json_values,
        "event": st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["response.create", "response.steer"]) | json_values,
                "input": json_values,
            },
        )
        | json_values,
        "code": st.sampled_from([1000, 1001, 1006, 3000, 4999, 5000]) | json_values,
        "reason": st.text(max_size=130) | json_values,
        "request_id": st.text(max_size=300) | json_values,
        # `ask` and profiles: text or items, a profile name, the flag
        "input": st.text(max_size=50) | json_values,
        "profile": st.sampled_from(["default", "nope", "", "x" * 65]) | json_values,
        "new_conversation": st.booleans() | json_values,
    },
)
# Deep nesting: it used to raise RecursionError out of json.loads and stop the daemon.
deep_json = st.builds(
    lambda depth, opener, closed: (
        opener * depth
        + (b"1" if opener == b'{"a":' else b"")
        + ((b"}" if opener == b'{"a":' else b"]") * depth if closed else b"")
    ),
    st.integers(min_value=1, max_value=3000),
    st.sampled_from([b"[", b'{"a":']),
    st.booleans(),
)
# Numbers Python reads but would write back as non-JSON (NaN, Infinity), and huge ones.
numbers = st.one_of(
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"1e-400", b"-0"]),
    st.floats().map(lambda value: repr(value).encode()),
    st.integers(min_value=1, max_value=6000).map(lambda digits: b"9" * digits),
    st.integers(min_value=-(10**30), max_value=10**30).map(lambda value: str(value).encode()),
)
send_with_number = numbers.map(
    lambda number: (
        b'{"action":"send","event":{"type":"response.create","temperature":' + number + b"}}"
    )
)
send_with_depth = deep_json.map(
    lambda inner: b'{"action":"send","event":{"type":"response.create","input":' + inner + b"}}"
)
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda value: json.dumps(value).encode()),
    fields.map(lambda command: json.dumps(command).encode()),
    deep_json,
    send_with_number,
    send_with_depth,
)
ids = st.sampled_from(["c1", "c2", "bridge", "", "a b", "x" * 129]) | st.text(
    alphabet=st.characters(blacklist_characters="/"), max_size=12
)


def open_core() -> BridgeCore:
    core = BridgeCore(Topics("ai"), url="wss://x/v1/responses", limits=LimitsConfig())
    core.receive_command("c1", b'{"action":"connect"}')
    core.upstream_opened("c1")
    return core


@given(connection_id=ids, payload=payloads)
@settings(max_examples=600, deadline=None)
def test_core_answers_each_command_once(connection_id: str, payload: bytes) -> None:
    """Any payload on any id: one answer or one upstream step, only for that id."""
    core = open_core()
    actions = core.receive_command(connection_id, payload)
    if not payload:
        assert actions == []
        return
    publishes = [action for action in actions if isinstance(action, Publish)]
    steps = [
        action
        for action in actions
        if isinstance(action, OpenUpstream | CloseUpstream | AbortUpstream)
    ]
    assert len(publishes) + len(steps) == 1, actions
    assert all(publish.topic == f"ai/{connection_id}/events" for publish in publishes)
    for action in actions:
        if isinstance(action, OpenUpstream | CloseUpstream | SendUpstream):
            assert action.connection_id == connection_id
    if connection_id != "c1":
        assert core.phase("c1") is not None  # the open connection is untouched
    for publish in publishes:
        body = json.loads(publish.payload)
        assert body["connection_id"] == connection_id
        if body["object"] == "response.websocket.error":
            assert isinstance(body["error"]["code"], str)
            assert not steps


def _no_constant(name: str) -> None:
    raise ValueError(name)


@given(payload=st.one_of(deep_json, send_with_number, send_with_depth, payloads))
@settings(max_examples=400, deadline=None)
def test_only_strict_json_goes_upstream(payload: bytes) -> None:
    """Whatever a client sends, a `send` reaches the upstream as strict JSON, or is refused."""
    core = open_core()
    actions = core.receive_command("c1", payload)
    for action in actions:
        if isinstance(action, SendUpstream):
            json.loads(action.data, parse_constant=_no_constant)  # NaN/Infinity would raise


# Tool calls as a hostile upstream makes them: arguments of any text, numbers Python reads
# but JSON has not, deep nesting; call ids missing, shared or of any type.
arguments = st.one_of(
    st.text(max_size=40),
    json_values.map(json.dumps),
    numbers.map(lambda number: '{"level":' + number.decode() + "}"),
    deep_json.map(lambda inner: '{"level":1,"x":' + inner.decode() + "}"),
    st.sampled_from(['{"level":"\\ud800"}', '{"level":1e999}', '{"level":NaN}', "[1]", "null"]),
)
LEVEL = ToolConfig.model_validate(
    {
        "name": "set_level",
        "parameters": {"type": "object", "properties": {"level": {"type": "number"}}},
        "publish": {"topic": "dev/level/set", "payload": {"value": "{{level}}"}},
        "reply": {"topic": "dev/level/state", "timeout": 5},
    }
)
RAW = ToolConfig.model_validate({"name": "raw", "publish": {"topic": "dev/raw"}})
TOOLBOX = ToolBox([LEVEL, RAW])


@given(name=st.sampled_from(["set_level", "raw"]), text=arguments)
@settings(max_examples=500, deadline=None)
def test_tool_arguments_are_published_only_as_strict_json(name: str, text: str) -> None:
    """A call's arguments are published as strict JSON that passed the schema, or refused
    with a message for the model; never an exception, never NaN or Infinity."""
    rendered = TOOLBOX.render(Call("call_1", name, text))
    if isinstance(rendered, Rendered):
        load_json(rendered.payload)  # strict: NaN, Infinity, 1e999 and deep nesting raise
    else:
        assert rendered.startswith(("invalid arguments: ", "the payload would be"))


def hostile_call(call_id: object, name: str, text: str) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "function_call", "name": name, "arguments": text}
    if call_id != "(none)":
        item["call_id"] = call_id
    return item


hostile_calls = st.lists(
    st.builds(
        hostile_call,
        st.sampled_from(["call_1", "call_2", "call_3", "", None, 7, "(none)"]),
        st.sampled_from(["set_level", "raw", "not_offered"]),
        arguments,
    ),
    min_size=1,
    max_size=8,
)


@given(calls=hostile_calls, v5=st.booleans(), limit=st.integers(min_value=1, max_value=4))
@settings(max_examples=300, deadline=None)
def test_a_hostile_tool_round_answers_every_call_once_and_leaves_no_wait(
    calls: list[dict[str, Any]], v5: bool, limit: int
) -> None:
    """Any calls in one response: at most max_tool_calls run, every call gets exactly one
    output in order, and once the round is over no wait is left behind."""
    core = BridgeCore(
        Topics("ai"),
        url="wss://x/v1/responses",
        v5=v5,
        limits=LimitsConfig(),
        sessions=SessionsConfig(idle_timeout=0, max_tool_calls=limit),
        profiles={
            "default": ProfileConfig(request={"model": "m"}, mqtt_tools=("set_level", "raw"))
        },
        tools=(LEVEL, RAW),
    )
    core.receive_command("c1", b'{"action":"ask","input":"go"}')
    core.upstream_opened("c1")
    response = {"id": "resp_1", "status": "completed", "output": calls}
    raw = json.dumps({"type": "response.completed", "response": response}).encode()
    if core.upstream_event("c1", raw) is not None:  # no offered tool called: no round
        return
    actions = core.take_deferred()
    devices = [a for a in actions if isinstance(a, Publish) and a.topic.startswith("dev/")]
    assert len(devices) <= limit
    for _ in range(core.waiting_replies):  # replies without correlation: the oldest call
        actions += core.tool_reply("dev/level/state", b"21", False, None)
    assert core.waiting_replies == 0
    (sent,) = [a for a in actions if isinstance(a, SendUpstream)]
    outputs = json.loads(sent.data)["input"]
    assert [o["type"] for o in outputs] == ["function_call_output"] * len(calls)
    assert [o["call_id"] for o in outputs] == [
        c["call_id"] if isinstance(c.get("call_id"), str) else "" for c in calls
    ]


@given(
    batch=st.lists(
        st.tuples(st.sampled_from(["h1", "h2", "h3"]), payloads), min_size=10, max_size=25
    )
)
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.integration
def test_bridge_answers_hostile_commands_once_and_keeps_streaming(
    broker: Broker, tmp_path: Path, batch: list[tuple[str, bytes]]
) -> None:
    """Through a real broker: one answer per command, and another id's stream unharmed."""
    asyncio.run(_hostile_scenario(broker, tmp_path, batch))


async def _hostile_scenario(broker: Broker, tmp_path: Path, batch: list[tuple[str, bytes]]) -> None:
    async with Simulator(SimulatorOptions(api_key=KEY, tokens_per_second=300)) as simulator:
        settings = bridge_settings(
            broker,
            simulator,
            tmp_path,
            limits={"dedupe_seconds": 0, "commands_per_second": 1000, "command_burst": 1000},
        )
        service = Service(settings)
        stop = asyncio.Event()
        bridge = asyncio.create_task(service.run(stop))
        await asyncio.wait_for(service.ready.wait(), 10 * SECOND)
        try:
            async with Client(broker) as client:
                await client.subscribe("ai/+/events")
                await client.command("victim", {"action": "connect"})
                assert (await client.next_json())["action"] == "connect"
                await client.command(
                    "victim",
                    {
                        "action": "send",
                        "event": {
                            "type": "response.create",
                            "model": "m",
                            "input": "Describe tulips.",
                        },
                    },
                )
                expected = Counter(connection_id for connection_id, payload in batch if payload)
                for connection_id, payload in batch:
                    await client.command(connection_id, payload)
                answers: Counter[str] = Counter()
                victim: list[dict[str, Any]] = []
                async with asyncio.timeout(20 * SECOND):
                    while (
                        answers != expected
                        or not victim
                        or victim[-1].get("type") != "response.completed"
                    ):
                        message = await client.next()
                        connection_id = message.topic.value.split("/")[1]
                        document = body(message)
                        if connection_id == "victim":
                            victim.append(document)
                        elif "object" in document:  # the bridge's own answer
                            answers[connection_id] += 1
                events = [event for event in victim if "sequence_number" in event]
                assert [e["sequence_number"] for e in events] == list(range(len(events)))
                assert answers == expected
        finally:
            stop.set()
            await asyncio.wait_for(bridge, 20 * SECOND)
