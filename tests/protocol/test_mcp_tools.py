"""Tools of MCP servers in the core (no I/O): offered, checked, asked, answered, continued."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.protocol.actions import Action, CallMcpTool, SendUpstream, ToolDeadline
from bridge.protocol.contract import Topics
from bridge.protocol.core import BridgeCore
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.mcp_config import McpServerConfig
from bridge.protocol.mcp_tools import (
    MAX_FUNCTION_NAME,
    Listed,
    McpCatalog,
    allowed,
    function_name,
    result_output,
)
from bridge.protocol.sessions import ProfileConfig, SessionsConfig
from bridge.protocol.tools import MAX_TOOL_OUTPUT_BYTES
from tests.protocol.test_core import UNLIMITED, URL
from tests.protocol.test_tool_rounds import (
    CHIME,
    answer,
    asked,
    call,
    completed,
    continuation,
    round_of,
    tool_messages,
)

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
    "additionalProperties": False,
}
LISTING = [
    Listed("HassTurnOn", "Turn on a device", SCHEMA),
    Listed("HassTurnOff", "Turn off a device", SCHEMA),
    Listed("HassCancelAllTimers", "Cancel every timer", {"type": "object"}),
]
HOME = McpServerConfig(url="http://ha:8123/api/mcp", allow=("HassTurn*",), call_timeout=7)


def make_core(*, rounds: int = 5, servers: tuple[str, ...] = ("home",)) -> BridgeCore:
    profile = ProfileConfig(
        request={"model": "m", "store": False}, mqtt_tools=("chime",), mcp_servers=servers
    )
    return BridgeCore(
        Topics("ai"),
        url=URL,
        limits=LimitsConfig(**UNLIMITED),
        sessions=SessionsConfig(idle_timeout=0, max_tool_rounds=rounds),
        profiles={"default": profile},
        tools=(CHIME,),
        mcp_servers={"home": HOME, "other": McpServerConfig(command="x", allow=("*",))},
    )


def turn_on(call_id: str, arguments: str = '{"name":"kitchen"}') -> dict[str, Any]:
    return call(call_id, "home__HassTurnOn", arguments)


def mcp_calls(actions: list[Action]) -> list[CallMcpTool]:
    return [a for a in actions if isinstance(a, CallMcpTool)]


def test_names_follow_openai_rules() -> None:
    assert function_name("home", "HassTurnOn") == "home__HassTurnOn"
    assert function_name("fs", "read.file/v2") == "fs__read_file_v2"
    long = function_name("home", "x" * 100)
    assert len(long) == MAX_FUNCTION_NAME
    assert long != function_name("home", "x" * 99)  # the hash keeps cut names apart
    assert allowed(("Hass*",), "HassTurnOn")
    assert not allowed((), "HassTurnOn")  # nothing is offered until listed


def test_only_allowed_tools_with_usable_schemas_are_catalogued() -> None:
    catalog = McpCatalog({"home": HOME.model_copy(update={"allow": ("*",)})})
    listing = [*LISTING, Listed("Broken", "", {"type": "array"})]
    done = catalog.listed("home", listing)
    assert done.offered == ("HassTurnOn", "HassTurnOff", "HassCancelAllTimers")
    assert done.refused == ('Broken: its input schema is not {"type": "object", ...}',)
    assert catalog.listed("nowhere", LISTING).offered == ()
    catalog.down("home")
    assert catalog.offered(["home"]) == {}


def second_turn(core: BridgeCore) -> dict[str, Any]:
    actions = core.receive_command("c1", json.dumps({"action": "ask", "input": "more"}).encode())
    (sent,) = [a for a in actions if isinstance(a, SendUpstream)]
    request: dict[str, Any] = json.loads(sent.data)
    return request


def listed_core(**options: Any) -> tuple[BridgeCore, dict[str, Any]]:
    core = make_core(**options)
    core.mcp_listed("home", LISTING)
    return core, asked(core)


def test_the_offer_names_each_tool_with_its_server() -> None:
    core, request = listed_core()
    names = [tool["name"] for tool in request["tools"]]
    assert names == ["chime", "home__HassTurnOn", "home__HassTurnOff"]
    assert request["tools"][1]["parameters"] == SCHEMA
    core.mcp_down("home")
    core.upstream_event("c1", answer("r1", "ok"))
    assert [tool["name"] for tool in second_turn(core)["tools"]] == ["chime"]


def test_a_call_is_asked_of_its_server_and_its_result_continues_the_turn() -> None:
    core, _ = listed_core()
    actions = round_of(core, completed("r1", turn_on("k1")))
    (asked_of,) = mcp_calls(actions)
    assert (asked_of.server, asked_of.tool, dict(asked_of.arguments)) == (
        "home",
        "HassTurnOn",
        {"name": "kitchen"},
    )
    (deadline,) = [a for a in actions if isinstance(a, ToolDeadline)]
    assert (deadline.delay, deadline.wait) == (7, asked_of.wait)
    assert not [a for a in actions if isinstance(a, SendUpstream)]  # waits for the result
    done = core.mcp_result(asked_of.wait, "Turned on the kitchen light", is_error=False)
    (message,) = tool_messages(done)
    assert message["server"] == "home"
    assert (message["tool"], message["status"]) == ("HassTurnOn", "replied")
    assert "topic" not in message
    (output,) = continuation(done)["input"]
    assert output == {
        "type": "function_call_output",
        "call_id": "k1",
        "output": "Turned on the kitchen light",
    }
    assert core.mcp_result(asked_of.wait, "late", is_error=False) == []  # one output per call
    assert core.tool_timed_out(asked_of.wait) == []


def test_an_error_result_is_told_as_an_error() -> None:
    core, _ = listed_core()
    (asked_of,) = mcp_calls(round_of(core, completed("r1", turn_on("k1"))))
    done = core.mcp_result(asked_of.wait, "no such area", is_error=True)
    (message,) = tool_messages(done)
    assert (message["status"], message["error"]) == ("error", "error: no such area")
    assert continuation(done)["input"][0]["output"] == "error: no such area"


def test_a_silent_server_times_out() -> None:
    core, _ = listed_core()
    (asked_of,) = mcp_calls(round_of(core, completed("r1", turn_on("k1"))))
    done = core.tool_timed_out(asked_of.wait)
    (message,) = tool_messages(done)
    assert message["status"] == "timeout"
    assert message["error"] == "no result from home within 7 s (timeout)"
    assert core.mcp_result(asked_of.wait, "late", is_error=False) == []


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [('{"name": 3}', "invalid arguments: name: 3 is not of type 'string'"), ("{", "not JSON")],
)
def test_invalid_arguments_never_reach_the_server(arguments: str, problem: str) -> None:
    core, _ = listed_core()
    actions = round_of(core, completed("r1", turn_on("k1", arguments)))
    assert mcp_calls(actions) == []
    (message,) = tool_messages(actions)
    assert message["status"] == "invalid_arguments"
    assert problem in message["error"]
    assert problem in continuation(actions)["input"][0]["output"]


def test_a_tool_not_allowed_is_not_available() -> None:
    core, _ = listed_core()
    cancel = call("k1", "home__HassCancelAllTimers", "{}")
    actions = round_of(core, completed("r1", cancel, turn_on("k2")))
    assert [c.tool for c in mcp_calls(actions)] == ["HassTurnOn"]


def test_mcp_rounds_count_against_the_round_limit() -> None:
    core, _ = listed_core(rounds=1)
    (asked_of,) = mcp_calls(round_of(core, completed("r1", turn_on("k1"))))
    core.mcp_result(asked_of.wait, "on", is_error=False)
    actions = round_of(core, completed("r2", turn_on("k2")))
    assert mcp_calls(actions) == []
    assert any(b'"tool_rounds_exceeded"' in a.payload for a in actions if hasattr(a, "payload"))


def test_a_profile_without_servers_is_untouched() -> None:
    core = make_core(servers=())
    core.mcp_listed("home", LISTING)
    assert [tool["name"] for tool in asked(core)["tools"]] == ["chime"]


def test_results_are_bounded() -> None:
    assert result_output("é" * MAX_TOOL_OUTPUT_BYTES, is_error=False).endswith(" [cut]")
    assert len(result_output("x" * 100_000, False).encode()) <= MAX_TOOL_OUTPUT_BYTES + 6
    assert result_output("boom", is_error=True) == "error: boom"
