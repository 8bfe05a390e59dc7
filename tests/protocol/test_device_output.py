"""Device output in the core (no I/O): text, answer and status topics, and what stays as it was."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.protocol.actions import Action, ArmTimer, CloseUpstream, Observe
from bridge.protocol.contract import Topics
from bridge.protocol.core import BridgeCore
from bridge.protocol.guardrails import Tokens
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.messages import Publish, ResponseCompleted
from bridge.protocol.output_options import OutputConfig
from bridge.protocol.sessions import ProfileConfig, SessionsConfig
from tests.protocol.test_core import UNLIMITED, URL, cmd, error_codes

CREATE = {"type": "response.create", "model": "m", "input": "hi"}


def make_core(output: dict[str, Any] | None = None, **sessions: Any) -> BridgeCore:
    profile = ProfileConfig(request={"model": "m"}, output=OutputConfig(**(output or {})))
    return BridgeCore(
        Topics("ai"),
        url=URL,
        qos=1,
        limits=LimitsConfig(**UNLIMITED),
        sessions=SessionsConfig(idle_timeout=0, **sessions),
        profiles={"default": profile},
    )


def on(actions: list[Action], kind: str, connection_id: str = "c1") -> list[bytes]:
    topic = f"ai/{connection_id}/{kind}"
    return [a.payload for a in actions if isinstance(a, Publish) and a.topic == topic]


def event(event_type: str, **fields: Any) -> bytes:
    return json.dumps({"type": event_type, **fields}, separators=(",", ":")).encode()


def delta(text: str) -> bytes:
    return event("response.output_text.delta", item_id="m1", delta=text)


def ended(event_type: str, status: str, **response: Any) -> bytes:
    return event(event_type, response={"id": "resp_1", "status": status, **response})


USAGE = {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}


def opened(core: BridgeCore, **command: Any) -> list[Action]:
    core.receive_command("c1", cmd("connect", **command))
    return core.upstream_opened("c1")


def stream(core: BridgeCore, *raws: bytes) -> list[Action]:
    actions: list[Action] = []
    for raw in raws:
        actions += core.shaped_event("c1", raw)
    return actions


def test_default_options_leave_the_hot_path_alone() -> None:
    """No output options: no DeviceOutput, events relayed as before, nothing else published."""
    core = make_core()
    actions = opened(core)
    assert not core.shaped("c1")
    assert on(actions, "status") == []
    published = core.upstream_event("c1", delta("Hi"))
    assert isinstance(published, Publish)
    assert published.topic == "ai/c1/events"
    assert published.relayed


def test_status_sequence_and_heartbeat() -> None:
    core = make_core({"status": True, "status_heartbeat": 1.5})
    actions = opened(core)
    assert on(actions, "status") == [b"ready"]
    assert core.shaped("c1")
    actions = core.receive_command("c1", cmd("send", event=CREATE))
    assert on(actions, "status") == [b"thinking"]
    assert ArmTimer("c1", 1.5) in actions
    due = core.output_due("c1")
    assert on(due, "status") == [b"thinking"]
    assert ArmTimer("c1", 1.5) in due
    actions = stream(core, event("response.created", response={"id": "resp_1"}), delta("Hi"))
    assert on(actions, "status") == [b"streaming"]
    assert on(core.output_due("c1"), "status") == []  # no heartbeat while streaming
    actions = stream(core, delta(" there"), ended("response.completed", "completed"))
    assert on(actions, "status") == [b"ready"]
    assert all(publish.retain for publish in _publishes(actions, "status"))
    actions = core.receive_command("c1", cmd("close"))
    assert actions == [CloseUpstream("c1", 1000, "OK")]
    actions = core.upstream_closed("c1", 1000, "OK")
    assert on(actions, "status") == [b"closed", b""]  # closed, then the retained value cleared


def _publishes(actions: list[Action], kind: str) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish) and a.topic == f"ai/c1/{kind}"]


@pytest.mark.parametrize(
    ("ending", "status", "error"),
    [
        (ended("response.completed", "completed", usage=USAGE), "completed", None),
        (ended("response.incomplete", "incomplete", usage=USAGE), "incomplete", None),
        (
            ended("response.failed", "failed", error={"code": "server_error", "message": "boom"}),
            "failed",
            {"code": "server_error", "message": "boom"},
        ),
        (
            event("error", error={"code": "rate_limit_exceeded", "message": "slow down"}),
            "error",
            {"code": "rate_limit_exceeded", "message": "slow down"},
        ),
    ],
)
def test_one_answer_per_request(ending: bytes, status: str, error: dict[str, str] | None) -> None:
    core = make_core({"answer": True})
    opened(core)
    core.receive_command("c1", cmd("send", event=CREATE, request_id="r1"))
    actions = stream(
        core, event("response.created", response={"id": "resp_1"}), delta("Hel"), delta("lo")
    )
    assert on(actions, "answer") == []
    actions = stream(core, ending)
    (raw,) = on(actions, "answer")
    answer = json.loads(raw)
    assert answer["request_id"] == "r1"
    assert answer["response_id"] == "resp_1"
    assert answer["status"] == status
    assert answer["text"] == "Hello"
    assert answer.get("error") == error
    if status in ("completed", "incomplete"):
        assert answer["usage"] == USAGE


def test_a_lost_socket_answers_every_request_in_flight() -> None:
    core = make_core({"answer": True, "status": True})
    opened(core)
    core.receive_command("c1", cmd("send", event=CREATE, request_id="r1"))
    stream(core, delta("Half an ans"))
    actions = core.upstream_closed("c1", 1006, "gone")
    (raw,) = on(actions, "answer")
    answer = json.loads(raw)
    assert (answer["status"], answer["text"], answer["error"]["code"]) == (
        "error",
        "Half an ans",
        "upstream_lost",
    )
    assert on(actions, "status") == [b"closed", b""]


def test_events_off_keeps_acks_and_errors_only() -> None:
    core = make_core({"events": False, "answer": True})
    actions = opened(core)
    assert len(on(actions, "events")) == 1  # the connect ack
    actions = core.receive_command("c1", cmd("send", event=CREATE))
    assert len(on(actions, "events")) == 1  # the send ack
    completed = ended("response.completed", "completed", usage=USAGE)
    actions = stream(core, delta("x"), completed)
    assert on(actions, "events") == []
    # The completed response is still counted (tokens), with no message of its own.
    assert Observe(ResponseCompleted("c1", completed, Tokens(3, 5, 8))) in actions
    core.receive_command("c1", cmd("send", event=CREATE))
    actions = stream(core, event("error", error={"code": "x", "message": "y"}))
    assert error_codes(actions) == ["x"]  # server errors always reach the events topic


def test_text_chunks_coalesce_until_the_timer() -> None:
    core = make_core({"text": True, "text_flush_ms": 250, "text_max_bytes": 16})
    opened(core)
    core.receive_command("c1", cmd("send", event=CREATE))
    actions = stream(core, delta("Hello"), delta(" brave"))
    assert on(actions, "text") == []
    assert actions.count(ArmTimer("c1", 0.25)) == 1
    actions = stream(core, delta(" new world and more"))
    assert on(actions, "text") == [b"Hello brave new "]  # past the limit: out at once
    assert on(core.output_due("c1"), "text") == [b"world and "]
    actions = stream(core, ended("response.completed", "completed"))
    assert on(actions, "text") == [b"more"]


def test_refusal_text_counts_and_reasoning_does_not() -> None:
    core = make_core({"text": True, "answer": True, "text_flush_ms": 0})
    opened(core)
    core.receive_command("c1", cmd("send", event=CREATE))
    actions = stream(
        core,
        event("response.reasoning_summary_text.delta", delta="thinking hard "),
        event("response.refusal.delta", delta="I can't help "),
        event("response.refusal.delta", delta="with that."),
        ended("response.completed", "completed"),
    )
    assert b"".join(on(actions, "text")) == b"I can't help with that."
    assert json.loads(on(actions, "answer")[0])["text"] == "I can't help with that."


def test_an_ask_override_applies_when_the_ask_opens_the_connection() -> None:
    core = make_core()
    actions = core.receive_command("c1", cmd("ask", input="Hi", output={"status": True}))
    actions += core.upstream_opened("c1")
    assert on(actions, "status") == [b"ready", b"thinking"]


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ([], "output must be an object"),
        ({"txt": True}, "output.txt"),
        ({"text": "yes"}, "output.text"),
        ({"text_max_bytes": 3}, "output.text_max_bytes"),
        ({"text_split": "paragraph"}, "output.text_split"),
        ({"x" * 10_000: 1}, "output.xxxx"),
    ],
)
def test_bad_output_options_get_invalid_command(output: Any, problem: str) -> None:
    core = make_core()
    actions = core.receive_command("c1", cmd("connect", output=output, request_id="q"))
    (error,) = [json.loads(raw) for raw in on(actions, "events")]
    assert error["error"]["code"] == "invalid_command"
    assert problem in error["error"]["message"]
    assert len(error["error"]["message"]) < 200  # a huge key is not echoed whole
    assert error["request_id"] == "q"


def test_a_retried_turn_keeps_one_answer() -> None:
    """A turn sent again on a new socket (limit reached before output) answers once."""
    core = make_core({"answer": True, "status": True})
    core.receive_command("c1", cmd("ask", input="Hi", request_id="a1"))
    core.upstream_opened("c1")
    limit = event("error", error={"code": "websocket_connection_limit_reached", "message": "60"})
    actions = stream(core, limit)
    assert on(actions, "answer") == []
    assert any(isinstance(a, CloseUpstream) for a in actions)
    actions = core.upstream_closed("c1", 1000, "the turn is sent again on a new socket")
    assert on(actions, "answer") == []
    assert on(actions, "status") == []
    actions = core.upstream_opened("c1")
    assert on(actions, "status") == []  # still thinking: nothing to say
    actions = stream(core, delta("Hello"), ended("response.completed", "completed"))
    (raw,) = on(actions, "answer")
    assert json.loads(raw)["request_id"] == "a1"
    assert on(actions, "status") == [b"streaming", b"ready"]


def test_status_outlives_the_socket_while_the_conversation_lives() -> None:
    core = make_core({"status": True}, conversation_ttl=60)
    core.receive_command("c1", cmd("ask", input="Hi"), now=0.0)
    core.upstream_opened("c1")
    stream(core, ended("response.completed", "completed"))
    actions = core.upstream_closed("c1", 1006, "dropped")
    assert on(actions, "status") == [b"closed"]  # kept: the conversation goes on
    assert on(core.sweep(30.0), "status") == []
    assert on(core.sweep(120.0), "status") == [b""]  # the memory ended: cleared
