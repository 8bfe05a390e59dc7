"""Hostile input, property-based: arbitrary bytes, JSON values and near-valid commands,
and from the upstream, server events and usage values that lie.

The properties: nothing crashes, every non-empty command gets exactly one answer
from the bridge, and no other connection is touched; every server frame is relayed
as sent only when it passes the frame rules, else answered with one error; usage is
counted as bounded, non-negative integers; the id stays usable.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Sequence
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
from tests.hostile_upstream import Frame, HostileUpstream, TextBytes, answer

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
    actions = core.upstream_event("c1", raw)
    if isinstance(actions, Publish):  # no offered tool called: no round
        return
    devices = [a for a in actions if isinstance(a, Publish) and a.topic.startswith("dev/")]
    assert len(devices) <= limit
    for _ in range(core.tools.waiting_replies):  # replies without correlation: the oldest call
        actions += core.tool_reply("dev/level/state", b"21", False, None)
    assert core.tools.waiting_replies == 0
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


# From the upstream ----------------------------------------------------------------------

ENDINGS = ["response.completed", "response.incomplete", "response.failed", "error"]
# Usage values an upstream may send: sane counts, and everything else.
usage_values = st.one_of(
    st.none(),
    json_values,
    st.dictionaries(
        st.sampled_from(["input_tokens", "output_tokens", "total_tokens", "other"]),
        st.one_of(
            st.integers(min_value=-(10**12), max_value=10**12),
            st.integers(min_value=10, max_value=4300).map(lambda digits: 10**digits - 1),
            st.floats(allow_nan=False),
            st.booleans(),
            st.none(),
            st.text(max_size=8),
        ),
        max_size=4,
    ),
)


def _ending(event_type: str, usage: Any, text: str) -> bytes:
    if event_type == "error":
        return json.dumps({"type": "error", "error": {"code": text, "message": text}}).encode()
    output = [{"type": "message", "content": [{"type": "output_text", "text": text}]}]
    response = {"id": "resp_h", "status": "completed", "output": output, "usage": usage}
    return json.dumps({"type": event_type, "response": response}, ensure_ascii=False).encode()


endings = st.builds(_ending, st.sampled_from(ENDINGS), usage_values, st.text(max_size=30))
typed_prefix = st.sampled_from([*ENDINGS, "response.output_text.delta", "x"]).map(
    lambda name: b'{"type":"' + name.encode() + b'"'
)
server_frames = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda value: json.dumps(value).encode()),
    endings,
    # Ends cut short, or broken inside: they still end their request.
    st.tuples(endings, st.integers(min_value=1, max_value=400)).map(lambda cut: cut[0][: cut[1]]),
    st.tuples(typed_prefix, st.binary(max_size=60)).map(lambda parts: parts[0] + parts[1]),
    st.tuples(typed_prefix, deep_json).map(lambda parts: parts[0] + b',"a":' + parts[1] + b"}"),
    st.tuples(typed_prefix, numbers).map(lambda parts: parts[0] + b',"n":' + parts[1] + b"}"),
    st.text(max_size=20).map(
        lambda text: json.dumps(
            {"type": "response.output_text.delta", "delta": text}, ensure_ascii=False
        ).encode()
    ),
)


def asking_core() -> BridgeCore:
    """An `ask` turn in flight on c1, a plain connection open on c2, budgets counted."""
    budgets = {"tokens_per_day": 10**15}
    limits = LimitsConfig(dedupe_seconds=0, command_burst=10_000, budgets=budgets)
    core = BridgeCore(Topics("ai"), url="wss://x/v1/responses", limits=limits)
    core.receive_command("c1", b'{"action":"ask","input":"Hi","request_id":"q1"}')
    core.upstream_opened("c1")
    core.receive_command("c2", b'{"action":"connect"}')
    core.upstream_opened("c2")
    return core


def relayed_by_the_rules(raw: bytes) -> bool:
    """The README's frame rules, written out again: relayed as sent, or not."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return False
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("type"), str):
        return True
    if not (raw.startswith(b'{"type":"') and raw.endswith(b"}")):
        return False
    end = raw.find(b'"', 9)
    name = raw[9:end]
    return (
        end > 0
        and raw[end + 1 : end + 2] in (b",", b"}")
        and b"\\" not in name
        and name.decode() not in ENDINGS  # ends are parsed in full
    )


@given(frames=st.lists(st.tuples(st.sampled_from(["c1", "c2"]), server_frames), max_size=12))
@settings(max_examples=500, deadline=None)
def test_any_server_frames_are_relayed_as_sent_or_answered_once(
    frames: list[tuple[str, bytes]],
) -> None:
    """Per frame: the frame as sent when the rules let it through, else one
    invalid_server_event; the usage book holds bounded integers; both ids stay usable."""
    core = asking_core()
    for connection_id, raw in frames:
        publish = core.upstream_event(connection_id, raw)
        actions = [publish] if isinstance(publish, Publish) else publish
        events = [
            action
            for action in actions
            if isinstance(action, Publish) and action.topic == f"ai/{connection_id}/events"
        ]
        if relayed_by_the_rules(raw):
            retried = any(isinstance(action, CloseUpstream) for action in actions)
            assert retried or [(e.payload, e.relayed) for e in events] == [(raw, True)]
        else:
            (said,) = events
            assert not said.relayed
            assert json.loads(said.payload)["error"]["code"] == "invalid_server_event"
    usage = core.guardrails.usage.totals()
    for tokens in (usage.bridge, *usage.ids.values()):
        for count in (tokens.input, tokens.output, tokens.total):
            assert type(count) is int
            assert 0 <= count <= 2 * 10**9 * len(frames)  # at most one response per frame
    assert core.receive_command("c1", b'{"action":"ask","input":"Again"}')  # answered or sent
    assert core.phase("c2") is not None


@given(frames=st.lists(server_frames, min_size=1, max_size=10))
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.integration
def test_bridge_outlives_a_lying_upstream(
    broker: Broker, tmp_path: Path, frames: list[bytes]
) -> None:
    """Through a real broker: each frame relayed as sent or answered with one error, no
    traceback, and the next id's answer unharmed."""
    asyncio.run(_lying_upstream_scenario(broker, tmp_path, frames))


async def _lying_upstream_scenario(broker: Broker, tmp_path: Path, frames: list[bytes]) -> None:
    def script(event: dict[str, Any], number: int) -> Sequence[Frame]:
        if number == 0:
            return [TextBytes(frame) for frame in frames]
        return answer("Tulips are flowers.", {"input_tokens": 3, "output_tokens": 5})

    failures = _Failures()
    logging.getLogger("bridge").addHandler(failures)
    try:
        async with HostileUpstream(script) as upstream:
            service = Service(bridge_settings(broker, upstream, tmp_path))
            stop = asyncio.Event()
            bridge = asyncio.create_task(service.run(stop))
            await asyncio.wait_for(service.ready.wait(), 10 * SECOND)
            try:
                async with Client(broker) as client:
                    await client.subscribe("ai/+/events")
                    await client.command("liar", {"action": "ask", "input": "Hi"})
                    await client.until(lambda m: m.get("action") == "ask")
                    seen = [await client.next() for _ in frames]
                    for raw, message in zip(frames, seen, strict=True):
                        if relayed_by_the_rules(raw):
                            assert message.payload == raw
                        else:
                            assert body(message)["error"]["code"] == "invalid_server_event"
                    await client.command("victim", {"action": "ask", "input": "Tulips?"})
                    await client.until(lambda m: m.get("type") == "response.completed")
            finally:
                stop.set()
                await asyncio.wait_for(bridge, 20 * SECOND)
    finally:
        logging.getLogger("bridge").removeHandler(failures)
    assert not failures.records, [record.getMessage() for record in failures.records]


class _Failures(logging.Handler):
    """Log records with a traceback: the bridge's bug path."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)
