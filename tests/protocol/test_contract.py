"""Unit tests of the contract: topics, connection ids, command parsing, builders."""

from __future__ import annotations

import json

import pytest

from bridge.errors import CommandError
from bridge.protocol import contract, replies, response_topics, strict_json
from bridge.protocol.contract import (
    Close,
    Connect,
    Rejection,
    Send,
    Topics,
    parse_command,
)
from bridge.protocol.server_events import server_event_type

ALLOWED = frozenset({"response.create"})


def parse(
    payload: object, connection_id: str = "c1", **kwargs: object
) -> contract.Command | Rejection:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    options: dict[str, object] = {"max_bytes": 1024 * 1024, "allowed_event_types": ALLOWED}
    options.update(kwargs)
    return parse_command(connection_id, raw, **options)  # type: ignore[arg-type]


def rejection(payload: object, connection_id: str = "c1", **kwargs: object) -> Rejection:
    parsed = parse(payload, connection_id, **kwargs)
    assert isinstance(parsed, Rejection)
    return parsed


def test_topics_layout() -> None:
    """The prefix builds the command filter, events and state topics."""
    topics = Topics("home/ai")
    assert topics.command_filter == "home/ai/+/cmd"
    assert topics.events("kitchen") == "home/ai/kitchen/events"
    assert topics.state == "home/ai/bridge/state"


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("ai/c1/cmd", "c1"),
        ("ai//cmd", ""),
        ("ai/bridge/cmd", "bridge"),
        ("ai/c1/events", None),
        ("other/c1/cmd", None),
        ("ai/a/b/cmd", None),
    ],
)
def test_connection_id_of_topic(topic: str, expected: str | None) -> None:
    """Only P/<one level>/cmd topics name a connection id."""
    assert Topics("ai").connection_id_of(topic) == expected


@pytest.mark.parametrize(
    "bad_id",
    ["", "bridge", "a b", "tab\there", "nul\x00", "bell\x07", "x" * 129, "a+b", "a#b", "a/b"],
)
def test_invalid_connection_ids(bad_id: str) -> None:
    """Empty, reserved, too long, whitespace, control chars and wildcards are refused."""
    with pytest.raises(CommandError) as info:
        contract.check_connection_id(bad_id)
    assert info.value.code == contract.INVALID_CONNECTION_ID


@pytest.mark.parametrize("good_id", ["demo-connection-1", "x" * 128, "küche_2", "a.b:c"])
def test_valid_connection_ids(good_id: str) -> None:
    """Ordinary ids up to 128 characters pass."""
    contract.check_connection_id(good_id)


def test_seed_flow_commands_parse() -> None:
    """The seed flow's three msg.ai objects parse into the three commands."""
    assert parse({"action": "connect", "connection_id": "c1"}) == Connect("c1")
    event = {"type": "response.create", "model": "gpt-5.4-nano", "input": "Say hello"}
    send = parse({"action": "send", "connection_id": "c1", "event": event})
    assert isinstance(send, Send)
    assert send.event_type == "response.create"
    assert json.loads(send.event) == event
    close = parse({"action": "close", "connection_id": "c1", "reason": "Example flow complete"})
    assert close == Close("c1", 1000, "Example flow complete")


def test_close_defaults_and_request_id() -> None:
    """close defaults to 1000/OK; request_id is kept for the acknowledgement."""
    assert parse({"action": "close", "request_id": "r-7"}) == Close("c1", 1000, "OK", "r-7")
    assert parse({"action": "close", "code": 4001, "reason": "bye"}) == Close("c1", 4001, "bye")


@pytest.mark.parametrize(
    ("payload", "code", "action"),
    [
        (b"{not json", contract.INVALID_JSON, None),
        (b"\xff\xfe", contract.INVALID_JSON, None),
        ([1, 2], contract.INVALID_COMMAND, None),
        ({"connection_id": "c1"}, contract.INVALID_COMMAND, None),
        ({"action": 3}, contract.INVALID_COMMAND, None),
        ({"action": "open"}, contract.UNKNOWN_ACTION, "open"),
        (
            {"action": "connect", "connection_id": "other"},
            contract.CONNECTION_ID_MISMATCH,
            "connect",
        ),
        ({"action": "connect", "connection_id": 5}, contract.INVALID_COMMAND, "connect"),
        ({"action": "send"}, contract.INVALID_COMMAND, "send"),
        ({"action": "send", "event": "response.create"}, contract.INVALID_COMMAND, "send"),
        ({"action": "send", "event": {"model": "x"}}, contract.INVALID_COMMAND, "send"),
        (
            {"action": "send", "event": {"type": "response.steer"}},
            contract.EVENT_TYPE_NOT_ALLOWED,
            "send",
        ),
        ({"action": "close", "code": 1006}, contract.INVALID_COMMAND, "close"),
        ({"action": "close", "code": True}, contract.INVALID_COMMAND, "close"),
        ({"action": "close", "code": "1000"}, contract.INVALID_COMMAND, "close"),
        ({"action": "close", "reason": "x" * 124}, contract.INVALID_COMMAND, "close"),
        ({"action": "close", "reason": 12}, contract.INVALID_COMMAND, "close"),
        ({"action": "connect", "request_id": 12}, contract.INVALID_COMMAND, None),
    ],
)
def test_bad_commands_have_stable_codes(payload: object, code: str, action: str | None) -> None:
    """Each kind of bad command is refused with its documented code and readable action."""
    error = rejection(payload)
    assert error.code == code
    assert error.action == action
    assert error.message


def test_rejection_echoes_request_id() -> None:
    """A rejected command's request_id is still echoed."""
    error = rejection({"action": "send", "request_id": "r1"})
    assert (error.code, error.request_id) == (contract.INVALID_COMMAND, "r1")


def test_size_limit_is_checked_before_parsing() -> None:
    """A command over the byte limit is refused as payload_too_large, unparsed."""
    error = rejection(b"{" + b" " * 2000 + b"}", max_bytes=1024)
    assert error.code == contract.PAYLOAD_TOO_LARGE


def test_allowed_event_types_are_configurable() -> None:
    """Another event type passes once the config allows it."""
    send = parse(
        {"action": "send", "event": {"type": "response.steer"}},
        allowed_event_types=frozenset({"response.create", "response.steer"}),
    )
    assert isinstance(send, Send)


def test_long_unknown_action_is_elided() -> None:
    """An attacker-sized action name is not echoed in full."""
    error = rejection({"action": "x" * 5000})
    assert error.action is not None
    assert len(error.action) <= 64


def test_acknowledgements_match_the_seed_node() -> None:
    """Acks carry the seed node's objects and fields; request_id only when given."""
    assert replies.connect_ack("c1", "wss://h/v1/responses", None) == {
        "object": "response.websocket.connection",
        "action": "connect",
        "connection_id": "c1",
        "url": "wss://h/v1/responses",
    }
    assert replies.send_ack("c1", "response.create", "r1") == {
        "object": "response.websocket.client_event",
        "action": "send",
        "connection_id": "c1",
        "event_type": "response.create",
        "request_id": "r1",
    }
    assert replies.close_ack("c1", 1000, "OK", None)["code"] == 1000
    notice = replies.disconnected_notice("c1", 1006, "lost")
    assert (notice["action"], notice["code"], notice["reason"]) == ("disconnected", 1006, "lost")


def test_error_event_shape() -> None:
    """Errors are response.websocket.error objects with error.code and error.message."""
    event = replies.error_event("c1", "not_open", "nope", action="send", status=None)
    assert event == {
        "object": "response.websocket.error",
        "action": "send",
        "connection_id": "c1",
        "error": {"code": "not_open", "message": "nope"},
    }
    with_status = replies.error_event(
        "c1", "upstream_connect_failed", "401", action="connect", status=401
    )
    assert with_status["error"]["status"] == 401


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"type":"response.output_text.delta","delta":"Hi"}', "response.output_text.delta"),
        (b'{"sequence_number":1,"type":"response.created"}', "response.created"),
        (b'{ "type" : "error" }', "error"),
        (b'{"type":"a\\u0062c"}', "abc"),
        (b"not json", None),
        (b'["type"]', None),
        (b'{"type":5}', None),
    ],
)
def test_server_event_type(raw: bytes, expected: str | None) -> None:
    """The event type is read off the prefix when it can be, parsed otherwise."""
    assert server_event_type(raw) == expected


# Hostile JSON ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 1000,  # the 1,000-byte message that used to stop the daemon (RecursionError)
        b"[" * 100_000 + b"]" * 100_000,
        b'{"action":"send","event":' + b'{"a":' * 65 + b"1" + b"}" * 65 + b"}",
        b'{"action":"send","event":{"type":"response.create","x":' + b"[" * 70 + b"]" * 70 + b"}}",
    ],
)
def test_deep_nesting_is_invalid_json(raw: bytes) -> None:
    """Nesting past MAX_JSON_DEPTH is refused with invalid_json, never a RecursionError."""
    error = rejection(raw)
    assert error.code == "invalid_json"
    assert "nested deeper than 64 levels" in error.message


def nested(depth: int) -> object:
    """A JSON value whose containers nest ``depth`` levels deep."""
    value: object = []
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return value


def test_nesting_up_to_the_limit_is_accepted() -> None:
    """64 levels are fine, 65 are not (the command object is the first level)."""
    deepest = strict_json.MAX_JSON_DEPTH - 2  # command > event > x
    command = parse({"action": "send", "event": {"type": "response.create", "x": nested(deepest)}})
    assert isinstance(command, Send)
    too_deep = {"action": "send", "event": {"type": "response.create", "x": nested(deepest + 1)}}
    assert rejection(too_deep).code == "invalid_json"


@pytest.mark.parametrize(
    "number",
    [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"1" * 5000],
)
def test_non_json_numbers_are_invalid_json(number: bytes) -> None:
    """NaN, Infinity, floats past range and huge integers never reach the upstream."""
    raw = b'{"action":"send","event":{"type":"response.create","temperature":' + number + b"}}"
    assert rejection(raw).code == "invalid_json"


def test_large_but_finite_numbers_pass_through() -> None:
    """1e308 and a 4,000-digit integer are JSON and are forwarded as JSON."""
    raw = b'{"action":"send","event":{"type":"response.create","a":1e308,"b":' + b"7" * 4000 + b"}}"
    command = parse(raw)
    assert isinstance(command, Send)
    assert json.loads(command.event)["b"] == int("7" * 4000)


def test_peek_survives_hostile_json() -> None:
    """peek (used to answer rate-limited commands) reads nothing from a hostile payload."""
    assert contract.peek(b"[" * 5000, max_bytes=1 << 20) == (None, None)
    assert contract.peek(b'{"action":"send","x":NaN}', max_bytes=1 << 20) == (None, None)


@pytest.mark.parametrize("char", ["\u200b", "\u202e", "\u2066", "\ufeff", "\u00ad"])
def test_format_characters_are_refused_in_ids(char: str) -> None:
    """Invisible and bidirectional-control characters would make two ids look alike."""
    with pytest.raises(CommandError) as info:
        contract.check_connection_id(f"kit{char}chen")
    assert info.value.code == "invalid_connection_id"


# Response topics ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("+/b", "a/b", True),
        ("+/b", "a/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/+", "a/b/c", False),
        ("a/b", "a/b", True),
        ("a/b", "a/b/", False),
        ("ai/#", "aix/y", False),
        ("$SYS/#", "$SYS/x", True),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert response_topics.topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    "topic",
    [
        "ai/bridge/state",
        "ai/bridge/info",
        "ai/home-assistant/events",
        "ai/other/cmd",
        "ai",
        "homeassistant/sensor/x/y/config",
        "$SYS/broker/x",
        "$share/g/t",
        "replies/+",
        "replies/#",
        "",
        "bad\x00nul",
        "x" * 70_000,
    ],
)
def test_default_policy_refuses_the_bridges_own_topics(topic: str) -> None:
    """The default: anything but the bridge's prefix, the discovery prefix, $ and bad names."""
    policy = response_topics.ResponseTopicPolicy(refused=("ai/#", "homeassistant/#"))
    assert policy.problem(topic) is not None


def test_policy_admits_configured_topics_only() -> None:
    policy = response_topics.ResponseTopicPolicy(
        allowed=("replies/#", "nodered/+/in"), refused=("ai/#",)
    )
    assert policy.problem("replies/kitchen") is None
    assert policy.problem("nodered/flow1/in") is None
    assert policy.problem("zigbee2mqtt/lamp/set") is not None
    assert response_topics.ResponseTopicPolicy(refused=("ai/#",)).problem("replies/kitchen") is None


def test_an_ask_may_bring_its_own_function_tools() -> None:
    tool = {"type": "function", "name": "HassTurnOn", "parameters": {"type": "object"}}
    parsed = parse({"action": "ask", "input": "Hi", "tools": [tool]})
    assert isinstance(parsed, contract.Ask)
    assert parsed.tools == (tool,)
    for bad in ({"type": "web_search"}, {"type": "function"}, "HassTurnOn"):
        refused = rejection({"action": "ask", "input": "Hi", "tools": [bad]})
        assert refused.code == "invalid_command"
    refused = rejection({"action": "ask", "input": "Hi", "tools": [tool] * 129})
    assert "at most 128" in refused.message
