"""The tool loop in the core (no I/O): calls checked, published, answered, continued."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.protocol.actions import Action, SendUpstream, ToolDeadline
from bridge.protocol.contract import Topics
from bridge.protocol.core import BridgeCore
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.messages import Publish
from bridge.protocol.sessions import ProfileConfig, SessionsConfig
from bridge.protocol.tools import Call, Rendered, ToolBox, ToolConfig, check_tools
from tests.protocol.test_core import UNLIMITED, URL, cmd, error_codes, messages

SET_LIGHT = ToolConfig.model_validate(
    {
        "name": "set_light",
        "description": "Switch the kitchen light",
        "parameters": {
            "type": "object",
            "properties": {"state": {"enum": ["ON", "OFF"]}},
            "required": ["state"],
            "additionalProperties": False,
        },
        "publish": {"topic": "zigbee2mqtt/kitchen/set", "payload": {"state": "{{state}}"}},
        "reply": {"topic": "zigbee2mqtt/kitchen", "timeout": 3},
    }
)
CHIME = ToolConfig.model_validate({"name": "chime", "publish": {"topic": "house/chime", "qos": 0}})


def make_core(
    *,
    v5: bool = True,
    rounds: int = 5,
    calls: int = 16,
    tools: tuple[ToolConfig, ...] = (SET_LIGHT, CHIME),
    **limits: Any,
) -> BridgeCore:
    profile = ProfileConfig(
        request={"model": "m", "store": False}, mqtt_tools=tuple(tool.name for tool in tools)
    )
    return BridgeCore(
        Topics("ai"),
        url=URL,
        qos=1,
        v5=v5,
        limits=LimitsConfig(**{**UNLIMITED, **limits}),
        sessions=SessionsConfig(idle_timeout=0, max_tool_rounds=rounds, max_tool_calls=calls),
        profiles={"default": profile},
        tools=tools,
    )


def asked(core: BridgeCore, text: str = "Lights off") -> dict[str, Any]:
    core.receive_command("c1", cmd("ask", input=text, request_id="q1"))
    actions = core.upstream_opened("c1")
    (sent,) = [a for a in actions if isinstance(a, SendUpstream)]
    request: dict[str, Any] = json.loads(sent.data)
    return request


def call(
    call_id: str, name: str = "set_light", arguments: str = '{"state":"OFF"}'
) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def completed(response_id: str, *output: dict[str, Any]) -> bytes:
    response = {"id": response_id, "status": "completed", "output": list(output)}
    event = {"type": "response.completed", "response": response}
    return json.dumps(event, separators=(",", ":")).encode()


def answer(response_id: str, text: str) -> bytes:
    message = {"type": "message", "content": [{"type": "output_text", "text": text}]}
    return completed(response_id, message)


def round_of(core: BridgeCore, raw: bytes) -> list[Action]:
    actions = core.upstream_event("c1", raw)
    assert isinstance(actions, list)  # held: the turn goes on
    return actions


def published(actions: list[Action], topic: str) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish) and a.topic == topic]


def continuation(actions: list[Action]) -> dict[str, Any]:
    (sent,) = [a for a in actions if isinstance(a, SendUpstream)]
    request: dict[str, Any] = json.loads(sent.data)
    return request


def tool_messages(actions: list[Action]) -> list[dict[str, Any]]:
    return [m for m in messages(actions) if m.get("object") == "response.websocket.tool_call"]


def test_the_request_offers_the_tools() -> None:
    request = asked(make_core())
    assert [tool["name"] for tool in request["tools"]] == ["set_light", "chime"]
    assert request["tools"][0]["parameters"] == SET_LIGHT.parameters


def test_a_client_tool_named_like_a_bridge_tool_is_refused() -> None:
    core = make_core()
    core.receive_command("c1", cmd("connect"))
    core.upstream_opened("c1")
    own = {"type": "function", "name": "set_light", "parameters": {"type": "object"}}
    actions = core.receive_command("c1", cmd("ask", input="Lights off", tools=[own]))
    assert error_codes(actions) == ["invalid_command"]
    assert "set_light" in messages(actions)[0]["error"]["message"]
    assert not [a for a in actions if isinstance(a, SendUpstream)]  # nothing went upstream
    other = {**own, "name": "turn_on"}
    actions = core.receive_command("c1", cmd("ask", input="Lights on", tools=[other]))
    (sent,) = [a for a in actions if isinstance(a, SendUpstream)]
    names = [tool["name"] for tool in json.loads(sent.data)["tools"]]
    assert names == ["turn_on", "set_light", "chime"]


def test_a_call_is_published_answered_and_continued() -> None:
    core = make_core()
    asked(core)
    actions = round_of(core, completed("resp_1", call("call_1")))
    assert published(actions, "ai/c1/events")[0].payload.startswith(b'{"type":"response.completed"')
    (out,) = published(actions, "zigbee2mqtt/kitchen/set")
    assert json.loads(out.payload) == {"state": "OFF"}
    assert out.response_topic == "zigbee2mqtt/kitchen"
    assert out.correlation_data is not None
    (deadline,) = [a for a in actions if isinstance(a, ToolDeadline)]
    assert (deadline.connection_id, deadline.call_id, deadline.delay) == ("c1", "call_1", 3.0)
    assert not any(isinstance(a, SendUpstream) for a in actions)  # waits for the reply
    actions = core.tool_reply(
        "zigbee2mqtt/kitchen", b'{"state":"OFF"}', False, out.correlation_data
    )
    (said,) = tool_messages(actions)
    assert (said["status"], said["output"], said["call_id"]) == (
        "replied",
        '{"state":"OFF"}',
        "call_1",
    )
    request = continuation(actions)
    assert request["previous_response_id"] == "resp_1"
    assert request["input"] == [
        {"type": "function_call_output", "call_id": "call_1", "output": '{"state":"OFF"}'}
    ]
    assert [tool["name"] for tool in request["tools"]] == ["set_light", "chime"]
    # The final answer ends the turn like any other.
    publish = core.upstream_event("c1", answer("resp_2", "Done: the light is off."))
    assert publish is not None
    assert core.tool_timed_out(deadline.wait) == []  # answered already


def test_invalid_arguments_are_never_published_and_the_model_is_told() -> None:
    core = make_core()
    asked(core)
    actions = round_of(core, completed("resp_1", call("call_1", arguments='{"state":"DIM"}')))
    assert published(actions, "zigbee2mqtt/kitchen/set") == []
    (said,) = tool_messages(actions)
    assert said["status"] == "invalid_arguments"
    (output,) = continuation(actions)["input"]
    assert output["output"].startswith("invalid arguments: state:")
    assert "'DIM' is not one of" in output["output"]
    actions = round_of(core, completed("resp_2", call("call_2", arguments="{not json")))
    (output,) = continuation(actions)["input"]
    assert output["output"].startswith("invalid arguments: not JSON")


def test_two_calls_continue_once_both_are_done() -> None:
    core = make_core(v5=False)  # MQTT 3.1.1: no correlation; the first reply is taken
    asked(core)
    actions = round_of(core, completed("resp_1", call("call_1"), call("call_2", "chime", "{}")))
    (light,) = published(actions, "zigbee2mqtt/kitchen/set")
    assert light.correlation_data is None
    assert light.response_topic is None
    assert len(published(actions, "house/chime")) == 1  # no reply expected: done at once
    assert not any(isinstance(a, SendUpstream) for a in actions)
    actions = core.tool_reply("zigbee2mqtt/kitchen", b"old", True, None)  # retained: old news
    assert actions == []
    actions = core.tool_reply("zigbee2mqtt/kitchen", b'{"state":"OFF"}', False, None)
    outputs = continuation(actions)["input"]
    assert [o["call_id"] for o in outputs] == ["call_1", "call_2"]
    assert json.loads(outputs[1]["output"]) == {"status": "published", "topic": "house/chime"}


def test_a_timeout_is_an_output_too() -> None:
    core = make_core()
    asked(core)
    (deadline,) = [
        a
        for a in round_of(core, completed("resp_1", call("call_1")))
        if isinstance(a, ToolDeadline)
    ]
    actions = core.tool_timed_out(deadline.wait)
    (said,) = tool_messages(actions)
    assert said["status"] == "timeout"
    # Which reply topic stayed silent: on the events topic and to the model.
    assert said["error"] == "no reply on zigbee2mqtt/kitchen within 3 s (timeout)"
    (output,) = continuation(actions)["input"]
    assert output["output"] == "no reply on zigbee2mqtt/kitchen within 3 s (timeout)"
    assert core.tool_reply("zigbee2mqtt/kitchen", b"late", False, None) == []


def test_correlation_picks_the_call_it_answers() -> None:
    core = make_core()
    asked(core)
    actions = round_of(core, completed("resp_1", call("call_1"), call("call_2")))
    first, second = published(actions, "zigbee2mqtt/kitchen/set")
    actions = core.tool_reply("zigbee2mqtt/kitchen", b"two", False, second.correlation_data)
    (said,) = tool_messages(actions)
    assert said["call_id"] == "call_2"
    actions = core.tool_reply("zigbee2mqtt/kitchen", b"one", False, first.correlation_data)
    assert [o["output"] for o in continuation(actions)["input"]] == ["one", "two"]


def test_the_round_limit_ends_the_turn_with_an_error() -> None:
    core = make_core(rounds=1)
    asked(core)
    round_of(core, completed("resp_1", call("call_1", "chime", "{}")))
    actions = round_of(core, completed("resp_2", call("call_2", "chime", "{}")))
    assert error_codes(actions) == ["tool_rounds_exceeded"]
    assert published(actions, "house/chime") == []
    assert not any(isinstance(a, SendUpstream) for a in actions)
    # The conversation is as the turn found it: the next ask starts over cleanly.
    core.receive_command("c1", cmd("ask", input="Hello"))
    request = continuation(core.receive_command("c1", cmd("ask", input="Again")))
    assert "previous_response_id" not in request


def test_calls_of_other_tools_are_relayed_not_run() -> None:
    core = make_core()
    asked(core)
    raw = completed("resp_1", call("call_1", "unlock_door", '{"door":"front"}'))
    publish = core.upstream_event("c1", raw)
    assert publish is not None  # no bridge tool called: the turn ends, nothing held


def test_tools_are_checked_at_start() -> None:
    with pytest.raises(ValueError, match="no wildcards"):
        ToolConfig.model_validate({"name": "x", "publish": {"topic": "house/+/set"}})
    with pytest.raises(ValueError, match="JSON Schema"):
        ToolConfig.model_validate(
            {"name": "x", "parameters": {"type": 7}, "publish": {"topic": "t"}}
        )
    with pytest.raises(ValueError, match="under ai/"):
        check_tools(
            [ToolConfig.model_validate({"name": "x", "publish": {"topic": "ai/x"}})], {}, ("ai",)
        )
    profiles = {"p": ProfileConfig(mqtt_tools=("nope",))}
    with pytest.raises(ValueError, match="nope not in tools"):
        check_tools([], profiles, ("ai",))


def test_payload_templates_place_values_in_a_fixed_shape() -> None:
    tool = ToolConfig.model_validate(
        {
            "name": "t",
            "parameters": {"type": "object", "properties": {"v": {"type": "string"}}},
            "publish": {"topic": "t", "payload": {"set": {"value": "{{v}}", "by": "model {{v}}"}}},
        }
    )
    rendered = ToolBox([tool]).render(Call("c", "t", '{"v": "x\\"}, \\"evil\\": 1"}'))
    assert isinstance(rendered, Rendered)
    # The value lands as a value: it can never add a key or change the shape.
    assert json.loads(rendered.payload) == {"set": {"value": 'x"}, "evil": 1', "by": "model {{v}}"}}


def test_a_hostile_reply_is_cut_and_decoded_safely() -> None:
    """Anyone who may publish on a reply topic: a huge or non-UTF-8 reply reaches the model
    cut to 8 KiB, as text; nothing else is kept of it."""
    core = make_core(v5=False)
    asked(core)
    round_of(core, completed("resp_1", call("call_1")))
    huge = b"\xff\xfe" + b"x" * (1 << 20)
    actions = core.tool_reply("zigbee2mqtt/kitchen", huge, False, None)
    (output,) = continuation(actions)["input"]
    assert output["output"].endswith(" [cut]")
    assert len(output["output"].encode()) < 9 * 1024
    assert output["output"].startswith("\ufffd")
    # A reply nobody waits for is dropped, whatever it holds.
    assert core.tool_reply("zigbee2mqtt/kitchen", huge, False, b"forged") == []
