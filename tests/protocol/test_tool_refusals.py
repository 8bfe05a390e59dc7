"""Wrong answers from outside, in the core (no I/O): replies that must not match the wrong
call, and calls no real model makes (issue 22, items 1-6)."""

from __future__ import annotations

import json
from typing import Any

from bridge.protocol.actions import Action, SendUpstream, ToolDeadline
from bridge.protocol.core import BridgeCore
from bridge.protocol.tools import Call, ToolBox, ToolConfig
from tests.protocol.test_core import cmd, error_codes, messages
from tests.protocol.test_tool_rounds import (
    SET_LIGHT,
    answer,
    asked,
    call,
    completed,
    continuation,
    make_core,
    published,
    round_of,
    tool_messages,
)

DOOR = ToolConfig.model_validate(
    {
        "name": "lock_door",
        "parameters": {"type": "object", "properties": {"state": {"enum": ["LOCK", "UNLOCK"]}}},
        "publish": {"topic": "dev/door/set"},
        "reply": {"topic": "dev/door/state", "timeout": 5},
    }
)
LEVEL = ToolConfig.model_validate(
    {
        "name": "set_level",
        "parameters": {"type": "object", "properties": {"level": {"type": "number"}}},
        "publish": {"topic": "dev/level/set"},
    }
)
LOCK = '{"state":"LOCK"}'


def deadlines(actions: list[Action]) -> list[ToolDeadline]:
    return [action for action in actions if isinstance(action, ToolDeadline)]


def ask_again(core: BridgeCore, text: str) -> None:
    actions = core.receive_command("c1", cmd("ask", input=text, request_id="q2"))
    assert any(isinstance(action, SendUpstream) for action in actions)


def test_a_reply_on_another_tools_topic_answers_nothing() -> None:
    """Item 1: the door call's correlation data on the light's reply topic."""
    core = make_core(tools=(SET_LIGHT, DOOR))
    asked(core)
    actions = round_of(core, completed("resp_1", call("call_1", "lock_door", LOCK)))
    (door,) = published(actions, "dev/door/set")
    assert door.response_topic == "dev/door/state"
    assert core.tool_reply("zigbee2mqtt/kitchen", b"forged", False, door.correlation_data) == []
    actions = core.tool_reply("dev/door/state", b"locked", False, door.correlation_data)
    assert [o["output"] for o in continuation(actions)["input"]] == ["locked"]


def test_a_late_reply_of_a_timed_out_call_answers_no_newer_call() -> None:
    """Item 2: A timed out; B waits on the same topic; A's late reply is dropped."""
    core = make_core(tools=(DOOR,))
    asked(core)
    actions = round_of(core, completed("resp_1", call("call_a", "lock_door", LOCK)))
    (request_a,) = published(actions, "dev/door/set")
    (deadline_a,) = deadlines(actions)
    continuation(core.tool_timed_out(deadline_a.wait))
    assert core.upstream_event("c1", answer("resp_2", "It did not answer.")) is not None
    ask_again(core, "Try again")
    actions = round_of(core, completed("resp_3", call("call_b", "lock_door", LOCK)))
    assert core.tool_reply("dev/door/state", b"late A", False, request_a.correlation_data) == []
    assert core.tool_timed_out(deadline_a.wait) == []  # a spent deadline, twice
    actions = core.tool_reply("dev/door/state", b"B", False, None)  # no correlation: oldest
    (said,) = tool_messages(actions)
    assert (said["call_id"], said["output"]) == ("call_b", "B")


def test_a_call_id_used_again_in_a_later_round_meets_no_old_deadline() -> None:
    core = make_core(tools=(DOOR,))
    asked(core)
    actions = round_of(core, completed("resp_1", call("call_1", "lock_door", LOCK)))
    (old,) = deadlines(actions)
    actions = core.tool_reply("dev/door/state", b"locked", False, None)
    actions = round_of(core, completed("resp_2", call("call_1", "lock_door", LOCK)))
    (new,) = deadlines(actions)
    assert new.wait != old.wait
    assert core.tool_timed_out(old.wait) == []  # the first round's timer: not this call's
    (said,) = tool_messages(core.tool_timed_out(new.wait))
    assert said["status"] == "timeout"


def test_duplicate_call_ids_are_refused_and_leave_no_stale_wait() -> None:
    """Item 3: two calls with one call_id: neither runs, each gets an output; a later
    reply without correlation data still finds its call."""
    core = make_core(v5=False)
    asked(core)
    twice = completed("resp_1", call("call_1"), call("call_1"), call("call_2", "chime", "{}"))
    actions = round_of(core, twice)
    assert published(actions, "zigbee2mqtt/kitchen/set") == []
    assert [(m["call_id"], m["status"]) for m in tool_messages(actions)] == [
        ("call_1", "refused"),
        ("call_1", "refused"),
        ("call_2", "published"),
    ]
    outputs = [o["output"] for o in continuation(actions)["input"]]
    assert outputs[0] == outputs[1]
    assert "call_id 'call_1' is used by 2 calls" in outputs[0]
    assert core.tools.waiting_replies == 0
    assert core.upstream_event("c1", answer("resp_2", "No.")) is not None
    ask_again(core, "Lights off")
    round_of(core, completed("resp_3", call("call_3")))
    actions = core.tool_reply("zigbee2mqtt/kitchen", b'{"state":"OFF"}', False, None)
    assert [o["output"] for o in continuation(actions)["input"]] == ['{"state":"OFF"}']


def test_calls_without_a_call_id_are_refused() -> None:
    core = make_core()
    asked(core)
    no_id = {"type": "function_call", "name": "set_light", "arguments": '{"state":"ON"}'}
    actions = round_of(core, completed("resp_1", no_id, {**no_id, "call_id": None}))
    assert published(actions, "zigbee2mqtt/kitchen/set") == []
    assert [m["status"] for m in tool_messages(actions)] == ["refused", "refused"]
    outputs = continuation(actions)["input"]
    assert [o["output"] for o in outputs] == [
        "refused: this call has no call_id; it was not run"
    ] * 2
    assert core.tools.waiting_replies == 0


def test_calls_past_max_tool_calls_are_answered_refused_and_not_run() -> None:
    """Item 4: 10,000 calls in one response: 16 run, one message for the rest."""
    core = make_core()
    asked(core)
    many = [call(f"call_{n}", "chime", json.dumps({"n": n})) for n in range(10_000)]
    actions = round_of(core, completed("resp_1", *many))
    assert [json.loads(p.payload)["n"] for p in published(actions, "house/chime")] == [*range(16)]
    said = tool_messages(actions)
    assert [m["status"] for m in said] == ["published"] * 16 + ["refused"]
    assert said[-1]["calls"] == 9_984
    outputs = [o["output"] for o in continuation(actions)["input"]]
    assert len(outputs) == 10_000
    assert outputs[16:] == [outputs[16]] * 9_984
    assert "more than 16 tool calls in one response (sessions.max_tool_calls)" in outputs[16]


def test_a_call_id_past_the_limit_still_counts_as_a_duplicate() -> None:
    core = make_core(calls=1)
    asked(core)
    actions = round_of(core, completed("resp_1", call("call_1", "chime"), call("call_1", "chime")))
    assert published(actions, "house/chime") == []
    assert [m["status"] for m in tool_messages(actions)] == ["refused", "refused"]


def test_non_json_numbers_are_invalid_arguments() -> None:
    """Item 5: Python reads NaN, Infinity and 1e999, and would publish them as non-JSON."""
    toolbox = ToolBox([LEVEL])
    for number in ("NaN", "Infinity", "-Infinity", "1e999", "-1e400"):
        problem = toolbox.render(Call("c", "set_level", f'{{"level": {number}}}'))
        assert isinstance(problem, str)
        assert problem.startswith("invalid arguments: not JSON ("), problem
    deep = '{"level": 1, "x": ' + "[" * 100 + "]" * 100 + "}"
    assert "nested deeper" in str(toolbox.render(Call("c", "set_level", deep)))
    surrogate = toolbox.render(Call("c", "set_level", '{"level": 1, "x": "\\ud800"}'))
    assert surrogate == "invalid arguments: a string holds a lone surrogate (not UTF-8)"


def usage(response_id: str, total: int, *output: dict[str, Any]) -> bytes:
    raw = json.loads(completed(response_id, *output))
    raw["response"]["usage"] = {"input_tokens": 0, "output_tokens": total, "total_tokens": total}
    return json.dumps(raw).encode()


def test_the_budget_is_checked_before_each_tool_round() -> None:
    """Item 6: 100 tokens a response against 150 a day: the second round is not run."""
    core = make_core(budgets={"tokens_per_day": 150})
    asked(core)
    actions = round_of(core, usage("resp_1", 100, call("call_1", "chime", "{}")))
    assert len(published(actions, "house/chime")) == 1
    actions = round_of(core, usage("resp_2", 100, call("call_2", "chime", "{}")))
    assert published(actions, "house/chime") == []
    assert not any(isinstance(action, SendUpstream) for action in actions)
    assert error_codes(actions) == ["budget_exceeded"]
    (error,) = [m["error"] for m in messages(actions) if "error" in m]
    assert error["resets_at"]
    assert "its tool calls not run" in error["message"]
    # The next ask is refused at once; the conversation is as the turn found it.
    refused = core.receive_command("c1", cmd("ask", input="Again", request_id="q2"))
    assert error_codes(refused) == ["budget_exceeded"]
