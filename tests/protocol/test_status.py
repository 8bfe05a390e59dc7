"""The `status` command: what the bridge holds for an id, answered on its events topic."""

from __future__ import annotations

import json
from typing import Any

from bridge.protocol import contract
from bridge.protocol.contract import Status, parse_command
from bridge.protocol.core import BridgeCore
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.messages import Acknowledged, Publish, ReplyTo
from bridge.protocol.sessions import ProfileConfig
from bridge.protocol.topics import Topics
from tests.protocol.test_core import UNLIMITED, URL, cmd, messages

COMPLETED = json.dumps(
    {
        "type": "response.completed",
        "response": {
            "id": "resp_1",
            "status": "completed",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi"}]}],
            "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
        },
    },
    separators=(",", ":"),
).encode()


def make_core(**profile: Any) -> BridgeCore:
    return BridgeCore(
        Topics("ai"),
        url=URL,
        limits=LimitsConfig(**UNLIMITED),
        profiles={"default": ProfileConfig(request={"model": "m"}, **profile)},
    )


def status_of(core: BridgeCore, **fields: Any) -> dict[str, Any]:
    (message,) = messages(core.receive_command("c1", cmd("status", **fields)))
    return message


def test_status_is_parsed_with_its_request_id() -> None:
    parsed = parse_command(
        "c1",
        b'{"action":"status","request_id":"s1"}',
        max_bytes=1000,
        allowed_event_types=frozenset(),
    )
    assert parsed == Status("c1", "s1")
    assert contract.STATUS in contract.ACTIONS


def test_status_of_an_id_the_bridge_holds_nothing_for() -> None:
    assert status_of(make_core(), request_id="s1") == {
        "object": "response.websocket.status",
        "action": "status",
        "connection_id": "c1",
        "state": "closed",
        "profile": None,
        "requests_in_flight": 0,
        "conversation": None,
        "output_status": None,
        "request_id": "s1",
    }


def test_status_follows_an_ask_turn() -> None:
    core = make_core(output={"status": True})
    core.receive_command("c1", cmd("ask", input="Hi"))
    core.upstream_opened("c1")
    during = status_of(core)
    assert (during["state"], during["profile"], during["requests_in_flight"]) == (
        "open",
        "default",
        1,
    )
    assert during["conversation"] == {"profile": "default", "turns": 0}
    assert during["output_status"] == "thinking"
    core.shaped_event("c1", COMPLETED)
    after = status_of(core)
    assert after["requests_in_flight"] == 0
    assert after["conversation"] == {"profile": "default", "turns": 1}
    assert after["output_status"] == "ready"


def test_status_waits_its_turn_behind_an_opening_connection() -> None:
    """Like every command, it runs in arrival order: after the connection opened."""
    core = make_core()
    core.receive_command("c1", cmd("connect"))
    assert core.receive_command("c1", cmd("status")) == []
    answered = messages(core.upstream_opened("c1"))
    assert [m["action"] for m in answered] == ["connect", "status"]
    assert answered[1]["state"] == "open"


def test_status_is_an_acknowledged_answer_and_goes_to_a_response_topic() -> None:
    core = make_core()
    actions = core.receive_command("c1", cmd("status"), reply_to=ReplyTo("replies/c1", b"corr"))
    events, copy = actions
    assert isinstance(events, Publish)
    assert isinstance(copy, Publish)
    assert events.outcome == Acknowledged("c1", "status")
    assert (copy.topic, copy.correlation_data, copy.payload) == (
        "replies/c1",
        b"corr",
        events.payload,
    )
    assert dict(events.properties)["event_type"] == "status"
