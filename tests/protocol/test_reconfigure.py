"""BridgeCore.reconfigure (a reloaded config), no I/O: new rules from the next command on,
nothing in flight dropped."""

from __future__ import annotations

from typing import Any

from bridge.protocol.core import BridgeCore
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.response_topics import ResponseTopicPolicy
from bridge.protocol.sessions import ProfileConfig, SessionsConfig
from bridge.protocol.tools import ToolConfig
from tests.protocol.test_core import UNLIMITED, cmd, error_codes_of
from tests.protocol.test_tool_rounds import (
    CHIME,
    SET_LIGHT,
    answer,
    asked,
    call,
    completed,
    make_core,
    published,
    round_of,
    tool_messages,
)


def reconfigure(
    core: BridgeCore,
    *,
    tools: tuple[ToolConfig, ...] = (),
    profiles: dict[str, ProfileConfig] | None = None,
    **limits: Any,
) -> None:
    core.reconfigure(
        limits=LimitsConfig(**{**UNLIMITED, **limits}),
        sessions=SessionsConfig(idle_timeout=0),
        profiles=profiles or {"default": ProfileConfig(request={"model": "m"})},
        tools=tools,
        assistants=(),
        response_topics=ResponseTopicPolicy(refused=("ai/#",)),
    )


def test_rate_limits_and_guardrails_apply_from_the_next_command() -> None:
    core = make_core()
    reconfigure(core, command_burst=1, commands_per_second=0.5, allowed_models=("other-*",))
    first = core.receive_command("c2", cmd("close"), now=1.0)
    second = core.receive_command("c2", cmd("close"), now=1.0)
    assert error_codes_of(first + second, "c2") == ["not_open", "rate_limited"]
    core.receive_command("c3", cmd("ask", input="Hi"), now=5.0)
    assert error_codes_of(core.upstream_opened("c3"), "c3") == ["model_not_allowed"]


def test_a_tool_removed_mid_turn_still_answers_that_turn_and_is_never_offered_again() -> None:
    core = make_core()
    asked(core)  # the turn offers set_light and chime
    reconfigure(core, tools=(CHIME,), profiles={"default": ProfileConfig(mqtt_tools=("chime",))})
    actions = round_of(core, completed("resp_1", call("call_1")))  # the model calls set_light
    assert len(published(actions, SET_LIGHT.publish.topic)) == 1
    reply = core.tool_reply("zigbee2mqtt/kitchen", b'{"state":"OFF"}', False, None)
    assert tool_messages(reply)[0]["status"] == "replied"
    assert "set_light" in core.tools.toolbox  # kept while that turn needs it
    assert core.upstream_event("c1", answer("resp_2", "Done.")) is not None  # the turn ends
    reconfigure(core, tools=(CHIME,), profiles={"default": ProfileConfig(mqtt_tools=("chime",))})
    assert "set_light" not in core.tools.toolbox  # a later reload lets it go
