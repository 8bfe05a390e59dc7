"""Unit tests of the core state machine: no sockets, no event loop, no clock."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import InvalidState
from bridge.protocol import replies
from bridge.protocol.contract import Topics
from bridge.protocol.core import (
    AbortUpstream,
    Action,
    BridgeCore,
    CloseUpstream,
    OpenUpstream,
    Phase,
    SendUpstream,
)
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.messages import Publish, ReplyTo
from bridge.protocol.response_topics import ResponseTopicPolicy

URL = "wss://api.example/v1/responses"
CREATE = {"type": "response.create", "model": "m", "input": "hi"}


# The core's unit tests send many commands at one `now`: no rate limit, no redelivery
# window unless a test asks for one.
UNLIMITED: dict[str, Any] = {"command_burst": 1_000_000, "dedupe_seconds": 0}


def make_core(**limits: Any) -> BridgeCore:
    return BridgeCore(Topics("ai"), url=URL, qos=1, limits=LimitsConfig(**{**UNLIMITED, **limits}))


def cmd(action: str, **fields: Any) -> bytes:
    return json.dumps({"action": action, **fields}).encode()


def messages(actions: list[Action], topic: str = "ai/c1/events") -> list[dict[str, Any]]:
    """The JSON bodies of the Publish actions to ``topic``, in order."""
    return [
        json.loads(action.payload)
        for action in actions
        if isinstance(action, Publish) and action.topic == topic
    ]


def error_codes(actions: list[Action]) -> list[str]:
    return [m["error"]["code"] for m in messages(actions) if "error" in m]


def relayed(core: BridgeCore, raw: bytes, connection_id: str = "c1") -> Publish:
    """What the core publishes for a server event (never held back outside `ask` turns)."""
    publish = core.upstream_event(connection_id, raw)
    assert isinstance(publish, Publish)
    return publish


def open_core(connection_id: str = "c1") -> BridgeCore:
    core = make_core()
    core.receive_command(connection_id, cmd("connect"))
    core.upstream_opened(connection_id)
    return core


def test_seed_flow() -> None:
    """connect → ack with URL; send → ack then event upstream; close → ack after close."""
    core = make_core()
    actions = core.receive_command("c1", cmd("connect", connection_id="c1"))
    assert actions == [OpenUpstream("c1")]
    assert core.phase("c1") is Phase.OPENING

    actions = core.upstream_opened("c1")
    assert messages(actions) == [replies.connect_ack("c1", URL, None)]

    actions = core.receive_command("c1", cmd("send", event=CREATE))
    assert messages(actions) == [replies.send_ack("c1", "response.create", None)]
    assert isinstance(actions[0], Publish)
    assert isinstance(actions[-1], SendUpstream)
    assert json.loads(actions[-1].data) == CREATE

    actions = core.receive_command("c1", cmd("close", reason="Example flow complete"))
    assert actions == [CloseUpstream("c1", 1000, "Example flow complete")]
    actions = core.upstream_closed("c1", 1000, "Example flow complete")
    assert messages(actions) == [replies.close_ack("c1", 1000, "Example flow complete", None)]
    assert core.idle


def test_server_events_are_relayed_unchanged() -> None:
    """A server event is published byte for byte on the events topic, marked relayed."""
    core = open_core()
    raw = b'{"type":"response.output_text.delta","sequence_number":4,"delta":"Hel"}'
    publish = relayed(core, raw)
    assert (publish.topic, publish.payload, publish.qos, publish.relayed) == (
        "ai/c1/events",
        raw,
        1,
        True,
    )
    assert dict(publish.properties) == {
        "transport": "responses.websocket",
        "direction": "server",
        "connection_id": "c1",
        "event_type": "response.output_text.delta",
    }


def test_bridge_messages_carry_bridge_direction() -> None:
    """Acks carry user properties direction=bridge and the action as event_type."""
    core = make_core()
    core.receive_command("c1", cmd("connect"))
    (ack,) = core.upstream_opened("c1")
    assert isinstance(ack, Publish)
    assert dict(ack.properties)["direction"] == "bridge"
    assert dict(ack.properties)["event_type"] == "connect"


def test_v311_publishes_carry_no_properties() -> None:
    """With MQTT 3.1.1 there are no user properties to build."""
    core = BridgeCore(Topics("ai"), url=URL, v5=False)
    core.receive_command("c1", cmd("connect"))
    core.upstream_opened("c1")
    assert relayed(core, b'{"type":"x"}').properties == ()


def test_commands_wait_while_connecting() -> None:
    """send and close published right after connect run, in order, once it is open."""
    core = make_core()
    assert core.receive_command("c1", cmd("connect")) == [OpenUpstream("c1")]
    assert core.receive_command("c1", cmd("send", event=CREATE, request_id="s")) == []
    assert core.receive_command("c1", cmd("close", request_id="x")) == []
    actions = core.upstream_opened("c1")
    assert [m["action"] for m in messages(actions)] == ["connect", "send"]
    assert isinstance(actions[-2], SendUpstream)
    assert actions[-1] == CloseUpstream("c1", 1000, "OK")
    assert core.phase("c1") is Phase.CLOSING


def test_bad_command_waits_its_turn() -> None:
    """An error for a queued bad command comes after the acks of commands before it."""
    core = make_core()
    core.receive_command("c1", cmd("connect"))
    assert core.receive_command("c1", b"{oops") == []
    assert [m["action"] for m in messages(core.upstream_opened("c1"))] == ["connect", None]


def test_commands_wait_while_closing_then_reconnect() -> None:
    """A connect queued behind a close opens a new connection once the old one is gone."""
    core = open_core()
    core.receive_command("c1", cmd("close"))
    assert core.receive_command("c1", cmd("connect")) == []
    actions = core.upstream_closed("c1", 1000, "OK")
    assert [m["action"] for m in messages(actions)] == ["close"]
    assert actions[-1] == OpenUpstream("c1")


def test_failed_connect_answers_the_queue() -> None:
    """A failed handshake gives upstream_connect_failed, then not_open for a queued send."""
    core = make_core()
    core.receive_command("c1", cmd("connect", request_id="r1"))
    core.receive_command("c1", cmd("send", event=CREATE))
    actions = core.upstream_failed("c1", "HTTP 401", 401)
    first, second = messages(actions)
    assert first["error"] == {
        "code": "upstream_connect_failed",
        "message": "HTTP 401",
        "status": 401,
    }
    assert (first["action"], first["request_id"]) == ("connect", "r1")
    assert second["error"]["code"] == "not_open"
    assert core.idle


def test_ids_are_independent() -> None:
    """A connection opening for one id does not hold back another id's commands."""
    core = make_core()
    core.receive_command("slow", cmd("connect"))
    actions = core.receive_command("fast", cmd("connect"))
    assert actions == [OpenUpstream("fast")]
    actions = core.upstream_opened("fast")
    assert messages(actions, "ai/fast/events")[0]["action"] == "connect"


@pytest.mark.parametrize(
    ("commands", "code"),
    [
        ([cmd("send", event=CREATE)], "not_open"),
        ([cmd("close")], "not_open"),
        ([b"[]"], "invalid_command"),
    ],
)
def test_state_errors(commands: list[bytes], code: str) -> None:
    """Commands that do not fit the state get one error each."""
    core = make_core()
    actions: list[Action] = []
    for payload in commands:
        actions += core.receive_command("c1", payload)
    assert error_codes(actions) == [code]


def test_already_open() -> None:
    """A second connect on an open id is refused, the connection stays."""
    core = open_core()
    assert error_codes(core.receive_command("c1", cmd("connect"))) == ["already_open"]
    assert core.phase("c1") is Phase.OPEN


def test_connection_limit() -> None:
    """Past limits.max_connections a connect gets limit_reached."""
    core = make_core(max_connections=1)
    core.receive_command("a", cmd("connect"))
    actions = core.receive_command("b", cmd("connect"))
    assert [m["error"]["code"] for m in messages(actions, "ai/b/events")] == ["limit_reached"]


def test_invalid_topic_id_is_answered() -> None:
    """A command on an invalid id is answered on that id's events topic."""
    core = make_core()
    actions = core.receive_command("bridge", cmd("connect"))
    (error,) = messages(actions, "ai/bridge/events")
    assert error["error"]["code"] == "invalid_connection_id"
    assert core.idle


def test_retained_command_is_not_carried_out() -> None:
    """A retained connect opens nothing and is answered with retained_command."""
    core = make_core()
    actions = core.receive_command("c1", cmd("connect"), retained=True)
    assert not any(isinstance(action, OpenUpstream) for action in actions)
    assert error_codes(actions) == ["retained_command"]


def test_empty_payload_is_ignored() -> None:
    """An empty payload (clearing a retained message) is not a command."""
    assert make_core().receive_command("c1", b"", retained=True) == []
    assert make_core().receive_command("c1", b"") == []


def test_reply_to_gets_a_copy_with_correlation() -> None:
    """With a v5 response topic, the ack also goes there with the correlation data."""
    core = make_core()
    core.receive_command("c1", cmd("connect"), reply_to=ReplyTo("me/inbox", b"\x01\x02"))
    events, copy = core.upstream_opened("c1")
    assert isinstance(events, Publish)
    assert isinstance(copy, Publish)
    assert copy.topic == "me/inbox"
    assert copy.correlation_data == b"\x01\x02"
    assert copy.payload == events.payload


def test_upstream_drop_is_reported_and_forgotten() -> None:
    """A close we did not ask for publishes `disconnected` with the real code."""
    core = open_core()
    actions = core.upstream_closed("c1", 1006, "connection lost")
    assert messages(actions) == [replies.disconnected_notice("c1", 1006, "connection lost")]
    assert core.idle
    assert core.receive_command("c1", cmd("connect")) == [OpenUpstream("c1")]


def test_invalid_server_event_becomes_an_error() -> None:
    """A frame that is not a JSON object with a type is reported, not relayed raw."""
    core = open_core()
    publish = relayed(core, b"\x00garbage")
    body = json.loads(publish.payload)
    assert body["error"]["code"] == "invalid_server_event"
    assert not publish.relayed


def test_shutdown_closes_everything() -> None:
    """Shutdown closes open ones with 1001, aborts handshakes, refuses new commands."""
    core = open_core("open")
    core.receive_command("opening", cmd("connect"))
    core.receive_command("opening", cmd("send", event=CREATE))
    actions = core.begin_shutdown()
    assert CloseUpstream("open", 1001, "bridge shutting down") in actions
    assert AbortUpstream("opening") in actions
    assert [m["error"]["code"] for m in messages(actions, "ai/opening/events")] == ["shutting_down"]
    assert [
        m["error"]["code"]
        for m in messages(core.receive_command("c9", cmd("connect")), "ai/c9/events")
    ] == ["shutting_down"]
    (ack,) = messages(core.upstream_closed("open", 1001, ""), "ai/open/events")
    assert (ack["action"], ack["code"], ack["reason"]) == ("close", 1001, "bridge shutting down")
    (error,) = messages(core.upstream_failed("opening", "abandoned"), "ai/opening/events")
    assert (error["action"], error["error"]["code"]) == ("connect", "shutting_down")
    assert core.idle


def test_end_connection_reports_a_notice() -> None:
    """A bridge-decided end drops the socket and reports `disconnected` with its reason."""
    core = open_core()
    assert core.end_connection("c1", 1013, "buffer full") == [AbortUpstream("c1")]
    (notice,) = messages(core.upstream_closed("c1", 1006, "aborted"))
    assert (notice["action"], notice["code"], notice["reason"]) == (
        "disconnected",
        1013,
        "buffer full",
    )


def test_backlog_is_bounded() -> None:
    """Commands piling up behind a handshake are refused past the backlog limit."""
    core = make_core()
    core.receive_command("c1", cmd("connect"))
    actions: list[Action] = []
    for n in range(150):
        actions += core.receive_command("c1", cmd("send", event=CREATE, request_id=str(n)))
    refused = messages(actions)
    assert len(refused) == 50
    assert {m["error"]["code"] for m in refused} == {"limit_reached"}
    assert refused[0]["request_id"] == "100"


def test_misuse_raises_invalid_state() -> None:
    """Driving the core against its contract is a bug, raised loudly."""
    core = make_core()
    with pytest.raises(InvalidState):
        core.upstream_opened("nobody")
    with pytest.raises(InvalidState):
        core.upstream_event("nobody", b"{}")


# Calendar arithmetic (the budgets' days) may use datetime; nothing may read the clock.
_CLOCK_READS = frozenset({"now", "today", "utcnow", "time", "monotonic", "perf_counter"})


def test_the_protocol_does_no_io() -> None:
    """bridge/protocol/ imports no asyncio, clock, socket or MQTT/WebSocket library, reads
    no clock, and imports nothing of the bridge outside itself but its errors."""
    forbidden = {"asyncio", "aiomqtt", "paho", "websockets", "socket", "time"}
    root = Path(__file__).parents[2] / "bridge"
    modules = [*sorted((root / "protocol").glob("*.py")), root / "errors.py"]
    assert len(modules) > 4
    for path in modules:
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        tops = {name.split(".")[0] for name in imported}
        assert not tops & forbidden, (path.name, tops & forbidden)
        calls = {
            node.func.attr
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        assert not calls & _CLOCK_READS, (path.name, calls & _CLOCK_READS)
        outside = {
            name
            for name in imported
            if name.startswith("bridge")
            and not name.startswith(("bridge.protocol", "bridge.errors"))
        }
        assert not outside, (path.name, outside)


def test_rate_limit_per_id() -> None:
    """Past the burst, commands of one id are answered with rate_limited; others are not."""
    core = make_core(commands_per_second=2.0, command_burst=3)
    actions: list[Action] = []
    for _ in range(5):
        actions += core.receive_command("c1", cmd("close"), now=10.0)
    assert error_codes(actions) == ["not_open"] * 3 + ["rate_limited"] * 2
    assert messages(actions)[-1]["action"] == "close"  # still echoed, though not parsed
    other = core.receive_command("c2", cmd("close"), now=10.0)
    assert [m["error"]["code"] for m in messages(other, "ai/c2/events")] == ["not_open"]
    later = core.receive_command("c1", cmd("close"), now=10.6)  # one token back after 0.5 s
    assert error_codes(later) == ["not_open"]


def test_qos1_redelivery_is_not_carried_out_twice() -> None:
    """The same bytes with the same request_id within the window run once."""
    core = make_core(dedupe_seconds=30.0)
    connect = cmd("connect", request_id="r1")
    assert core.receive_command("c1", connect, now=0.0) == [OpenUpstream("c1")]
    assert core.receive_command("c1", connect, now=1.0) == []
    assert core.stats.duplicates == 1
    core.upstream_opened("c1")
    send = cmd("send", event=CREATE, request_id="r2")
    assert isinstance(core.receive_command("c1", send, now=2.0)[-1], SendUpstream)
    assert core.receive_command("c1", send, now=3.0) == []
    # A new command reusing a request_id is not a redelivery; neither is one after the window.
    other = cmd("send", event={**CREATE, "input": "again"}, request_id="r2")
    assert isinstance(core.receive_command("c1", other, now=4.0)[-1], SendUpstream)
    assert isinstance(core.receive_command("c1", send, now=40.0)[-1], SendUpstream)


def test_commands_without_request_id_are_never_deduplicated() -> None:
    """Two identical commands without request_id both run."""
    core = make_core(dedupe_seconds=30.0)
    core.receive_command("c1", cmd("close"), now=0.0)
    assert error_codes(core.receive_command("c1", cmd("close"), now=0.1)) == ["not_open"]


# Hostile clients -------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic", ["ai/bridge/state", "ai/other/events", "ai/c1/cmd", "$SYS/x", "homeassistant/x"]
)
def test_refused_response_topic_gets_one_error_on_the_events_topic_only(topic: str) -> None:
    """A Response Topic under the bridge's own topics never receives anything."""
    core = BridgeCore(
        Topics("ai"),
        url=URL,
        response_topics=ResponseTopicPolicy(refused=("ai/#", "homeassistant/#")),
    )
    reply = ReplyTo(topic, b"corr")
    for retained in (False, True):
        actions = core.receive_command(
            "c1", cmd("connect", request_id="r1"), reply_to=reply, retained=retained
        )
        assert [a.topic for a in actions if isinstance(a, Publish)] == ["ai/c1/events"]
        (error,) = messages(actions)
        expected = "retained_command" if retained else "response_topic_not_allowed"
        assert error["error"]["code"] == expected
        assert error["request_id"] == "r1"
        assert not any(isinstance(a, OpenUpstream) for a in actions)
    assert core.phase("c1") is None


def test_allowed_response_topic_still_gets_its_copy() -> None:
    core = BridgeCore(
        Topics("ai"), url=URL, response_topics=ResponseTopicPolicy(allowed=("replies/#",))
    )
    core.receive_command("c1", cmd("connect"), reply_to=ReplyTo("replies/me", b"x"))
    assert [a.topic for a in core.upstream_opened("c1") if isinstance(a, Publish)] == [
        "ai/c1/events",
        "replies/me",
    ]
    actions = core.receive_command("c1", cmd("close"), reply_to=ReplyTo("elsewhere/me"))
    assert error_codes(actions) == ["response_topic_not_allowed"]


def test_waiting_bytes_are_bounded_across_the_bridge() -> None:
    """Big sends queued behind handshakes on many ids are refused past the budget."""
    # (a valid config: one command of at most max_command_bytes fits the budget)
    core = make_core(max_waiting_bytes=300_000, max_command_bytes=100_000)
    big = cmd("send", event={**CREATE, "input": "x" * 60_000})
    answers: list[str] = []
    for connection_id in ("a", "b", "c"):
        core.receive_command(connection_id, cmd("connect"))
        for _ in range(3):
            answers += error_codes_of(core.receive_command(connection_id, big), connection_id)
    assert answers.count("limit_reached") == 9 - 4  # 4 x 60 KB fit in 300 KB
    assert 240_000 <= core.waiting_bytes <= 300_000
    # The backlogs drain into the upstream writers: still counted until written.
    sends = [a for cid in ("a", "b", "c") for a in core.upstream_opened(cid)]
    written = [a for a in sends if isinstance(a, SendUpstream)]
    assert len(written) == 4
    assert core.waiting_bytes == sum(len(a.data) for a in written)
    assert error_codes_of(core.receive_command("a", big), "a") == ["limit_reached"]
    for action in written:
        core.upstream_written(len(action.data))
    assert core.waiting_bytes == 0
    assert isinstance(core.receive_command("a", big)[-1], SendUpstream)


def error_codes_of(actions: list[Action], connection_id: str) -> list[str]:
    return [
        m["error"]["code"] for m in messages(actions, f"ai/{connection_id}/events") if "error" in m
    ]


def test_internal_error_answers_the_command() -> None:
    """A bug while handling a command is answered like any refusal, echoing what it can."""
    actions = make_core().internal_error("c1", cmd("send", request_id="r9"))
    (error,) = messages(actions)
    assert error["error"]["code"] == "internal_error"
    assert (error["action"], error["request_id"]) == ("send", "r9")
    (error,) = messages(make_core().internal_error("c1", b"[" * 5000))
    assert error["action"] is None
