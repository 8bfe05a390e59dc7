"""The simulator's deterministic function calling: phrases, streaming, outputs, pairing."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI
from openai.types.responses import FunctionToolParam
from websockets.asyncio.client import ClientConnection, connect

from bridge_tools.simulator import Simulator, SimulatorOptions
from bridge_tools.simulator.events import IdFactory
from bridge_tools.simulator.inbound import CreateRequest, parse_message
from bridge_tools.simulator.plan import plan_request
from bridge_tools.simulator.state import Parent
from bridge_tools.simulator.steps import Plan, Send, Settings
from bridge_tools.simulator.tool_calls import CallSpec, find_calls, quote_outputs, read_input
from tests.helpers import SECOND

KEY = "sk-test-0123456789abcdef"
TOOLS = [
    {"type": "function", "name": "set_light", "parameters": {"type": "object"}},
    {"type": "function", "name": "read_sensor", "parameters": {"type": "object"}},
]
TWO_CALLS = 'Please call set_light with {"state":"off"} and call read_sensor with {"sensor":"hall"}'
CALL_SEQUENCE = [
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
]
FC_ID = re.compile(r"fc_[0-9a-f]{48}")
CALL_ID = re.compile(r"call_[0-9a-f]{48}")

# Helpers


def request(input_value: object, **fields: Any) -> CreateRequest:
    fields.setdefault("tools", TOOLS)
    frame = {"type": "response.create", "model": "gpt-4o", "input": input_value, **fields}
    parsed = parse_message(json.dumps(frame))
    assert isinstance(parsed, CreateRequest)
    return parsed


def plan(req: CreateRequest, parent: Plan | None = None, ids: IdFactory | None = None) -> Plan:
    """Plan req, continuing from the plan of its parent response if given."""
    resolved = None
    if parent is not None:
        assert parent.snapshot is not None
        resolved = Parent(parent.snapshot, cached=True)
    return plan_request(
        req, resolved, ids=ids or IdFactory(0), now=1_700_000_000, settings=Settings()
    )


def sent(p: Plan) -> list[dict[str, Any]]:
    return [step.event for step in p.steps if isinstance(step, Send)]


def types(evs: list[dict[str, Any]]) -> list[str]:
    collapsed: list[str] = []
    for ev in evs:
        if not collapsed or ev["type"] != collapsed[-1] or not ev["type"].endswith(".delta"):
            collapsed.append(ev["type"])
    return collapsed


def final_output(p: Plan) -> list[dict[str, Any]]:
    last = sent(p)[-1]
    assert last["type"] == "response.completed", last
    output: list[dict[str, Any]] = last["response"]["output"]
    return output


def answer_text(p: Plan) -> str:
    output = final_output(p)
    assert [item["type"] for item in output] == ["message"]
    text: str = output[0]["content"][0]["text"]
    return text


def output_item(call: dict[str, Any], output: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call["call_id"], "output": output}


def replayed(call: dict[str, Any]) -> dict[str, Any]:
    """A function_call output item as a store:false client replays it."""
    return {key: call[key] for key in ("type", "call_id", "name", "arguments")}


# Phrases


@pytest.mark.parametrize(
    ("text", "specs"),
    [
        (
            TWO_CALLS,
            [
                CallSpec("set_light", '{"state":"off"}'),
                CallSpec("read_sensor", '{"sensor":"hall"}'),
            ],
        ),
        (
            'Call set_light with { "state" : "off" }.',
            [CallSpec("set_light", '{ "state" : "off" }')],
        ),
        ("call set_light with {state: off} please", [CallSpec("set_light", "{state: off}")]),
        (
            'call set_light with {"state": "off" and stop.',
            [CallSpec("set_light", '{"state": "off" and stop')],
        ),
        (
            "call set_light with dim light, then go. Now",
            [CallSpec("set_light", "dim light, then go")],
        ),
        ("call a with dim, and call b with {}", [CallSpec("a", "dim"), CallSpec("b", "{}")]),
        ('call a with {"q": "call b with {}"}', [CallSpec("a", '{"q": "call b with {}"}')]),
        ('call a with {"n":1} repeatedly', [CallSpec("a", '{"n":1}', repeat=True)]),
        ("call a with nullable things", [CallSpec("a", "nullable things")]),
        ("Who should I call with news?", []),
        ("call a with .", []),
    ],
)
def test_find_calls(text: str, specs: list[CallSpec]) -> None:
    """Arguments are the written text verbatim; invalid JSON passes through as written."""
    assert list(find_calls(text)) == specs


def test_quote_outputs() -> None:
    """One sentence per output; an unnamed call says just "The tool"."""
    inputs = read_input(
        {"input": [{"type": "function_call_output", "call_id": "c1", "output": "OK"}] * 2}
    )
    assert quote_outputs(list(inputs.outputs), {"c1": "set_light"}) == (
        "The tool set_light returned: OK. The tool set_light returned: OK."
    )
    assert quote_outputs(list(inputs.outputs[:1]), {}) == "The tool returned: OK."


# Calls


def test_a_single_call() -> None:
    """One phrase: one function_call item, streamed in pieces, and no message."""
    p = plan(request('call set_light with {"state":"off"}'))
    evs = sent(p)
    assert types(evs) == [
        "response.created",
        "response.in_progress",
        *CALL_SEQUENCE,
        "response.completed",
    ]
    assert [ev["sequence_number"] for ev in evs] == list(range(len(evs)))
    added, done = evs[2], evs[-2]
    assert added["item"]["status"] == "in_progress"
    assert added["item"]["arguments"] == ""
    item = done["item"]
    assert FC_ID.fullmatch(item["id"])
    assert CALL_ID.fullmatch(item["call_id"])
    assert item == {
        "id": item["id"],
        "type": "function_call",
        "status": "completed",
        "arguments": '{"state":"off"}',
        "call_id": item["call_id"],
        "name": "set_light",
    }
    pieces = [ev for ev in evs if ev["type"] == "response.function_call_arguments.delta"]
    assert len(pieces) > 2
    assert "".join(ev["delta"] for ev in pieces) == '{"state":"off"}'
    assert all(ev["item_id"] == item["id"] and ev["output_index"] == 0 for ev in pieces)
    assert all(isinstance(ev["obfuscation"], str) for ev in pieces)
    arguments_done = next(ev for ev in evs if ev["type"] == "response.function_call_arguments.done")
    assert {k: arguments_done[k] for k in ("item_id", "name", "output_index", "arguments")} == {
        "item_id": item["id"],
        "name": "set_light",
        "output_index": 0,
        "arguments": '{"state":"off"}',
    }
    assert final_output(p) == [item]
    usage = evs[-1]["response"]["usage"]
    assert usage["output_tokens"] > len(pieces)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_two_calls_in_one_response() -> None:
    """Two phrases: two items in order, at output indexes 0 and 1."""
    evs = sent(plan(request(TWO_CALLS)))
    assert types(evs)[2:-1] == CALL_SEQUENCE * 2
    items = evs[-1]["response"]["output"]
    assert [(i["name"], i["arguments"]) for i in items] == [
        ("set_light", '{"state":"off"}'),
        ("read_sensor", '{"sensor":"hall"}'),
    ]
    assert len({i["call_id"] for i in items}) == 2
    second = [ev for ev in evs if ev.get("item_id") == items[1]["id"]]
    assert {ev["output_index"] for ev in second} == {1}


def test_arguments_are_verbatim_even_when_invalid() -> None:
    """The simulator never validates: broken JSON reaches the client as written."""
    text = 'call set_light with {state: off} and call read_sensor with { "sensor" : "hall" }'
    items = final_output(plan(request(text)))
    assert [i["arguments"] for i in items] == ["{state: off}", '{ "sensor" : "hall" }']


def test_names_not_offered_make_no_call() -> None:
    """Unknown tools, no tools at all, or tool_choice none: an ordinary text answer."""
    assert answer_text(plan(request('call open_door with {"id":1}')))
    assert [i["name"] for i in final_output(plan(request(TWO_CALLS, tools=TOOLS[1:])))] == [
        "read_sensor"
    ]
    assert answer_text(plan(request(TWO_CALLS, tools=[])))
    assert answer_text(plan(request(TWO_CALLS, tool_choice="none")))
    assert len(final_output(plan(request(TWO_CALLS, parallel_tool_calls=False)))) == 1


def test_mid_stream_fault_hits_the_arguments() -> None:
    """error_mid_stream ends the call's argument stream halfway with an error."""
    evs = sent(plan(request('call set_light with {"state":"off"} [[fault:error_mid_stream]]')))
    assert types(evs)[-2:] == ["response.function_call_arguments.delta", "error"]


# Outputs


def test_outputs_are_quoted_after_previous_response_id() -> None:
    """The continuation answers in text, quoting each output with its tool's name."""
    ids = IdFactory(0)
    first = plan(request(TWO_CALLS), ids=ids)
    light, sensor = final_output(first)
    outputs = [output_item(light, '{"state":"OFF"}'), output_item(sensor, "21.5")]
    second = plan(request(outputs, previous_response_id="resp_1"), first, ids)
    assert answer_text(second) == (
        'The tool set_light returned: {"state":"OFF"}. The tool read_sensor returned: 21.5.'
    )


def test_outputs_are_quoted_in_a_store_false_replay() -> None:
    """Without previous_response_id the replayed function_call items name the tools."""
    first = plan(request('call set_light with {"state":"off"}', store=False))
    (call,) = final_output(first)
    replay = [
        {"role": "user", "content": 'call set_light with {"state":"off"}'},
        replayed(call),
        output_item(call, "done"),
    ]
    assert answer_text(plan(request(replay, store=False))) == "The tool set_light returned: done."


def test_a_new_user_turn_after_outputs_is_answered_normally() -> None:
    """Outputs before the latest user message are history: no quote, no new call."""
    first = plan(request('call set_light with {"state":"off"}'))
    (call,) = final_output(first)
    turn = [output_item(call, "done"), {"role": "user", "content": "What is MQTT?"}]
    text = answer_text(plan(request(turn), first))
    assert "MQTT" in text
    assert "returned" not in text


def test_calls_are_made_once_per_user_turn() -> None:
    """After the outputs come back, the same phrase does not call again."""
    ids = IdFactory(0)
    first = plan(request('call set_light with {"state":"off"}'), ids=ids)
    (call,) = final_output(first)
    second = plan(request([output_item(call, "ok")]), first, ids)
    assert answer_text(second) == "The tool set_light returned: ok."
    third = plan(request([{"role": "user", "content": "Thanks!"}]), second, ids)
    assert "returned" not in answer_text(third)


def test_repeatedly_calls_in_every_round() -> None:
    """A "repeatedly" phrase calls again each round; a plain one only in the first."""
    ids = IdFactory(0)
    text = 'call read_sensor with {"sensor":"hall"} repeatedly and call set_light with {}'
    current = plan(request(text), ids=ids)
    assert [i["name"] for i in final_output(current)] == ["read_sensor", "set_light"]
    seen: set[str] = set()
    for round_number in range(4):
        outputs = [output_item(item, str(round_number)) for item in final_output(current)]
        seen.update(item["call_id"] for item in final_output(current))
        current = plan(request(outputs), current, ids)
        items = final_output(current)
        assert [(i["name"], i["arguments"]) for i in items] == [
            ("read_sensor", '{"sensor":"hall"}')
        ]
        assert items[0]["call_id"] not in seen


def test_repeatedly_in_a_store_false_replay() -> None:
    """The replayed user message still asks for the repeated call."""
    ids = IdFactory(0)
    text = 'call read_sensor with {"sensor":"hall"} repeatedly'
    first = plan(request(text, store=False), ids=ids)
    (call,) = final_output(first)
    replay = [{"role": "user", "content": text}, replayed(call), output_item(call, "20")]
    (again,) = final_output(plan(request(replay, store=False), ids=ids))
    assert again["name"] == "read_sensor"
    assert again["call_id"] != call["call_id"]


def test_warm_up_then_continuation_makes_the_calls() -> None:
    """A generate:false warm-up keeps the user turn; the next request makes its calls."""
    ids = IdFactory(0)
    warm = plan(request('call set_light with {"state":"on"}', generate=False), ids=ids)
    (call,) = final_output(plan(request([]), warm, ids))
    assert call["arguments"] == '{"state":"on"}'


# Pairing


def error_of(p: Plan) -> dict[str, Any]:
    evs = sent(p)
    assert [ev["type"] for ev in evs] == ["error"]
    assert p.snapshot is None
    return evs[0]


def test_missing_output_is_an_error() -> None:
    """Every call the parent made needs an output, as on the real API."""
    ids = IdFactory(0)
    first = plan(request(TWO_CALLS), ids=ids)
    light, sensor = final_output(first)
    only_one = plan(request([output_item(light, "ok")]), first, ids)
    assert error_of(only_one) == {
        "type": "error",
        "status": 400,
        "error": {
            "type": "invalid_request_error",
            "code": None,
            "message": f"No tool output found for function call {sensor['call_id']}.",
            "param": "input",
        },
    }
    new_question = plan(request("What is MQTT?"), first, ids)
    assert light["call_id"] in error_of(new_question)["error"]["message"]


def test_missing_output_in_a_replay_is_an_error() -> None:
    """A replayed function_call item without its output is rejected too."""
    (call,) = final_output(plan(request('call set_light with {"state":"off"}')))
    replay = [{"role": "user", "content": "Hi"}, replayed(call)]
    message = error_of(plan(request(replay, store=False)))["error"]["message"]
    assert message == f"No tool output found for function call {call['call_id']}."


def test_output_for_an_unknown_call_is_an_error() -> None:
    """An output must answer a call of the conversation."""
    first = plan(request('call set_light with {"state":"off"}'))
    (call,) = final_output(first)
    stray = [output_item(call, "ok"), {**output_item(call, "?"), "call_id": "call_nope"}]
    assert error_of(plan(request(stray), first))["error"] == {
        "type": "invalid_request_error",
        "code": None,
        "message": "No tool call found for function call output with call_id call_nope.",
        "param": "input",
    }
    assert error_of(plan(request([output_item(call, "ok")])))["error"]["param"] == "input"


# Over a socket, and through the official SDK


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorOptions(api_key=KEY)) as simulator:
        yield simulator


async def until_terminal(ws: ClientConnection) -> list[dict[str, Any]]:
    evs: list[dict[str, Any]] = []
    async with asyncio.timeout(5 * SECOND):
        while not evs or evs[-1]["type"] not in {"response.completed", "error"}:
            evs.append(json.loads(await ws.recv()))
    return evs


def create(input_value: object, **fields: Any) -> str:
    frame = {"type": "response.create", "model": "gpt-4o", "tools": TOOLS, "input": input_value}
    return json.dumps({**frame, "store": False, **fields})


async def test_tool_loop_over_a_socket(sim: Simulator) -> None:
    """Calls, outputs, quoted answer; a forgotten output is an error that evicts the parent."""
    async with connect(sim.url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        await ws.send(create(TWO_CALLS, stream_id="tools"))
        first = (await until_terminal(ws))[-1]["response"]
        light, sensor = first["output"]
        await ws.send(
            create([output_item(light, "ok")], previous_response_id=first["id"], stream_id="tools")
        )
        error = (await until_terminal(ws))[-1]
        assert error["stream_id"] == "tools"
        assert error["error"]["message"].startswith("No tool output found for function call")
        both = [output_item(light, "ok"), output_item(sensor, "21.5")]
        await ws.send(create(both, previous_response_id=first["id"], stream_id="tools"))
        assert (await until_terminal(ws))[-1]["error"]["code"] == "previous_response_not_found"
        replay = [{"role": "user", "content": TWO_CALLS}, replayed(light), replayed(sensor), *both]
        await ws.send(create(replay, stream_id="tools"))
        answer = (await until_terminal(ws))[-1]["response"]
    assert answer["output"][0]["content"][0]["text"] == (
        "The tool set_light returned: ok. The tool read_sensor returned: 21.5."
    )


async def test_tool_loop_through_the_openai_sdk(sim: Simulator) -> None:
    """The SDK parses every call event into its typed models and the loop completes."""
    tools: list[FunctionToolParam] = [
        {"type": "function", "name": "set_light", "parameters": {"type": "object"}, "strict": False}
    ]
    async with (
        AsyncOpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client,
        client.responses.connect() as connection,
    ):
        await connection.response.create(model="gpt-5", input=TWO_CALLS, tools=tools, store=False)
        calls = []
        async with asyncio.timeout(5 * SECOND):
            async for event in connection:
                calls.append(event)
                if event.type == "response.completed":
                    break
        completed = calls[-1]
        assert completed.type == "response.completed"
        (call,) = completed.response.output
        assert call.type == "function_call"
        assert (call.name, call.arguments) == ("set_light", '{"state":"off"}')
        deltas = [e.delta for e in calls if e.type == "response.function_call_arguments.delta"]
        assert "".join(deltas) == call.arguments
        await connection.response.create(
            model="gpt-5",
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "OFF"}],
            tools=tools,
            store=False,
            previous_response_id=completed.response.id,
        )
        async with asyncio.timeout(5 * SECOND):
            async for event in connection:
                if event.type == "response.completed":
                    assert event.response.output_text == "The tool set_light returned: OFF."
                    break
                assert event.type != "error"
